"""The atheris fuzzers, bounded (10,000 inputs or 15 s each): no parser of outside input may
fail other than the way its callers handle."""

from __future__ import annotations

import subprocess
import sys

import pytest

from shared.config import REPOSITORY_ROOT

pytestmark = pytest.mark.integration  # real processes or long campaigns: `-m integration`


@pytest.mark.parametrize("target", ["openrouter", "jwt", "usage"])
def test_the_parser_survives_the_fuzzer(target: str) -> None:
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "tests.fuzz.atheris_targets",
            target,
            "-runs=10000",
            "-max_total_time=15",
            "-seed=1",  # the same inputs every run: a failure reproduces
        ],
        cwd=REPOSITORY_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert "DONE" in run.stderr
