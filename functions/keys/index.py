"""The keys function for Vercel (or any ASGI server): the app of the keys group."""

from shared.web.app_factory import create_app

app = create_app("keys")
