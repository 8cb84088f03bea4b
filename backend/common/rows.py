"""Report rows: validated report vectors in contiguous uint32 rows, group sums as slice sums.

Pure (no I/O).  The services' MQTT adapters hand each report to a sink; the sink validates it
with the very parsers the firmware tests pin down (``hemsfw.protocol``) and appends its vector
to a ``RowStore``: one preallocated ``(capacity, frames)`` uint32 matrix, one row per report,
written in place (no per-report array object, no list of arrays to stack later).

Group sums
----------
A group's sum mod 2^32 is the sum of its rows (numpy uint32 arithmetic wraps exactly like the
protocol's).  ``RowStore.arrange(order)`` gathers the rows once into ``order`` (one ``np.take``:
~10 ms for 100k x 96 here); then a group that is an interval of ``order`` is a plain slice sum,
``block[a:b].sum(axis=0)`` at memory speed (~5 ms for all 100k rows, whatever the grouping, plus
~2 us per group).  Measured alternatives (docs/benchmarks.md, "Ingest"): prefix sums
(``np.cumsum(axis=0)``, 170 ms) and ``np.add.reduceat`` (~57 ms) are 10-30x slower.

* The coordinator's groups *are* intervals of one order: ``grouping.initial_grouping`` forms
  one group per magnification class (carrying small classes into the next lower one) with its
  members in ``split_key`` order (magnification, SHA-256 of the id), and ``refine`` splits a
  group into its lower and upper halves in that order.  So arranging the round's rows by
  ``split_key`` once makes every group of every refinement pass a contiguous slice.
* A mask broker cannot assume anything about a request (the coordinator may be malicious), so
  it arranges the rows of each request in request order (one gather of the request's members)
  and each group is its own slice of that arrangement.

No per-home Python loop runs on the path: the member-id -> row lookup is a ``map`` over a dict
inside ``np.fromiter``, the rest is numpy; the only Python loop is over groups.

Sharding
--------
With N workers sharing the ingest (MQTT 5 ``$share/<group>/...``), each worker holds the rows of
the reports it happened to receive.  ``RowStore.partial_sums(groups)`` returns each group's sum
over the members this worker holds and how many it holds; ``add_partials`` adds the workers'
partials mod 2^32 and the counts, and a group is complete when the counts add up to its size
(a report delivered to two workers would be counted twice and is caught the same way: the
service dedupes by home before it adds).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import numpy.typing as npt

from hemsfw import protocol, protocol_svc

__all__ = [
    "U32",
    "Arranged",
    "PlanSink",
    "RowStore",
    "add_partials",
]

U32 = np.dtype("<u4")
U32Array = npt.NDArray[np.uint32]
I64Array = npt.NDArray[np.int64]


class RowStore:
    """Append-only rows of ``frames`` uint32 words, one per key (home id), preallocated.

    ``add`` copies the 4*frames little-endian bytes of a report straight into the next row."""

    def __init__(self, capacity: int, frames: int) -> None:
        if capacity < 0 or frames < 1:
            raise ValueError("capacity >= 0 and frames >= 1")
        self.frames = frames
        self.rows: U32Array = np.zeros((capacity, frames), dtype=U32)
        self.keys: list[str] = []
        self.row_of: dict[str, int] = {}
        self._flat = self._bytes_of(self.rows)

    @staticmethod
    def _bytes_of(rows: U32Array) -> memoryview:
        """The rows as one flat byte view: a report's bytes go in with one slice copy (the
        rows are little-endian uint32, as the protocol's vectors are)."""
        return rows.reshape(-1).view(np.uint8).data

    @property
    def count(self) -> int:
        return len(self.keys)

    @property
    def capacity(self) -> int:
        return int(self.rows.shape[0])

    def __contains__(self, key: object) -> bool:
        return key in self.row_of

    def add(self, key: str, vec: bytes | bytearray | memoryview | U32Array) -> int:
        """Append ``vec`` (LE uint32 bytes or a uint32 array of ``frames``) under ``key``;
        returns its row.  ValueError: ``duplicate`` (key already stored), ``full``,
        ``bad_length``.  Nothing is stored on error."""
        if key in self.row_of:
            raise ValueError("duplicate")
        r = len(self.keys)
        if r >= self.rows.shape[0]:
            raise ValueError("full")
        if isinstance(vec, np.ndarray):
            if vec.shape != (self.frames,):
                raise ValueError("bad_length")
            self.rows[r] = vec
        else:
            n = 4 * self.frames
            if len(vec) != n:
                raise ValueError("bad_length")
            self._flat[r * n:(r + 1) * n] = vec
        self.keys.append(key)
        self.row_of[key] = r
        return r

    def row_bytes(self, r: int) -> memoryview:
        """Row ``r``'s 4*frames little-endian bytes (a view: no array object)."""
        n = 4 * self.frames
        return self._flat[r * n:(r + 1) * n]

    def view(self) -> U32Array:
        """The stored rows (a view, in arrival order)."""
        return self.rows[: self.count]

    def grow(self, capacity: int) -> None:
        """Make room for ``capacity`` rows (one copy; size the store up front instead)."""
        if capacity > self.capacity:
            rows = np.zeros((capacity, self.frames), dtype=U32)
            rows[: self.count] = self.view()
            self.rows = rows
            self._flat = self._bytes_of(rows)

    def lookup(self, keys: Iterable[str], n: int = -1) -> I64Array:
        """Rows of ``keys`` (-1 for a key not stored); ``n`` = len(keys) when known."""
        get = self.row_of.get
        return np.fromiter((get(k, -1) for k in keys), dtype=np.int64, count=n)

    def arrange(self, order: Sequence[str]) -> Arranged:
        """The rows of ``order`` (keys not stored are left out), gathered once, in that order.
        ``Arranged.pos`` maps a key to its position."""
        rows = self.lookup(order, len(order))
        keep = rows >= 0
        if not bool(keep.all()):
            rows = rows[keep]
            order = [k for k, ok in zip(order, keep.tolist(), strict=True) if ok]
        return Arranged(list(order), np.take(self.rows, rows, axis=0))

    def arrange_rows(self, rows: npt.ArrayLike, out: U32Array | None = None) -> Arranged:
        """The given rows (indices into the store) gathered in that order, with no key work
        (the fast path: ``PlanSink.split_order``).  ``out``: a reusable (len, frames) buffer,
        which spares the page faults of a fresh allocation at a million rows."""
        idx = np.asarray(rows, dtype=np.int64)
        if idx.size and (int(idx.min()) < 0 or int(idx.max()) >= self.count):
            raise ValueError("row out of range")
        block = np.take(self.rows, idx, axis=0, out=out)
        return Arranged([self.keys[i] for i in idx.tolist()], block)

    def partial_sums(self, groups: Sequence[Sequence[str]]) -> tuple[U32Array, I64Array]:
        """(G, frames) sums over the members held here and (G,) how many are held."""
        flat = [h for g in groups for h in g]
        rows = self.lookup(flat, len(flat))
        sizes = np.fromiter((len(g) for g in groups), dtype=np.int64, count=len(groups))
        owner = np.repeat(np.arange(len(groups)), sizes)
        held = rows >= 0
        counts = np.bincount(owner[held], minlength=len(groups)).astype(np.int64)
        block = np.take(self.rows, rows[held], axis=0)
        bounds = np.concatenate(([0], np.cumsum(counts)))
        return _slice_sums(block, bounds[:-1], bounds[1:]), counts


def _slice_sums(block: U32Array, starts: I64Array, stops: I64Array) -> U32Array:
    """(G, F) sums mod 2^32 of block[start:stop] for each pair (one slice sum per group)."""
    out = np.zeros((len(starts), block.shape[1]), dtype=U32)
    for g, (a, b) in enumerate(zip(starts.tolist(), stops.tolist(), strict=True)):
        if b > a:
            np.sum(block[a:b], axis=0, dtype=U32, out=out[g])
    return out


@dataclass
class Arranged:
    """Rows gathered into one order: every interval of it is a contiguous slice."""

    keys: list[str]
    block: U32Array

    @cached_property
    def pos(self) -> dict[str, int]:
        """Key -> position (built on first use: ~0.6 s at a million keys)."""
        return {k: i for i, k in enumerate(self.keys)}

    def __len__(self) -> int:
        return len(self.keys)

    def interval_sums(self, starts: npt.ArrayLike, stops: npt.ArrayLike) -> U32Array:
        """Sums mod 2^32 of rows [start, stop) for every pair: (G, frames)."""
        a = np.asarray(starts, dtype=np.int64).reshape(-1)
        b = np.asarray(stops, dtype=np.int64).reshape(-1)
        if a.shape != b.shape or bool(np.any(a < 0)) or bool(np.any(b > len(self.keys))) or \
                bool(np.any(a > b)):
            raise ValueError("bad interval")
        return _slice_sums(self.block, a, b)

    def positions(self, members: Sequence[str]) -> I64Array:
        get = self.pos.get
        return np.fromiter((get(k, -1) for k in members), dtype=np.int64, count=len(members))

    def span(self, members: Sequence[str]) -> tuple[int, int] | None:
        """(start, stop) when ``members`` are exactly the keys of one interval, else None."""
        if not members:
            return None
        p = self.positions(members)
        lo, hi = int(p.min()), int(p.max())
        if lo < 0 or hi - lo + 1 != len(members):
            return None
        if len(np.unique(p)) != len(members):
            return None
        return lo, hi + 1

    def group_sum(self, members: Sequence[str]) -> U32Array:
        """One group's sum: a slice sum when it is an interval, else a gather of its rows.
        KeyError if a member is not arranged."""
        s = self.span(members)
        if s is not None:
            res: U32Array = self.block[s[0]:s[1]].sum(axis=0, dtype=U32)
            return res
        p = self.positions(members)
        if bool(np.any(p < 0)):
            raise KeyError("member not arranged")
        out: U32Array = self.block[p].sum(axis=0, dtype=U32)
        return out


def add_partials(parts: Sequence[tuple[U32Array, I64Array]]) -> tuple[U32Array, I64Array]:
    """The workers' partial group sums and counts, added (sums mod 2^32)."""
    if not parts:
        raise ValueError("no partials")
    sums = parts[0][0].copy()
    counts = parts[0][1].copy()
    for s, c in parts[1:]:
        sums += s  # uint32 += wraps
        counts += c
    return sums, counts


# ------------------------------------------------------------------ plan reports


Loads = Callable[[bytes], object]


def _loads_json(payload: bytes) -> object:
    return json.loads(payload)


class PlanSink:
    """Validate ``hems/v1/plan/<home>`` reports of one round into a ``RowStore``.

    The checks and reason codes are the coordinator's (backend/coordinator/intake.py) minus the
    clock: ``bad_topic``, the parser's reasons, ``home_mismatch``, ``unknown_round``,
    ``replay``, ``duplicate_home``, and ``full`` when more reports arrive than were sized for.
    ``loads`` is the JSON decoder (``json.loads``; ``orjson.loads`` is a drop-in)."""

    def __init__(self, day: str, rnd: int, frames: int, capacity: int,
                 loads: Loads = _loads_json, seen: set[str] | None = None,
                 grow: bool = False) -> None:
        """``seen``: report ids accepted before (shared across rounds by a long-running
        service); ``grow``: double the store when it is full instead of refusing (``full``)."""
        self.day, self.round, self.frames = day, rnd, frames
        self.store = RowStore(capacity, frames)
        self.mags = np.zeros(capacity, dtype=np.int8)
        #: first 8 bytes (big-endian) of SHA-256(home id): with ``mags`` the coordinator's
        #: split order (grouping.split_key) as two integer columns, sortable without strings;
        #: computed for rows [_tagged, count) in one batch when ``split_order`` needs them
        #: (after collection), not per report on the ingest path
        self.tags = np.zeros(capacity, dtype=np.uint64)
        self._tagged = 0
        self.report_ids: list[str] = []
        self.seen: set[str] = seen if seen is not None else set()
        self.loads = loads
        self.grow = grow
        self._head = protocol.PREFIX + "/plan/"

    def offer(self, topic: str, payload: bytes) -> tuple[str | None, str]:
        """(home from the topic or None, "" if accepted else the reason).  Never raises."""
        head = self._head
        if not topic.startswith(head):
            return None, "bad_topic"
        home = topic[len(head):]
        if not protocol.valid_id(home):
            return None, "bad_topic"
        if len(payload) > protocol.MAX_PAYLOAD:
            return home, "too_large"
        try:
            obj = self.loads(payload)
        except Exception:
            return home, "bad_json"
        try:
            p_home, day, rnd, rid, mag, masked = protocol_svc.parse_plan_report(obj, self.frames)
        except ValueError as e:
            return home, str(e)
        if p_home != home:
            return home, "home_mismatch"
        if day != self.day or rnd != self.round:
            return home, "unknown_round"
        return home, self.admit(home, rid, mag, masked)

    def admit(self, home: str, rid: str, mag: int,
              masked: bytes | bytearray | memoryview | U32Array) -> str:
        """Store a parsed report of this round: "" or the reason (``replay``,
        ``duplicate_home``, ``full``, ``bad_length``).  Nothing is stored on refusal."""
        if rid in self.seen:
            return "replay"
        store = self.store
        if home in store.row_of:
            return "duplicate_home"
        if self.grow and len(store.keys) == len(store.rows):
            self._grow(max(16, 2 * len(store.rows)))
        try:
            r = self.store.add(home, masked)
        except ValueError as e:
            return str(e)
        self.seen.add(rid)
        self.report_ids.append(rid)
        self.mags[r] = mag
        return ""

    def _tag(self) -> None:
        """Fill ``tags`` for the rows stored since the last call."""
        lo, hi = self._tagged, self.store.count
        if lo < hi:
            sha = hashlib.sha256
            head = b"".join([sha(k.encode()).digest()[:8] for k in self.store.keys[lo:hi]])
            self.tags[lo:hi] = np.frombuffer(head, dtype=">u8")
            self._tagged = hi

    def _grow(self, capacity: int) -> None:
        self.store.grow(capacity)
        n = self.store.count
        mags = np.zeros(capacity, dtype=np.int8)
        tags = np.zeros(capacity, dtype=np.uint64)
        mags[:n], tags[:n] = self.mags[:n], self.tags[:n]
        self.mags, self.tags = mags, tags

    def split_order(self) -> I64Array:
        """Rows in the coordinator's split order (magnification, SHA-256 of the id): arrange
        the store in it once and every group and every split of it is a contiguous slice.
        Ties on the 64-bit prefix (~N^2 / 2^65: 3e-10 at 100k homes) fall back to row order,
        where grouping.split_key would compare the rest of the digest."""
        self._tag()
        n = self.store.count
        order: I64Array = np.lexsort((self.tags[:n], self.mags[:n])).astype(np.int64)
        return order
