"""OpenRouter's key listing read on the work queue, a page (100 keys, by offset) per item.

The reconciler and the usage sync both read every page; at 100,000 keys that is 1,000 pages,
more than one invocation may take. A job starts with the pages the database's count of keys
needs, with room for keys made meanwhile; a page that comes back full adds the next, so a
listing longer than expected is still read to its end.
"""

from __future__ import annotations

import math

from shared.jobs.repository import NewItem
from shared.openrouter.client import PAGE_SIZE

PAGES = 0  # the phase of the page items: every page is read before anything that follows
_SPARE_PAGES = 2  # beyond what the database's count of keys needs


def page_item(offset: int) -> NewItem:
    return NewItem(f"page/{offset:09d}", PAGES, {"offset": offset})


def first_pages(known_keys: int) -> list[NewItem]:
    """The pages a job starts with, for the keys the database believes are at OpenRouter."""
    pages = math.ceil(known_keys * 1.1 / PAGE_SIZE) + _SPARE_PAGES
    return [page_item(n * PAGE_SIZE) for n in range(pages)]


def after(offset: int, listed: int) -> list[NewItem]:
    """The next page, if the page at `offset` came back full."""
    return [page_item(offset + PAGE_SIZE)] if listed >= PAGE_SIZE else []
