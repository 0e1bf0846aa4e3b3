"""What the emulator's state file costs: charges, lookups and GET /generation with a state_dir.

    .venv/bin/python -m bench.emulator_state [--generations 1000] [--lookups 500]

An emulator on a fresh state directory (the local server's, and every command's beside it)
bills `--generations` charges on one key, then answers `--lookups` Emulator.generation() calls
and as many GET /api/v1/generation?id= requests through Emulator.transport(). Each phase is
timed (total, and per call: median and worst), beside a ceiling measured in the same run: the
same calls on an emulator without a state_dir (memory only, no file to read or write). A phase
that only reads should cost about its ceiling; a charge writes the whole state file.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import tempfile
import time
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path

import httpx

from shared.openrouter.emulator import Emulator


class Phase:
    """The wall time of each call of one phase."""

    def __init__(self) -> None:
        self.samples: list[float] = []

    def time(self, call: Callable[[], object]) -> None:
        started = time.perf_counter()
        call()
        self.samples.append(time.perf_counter() - started)

    def add(self, seconds: float) -> None:
        self.samples.append(seconds)

    def line(self) -> str:
        total = sum(self.samples)
        median = statistics.median(self.samples) * 1000
        worst = max(self.samples) * 1000
        return f"{total:8.3f} s  (median {median:7.3f} ms, worst {worst:7.3f} ms)"


def _run(state_dir: Path | None, generations: int, lookups: int) -> dict[str, Phase]:
    emulator = Emulator(state_dir=state_dir, generation_delay_s=0)
    key = emulator.add_key(name="bench")
    ids = [f"gen-bench-{i:06d}" for i in range(generations)]
    phases = {"charge": Phase(), "generation()": Phase(), "GET /generation": Phase()}
    for generation_id in ids:
        phases["charge"].time(
            lambda g=generation_id: emulator.charge(
                key.secret,
                Decimal("0.0001"),
                generation_id=g,
                prompt_tokens=120,
                completion_tokens=30,
            )
        )
    picks = random.Random(7).choices(ids, k=lookups)
    for generation_id in picks:
        phases["generation()"].time(lambda g=generation_id: emulator.generation(g))

    async def requests() -> None:
        async with httpx.AsyncClient(
            transport=emulator.transport(),
            base_url="http://emulator",
            headers={"Authorization": f"Bearer {key.secret}"},
        ) as client:
            for generation_id in picks:
                started = time.perf_counter()
                response = await client.get("/api/v1/generation", params={"id": generation_id})
                phases["GET /generation"].add(time.perf_counter() - started)
                assert response.status_code == 200, response.text

    asyncio.run(requests())
    if state_dir is not None:
        size = (state_dir / "openrouter-emulator.json").stat().st_size
        writes = getattr(emulator._lock, "writes", "?")  # "?": an emulator without the counter
        print(f"state file: {size / 1000:,.0f} KB, written {writes} times by this process")
    return phases


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--generations", type=int, default=1000)
    parser.add_argument("--lookups", type=int, default=500)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        shared = _run(Path(folder), args.generations, args.lookups)
    ceiling = _run(None, args.generations, args.lookups)
    print(f"{args.generations} charges, then {args.lookups} lookups of each kind")
    print(f"{'phase':<18}{'with state_dir':<50}ceiling (no state_dir)")
    for name, phase in shared.items():
        print(f"{name:<18}{phase.line():<50}{ceiling[name].line()}")


if __name__ == "__main__":
    main()
