"""No secret is committed: every file git tracks is scanned for credential shapes."""

from __future__ import annotations

import re
import subprocess

from shared.config import REPOSITORY_ROOT

# Real credential shapes, not prefixes: tests build fake keys at run time ("sk-or-v1-" + "d" * 64)
# so that the repository holds no literal one, and this scan can be strict.
SECRET_SHAPES = {
    "OpenRouter key": re.compile(r"sk-or-v1-[0-9a-f]{64}"),
    "our service token": re.compile(r"ora_st_[A-Za-z0-9]{30,}"),
    "AWS access key": re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"),
    "private key": re.compile(r"-----BEGIN (?:RSA |EC |OPENSSH )?PRIVATE KEY-----"),
    "Supabase secret key": re.compile(r"sb_secret_[A-Za-z0-9_\-]{20,}"),
    "signed JWT": re.compile(
        r"eyJ[A-Za-z0-9_\-]{10,}\.eyJ[A-Za-z0-9_\-]{10,}\.[A-Za-z0-9_\-]{20,}"
    ),
}


def tracked_files() -> list[str]:
    listed = subprocess.run(
        ["git", "ls-files", "-z"],  # noqa: S607
        cwd=REPOSITORY_ROOT,
        capture_output=True,
        check=True,
    )
    return [name for name in listed.stdout.decode().split("\0") if name]


def test_no_tracked_file_holds_a_credential() -> None:
    files = tracked_files()
    assert len(files) > 100  # the scan saw the repository, not an empty listing
    found = []
    for name in files:
        path = REPOSITORY_ROOT / name
        if not path.is_file():
            continue
        text = path.read_bytes().decode("utf-8", errors="ignore")
        for kind, shape in SECRET_SHAPES.items():
            if shape.search(text):
                found.append(f"{name}: {kind}")
    assert found == []


def test_the_scan_would_see_one() -> None:
    fake = "sk-or-v1-" + "0123456789abcdef" * 4
    assert SECRET_SHAPES["OpenRouter key"].search(f"key = '{fake}'")
    assert SECRET_SHAPES["AWS access key"].search("AKIA" + "ABCDEFGHIJKLMNOP")
