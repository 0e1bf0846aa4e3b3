"""The emergency function for Vercel (and any ASGI server): the app of the emergency endpoint group."""

from shared.web.app_factory import create_app

app = create_app("emergency")
