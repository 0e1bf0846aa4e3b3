"""The health function for Vercel (and any ASGI server): the app of the health endpoint group."""

from shared.web.app_factory import create_app

app = create_app("health")
