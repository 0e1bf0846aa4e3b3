"""The keys function for Vercel (or any ASGI server): the app of the keys group."""

from shared.coldstart import load_app

app = load_app("keys")
