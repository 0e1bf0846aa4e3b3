"""psycopg's SQLSTATE exceptions, loaded on first use: `except sql_errors.UniqueViolation:`.

An except clause is evaluated only when an exception reaches it, and an exception from the
database means the driver is loaded already; so the modules that catch these do not import
psycopg themselves, and a function that never touches the database never loads it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from psycopg.errors import ForeignKeyViolation, UniqueViolation

__all__ = ["ForeignKeyViolation", "UniqueViolation"]


def __getattr__(name: str) -> type[Exception]:
    from psycopg import errors

    found: type[Exception] = getattr(errors, name)
    return found
