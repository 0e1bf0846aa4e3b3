"""Function modules load without garbage collection, and leave it as they found it."""

from __future__ import annotations

import gc

from shared.coldstart import loading


def test_collection_is_off_while_loading_and_back_on_after() -> None:
    # GIVEN the collector on, as in a fresh interpreter
    assert gc.isenabled()
    try:
        # WHEN a function's modules load
        with loading():
            during = gc.isenabled()
            loaded = [object() for _ in range(10)]

        # THEN no collection ran meanwhile, it runs again afterwards, and what was loaded is
        # frozen out of later collections
        assert not during
        assert gc.isenabled()
        assert gc.get_freeze_count() > 0
        assert loaded
    finally:
        gc.unfreeze()


def test_a_collector_switched_off_stays_off() -> None:
    gc.disable()
    try:
        with loading():
            pass
        assert not gc.isenabled()
    finally:
        gc.enable()
        gc.unfreeze()
