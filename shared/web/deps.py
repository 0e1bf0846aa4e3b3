"""Dependency aliases (the FastAPI template's style): endpoints declare what they need by type.

The providers are `async def` because FastAPI runs a plain `def` dependency in its threadpool:
a thread hop per dependency per request, for what is an attribute read.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Header, Request

from shared.config import Settings
from shared.db.database import Database
from shared.runtime import Runtime


async def get_runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]


async def get_settings_from_runtime(runtime: RuntimeDep) -> Settings:
    return runtime.settings


async def get_database(runtime: RuntimeDep) -> Database:
    return runtime.database()


SettingsDep = Annotated[Settings, Depends(get_settings_from_runtime)]
DatabaseDep = Annotated[Database, Depends(get_database)]

# A write a caller may retry: the same key returns the first result and makes nothing new.
IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        max_length=255,
        description="A retry with the same key returns the first result and creates nothing.",
    ),
]
