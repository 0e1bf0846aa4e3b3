"""The cold-start ceiling: a bare FastAPI hello world behind Mangum, as a Lambda module."""

from fastapi import FastAPI
from mangum import Mangum

app = FastAPI()


@app.get("/hello")
async def hello() -> dict[str, str]:
    return {"hello": "world"}


handler = Mangum(app, lifespan="off")
