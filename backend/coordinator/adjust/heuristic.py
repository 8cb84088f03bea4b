"""Fast adjustment heuristic: LP-guided rounding, chain repair, local search.

1. **Guidance.**  The linear relaxation of the exact model aggregates without
   loss into a tiny LP over *magnification classes* (all groups with the same
   magnification share a window): flow ``y[c, f, t]`` of class ``c`` from
   frame ``f`` to ``t`` is bounded by the class's load in ``f``.  It is
   solved lexicographically like the exact model (overload, then moved energy
   (+ target deviation)) in milliseconds whatever the number of groups.  It
   says where each frame's excess should go, including chains through
   neighbouring overloaded frames; its first stage is a valid lower bound on
   the overload (reported as ``best_bound``), its second a lower bound on the
   moved energy at that overload (:func:`lower_bounds`).
2. **Rounding.**  Frames are visited in topological order of the LP flow
   (time order for "defer").  A frame whose current load (original plus what
   earlier frames sent) exceeds its planned level sheds whole cells: a
   subset of its staying cells covering the excess with little overshoot
   (exact enumeration up to 12 cells, else best-fit / first-fit-decreasing
   with drop and 1-for-1 swap improvement), placed best-fit-decreasing into
   the targets' room (real spare capacity for sinks, the LP flow for frames
   that pass load on).  What rounding leaves over is re-planned with a fresh
   LP on the remaining cells (up to four times, kept only if it helps).
3. **Chain repair.**  For each overloaded frame (worst first) the least-energy
   chain of steps is searched (label-correcting Dijkstra over frames); a step
   sheds load from the frame the previous step filled by moving a staying
   cell, re-targeting or undoing a move into that frame, or swapping a move
   out of it for a larger cell (fine-grained).  Chains that remove the whole
   excess are preferred, then partial ones.
4. **Local search** (all moves accepted only if the lexicographic objective
   (overload, energy (+ target term), moves) improves): re-plan the moves
   out of one frame against the current loads; ruin-and-recreate the moves
   out of a frame and of the frames it fed (three levels, at most 24 moves);
   undo one move (largest first) and repair.  Rounds repeat until nothing
   improves, the plan provably is within 0.05 % of the LP energy bound at the
   LP overload bound, or a deterministic work budget is spent
   (``_WORK_LIMIT`` units, about 0.2-0.4 s on a 2-core machine).

Deterministic: no clock or randomness decides anything; ties go to the lower
frame, then the lower group index.
"""

from __future__ import annotations

import heapq
import time
from dataclasses import dataclass, field

import highspy
import numpy as np
import numpy.typing as npt

from .highs import new_highs, set_lp_time_limit, to_csc
from .model import FloatArray, IntArray, Move, Problem, Result, finish, window_offsets

__all__ = ["lower_bounds", "solve_heuristic"]

_LAST_WORK = [0]  # work units spent by the last solve (for calibration)

_TOL = 0.5  # Wh: flows below this are zero
# Effort bound of the improvement phases, in work units (one cell move ~ 1;
# a chain-search expansion ~ 5-20).  Deterministic, unlike a clock.
_WORK_LIMIT = 40_000
#: rounding (the first plan) may run this long past the deadline when a solve starts after it
#: (a regrouping re-solve late in a round): a plan that moves something, within a bound
ROUND_GRACE_S = 0.1
#: a guidance LP gets at least this long (milliseconds on a quiet machine; a loaded one can
#: need more, and without its guidance rounding moves nothing)
LP_MIN_S = 0.2


@dataclass
class _State:
    totals: IntArray  # (G, F)
    cap: IntArray  # (F,)
    cls: IntArray  # (G,) class index, -1 = cannot move
    offsets: list[list[int]]  # per class
    dest: IntArray  # (G, F) target frame, -1 = stays
    load: IntArray  # (F,)
    target: FloatArray | None
    weight: float
    energy: int = 0
    n_moves: int = 0
    work: int = 0  # deterministic effort counter (see _WORK_LIMIT)
    work_limit: int = 0
    deadline: float = float("inf")  # time.monotonic() value: stop improving at this time
    round_until: float = float("inf")  # rounding stops here: the deadline, or ROUND_GRACE_S
    _avail: dict[tuple[int, int], tuple[IntArray, IntArray]] = field(default_factory=dict)
    _targets: dict[int, list[tuple[int, int]]] = field(default_factory=dict)
    _incoming: dict[int, dict[tuple[int, int], int]] = field(default_factory=dict)
    _inc_sorted: dict[int, tuple[IntArray, IntArray, IntArray]] = field(default_factory=dict)
    _outgoing: dict[int, dict[int, int]] = field(default_factory=dict)
    _out_sorted: dict[int, tuple[IntArray, IntArray, IntArray]] = field(default_factory=dict)
    _offmask: list[npt.NDArray[np.bool_]] = field(default_factory=list)

    # ----------------------------------------------------------------------
    def over_delta(self, f: int, delta: int) -> int:
        lf = int(self.load[f])
        c = int(self.cap[f])
        return max(0, lf + delta - c) - max(0, lf - c)

    def move(self, g: int, f: int, t: int) -> None:
        s = int(self.totals[g, f])
        self.dest[g, f] = t
        self.load[f] -= s
        self.load[t] += s
        self.energy += s
        self.n_moves += 1
        self._avail.pop((f, int(self.cls[g])), None)
        self._incoming.setdefault(t, {})[(g, f)] = s
        self._inc_sorted.pop(t, None)
        self._outgoing.setdefault(f, {})[g] = t
        self._out_sorted.pop(f, None)
        self.work += 1

    def unmove(self, g: int, f: int) -> None:
        t = int(self.dest[g, f])
        s = int(self.totals[g, f])
        self.dest[g, f] = -1
        self.load[f] += s
        self.load[t] -= s
        self.energy -= s
        self.n_moves -= 1
        self._avail.pop((f, int(self.cls[g])), None)
        del self._incoming[t][(g, f)]
        self._inc_sorted.pop(t, None)
        del self._outgoing[f][g]
        self._out_sorted.pop(f, None)
        self.work += 1

    def restore(self, dest: IntArray) -> None:
        """Return to the plan ``dest`` (a copy of an earlier ``self.dest``)."""
        for g, f in zip(*np.nonzero(self.dest != dest), strict=True):
            if self.dest[g, f] >= 0:
                self.unmove(int(g), int(f))
        for g, f in zip(*np.nonzero(self.dest != dest), strict=True):
            self.move(int(g), int(f), int(dest[g, f]))

    def overload(self) -> int:
        return int(np.maximum(self.load - self.cap, 0).sum())

    def key(self) -> tuple[int, float, int]:
        """Lexicographic objective: overload, energy (+ target term), moves."""
        second = float(self.energy)
        if self.target is not None and self.weight > 0:
            second += self.weight * float(np.abs(self.load - self.target).sum())
        return (self.overload(), second, self.n_moves)

    def avail(self, f: int, c: int) -> tuple[IntArray, IntArray]:
        """(sizes ascending, groups) of the staying non-empty cells of class
        ``c`` in frame ``f`` (ties by group index)."""
        key = (f, c)
        v = self._avail.get(key)
        if v is None:
            col = self.totals[:, f]
            gs = np.flatnonzero((col > 0) & (self.dest[:, f] < 0) & (self.cls == c))
            s = col[gs]
            o = np.lexsort((gs, s))
            v = (s[o], gs[o])
            self._avail[key] = v
        return v

    def incoming(self, v: int) -> tuple[IntArray, IntArray, IntArray]:
        """(sizes ascending, groups, source frames) of the moves into ``v``."""
        r = self._inc_sorted.get(v)
        if r is None:
            items = sorted((s, g, u) for (g, u), s in self._incoming.get(v, {}).items())
            arr = np.asarray(items, dtype=np.int64).reshape(-1, 3)
            r = (arr[:, 0], arr[:, 1], arr[:, 2])
            self._inc_sorted[v] = r
        return r

    def outgoing(self, v: int) -> tuple[IntArray, IntArray, IntArray]:
        """(sizes, groups, target frames) of the moves out of ``v``, by group."""
        r = self._out_sorted.get(v)
        if r is None:
            items = sorted(self._outgoing.get(v, {}).items())
            gs = np.asarray([g for g, _ in items], dtype=np.int64)
            ts = np.asarray([t for _, t in items], dtype=np.int64)
            r = (self.totals[gs, v] if gs.shape[0] else np.zeros(0, dtype=np.int64), gs, ts)
            self._out_sorted[v] = r
        return r

    def reaches(self, c: int, d: IntArray) -> npt.NDArray[np.bool_]:
        """Whether class ``c`` may move by the offsets ``d``."""
        if not self._offmask:
            n = int(self.load.shape[0])
            for offs in self.offsets:
                m = np.zeros(2 * n + 1, dtype=bool)
                o = np.asarray(offs, dtype=np.int64)
                # a window may reach past a short day (m = 4 on 2 frames): those offsets lead
                # nowhere, and a frame difference d is always within -(n-1)..n-1
                m[o[np.abs(o) <= n] + n] = True
                self._offmask.append(m)
        return self._offmask[c][d + int(self.load.shape[0])]

    def spent(self) -> bool:
        return self.work >= self.work_limit or time.monotonic() >= self.deadline

    def lp_time(self) -> float:
        """Time limit of one guidance LP: what is left before the deadline (at least
        ``LP_MIN_S``, so that a solve whose deadline has passed still gets its guidance and a
        plan that moves)."""
        return max(LP_MIN_S, min(10.0, self.deadline - time.monotonic()))

    def window_of(self, g: int, u: int) -> list[int]:
        n = int(self.load.shape[0])
        return [u + d for d in self.offsets[int(self.cls[g])] if 0 <= u + d < n]

    def targets(self, f: int) -> list[tuple[int, int]]:
        """(class, frame) pairs reachable from frame ``f``."""
        v = self._targets.get(f)
        if v is None:
            n = int(self.load.shape[0])
            v = [(c, f + d) for c, offs in enumerate(self.offsets) for d in offs
                 if 0 <= f + d < n]
            self._targets[f] = v
        return v


# --------------------------------------------------------------------------
# 1. LP guidance
# --------------------------------------------------------------------------


@dataclass
class _Guide:
    flow: FloatArray  # (C, F, F)
    level: FloatArray  # (F,) planned post-move level per frame
    bound: float | None  # LP lower bound on the overload
    order: list[int]  # frame processing order
    energy_bound: float | None = None  # LP lower bound on moved energy at overload <= bound
    planned: FloatArray | None = None  # LP post-move load per frame


def _guide(problem: Problem, st: _State, classes: list[int]) -> _Guide:
    f_n = problem.n_frames
    n_c = len(classes)
    load = st.load.astype(np.float64)
    cap = st.cap.astype(np.float64)
    flow = np.zeros((n_c, f_n, f_n))
    fallback = _Guide(flow=flow, level=np.maximum(cap, load), bound=None,
                      order=list(range(f_n)))
    # class loads per frame (cells not moved yet)
    staying = np.where(st.dest < 0, st.totals, 0)
    mass = np.zeros((n_c, f_n))
    for c in range(n_c):
        mass[c] = staying[st.cls == c].sum(axis=0)
    vc: list[IntArray] = []
    vf: list[IntArray] = []
    vt: list[IntArray] = []
    for c in range(n_c):
        for d in st.offsets[c]:
            fr = np.arange(max(0, -d), min(f_n, f_n - d), dtype=np.int64)
            fr = fr[mass[c, fr] > 0]
            vc.append(np.full(fr.shape[0], c, dtype=np.int64))
            vf.append(fr)
            vt.append(fr + d)
    if not vc:
        return fallback
    yc = np.concatenate(vc)
    yf = np.concatenate(vf)
    yt = np.concatenate(vt)
    ny = int(yc.shape[0])
    if ny == 0:
        return fallback
    target = st.target
    n_col = ny + f_n + (2 * f_n if target is not None else 0)
    jy = np.arange(ny, dtype=np.int64)
    fr_all = np.arange(f_n, dtype=np.int64)
    rows: list[IntArray] = [yf, yt, fr_all]
    cols: list[IntArray] = [jy, jy, ny + fr_all]
    vals: list[FloatArray] = [-np.ones(ny), np.ones(ny), -np.ones(f_n)]
    row_lo: list[FloatArray] = [np.full(f_n, -np.inf)]
    row_hi: list[FloatArray] = [cap - load]
    n_row = f_n
    cf = yc * f_n + yf
    uniq, inv = np.unique(cf, return_inverse=True)
    rows.append(n_row + inv.astype(np.int64))
    cols.append(jy)
    vals.append(np.ones(ny))
    row_lo.append(np.full(uniq.shape[0], -np.inf))
    row_hi.append(mass[uniq // f_n, uniq % f_n])
    n_row += int(uniq.shape[0])
    if target is not None:
        base = n_row
        rows += [base + yf, base + yt, base + fr_all, base + fr_all]
        cols += [jy, jy, ny + f_n + fr_all, ny + 2 * f_n + fr_all]
        vals += [-np.ones(ny), np.ones(ny), -np.ones(f_n), np.ones(f_n)]
        row_lo.append(target - load)
        row_hi.append(target - load)
        n_row += f_n
    starts, r, v = to_csc(rows, cols, vals, n_col)
    cost = np.zeros(n_col)
    cost[ny:ny + f_n] = 1.0
    h = new_highs()
    h.passModel(n_col, n_row, int(v.shape[0]), 1, 1, 0.0, cost, np.zeros(n_col),
                np.full(n_col, np.inf), np.concatenate(row_lo), np.concatenate(row_hi),
                starts, r, v, np.zeros(n_col, dtype=np.int32))
    h.setOptionValue("time_limit", st.lp_time())
    h.run()
    if h.getModelStatus() != highspy.HighsModelStatus.kOptimal:
        return fallback
    o1 = float(h.getInfo().objective_function_value)
    bound = max(0.0, o1)
    # stage 2: min moved energy (+ target deviation); short hops break ties
    cost2 = np.zeros(n_col)
    cost2[:ny] = 1.0 + 1e-6 * np.abs(yt - yf)
    if target is not None:
        cost2[ny + f_n:] = st.weight
    h.changeColsCost(n_col, np.arange(n_col, dtype=np.int32), cost2)
    h.addRow(-np.inf, o1 + max(_TOL, 1e-9 * o1), f_n,
             np.arange(ny, ny + f_n, dtype=np.int32), np.ones(f_n))
    set_lp_time_limit(h, st.lp_time())   # its own limit, not what the first LP left
    h.run()
    if h.getModelStatus() != highspy.HighsModelStatus.kOptimal:
        return fallback
    y = np.asarray(h.getSolution().col_value)[:ny]
    y = np.where(y > _TOL, y, 0.0)
    np.add.at(flow, (yc, yf, yt), y)
    out = flow.sum(axis=(0, 2))
    inn = flow.sum(axis=(0, 1))
    planned = load - out + inn
    level = np.maximum(cap, planned)
    if target is not None:
        level = np.where(out > _TOL, planned, level)
    return _Guide(flow=flow, level=level, bound=bound, order=_topo(flow.sum(axis=0)),
                  # sum y (1 + 1e-6 |t - f|) >= the optimum for every feasible y
                  energy_bound=float(h.getInfo().objective_function_value) / (1.0 + 1e-6 * f_n)
                  if target is None else None,
                  planned=planned)


def _topo(adj: FloatArray) -> list[int]:
    """Topological order of the frames under the flow graph (Kahn, lowest
    frame first); frames on a cycle follow in index order."""
    f_n = adj.shape[0]
    edges = adj > _TOL
    indeg = edges.sum(axis=0).astype(np.int64)
    done = np.zeros(f_n, dtype=bool)
    order: list[int] = []
    heap = [f for f in range(f_n) if indeg[f] == 0]
    heapq.heapify(heap)
    while heap:
        f = heapq.heappop(heap)
        done[f] = True
        order.append(f)
        for t in np.flatnonzero(edges[f]).tolist():
            indeg[t] -= 1
            if indeg[t] == 0:
                heapq.heappush(heap, t)
    order += [f for f in range(f_n) if not done[f]]
    return order


# --------------------------------------------------------------------------
# subset selection
# --------------------------------------------------------------------------

_ENUM_MAX = 12  # exact enumeration of subsets up to this many cells


def _cover_idx(sizes: IntArray, need: int) -> list[int]:
    """Indices into ascending ``sizes`` of a subset with sum >= need and a
    small sum.  Exact (enumeration) for few cells; otherwise the best of three
    starts (best-fit single cell, first-fit decreasing closed by a best-fit
    cell, complement of a first-fit-decreasing packing of total - need), each
    improved by dropping and 1-for-1 swapping cells.  All indices when the
    total does not reach ``need``."""
    n = int(sizes.shape[0])
    if need <= 0 or n == 0:
        return []
    total = int(sizes.sum())
    if total <= need:
        return list(range(n))
    if n <= _ENUM_MAX:
        masks = np.arange(1, 1 << n, dtype=np.int64)
        bits = (masks[:, None] >> np.arange(n, dtype=np.int64)) & 1
        sums = bits @ sizes
        ok = np.flatnonzero(sums >= need)
        cnt = bits[ok].sum(axis=1)
        best = ok[np.lexsort((ok, cnt, sums[ok]))[0]]
        return np.flatnonzero(bits[best]).tolist()
    starts: list[list[int]] = []
    p = int(np.searchsorted(sizes, need, side="left"))
    if p < n:
        starts.append([p])
    ffd = _pack_idx(sizes, need)
    gap = need - int(sizes[ffd].sum()) if ffd else need
    if gap > 0:
        unused = np.ones(n, dtype=bool)
        unused[ffd] = False
        ok = np.flatnonzero(unused & (sizes >= gap))
        if ok.shape[0]:
            starts.append([*ffd, int(ok[0])])
    else:
        starts.append(ffd)
    keep = np.zeros(n, dtype=bool)
    keep[_pack_idx(sizes, total - need)] = True
    starts.append(np.flatnonzero(~keep).tolist())
    best_sel: list[int] | None = None
    best_key: tuple[int, int] | None = None
    for sel in starts:
        mask = np.zeros(n, dtype=bool)
        mask[sel] = True
        mask = _improve_cover(sizes, mask, need)
        key = (int(sizes[mask].sum()), int(mask.sum()))
        if best_key is None or key < best_key:
            best_key = key
            best_sel = np.flatnonzero(mask).tolist()
    assert best_sel is not None
    return best_sel


def _improve_cover(sizes: IntArray, mask: npt.NDArray[np.bool_], need: int,
                   rounds: int = 32) -> npt.NDArray[np.bool_]:
    """Lower the overshoot sum(sizes[mask]) - need >= 0 by dropping a chosen
    cell that fits in it or swapping a chosen cell for a smaller unchosen one."""
    for _ in range(rounds):
        over = int(sizes[mask].sum()) - need
        if over <= 0:
            break
        inn = np.flatnonzero(mask)
        # drop the largest chosen cell that fits in the overshoot
        q = int(np.searchsorted(sizes[inn], over, side="right")) - 1
        if q >= 0:
            mask[inn[q]] = False
            continue
        out = np.flatnonzero(~mask)
        if out.shape[0] == 0:
            break
        so = sizes[out]
        a = sizes[inn]
        # for each chosen a: smallest unchosen b >= a - over; gain a - b if b < a
        pos = np.searchsorted(so, a - over, side="left")
        valid = pos < so.shape[0]
        posc = np.minimum(pos, so.shape[0] - 1)
        gain = np.where(valid, a - so[posc], 0)
        k = int(np.argmax(gain))
        if gain[k] <= 0:
            break
        mask[inn[k]] = False
        mask[out[posc[k]]] = True
    return mask


def _pack_idx(sizes: IntArray, cap: float) -> list[int]:
    """First-fit decreasing: indices into ascending ``sizes`` whose sum stays
    <= cap, largest first."""
    n = int(sizes.shape[0])
    if cap <= 0 or n == 0:
        return []
    desc = sizes[::-1]
    cs = np.cumsum(desc)
    k = int(np.searchsorted(cs, cap + 1e-9, side="right"))
    taken = [n - 1 - j for j in range(k)]
    gap = cap - (int(cs[k - 1]) if k else 0)
    hi = n - k  # ascending indices < hi are untaken
    for _ in range(64):
        if gap < 1 or hi <= 0:
            break
        q = int(np.searchsorted(sizes[:hi], gap + 1e-9, side="right")) - 1
        if q < 0:
            break
        taken.append(q)
        gap -= int(sizes[q])
        hi = q
    return taken


# --------------------------------------------------------------------------
# 2. rounding
# --------------------------------------------------------------------------


def _round(st: _State, guide: _Guide) -> None:
    f_n = int(st.load.shape[0])
    flow = guide.flow.sum(axis=0)  # (F, F) frame-to-frame LP flow
    out_planned = flow.sum(axis=1)
    pending_in = flow.sum(axis=0)  # LP inflow still to come from unvisited frames
    processed = np.zeros(f_n, dtype=bool)
    for f in guide.order:
        if time.monotonic() >= st.round_until:
            break  # out of time: what is rounded so far is a valid plan
        processed[f] = True
        pending_in -= flow[f]
        excess = float(st.load[f]) - float(guide.level[f])
        if excess < _TOL:
            continue
        a = guide.flow[:, f, :].sum(axis=0)
        total = float(a.sum())
        scale = excess / total if total > _TOL else 1.0
        rooms: dict[int, int] = {}
        for _, t in st.targets(f):
            if processed[t] or out_planned[t] <= _TOL:
                lvl = guide.level[t]
                if st.weight > 0 and guide.planned is not None:
                    lvl = min(lvl, guide.planned[t])  # the target shapes the sinks
                # keep the room that the LP routes there from frames not visited yet
                rooms[t] = int(np.floor(lvl - st.load[t] - max(0.0, pending_in[t])))
            else:
                rooms[t] = int(np.floor(a[t] * scale))
        plan = _best_local(st, f, int(np.ceil(excess - 1e-9)), rooms)
        for g, t in plan:
            st.move(g, f, t)


# --------------------------------------------------------------------------
# 3. repair: augmenting paths
# --------------------------------------------------------------------------

# An op changes one cell: (group, from_frame, old_to or -1 if it stays,
# new_to); new_to == from_frame means "undo the move".  A step of a chain is
# one or two ops that shed load from one frame into another.
_Op = tuple[int, int, int, int]
_Step = tuple[int, int, int, tuple[_Op, ...]]  # (amount, energy change, to, ops)
_PathKey = tuple[int, int, int, tuple[_Op, ...]]
_SCAN = 24  # incoming moves scanned per frame in the chain search
_POPS = 1500  # frames expanded at most by one chain search


def _steps(st: _State, v: int, need: int, first: bool, blocked: set[int] | tuple[int, ...],
           ) -> list[_Step]:
    """Ways to shed at least ``need`` (or, when ``first``, also a bit less)
    from frame ``v`` into another frame not in ``blocked``:

    * move a staying cell of ``v`` to a frame of its window (smallest
      sufficient cell per class and target);
    * re-target a move *into* ``v`` to another frame of its window, or undo it;
    * swap a move *out of* ``v`` for a larger staying cell to the same target
      (sheds the size difference: fine-grained).
    """
    out: list[_Step] = []
    for c, t in st.targets(v):
        if t in blocked:
            continue
        sizes, gs = st.avail(v, c)
        n = int(sizes.shape[0])
        if n == 0:
            continue
        p = int(np.searchsorted(sizes, need, side="left"))
        idx = {min(p, n - 1), max(p - 1, 0)} if first else ({p} if p < n else set())
        for i in sorted(idx):
            a = int(sizes[i])
            out.append((a, a, t, ((int(gs[i]), v, -1, t),)))
    # re-target or undo moves into v
    inc_s, inc_g, inc_u = st.incoming(v)
    n = int(inc_s.shape[0])
    if n:
        p = int(np.searchsorted(inc_s, need, side="left"))
        lo = max(p - 1, 0) if first else p
        seen: set[int] = set()
        for i in range(lo, min(n, lo + _SCAN)):
            a, g, u = int(inc_s[i]), int(inc_g[i]), int(inc_u[i])
            for w in [*st.window_of(g, u), u]:
                if w == v or w in blocked or w in seen:
                    continue
                seen.add(w)
                out.append((a, -a if w == u else 0, w, ((g, u, v, w),)))
    # swap a move out of v for a larger staying cell
    s1, o_all, w1 = st.outgoing(v)
    st.work += 12 + (n + int(o_all.shape[0])) // 16
    if o_all.shape[0]:
        for c in range(len(st.offsets)):
            sizes, gs = st.avail(v, c)
            if sizes.shape[0] == 0:
                continue
            ok = st.reaches(c, w1 - v)
            if not ok.any():
                continue
            o_g, o_s, o_w = o_all[ok], s1[ok], w1[ok]
            pos = np.searchsorted(sizes, o_s + max(need, 1), side="left")
            good = pos < sizes.shape[0]
            if not good.any():
                continue
            o_g, o_s, o_w, pos = o_g[good], o_s[good], o_w[good], pos[good]
            diff = sizes[pos] - o_s
            for w in np.unique(o_w).tolist():
                if w in blocked:
                    continue
                m = np.flatnonzero(o_w == w)
                k = m[np.lexsort((o_g[m], diff[m]))[0]]
                d = int(diff[k])
                out.append((d, d, int(w), ((int(o_g[k]), v, int(w), v),
                                           (int(gs[pos[k]]), v, -1, int(w)))))
    return out


def _path_delta(st: _State, ops: tuple[_Op, ...] | list[_Op]) -> int:
    """Exact overload change of applying ``ops``."""
    delta: dict[int, int] = {}
    for g, u, old, new in ops:
        sz = int(st.totals[g, u])
        if old >= 0:
            delta[old] = delta.get(old, 0) - sz
            delta[u] = delta.get(u, 0) + sz
        if new != u:
            delta[u] = delta.get(u, 0) - sz
            delta[new] = delta.get(new, 0) + sz
    return sum(st.over_delta(v, d) for v, d in delta.items())


def _cells(ops: tuple[_Op, ...]) -> set[tuple[int, int]]:
    return {(g, u) for g, u, _, _ in ops}


def _best_path(st: _State, f: int, max_depth: int, budget: int = 4000) -> list[_Op] | None:
    """Best short chain of steps (see :func:`_steps`) lowering the overload
    of frame ``f``; each step sheds at least what its frame cannot absorb.
    Key: (overload change, energy, ops), depth first with a node budget."""
    e = int(st.load[f] - st.cap[f])
    best: list[_PathKey] = []
    nodes = [0]

    def consider(ops: tuple[_Op, ...], energy: int) -> None:
        d_over = _path_delta(st, ops)
        if d_over >= 0:
            return
        key: _PathKey = (d_over, energy, len(ops), ops)
        if not best or key < best[0]:
            best[:] = [key]

    def extend(v: int, x: int, energy: int, ops: tuple[_Op, ...], depth: int,
               visited: set[int]) -> None:
        nodes[0] += 1
        consider(ops, energy)
        room = int(st.cap[v] - st.load[v])
        if x <= room or depth >= max_depth or nodes[0] > budget:
            return
        used = _cells(ops)
        for a, de, w, new_ops in _steps(st, v, x - max(0, room), False, visited):
            if used & _cells(new_ops):
                continue
            visited.add(w)
            extend(w, a, energy + de, ops + new_ops, depth + 1, visited)
            visited.discard(w)

    for a, de, w, ops in _steps(st, f, e, True, {f}):
        extend(w, a, de, ops, 1, {f, w})
    return list(best[0][3]) if best else None


def _deep_path(st: _State, f: int) -> list[_Op] | None:
    """Least-energy chain of any length out of overloaded frame ``f``
    (label-correcting Dijkstra over frames: a frame is expanded again only
    for a smaller arriving amount).  Chains removing the whole excess are
    tried first, then ones whose first step removes part of it."""
    e = int(st.load[f] - st.cap[f])
    if int((st.cap - st.load).max()) <= 0:
        return None  # no frame can absorb anything
    # best chain whose last frame cannot absorb all it gets, yet lowers the overload
    # (an overshooting move): (overload change, energy, ops), used when nothing better is found
    over: tuple[int, int, tuple[_Op, ...]] | None = None
    for partial in (False, True):
        heap: list[tuple[int, int, int, int, tuple[int, ...], tuple[_Op, ...]]] = []
        tick = 0
        for a, de, w, ops in _steps(st, f, e, True, {f}):
            if (a < e) != partial:
                continue
            heapq.heappush(heap, (de, tick, w, a, (f, w), ops))
            tick += 1
        best_x: dict[int, int] = {}
        pops = 0
        while heap and pops < _POPS and not st.spent():
            energy, _, v, x, frames, ops = heapq.heappop(heap)
            if x >= best_x.get(v, 1 << 62):
                continue
            best_x[v] = x
            pops += 1
            st.work += 2
            room = int(st.cap[v] - st.load[v])
            if x <= room:
                if _path_delta(st, ops) < 0:
                    return list(ops)
                continue
            d = _path_delta(st, ops)
            if d < 0 and (over is None or (d, energy) < over[:2]):
                over = (d, energy, ops)
            used = _cells(ops)
            for a, de, w, new_ops in _steps(st, v, x - max(0, room), False, frames):
                if a >= best_x.get(w, 1 << 62) or used & _cells(new_ops):
                    continue
                heapq.heappush(heap, (energy + de, tick, w, a, (*frames, w), ops + new_ops))
                tick += 1
    return list(over[2]) if over is not None else None


def _apply_hop(st: _State, op: _Op) -> None:
    g, u, old, new = op
    if old >= 0:
        st.unmove(g, u)
    if new != u:
        st.move(g, u, new)


def _repair(st: _State, max_depth: int = 3, deep: bool = True, budget: int = 100000) -> bool:
    """Apply improving chains (see :func:`_best_path`) to overloaded frames,
    worst first, until none is found.  ``deep`` retries a frame with two more
    hops before giving up on it."""
    changed = False
    failed: set[int] = set()
    for _ in range(budget):
        over = st.load - st.cap
        frames = np.flatnonzero(over > 0)
        frames = frames[np.lexsort((frames, -over[frames]))]
        progress = False
        if st.spent():
            break
        for f in frames.tolist():
            if f in failed:
                continue
            path = _deep_path(st, f) if deep else _best_path(st, f, max_depth)
            if path is None:
                failed.add(f)
                continue
            for hop in path:
                _apply_hop(st, hop)
            changed = progress = True
            break
        if not progress:
            break
    return changed


# --------------------------------------------------------------------------
# 4. clean-up: re-optimise the moves out of one frame
# --------------------------------------------------------------------------


_Plan = list[tuple[int, int]]


def _assign(sizes: IntArray, groups: IntArray, classes: IntArray, sel: list[int],
            reach: dict[int, list[int]], rooms: dict[int, int]) -> tuple[_Plan, int]:
    """Best-fit decreasing of the chosen cells into the target rooms; returns
    the plan and its overflow (load sent beyond the rooms)."""
    left = dict(rooms)
    plan: _Plan = []
    overflow = 0
    for j in sorted(sel, key=lambda j: (-int(sizes[j]), int(groups[j]))):
        sj = int(sizes[j])
        ts = reach[int(classes[j])]
        best_t = -1
        best_left = 0
        for t in ts:
            lt = left[t]
            if lt >= sj and (best_t < 0 or lt < best_left):
                best_t, best_left = t, lt
        if best_t < 0:
            for t in ts:
                if best_t < 0 or left[t] > best_left:
                    best_t, best_left = t, left[t]
            overflow += sj - max(0, best_left)
        left[best_t] -= sj
        plan.append((int(groups[j]), best_t))
    return plan, overflow


def _best_local(st: _State, f: int, need: int, rooms: dict[int, int]) -> _Plan:
    """Out-moves for frame ``f`` that shed ``need`` into the target ``rooms``:
    least (shortfall + overflow), then least energy, then fewest moves."""
    if need <= 0:
        return []
    reach: dict[int, list[int]] = {}
    for c, t in st.targets(f):
        if rooms.get(t, 0) > 0:
            reach.setdefault(c, []).append(t)
    if not reach:
        return []
    ps: list[IntArray] = []
    pg: list[IntArray] = []
    pc: list[IntArray] = []
    for c in sorted(reach):
        sizes, gs = st.avail(f, c)
        ps.append(sizes)
        pg.append(gs)
        pc.append(np.full(sizes.shape[0], c, dtype=np.int64))
    s = np.concatenate(ps)
    g = np.concatenate(pg)
    cc = np.concatenate(pc)
    n = int(s.shape[0])
    if n == 0:
        return []
    st.work += 10 + n // 8
    o = np.lexsort((g, s))
    s, g, cc = s[o], g[o], cc[o]

    best: tuple[tuple[int, int, int], _Plan] | None = None

    def consider(sel: list[int], fixed: list[int] | None = None) -> bool:
        nonlocal best
        if fixed is None:
            plan, overflow = _assign(s, g, cc, sel, reach, rooms)
        else:
            plan = [(int(g[j]), t) for j, t in zip(sel, fixed, strict=True)]
            inflow: dict[int, int] = {}
            for j, t in zip(sel, fixed, strict=True):
                inflow[t] = inflow.get(t, 0) + int(s[j])
            overflow = sum(max(0, v - max(0, rooms[t])) for t, v in inflow.items())
        tot = int(s[sel].sum()) if sel else 0
        key = (max(0, need - tot) + overflow, tot, len(sel))
        if best is None or key < best[0]:
            best = (key, plan)
        return key[0] == 0

    if n <= _ENUM_MAX:
        masks = np.arange(1, 1 << n, dtype=np.int64)
        bits = (masks[:, None] >> np.arange(n, dtype=np.int64)) & 1
        sums = bits @ s
        cnt = bits.sum(axis=1)
        up = np.flatnonzero(sums >= need)
        up = up[np.lexsort((up, cnt[up], sums[up]))][:256]
        for k in up.tolist():
            if consider(np.flatnonzero(bits[k]).tolist()):
                break
        else:
            down = np.flatnonzero(sums < need)
            down = down[np.lexsort((down, cnt[down], -sums[down]))][:64]
            for k in down.tolist():
                consider(np.flatnonzero(bits[k]).tolist())
    else:
        consider(_cover_idx(s, need))
        if best is None or best[0][0] > 0:
            # fill the rooms target by target (largest room first), no overflow
            left = dict(rooms)
            used = np.zeros(n, dtype=bool)
            sel: list[int] = []
            to: list[int] = []
            rest = need
            for t in sorted((t for t in left if left[t] > 0), key=lambda t: (-left[t], t)):
                if rest <= 0:
                    break
                cs = [c for c, ts in reach.items() if t in ts]
                idx = np.flatnonzero(np.isin(cc, cs) & ~used)
                if idx.shape[0] == 0:
                    continue
                if left[t] >= rest:
                    pick = _cover_idx(s[idx], rest)
                    if int(s[idx][pick].sum()) > left[t]:
                        pick = _pack_idx(s[idx], left[t])
                else:
                    pick = _pack_idx(s[idx], left[t])
                for j in pick:
                    used[idx[j]] = True
                    sel.append(int(idx[j]))
                    to.append(t)
                    rest -= int(s[idx[j]])
                    left[t] -= int(s[idx[j]])
            consider(sel, to)
    assert best is not None
    return best[1]


def _reopt(st: _State, f: int) -> bool:
    """Re-plan all moves out of frame ``f`` against the current loads; keep
    the new plan only when the global objective improves."""
    outs = np.flatnonzero(st.dest[:, f] >= 0)
    if outs.shape[0] == 0:
        return False
    st.work += 40
    old = [(int(g), int(st.dest[g, f])) for g in outs]
    old_key = st.key()
    for g, _ in old:
        st.unmove(g, f)
    rooms = {t: int(st.cap[t] - st.load[t]) for _, t in st.targets(f)}
    plan = _best_local(st, f, int(st.load[f] - st.cap[f]), rooms)
    for g, t in plan:
        st.move(g, f, t)
    if st.key() < old_key:
        return True
    for g, _ in plan:
        st.unmove(g, f)
    for g, t in old:
        st.move(g, f, t)
    return False


def _cleanup(st: _State, order: list[int]) -> bool:
    changed = False
    for f in order:
        if st.spent():
            break
        if _reopt(st, f):
            changed = True
    return changed


def _drop(st: _State) -> bool:
    """Remove-and-repair: undo one move (largest first), re-fix the overload it
    leaves with chains and re-plan the frames involved; keep if better."""
    changed = False
    g_idx, f_idx = np.nonzero(st.dest >= 0)
    sizes = st.totals[g_idx, f_idx]
    for k in np.lexsort((g_idx, f_idx, -sizes)).tolist():
        if st.spent():
            break
        g, f = int(g_idx[k]), int(f_idx[k])
        if st.dest[g, f] < 0:
            continue
        t = int(st.dest[g, f])
        key0 = st.key()
        snap = st.dest.copy()
        st.unmove(g, f)
        _repair(st)
        for u in sorted({f, t}):
            _reopt(st, u)
        if st.key() < key0:
            changed = True
        else:
            st.restore(snap)
    return changed


_RUIN_MAX = 24  # moves ruined at most by one LNS step


def _lns(st: _State, order: list[int]) -> bool:
    """Ruin and recreate: for each frame with out-moves, undo them and the
    moves out of the frames they fed (three levels), re-fix the overload with
    the path search and re-plan the frames involved; keep if better."""
    changed = False
    for f in order:
        if st.spent():
            break
        if not (st.dest[:, f] >= 0).any():
            continue
        ruin: list[tuple[int, int]] = []
        seen: set[int] = set()
        frontier = [f]
        for _ in range(3):
            nxt: list[int] = []
            for u in frontier:
                if u in seen:
                    continue
                seen.add(u)
                for g in np.flatnonzero(st.dest[:, u] >= 0).tolist():
                    ruin.append((g, u))
                    nxt.append(int(st.dest[g, u]))
            frontier = sorted(set(nxt))
        if len(ruin) > _RUIN_MAX:
            continue
        key0 = st.key()
        snap = st.dest.copy()
        touched = {u for _, u in ruin} | {int(st.dest[g, u]) for g, u in ruin}
        for g, u in ruin:
            st.unmove(g, u)
        _repair(st)
        for u in sorted(touched):
            _reopt(st, u)
        if st.key() < key0:
            changed = True
        else:
            st.restore(snap)
    return changed


# --------------------------------------------------------------------------


def _near_bound(st: _State, guide: _Guide) -> bool:
    """True when the plan provably is within 0.05 % of the optimal energy at
    the optimal overload (no target term), so improving is pointless."""
    if st.weight > 0 or guide.bound is None or guide.energy_bound is None:
        return False
    if st.overload() > guide.bound + _TOL:
        return False
    return st.energy <= guide.energy_bound * 1.0005 + 1.0


def lower_bounds(problem: Problem, deadline: float | None = None) -> tuple[float, float | None]:
    """LP lower bounds (overload Wh, moved energy Wh at that overload) from
    the aggregated relaxation; the energy bound is None when the LP fails.
    Valid for any plan; the energy bound only for plans reaching the
    overload bound."""
    totals = problem.totals
    g_n, f_n = totals.shape
    cap = problem.capacity
    load = totals.sum(axis=0, dtype=np.int64)
    over0 = float(np.maximum(load - cap, 0).sum())
    kind = problem.policy.window
    mags = problem.magnification
    classes = [m for m in np.unique(mags).tolist() if window_offsets(int(m), kind)]
    if g_n == 0 or f_n == 0 or not classes:
        return over0, 0.0
    st = _new_state(problem, classes, deadline)
    guide = _guide(problem, st, classes)
    if guide.bound is None:
        return over0, None
    return guide.bound, guide.energy_bound


def _new_state(problem: Problem, classes: list[int], deadline: float | None = None,
               improve_until: float | None = None) -> _State:
    totals = problem.totals
    g_n, f_n = totals.shape
    target = problem.target_array()
    kind = problem.policy.window
    cls = np.full(g_n, -1, dtype=np.int64)
    for i, m in enumerate(classes):
        cls[problem.magnification == m] = i
    return _State(
        totals=totals,
        cap=problem.capacity,
        cls=cls,
        offsets=[window_offsets(int(m), kind) for m in classes],
        dest=np.full((g_n, f_n), -1, dtype=np.int64),
        load=totals.sum(axis=0, dtype=np.int64),
        target=target,
        weight=float(problem.policy.target_weight) if target is not None else 0.0,
        work_limit=_WORK_LIMIT,
        deadline=(float("inf") if deadline is None
                  else deadline if improve_until is None else min(deadline, improve_until)),
        round_until=(float("inf") if deadline is None
                     else max(deadline, time.monotonic() + ROUND_GRACE_S)),
    )


def solve_heuristic(problem: Problem, *, deadline: float | None = None,
                    improve_until: float | None = None) -> Result:
    """Fast deterministic heuristic (see the module docstring).  ``deadline`` (a
    :func:`time.monotonic` value) stops the improvement phases early; a deadline already past
    still gives a valid plan (guidance LP and rounding only).  ``improve_until`` (optional,
    monotonic) stops the improvement phases earlier than the deadline, rounding still runs
    until the deadline."""
    t0 = time.monotonic()
    totals = problem.totals
    g_n, f_n = totals.shape
    target = problem.target_array()
    cap = problem.capacity
    load = totals.sum(axis=0, dtype=np.int64)
    over0 = int(np.maximum(load - cap, 0).sum())
    if g_n == 0 or f_n == 0 or (over0 == 0 and target is None):
        return finish(problem, [], solver="heuristic", t_start=t0, status="heuristic",
                      best_bound=0.0 if over0 == 0 else None,
                      moved_bound=0.0 if over0 == 0 else None)
    kind = problem.policy.window
    mags = problem.magnification
    classes = [m for m in np.unique(mags).tolist() if window_offsets(int(m), kind)]
    st = _new_state(problem, classes, deadline, improve_until)
    # no class can move: nothing can change, doing nothing is optimal
    bound: float | None = None if classes else float(over0)
    moved_bound: float | None = None if classes else 0.0
    if classes:
        guide = _guide(problem, st, classes)
        bound = guide.bound
        moved_bound = guide.energy_bound
        _round(st, guide)
        for _ in range(4):  # re-plan what rounding left over
            if st.overload() == 0 or st.spent():
                break
            key = st.key()
            snap = st.dest.copy()
            again = _guide(problem, st, classes)
            _round(st, again)
            if not st.key()[0] < key[0]:
                st.restore(snap)
                break
        for _ in range(6):
            if _near_bound(st, guide):
                break
            a = _repair(st)
            b = _cleanup(st, guide.order)
            c = _lns(st, guide.order)
            d = _drop(st)
            if not (a or b or c or d) or st.spent():
                break
    if classes and st.key() > _State.key(_new_state(problem, classes)):
        # rounding cut short by the deadline can leave a chain half built (load sent into a
        # frame that was to pass it on): doing nothing is then better
        st.restore(np.full((g_n, f_n), -1, dtype=np.int64))
    g, f = np.nonzero(st.dest >= 0)
    moves: list[Move] = [(int(a), int(b), int(st.dest[a, b]))
                         for a, b in zip(g.tolist(), f.tolist(), strict=True)]
    _LAST_WORK[0] = st.work
    if bound is None and st.overload() == 0:
        bound = 0.0
    return finish(problem, moves, solver="heuristic", t_start=t0, status="heuristic",
                  best_bound=bound, moved_bound=moved_bound)
