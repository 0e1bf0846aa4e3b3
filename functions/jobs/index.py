"""The jobs function for Vercel (or any ASGI server): the app of the jobs group."""

from shared.coldstart import load_app

app = load_app("jobs")
