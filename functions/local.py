"""Every endpoint group in one app: `openrouter-agent serve`, `uvicorn functions.local:app`."""

from shared.web.app_factory import create_app

app = create_app()
