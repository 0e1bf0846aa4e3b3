"""The jobs function for Vercel (and any ASGI server): the app of the jobs endpoint group."""

from shared.web.app_factory import create_app

app = create_app("jobs")
