"""Run the MicroPython-subset test suite (tests/micropython/) under both interpreters.

The firmware core ships on the MicroPython VM and is imported by the CPython backend, so the same
test files must pass on both (DESIGN.md decision 6).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
RUN_ALL = REPO / "tests" / "micropython" / "run_all.py"
MICROPYTHON = REPO / ".venv" / "bin" / "micropython"


def _run(cmd: list[str]) -> str:
    env = dict(os.environ)
    env["MICROPYPATH"] = str(REPO / "firmware" / "micropython")
    p = subprocess.run([*cmd, str(RUN_ALL)], cwd=REPO, env=env, capture_output=True,
                       text=True, timeout=120)
    out = p.stdout + p.stderr
    assert p.returncode == 0, out
    assert " passed, 0 failed" in out, out
    return out


def test_core_under_micropython() -> None:
    if not MICROPYTHON.exists():
        pytest.fail("no MicroPython unix port at .venv/bin/micropython (run ./run setup)")
    out = _run([str(MICROPYTHON)])
    assert "(micropython)" in out


def test_core_under_cpython() -> None:
    out = _run([sys.executable])
    assert "(cpython)" in out
