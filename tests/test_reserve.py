"""Nobody is invisible load: every registered home outside every released total (absent,
excluded) is reserved at its cap, and the adjusted plan keeps the grid under capacity whatever
those homes draw within their contracts.

The oracle is the homes' side: each counted home applies its own adjustment with the firmware's
``plan.apply_adjustment``; the homes outside draw their full cap in every frame.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from coordinator_kit import Homes, capacity_message, new_round, play

from backend.coordinator.record import round_record
from backend.coordinator.reserve import DEFAULT_RATED_W, HomeCaps
from hemsfw import adjust, plan, protocol

F = 8
FRAME_S = 900
HOMES = [f"h{i}" for i in range(9)]
ABSENT = "h9"  # registered, never reports
RATED = {**{h: 400 for h in HOMES}, ABSENT: 800}  # W: 100 Wh per frame, 200 for h9


async def day(homes: Homes, cap: list[int], rogue: list[str]) -> tuple[dict[str, Any],
                                                                      dict[str, list[int]]]:
    kit = new_round(None, capacity=capacity_message(F, cap), expected_homes=len(HOMES),
                    caps=HomeCaps(RATED))
    await play(kit, homes, mismatched=rogue)
    adjusted: dict[str, list[int]] = {}
    for topic, payload in kit.out.sent:
        if topic.startswith(protocol.t_adjust("")):
            _, _, _, moves, curtail, _ = adjust.parse_adjustment(protocol.decode(payload), F)
            h = topic[len(protocol.t_adjust("")):]
            adjusted[h] = plan.apply_adjustment([int(v) for v in homes.plans[h]], moves, curtail)
    return round_record(kit.round, "completed"), adjusted


def true_load_after(adjusted: dict[str, list[int]], outside: list[str]) -> np.ndarray:
    """The counted homes' adjusted plans plus every home outside at its cap, per frame."""
    load = np.sum([adjusted[h] for h in adjusted], axis=0)
    return load + sum(RATED[h] * FRAME_S // 3600 for h in outside)


def test_absent_and_excluded_homes_are_reserved_and_the_grid_stays_under_capacity() -> None:
    homes = Homes(HOMES, F, seed=11)  # plans 0..499 per frame: capped at 100 Wh here
    for h in HOMES:
        homes.plans[h] = np.minimum(homes.plans[h], 100)
    present = sum(homes.plans[h] for h in HOMES if h != "h4")
    cap = [int(present.max()) + 300] * F  # enough for the honest plans + both reserved homes
    rec, adjusted = asyncio.run(day(homes, cap, ["h4"]))
    assert [(e["home"], e["reason"]) for e in rec["excluded"]] == [("h4", "report_mismatch")]
    assert rec["reserve_homes"] == ["h4", ABSENT]
    assert rec["reserve_wh"] == [100 + 200] * F
    assert sorted(adjusted) == sorted(set(HOMES) - {"h4"})
    after = true_load_after(adjusted, ["h4", ABSENT])
    assert int(np.maximum(after - np.array(cap), 0).sum()) == 0


def test_a_tight_day_moves_the_honest_load_out_of_the_reserved_room() -> None:
    homes = Homes(HOMES, F, seed=12)
    for h in HOMES:
        homes.plans[h] = np.zeros(F, dtype=np.int64)
        homes.plans[h][2] = 60  # everybody in frame 2: 8 honest homes x 60 = 480 Wh
    cap = [600] * F  # with h4 and h9 reserved (300 Wh) frame 2 has room for 300 only
    rec, adjusted = asyncio.run(day(homes, cap, ["h4"]))
    assert rec["reserve_wh"] == [300] * F
    assert rec["residual_overload_wh"] == 0 and rec["moves"]
    # without the reserve nothing would have moved (480 <= 600); with it the honest plans plus
    # both outside homes at their caps fit in every frame
    after = true_load_after(adjusted, ["h4", ABSENT])
    assert int(np.maximum(after - np.array(cap), 0).sum()) == 0
    assert sum(after) - 300 * F == 8 * 60  # shifted, not curtailed


def test_the_registry_is_read_and_mask_broker_keys_are_refused(tmp_path: Path) -> None:
    p = tmp_path / "homes.json"
    p.write_text(json.dumps({"homes": {"a": {"rated_w": 3000}, "b": {}}}))
    caps = HomeCaps.load(p)
    assert caps.cap_wh("a", 900) == 750 and caps.cap_wh("b", 900) == DEFAULT_RATED_W // 4
    assert caps.cap_wh("a", 7) == 6  # rounded up: 3000 W x 7 s = 5.83 Wh
    p.write_text(json.dumps({"homes": {"a": {"key": "00" * 32}}}))
    with pytest.raises(ValueError, match="mask broker key"):
        HomeCaps.load(p)
    p.write_text(json.dumps({"homes": {"a": {"rated_w": -1}}}))
    with pytest.raises(ValueError, match="rated_w"):
        HomeCaps.load(p)


def test_a_bad_registry_is_refused_before_connecting(tmp_path: Path) -> None:
    reg = tmp_path / "homes.json"
    reg.write_text(json.dumps({"homes": {"h1": {"key": "00" * 32}}}))
    out = subprocess.run(
        [sys.executable, "-m", "backend.coordinator", "--day", "2026-11-27", "--start", "0",
         "--brokers", "mb1", "--homes", str(reg), "--port", "1",
         "--result", str(tmp_path / "r.json")],
        cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert len(out.stderr.strip().splitlines()) == 1 and "mask broker key" in out.stderr
    assert not (tmp_path / "r.json").exists()
