"""The admin function for Vercel (or any ASGI server): the app of the admin group."""

from shared.web.app_factory import create_app

app = create_app("admin")
