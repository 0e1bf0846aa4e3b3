"""Loading a function's modules without pausing for garbage collection.

Importing FastAPI, pydantic and our schemas allocates hundreds of thousands of objects, and
Python's cyclic collector runs several full passes over them while a cold start is under way
(~30 ms of it on this project, measured by bench/cold_start.py). None of them are garbage: they
live as long as the container. So each Lambda module loads inside `loading()`, and what it
loaded is then frozen out of later collections (gc.freeze), which also keeps warm
invocations' collections short.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fastapi import FastAPI


@contextmanager
def loading() -> Iterator[None]:
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        if was_enabled:
            gc.enable()


def load_app(group: str) -> FastAPI:
    """The app of one endpoint group, for a Vercel function module (`app = load_app(...)`:
    Vercel finds the app by that top-level assignment)."""
    with loading():
        from shared.web.app_factory import create_app

        return create_app(group)
