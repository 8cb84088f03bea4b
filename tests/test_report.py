"""The lab report: sections, self-containment, the move semantics of the heatmap, and the page as
headless Chromium renders it (screenshot + DOM)."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from backend.lab import plots, report

FRAMES, FRAME_S = 96, 900
SECTIONS = ("summary", "checks", "capacity", "metering", "heatmap", "moves", "relays", "groups",
            "timings", "details")
HEADINGS = ("Summary", "Capacity and load per frame", "Metered energy", "Group totals per frame",
            "Moves", "Relay timelines", "Released and refused groups", "Timings", "Details")


def _home_plan(i: int) -> list[int]:
    plan = [0] * FRAMES
    start = 72 + (i * 5) % 14  # evening, 18:00-21:15
    for k in range(start, min(FRAMES, start + 4 + i % 3)):
        plan[k] = 300 + 40 * (i % 5)
    plan[24 + i % 6] = 500  # a morning block
    return plan


def make_summary(failures: list[str] | None = None) -> dict[str, Any]:
    """A lab summary with the shape summary.summarise gives (12 homes, 3 groups, 4 moves)."""
    homes = [f"h{i + 1:03d}" for i in range(12)]
    plans = {h: _home_plan(i) for i, h in enumerate(homes)}
    groups = []
    for gi, m in enumerate((1, 2, 4)):
        members = homes[gi::3]
        total = np.sum([plans[h] for h in members], axis=0).astype(np.int64)
        groups.append({"id": f"r1g{gi + 1}", "size": len(members), "magnification": m,
                       "members": members, "total_wh": total.tolist()})
    busy = [int(np.argmax(g["total_wh"])) for g in groups]
    moves = [["r1g2", busy[1], busy[1] + 1], ["r1g3", busy[2], busy[2] + 3],
             ["r1g3", busy[2] + 1, busy[2] + 2], ["r1g3", busy[2] + 2, busy[2] + 3]]
    ids = [g["id"] for g in groups]
    before = np.array([g["total_wh"] for g in groups], dtype=np.int64)
    after = plots.group_after(before, moves, [], ids)
    load_b, load_a = before.sum(axis=0), after.sum(axis=0)
    cap = int(load_b.max() * 0.9)
    over = lambda v: int(np.maximum(v - cap, 0).sum())  # noqa: E731
    timelines = []
    for g, row in zip(groups, after, strict=True):
        for h in g["members"][:3]:
            plan = np.array(plans[h])
            adj = plots.group_after(plan[None, :], [m for m in moves if m[0] == g["id"]], [],
                                    [g["id"]])[0]
            timelines.append({"home": h, "group": g["id"], "magnification": g["magnification"],
                              "plan_wh": plan.tolist(), "adjusted_wh": adj.tolist(),
                              "relay_on": (adj > 0).astype(int).tolist()})
        assert row.sum() == before[ids.index(g["id"])].sum()
    return {
        "homes": 12, "frame_s": FRAME_S, "frame_real_s": 0.2, "seed": 1, "k": 3,
        "day": "2030-01-02", "capacity_fraction": 0.9, "solver": "heuristic", "frames": FRAMES,
        "mask_brokers": 1, "capacity_wh": [cap] * FRAMES,
        "true_load_wh": load_b.tolist(), "coordinator_load_before_wh": load_b.tolist(),
        "coordinator_load_after_wh": load_a.tolist(), "relay_load_after_wh": load_a.tolist(),
        "metered_load_after_wh": (load_a * 9 // 10).tolist(), "metered_uncounted_wh": [0] * FRAMES,
        "meter_pulse_wh": 1.0, "over_budget": [], "homes_counted": 12,
        "overload_before_wh": over(load_b), "overload_after_wh": over(load_a),
        "curtailed_wh": 0, "moved_wh": 1234, "regroup_rounds": 1, "solve_status": "heuristic",
        "groups": groups, "moves": moves, "curtail": [],
        "released_groups": [{"id": g["id"], "broker": "mb1", "size": g["size"]} for g in groups],
        "refused_groups": [{"id": "r1g1", "broker": "mb1", "reason": "missing_members",
                            "missing": ["h001"]}],
        "excluded_homes": [], "relay_mismatches": 0, "relay_timelines": timelines,
        "coordinator_rejections": {},
        "coordinator_timings_s": {"collect_s": 0.07, "sums_s": 0.05, "solve_s": 0.07,
                                  "publish_s": 0.003},
        "mask_broker_stats": {"mb1": {"masks": {"accepted_total": 12}, "rejections": {},
                                      "groups": {"requests": 2, "released": 3,
                                                 "refused_by_reason": {"missing_members": 1}},
                                      "atoms": {"min_size": 4}}},
        "timings_s": {"services": 0.5, "fleet": 0.7, "round": 0.6, "day": 20.9, "total": 22.7},
        "failures": failures or [], "lab_dir": "/tmp/hems-lab-test", "report": None,
    }


class _Outline(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.ids: set[str] = set()
        self.h2: list[str] = []
        self.tags: dict[str, int] = {}
        self._in_h2 = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags[tag] = self.tags.get(tag, 0) + 1
        for k, v in attrs:
            if k == "id" and v:
                self.ids.add(v)
        if tag == "h2":
            self._in_h2 = True
            self.h2.append("")

    def handle_endtag(self, tag: str) -> None:
        if tag == "h2":
            self._in_h2 = False

    def handle_data(self, data: str) -> None:
        if self._in_h2:
            self.h2[-1] += data


def outline(html: str) -> _Outline:
    o = _Outline()
    o.feed(html)
    return o


def test_report_has_every_section_and_needs_no_network() -> None:
    html = report.render(make_summary())
    o = outline(html)
    assert set(SECTIONS) <= o.ids
    for h in HEADINGS:
        assert any(x.startswith(h) for x in o.h2), (h, o.h2)
    assert o.tags.get("svg", 0) >= 4  # capacity, heatmap, relays, timings
    assert "failures" not in o.ids and "all checks passed" in html
    # Nothing is fetched: no script, stylesheet link, image URL, font or import.
    low = html.lower()
    for bad in ("<script", "<link", "<iframe", "@import", "url(http", 'src="http', "src='http",
                'href="http'):
        assert bad not in low, bad
    # The refusal is listed with its reason; the moves table has every move.
    assert "missing_members" in html
    assert html.count("<tr>") >= 4 + 3 + 1


def test_report_shows_failures_first() -> None:
    html = report.render(make_summary(failures=["relay_load_after_wh != coordinator_load_"
                                                "after_wh"]))
    o = outline(html)
    assert "failures" in o.ids
    assert html.index('id="failures"') < html.index('id="summary"')
    assert "FAILED" in html and "relay_load_after_wh" in html


def test_group_after_applies_moves_simultaneously_on_the_original_totals() -> None:
    totals = np.array([[0, 5, 7, 0, 0], [1, 1, 1, 1, 1]], dtype=np.int64)
    # A chain: frame 1 -> 2 and frame 2 -> 3 (moves the original 7, not 5 + 7).
    after = plots.group_after(totals, [["a", 1, 2], ["a", 2, 3]], [["b", 4]], ["a", "b"])
    assert after.tolist() == [[0, 0, 5, 7, 0], [1, 1, 1, 1, 0]]


def test_write_is_atomic_and_creates_the_directory(tmp_path: Path) -> None:
    out = report.write(make_summary(), tmp_path / "deep" / "report.html")
    assert out.read_text().startswith("<!doctype html>")
    assert [p.name for p in out.parent.iterdir()] == ["report.html"]


# ------------------------------------------------------------------ headless Chromium

CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--hide-scrollbars")


def _chromium() -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed (./run test installs it)")
        pytest.skip("chromium is not installed (./run test installs it)")
    return exe


def _run_chromium(exe: str, *args: str) -> subprocess.CompletedProcess[str]:
    with tempfile.TemporaryDirectory(prefix="hems-chromium-") as profile:
        return subprocess.run([exe, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args],
                              capture_output=True, text=True, timeout=180)


def test_report_renders_in_headless_chromium(tmp_path: Path) -> None:
    from PIL import Image

    exe = _chromium()
    page = report.write(make_summary(), tmp_path / "report.html")
    shot = tmp_path / "report.png"
    r = _run_chromium(exe, f"--screenshot={shot}", "--window-size=1280,4200", page.as_uri())
    assert r.returncode == 0 and shot.exists(), r.stderr[-2000:]
    dom = _run_chromium(exe, "--dump-dom", page.as_uri())
    assert dom.returncode == 0, dom.stderr[-2000:]

    o = outline(dom.stdout)
    assert set(SECTIONS) <= o.ids, o.ids
    for h in HEADINGS:
        assert any(x.startswith(h) for x in o.h2), (h, o.h2)
    assert o.tags.get("svg", 0) >= 4

    img = Image.open(shot).convert("RGB")
    assert img.size == (1280, 4200)
    px = np.asarray(img, dtype=np.int16).reshape(-1, 3)
    # Not a blank page: plenty of ink, and the figures' colours are on it (the blue load line,
    # the heatmap's reds, the relays' green).
    assert np.count_nonzero(px.sum(axis=1) < 600) > 20_000

    def near(rgb: tuple[int, int, int], tol: int = 40) -> int:
        return int(np.count_nonzero(np.abs(px - np.array(rgb)).max(axis=1) < tol))

    assert near((0x1F, 0x6F, 0xEB)) > 500, "no blue line"
    assert near((0x2D, 0xA4, 0x4E)) > 500, "no relay bars"
    assert near((0xE3, 0x4A, 0x33), 60) > 200, "no heatmap"


def test_report_lists_homes_metered_over_their_budget() -> None:
    s = make_summary()
    assert 'id="over-budget"' in report.render(s)   # none: said so
    s["over_budget"] = [{"home": "h007", "frame": 70, "metered_wh": 130, "budget_wh": 120}]
    s["metered_load_after_wh"] = s["coordinator_load_after_wh"]
    html = report.render(s)
    assert 'id="metering"' in html and "h007" in html and "Homes over their budget" in html
    assert html.count('class="bad"') >= 1      # the summary's metering check fails
