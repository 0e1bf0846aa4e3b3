"""The admin function for Vercel (and any ASGI server): the app of the admin endpoint group."""

from shared.web.app_factory import create_app

app = create_app("admin")
