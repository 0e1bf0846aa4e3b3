"""The one money type of every response: US dollars as exact decimals, written one way.

In JSON an amount is a string holding the exact decimal, without exponent or trailing zeros:
"10", "9.5", "0.000042", "-40", "0". Strings, because a JSON number is a binary float to most
readers, and a cost of $0.1 + $0.2 must stay $0.3.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated, Final

from pydantic import PlainSerializer

MICRO_DOLLAR: Final = Decimal("0.000001")


def usd_text(amount: Decimal) -> str:
    """The amount exactly, with no exponent and no trailing zeros."""
    if amount == 0:
        return "0"  # also for -0 and 0E-12
    return format(amount.normalize(), "f")


Usd = Annotated[Decimal, PlainSerializer(usd_text, return_type=str, when_used="json")]
# A share of a budget ("30", "12.5", "0"), written the way amounts are.
Percent = Annotated[Decimal, PlainSerializer(usd_text, return_type=str, when_used="json")]


def usd_display(amount: Decimal | None, *, none: str = "unlimited") -> str:
    """For people (the CLI's tables): cents, or as many places as an amount under a cent
    needs ("$0.000042", never "$0.00" for a cost that is not zero)."""
    if amount is None:
        return none
    sign = "-" if amount < 0 else ""
    magnitude = abs(amount)
    if magnitude == 0 or magnitude >= Decimal("0.01"):
        return f"{sign}${magnitude:,.2f}"
    return f"{sign}${usd_text(magnitude)}"
