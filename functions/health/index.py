"""The health function for Vercel (or any ASGI server): the app of the health group."""

from shared.coldstart import load_app

app = load_app("health")
