"""The lab report's figures: matplotlib (Agg, no pyplot state) drawn to inline SVG strings.

Every figure is made from the lab summary alone (summary.py), with text drawn as paths so the
SVG needs no font and no network.  `group_after` applies the moves exactly as the adjustment
engine does (backend/coordinator/adjust/model.py: simultaneously, on the original totals).
"""

from __future__ import annotations

import io
import re
from collections.abc import Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from numpy.typing import NDArray

from backend.coordinator.adjust import KEEP_SCALE

BLUE, GREY, RED, GREEN, INK = "#1f6feb", "#8c959f", "#cf222e", "#2da44e", "#24292f"
PLANNED, MOVED = "#d0d7de", "#ff8182"
Array = NDArray[np.int64]


def to_svg(fig: Figure, label: str) -> str:
    """The figure as an <svg> element that scales to its container's width."""
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight", metadata={"Date": None})
    text = buf.getvalue()
    text = text[text.index("<svg"):]
    head, rest = text.split(">", 1)
    head = re.sub(r'\s(width|height)="[^"]*"', "", head)
    return f'{head} class="plot" role="img" aria-label="{label}">{rest}'


def _hours_axis(ax: Any, frames: int, frame_s: int) -> None:
    day_h = frames * frame_s / 3600
    step = 3 if day_h >= 12 else 1
    ticks = np.arange(0, day_h + 1e-9, step)
    ax.set_xticks(ticks)
    ax.set_xticklabels([f"{int(t):02d}:00" for t in ticks])
    ax.set_xlim(0, day_h)


def _style(ax: Any) -> None:
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    ax.tick_params(colors=INK, labelsize=9)
    ax.grid(axis="y", alpha=0.25)


def _steps(v: Sequence[int]) -> Array:
    """Values for a steps-post line over frame edges (one more than the frames)."""
    a = np.asarray(v, dtype=np.int64)
    return np.append(a, a[-1:]) if len(a) else a


def capacity_figure(s: dict[str, Any]) -> str:
    frames, frame_s = int(s["frames"]), int(s["frame_s"])
    x = np.arange(frames + 1) * frame_s / 3600
    cap, before, after = (_steps(s[k]) for k in
                          ("capacity_wh", "true_load_wh", "coordinator_load_after_wh"))
    metered = _steps(s["metered_load_after_wh"]) if s.get("metered_load_after_wh") else None
    fig = Figure(figsize=(11, 3.8))
    ax = fig.add_subplot()
    ax.fill_between(x, 0, before, step="post", color=GREY, alpha=0.12, linewidth=0)
    over = np.flatnonzero(before[:-1] > cap[:-1])
    ax.bar(x[over], (before - cap)[over], bottom=cap[over], width=frame_s / 3600, align="edge",
           color=RED, alpha=0.3, linewidth=0, label="overload before")
    ax.step(x, before, where="post", color=GREY, lw=1.4, label="load before (the homes' plans)")
    ax.step(x, after, where="post", color=BLUE, lw=2.0,
            label="decided (the relays' energy budgets)")
    if metered is not None:
        ax.step(x, metered, where="post", color=GREEN, lw=1.6,
                label="metered (what the homes drew)")
    ax.step(x, cap, where="post", color=INK, lw=1.2, ls="--", label="capacity")
    _hours_axis(ax, frames, frame_s)
    ax.set_ylabel("Wh per frame", color=INK)
    ax.set_ylim(bottom=0)
    _style(ax)
    ax.legend(loc="lower left", bbox_to_anchor=(0, 1.0), ncol=5, fontsize=9, frameon=False)
    return to_svg(fig, "capacity and planned, decided and metered load per frame")


def group_after(totals: Array, moves: Sequence[Sequence[Any]], curtail: Sequence[Sequence[Any]],
                ids: list[str]) -> Array:
    """Group totals after the moves and the curtailment (the engine's semantics)."""
    row = {g: i for i, g in enumerate(ids)}
    after = totals.copy()
    for g, f, t in moves:
        after[row[g], f] -= totals[row[g], f]
        after[row[g], t] += totals[row[g], f]
    for c in curtail:  # [group, frame, keep]: keep/KEEP_SCALE of the cell stays
        g, f = c[0], c[1]
        after[row[g], f] = after[row[g], f] * c[2] // KEEP_SCALE if len(c) > 2 else 0
    return after


def group_totals(s: dict[str, Any]) -> tuple[list[str], Array, Array] | None:
    groups = [g for g in s["groups"] if g.get("total_wh") is not None]
    if not groups or len(groups) != len(s["groups"]):
        return None
    ids = [g["id"] for g in groups]
    before = np.array([g["total_wh"] for g in groups], dtype=np.int64)
    return ids, before, group_after(before, s["moves"], s.get("curtail", []), ids)


def heatmap_figure(s: dict[str, Any]) -> str | None:
    got = group_totals(s)
    if got is None:
        return None
    ids, before, after = got
    frames, frame_s = int(s["frames"]), int(s["frame_s"])
    fh = frame_s / 3600
    by_id = {g["id"]: g for g in s["groups"]}
    labels = [f"{g}  ·  {by_id[g]['size']} homes  ·  m={by_id[g]['magnification']}" for g in ids]
    n = len(ids)
    fig = Figure(figsize=(11, 1.6 + 0.62 * n))
    axes = fig.subplots(2, 1, sharex=True)
    vmax = max(1, int(max(before.max(), after.max())))
    row = {g: i for i, g in enumerate(ids)}
    im = None
    for ax, data, title in ((axes[0], before, "before: the group totals the coordinator "
                             "computed from masked plans and mask sums"),
                            (axes[1], after, "after: the same totals with the moves applied")):
        im = ax.imshow(data, aspect="auto", cmap="YlOrRd", vmin=0, vmax=vmax,
                       interpolation="nearest", extent=(0, frames * fh, n - 0.5, -0.5))
        ax.set_yticks(range(n))
        ax.set_yticklabels(labels, fontsize=8.5)
        ax.set_title(title, loc="left", fontsize=9.5, color=INK)
        ax.tick_params(colors=INK, labelsize=8.5)
        for side in ("top", "right"):
            ax.spines[side].set_visible(False)
    for g, f, t in s["moves"]:
        y = row[g]
        axes[0].annotate("", xy=((t + 0.5) * fh, y), xytext=((f + 0.5) * fh, y),
                         arrowprops={"arrowstyle": "-|>", "color": BLUE, "lw": 1.3,
                                     "shrinkA": 0, "shrinkB": 0, "mutation_scale": 8})
    _hours_axis(axes[1], frames, frame_s)
    assert im is not None
    cb = fig.colorbar(im, ax=list(axes), fraction=0.025, pad=0.01)
    cb.set_label("Wh per frame", fontsize=9, color=INK)
    cb.ax.tick_params(labelsize=8)
    return to_svg(fig, "group totals per frame as a heatmap, before and after the moves")


def _runs(on: Sequence[int]) -> list[tuple[int, int]]:
    """(start, length) of each run of truthy frames."""
    out: list[tuple[int, int]] = []
    start = None
    for k, v in enumerate([*on, 0]):
        if v and start is None:
            start = k
        elif not v and start is not None:
            out.append((start, k - start))
            start = None
    return out


def relay_figure(s: dict[str, Any]) -> str | None:
    tl = s.get("relay_timelines") or []
    if not tl:
        return None
    frames, frame_s = int(s["frames"]), int(s["frame_s"])
    fh = frame_s / 3600
    n = len(tl)
    fig = Figure(figsize=(11, 1.1 + 0.46 * n))
    ax = fig.add_subplot()

    def bars(on: Sequence[int], y: float, h: float, color: str) -> None:
        ax.broken_barh([(a * fh, b * fh) for a, b in _runs(on)], (y, h), facecolors=color)

    for i, t in enumerate(tl):
        plan, adj = t["plan_wh"], t["adjusted_wh"]
        bars([1 if p > 0 else 0 for p in plan], i - 0.38, 0.3, PLANNED)
        bars([1 if a < p else 0 for p, a in zip(plan, adj, strict=True)], i - 0.38, 0.3, MOVED)
        bars(t["relay_on"], i - 0.04, 0.38, GREEN)
        bars([1 if r and a > p else 0 for r, p, a in zip(t["relay_on"], plan, adj, strict=True)],
             i - 0.04, 0.38, BLUE)
    ax.set_yticks(range(n))
    ax.set_yticklabels([f"{t['home']}  ·  {t['group']}  ·  m={t['magnification']}" for t in tl],
                       fontsize=8.5)
    ax.set_ylim(n - 0.5, -0.6)
    _hours_axis(ax, frames, frame_s)
    _style(ax)
    ax.grid(axis="x", alpha=0.25)
    ax.grid(axis="y", visible=False)
    handles = [ax.bar(0, 0, color=c)[0] for c in (PLANNED, MOVED, GREEN, BLUE)]
    ax.legend(handles, ["planned (the home's own plan)", "planned, moved away",
                        "relay on", "relay on, load moved here"],
              loc="lower left", bbox_to_anchor=(0, 1.0), ncol=4, fontsize=9, frameon=False)
    return to_svg(fig, "relay timelines for a sample of homes")


def secs(v: float) -> str:
    return f"{v:.2f} s" if v >= 1 else f"{v * 1000:.0f} ms"


def timings_figure(s: dict[str, Any]) -> str | None:
    lab = {k: v for k, v in (s.get("timings_s") or {}).items() if k != "total"}
    coord = s.get("coordinator_timings_s") or {}
    if not lab:
        return None
    panels = [("lab (wall clock, s)", lab)]
    if coord:
        panels.append(("coordinator's round (s)", {k.removesuffix("_s"): v
                                                   for k, v in coord.items()}))
    fig = Figure(figsize=(11, 0.2 + 1.1 * len(panels)))
    axes = fig.subplots(len(panels), 1, squeeze=False)[:, 0]
    fig.subplots_adjust(hspace=1.1)
    colors = ["#0969da", "#8250df", "#bf8700", "#1a7f37", "#cf222e", "#57606a"]
    for ax, (title, d) in zip(axes, panels, strict=True):
        left = 0.0
        for i, (k, v) in enumerate(d.items()):
            ax.barh(0, v, left=left, color=colors[i % len(colors)], height=0.6,
                    label=f"{k} {secs(v)}")
            left += v
        ax.set_yticks([])
        ax.set_xlim(0, max(left, 1e-3))
        ax.set_title(title, loc="left", fontsize=9.5, color=INK)
        ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8.5, frameon=False)
        _style(ax)
        ax.grid(axis="x", alpha=0.25)
    return to_svg(fig, "where the time went")
