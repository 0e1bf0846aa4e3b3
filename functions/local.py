"""Every endpoint group in one app, for `openrouter-agent serve` and `uvicorn functions.local:app`."""

from shared.web.app_factory import create_app

app = create_app()
