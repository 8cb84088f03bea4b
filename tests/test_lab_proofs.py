"""`hems lab --proofs`: real firmware homes (micropython) prove their plans, the coordinator and
the mask broker verify every one of them, and the day runs as without proofs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.integration


def test_every_firmware_home_proves_its_plan_and_is_served(tmp_path: Path) -> None:
    out = tmp_path / "lab"
    r = subprocess.run(
        [str(Path(sys.prefix) / "bin" / "hems"), "lab", "--homes", "6", "--seed", "2",
         "--json", "--no-report", "--proofs", "--out", str(out)],
        capture_output=True, text=True, timeout=300, cwd=REPO, env=dict(os.environ))
    assert r.returncode == 0, r.stderr[-3000:]
    s = json.loads(r.stdout)
    assert s["failures"] == [] and s["excluded_homes"] == []
    assert sum(g["size"] for g in s["groups"]) == 6
    journals = (out / "state-coordinator").glob("round-*.jsonl")
    verdicts = [v for p in journals for v in map(json.loads, p.read_text().splitlines())
                if v.get("kind") == "proofs"]
    assert verdicts and all(v["failed"] == {} and v["verified"] == 6 for v in verdicts)
