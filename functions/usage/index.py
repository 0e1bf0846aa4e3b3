"""The usage function for Vercel (or any ASGI server): the app of the usage group."""

from shared.coldstart import load_app

app = load_app("usage")
