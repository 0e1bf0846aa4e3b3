"""The emergency function for Vercel (or any ASGI server): the app of the emergency group."""

from shared.coldstart import load_app

app = load_app("emergency")
