"""The lab report: sections, self-containment, the move semantics of the heatmap, and the page as
headless Chromium renders it (screenshot + DOM)."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from report_kit import make_summary

from backend.lab import plots, report

SECTIONS = ("summary", "checks", "capacity", "metering", "heatmap", "moves", "relays", "groups",
            "timings", "details")
HEADINGS = ("Summary", "Capacity and load per frame", "Metered energy", "Group totals per frame",
            "Moves", "Relay timelines", "Released and refused groups", "Timings", "Details")


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
