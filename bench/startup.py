"""The local server's time-to-ready, against the bare interpreter measured in the same run.

    .venv/bin/python -m bench.startup [--runs 7]

Prints `openrouter-agent serve` from launch to its ready line on a fresh data folder (initdb,
migrations, a master key) and on an existing one. The functions' cold starts are measured by
bench/cold_start.py.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

from bench.common import PYTHON, ROOT, clean_env, free_port, median_process_seconds, wait_for_line


def serve_ready_seconds(data_dir: Path) -> float:
    process = subprocess.Popen(  # noqa: S603
        [PYTHON, "-m", "shared.cli", "serve", "--port", str(free_port())],
        cwd=ROOT,
        env=clean_env(LOCAL_DATA_DIR=str(data_dir), LOG_LEVEL="INFO"),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        return wait_for_line(process, '"ready: ', timeout_s=60)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=7)
    runs = parser.parse_args().runs
    env = clean_env()

    bare = median_process_seconds([PYTHON, "-c", "pass"], runs, env)
    print(f"machine: python -c pass                      {bare * 1000:7.0f} ms (median of {runs})")

    with tempfile.TemporaryDirectory() as scratch:
        data_dir = Path(scratch) / "local"
        fresh = serve_ready_seconds(data_dir)  # initdb + migrations + key generation
        warm = sorted(serve_ready_seconds(data_dir) for _ in range(max(3, runs // 2)))
        shutil.rmtree(data_dir, ignore_errors=True)
    print(f"serve: launch to ready, fresh data folder     {fresh:7.2f} s")
    print(f"serve: launch to ready, existing data folder  {warm[len(warm) // 2]:7.2f} s (median)")


if __name__ == "__main__":
    main()
