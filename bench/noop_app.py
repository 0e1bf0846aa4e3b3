"""The HTTP ceiling: a bare FastAPI app with one no-op route, served the same way as ours."""

from fastapi import FastAPI

app = FastAPI()


@app.get("/noop")
async def noop() -> dict[str, str]:
    return {"status": "ok"}


@app.post("/noop")
async def noop_post(body: dict[str, object]) -> dict[str, int]:
    """The same HTTP stack with a JSON body parsed and nothing done."""
    return {"stored": len(body)}
