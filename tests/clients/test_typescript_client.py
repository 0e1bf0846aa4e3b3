"""The TypeScript client's own suite (clients/typescript: node:test against the local stack of
tests/clients/local_stack.py), run from pytest so that the one test command and CI run it too.
scripts/test installs its node_modules. Without npm this fails, never skips: a client whose
tests do not run is a client nobody knows works."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration  # real processes or long campaigns: `-m integration`

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "clients" / "typescript"
TIMEOUT_S = 300
TAIL_CHARS = 6000


def _text(output: str | bytes | None) -> str:
    if isinstance(output, bytes):
        return output.decode(errors="replace")
    return output or ""


def test_typescript_client_suite_passes() -> None:
    """GIVEN the TypeScript client and its node:test suite
    WHEN `npm test --prefix clients/typescript` runs (it builds, then tests against the stack)
    THEN it exits 0."""
    npm = shutil.which("npm")
    assert npm is not None, (
        "npm (Node 20 or newer) is needed to test clients/typescript: install Node.js, then "
        "scripts/test installs the package's node_modules (npm ci --prefix clients/typescript)"
    )
    assert (PACKAGE / "node_modules").is_dir(), (
        "clients/typescript/node_modules is missing: run scripts/test "
        "(or npm ci --prefix clients/typescript)"
    )
    try:
        done = subprocess.run(
            [npm, "test", "--prefix", "clients/typescript"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired as expired:
        output = _text(expired.stdout) + _text(expired.stderr)
        pytest.fail(f"npm test did not finish within {TIMEOUT_S} s:\n{output[-TAIL_CHARS:]}")
    output = done.stdout + done.stderr
    failed = "\n".join(line for line in output.splitlines() if line.startswith("not ok"))
    assert done.returncode == 0, (
        f"npm test exited {done.returncode}; failed:\n{failed}\n\n"
        f"the output's end:\n{output[-TAIL_CHARS:]}"
    )
