"""The health function for Vercel (or any ASGI server): the app of the health group."""

from shared.web.app_factory import create_app

app = create_app("health")
