"""Times accepted from outside: normalised to UTC, and only those every part of the stack can
store and read back (PostgreSQL takes years to 294276; Python's datetime stops at 9999)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from pydantic import AfterValidator, AwareDatetime

EARLIEST_YEAR = 1970
LATEST_YEAR = 9998  # a margin below Python's 9999, whatever offset a reader applies


def storable_utc(moment: datetime) -> datetime:
    """The moment in UTC; ValueError if it is outside what can be stored and read back."""
    try:
        utc = moment.astimezone(UTC)
    except OverflowError as error:  # e.g. 9999-12-31T23:59:59-23:59 is in the year 10000
        raise ValueError("the time is out of range") from error
    if not EARLIEST_YEAR <= utc.year <= LATEST_YEAR:
        raise ValueError(f"the time must be between {EARLIEST_YEAR} and {LATEST_YEAR}")
    return utc


UtcDatetime = Annotated[AwareDatetime, AfterValidator(storable_utc)]
