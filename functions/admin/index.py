"""The admin function for Vercel (or any ASGI server): the app of the admin group."""

from shared.coldstart import load_app

app = load_app("admin")
