"""Grouping of homes (the seed's group dividing unit 12): the initial grouping and its refinement.

Pure code: no I/O, no clock, deterministic.

Initial grouping: the fewest groups
-----------------------------------
One group per contract-magnification class, each with at least ``k`` members.  Classes are visited
from the highest magnification down; a class with fewer than ``k`` homes is carried *down* into the
next lower class, so the small class gives up flexibility and the large class keeps its own.  When
the lowest classes together stay below ``k`` they join the lowest group formed.  A group's
magnification is the MIN of its members' (every member's contract must allow every move the group
makes).  Fewer than ``k`` homes in all: no group at all (the caller excludes them).

Refinement: splitting, never reshuffling
----------------------------------------
After a solve that still leaves overload once the moves are applied, ``refine`` splits every group
that contributes load to a still-overloaded frame into two halves of at least ``k`` homes each.
Members are kept in a deterministic order, (magnification, SHA-256 of the home id): a split does
not follow id order (neighbouring ids are often neighbouring houses), and the upper half of a mixed
group holds the larger contracts, so it may move further than its parent.  A group is split only
when it has at least ``2k`` members and at least one half could move at all (magnification > 1).

Why the mask broker's release rule always passes for an honest coordinator
--------------------------------------------------------------------------
The mask broker answers a group only if, counting every group it has released that day, every cell
("atom") of the partition those groups generate keeps at least ``k`` homes (DESIGN.md decision 3).
The initial groups are disjoint and each has >= ``k`` homes: its atoms are the groups themselves.
Every later request is a split of a released group into parts of >= ``k`` homes: the new atoms are
the parts, still >= ``k``.  So by induction the partition stays a refinement of the first one with
no atom below ``k``, and no difference of two answered groups can isolate fewer than ``k`` homes.

The one departure from pure refinement is a home whose mask never reached some broker
(``missing_members``): it has to leave its group, and if another broker already released the full
group, the re-asked reduced group would leave an atom (the dropped homes) at that broker.
backend/coordinator/sums.py runs the broker's own rule (``release.Partition.check``) as a dry run
before every ask, so the coordinator never asks a question the broker must refuse; the broker
stays the authority.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from backend.coordinator.adjust import Problem, Result, apply_moves
from hemsfw import protocol

__all__ = [
    "Group",
    "child_id",
    "contributing",
    "initial_grouping",
    "make_group",
    "refine",
    "split",
    "split_key",
    "stable_grouping",
]


def split_key(home: str, mag: int) -> tuple[int, bytes]:
    """Deterministic member order: magnification, then SHA-256 of the home id."""
    return (mag, hashlib.sha256(home.encode()).digest())


@dataclass(frozen=True)
class Group:
    """A group of homes.  ``members`` are in split order (see ``split_key``), ``mags`` parallel.

    ``parent`` is the group this one was split from (None for an initial or re-formed group)."""

    id: str
    members: tuple[str, ...]
    mags: tuple[int, ...]
    parent: Group | None = field(default=None, compare=False, repr=False)

    @property
    def magnification(self) -> int:
        return min(self.mags)

    @property
    def size(self) -> int:
        return len(self.members)

    def member_set(self) -> frozenset[str]:
        return frozenset(self.members)


def make_group(
    gid: str, members: Iterable[tuple[str, int]], parent: Group | None = None
) -> Group:
    """A group from (home, magnification) pairs, ordered by ``split_key``."""
    pairs = sorted(members, key=lambda hm: split_key(hm[0], hm[1]))
    if not pairs:
        raise ValueError("a group needs members")
    if not protocol.valid_id(gid):
        raise ValueError(f"invalid group id {gid!r}")
    return Group(gid, tuple(h for h, _ in pairs), tuple(m for _, m in pairs), parent)


def child_id(parent_id: str, tag: str) -> str:
    """Id of a group derived from ``parent_id`` (``tag`` is a letter: a/b split, m reduced,
    p merged).  Ids made of a base ``r<round>g<n>`` and tag letters are unique per derivation
    path; past the 32-character id limit a hash of the path is used instead."""
    gid = parent_id + tag
    if protocol.valid_id(gid):
        return gid
    return "x" + hashlib.sha256(gid.encode()).hexdigest()[:24]


def initial_grouping(mags: Mapping[str, int], k: int, prefix: str) -> list[Group]:
    """The fewest groups: one per magnification class, each >= k (module docstring).

    Group ids are ``prefix + n``, numbered by ascending magnification.  Returns [] when there are
    fewer than ``k`` homes."""
    if k < 1:
        raise ValueError("k must be >= 1")
    classes: dict[int, list[str]] = {}
    for home, m in mags.items():
        classes.setdefault(int(m), []).append(home)
    formed: list[list[str]] = []  # descending magnification
    carry: list[str] = []
    for m in sorted(classes, reverse=True):
        cur = classes[m] + carry
        if len(cur) >= k:
            formed.append(cur)
            carry = []
        else:
            carry = cur
    if carry:
        if not formed:
            return []
        formed[-1].extend(carry)
    formed.reverse()
    return [
        make_group(f"{prefix}{i}", ((h, int(mags[h])) for h in members))
        for i, members in enumerate(formed, start=1)
    ]


def stable_grouping(mags: Mapping[str, int], previous: Sequence[tuple[str, Sequence[str]]],
                    carried_mags: Mapping[str, int], k: int, prefix: str
                    ) -> tuple[list[Group], set[str], list[str], list[str]]:
    """A round's grouping when earlier rounds were answered (docs/privacy.md, "Over time").

    The mask brokers answer only unions of the atoms every earlier answer generated, so the
    grouping stays the last round's final grouping (which only ever refines): each previous
    group again, with the members that reported (``mags``) and, for those that did not, their
    carried report (``carried_mags``: they count with their latest released report).  A
    previous group in which nobody reported is not asked.  Homes in no previous group are new:
    they form new groups of at least ``k`` (``initial_grouping``), or wait for peers.

    Returns (groups, carried members, new homes waiting for peers, members that neither
    reported nor have a carried report: their group cannot be answered).  Ids are
    ``prefix + n`` (renumbered each round, so they never grow past the id limit)."""
    out: list[list[tuple[str, int]]] = []
    carried: set[str] = set()
    holes: list[str] = []
    placed: set[str] = set()
    for _gid, members in previous:
        ms: list[tuple[str, int]] = []
        for h in members:
            if h in mags:
                ms.append((h, int(mags[h])))
            elif h in carried_mags:
                ms.append((h, int(carried_mags[h])))
                carried.add(h)
            else:
                holes.append(h)
        placed.update(members)
        if any(h in mags for h, _ in ms):
            out.append(ms)
        else:
            carried.difference_update(h for h, _ in ms)
    fresh = {h: m for h, m in mags.items() if h not in placed}
    new = initial_grouping(fresh, k, prefix="x")
    joined = {h for g in new for h in g.members}
    waiting = sorted(h for h in fresh if h not in joined)
    groups = [make_group(f"{prefix}{i}", ms) for i, ms in enumerate(out, start=1)]
    groups += [make_group(f"{prefix}{len(out) + i}", zip(g.members, g.mags, strict=True))
               for i, g in enumerate(new, start=1)]
    return groups, carried, waiting, sorted(set(holes))


# ------------------------------------------------------------------ refinement


def split(group: Group, k: int) -> tuple[Group, Group] | None:
    """Split into two halves of >= k (split order), or None when it cannot or need not be."""
    n = group.size
    if n < 2 * k:
        return None
    h = n // 2
    lo = list(zip(group.members[:h], group.mags[:h], strict=True))
    hi = list(zip(group.members[h:], group.mags[h:], strict=True))
    if max(min(m for _, m in lo), min(m for _, m in hi)) <= 1:
        return None  # neither half could move anything
    return (
        make_group(child_id(group.id, "a"), lo, parent=group),
        make_group(child_id(group.id, "b"), hi, parent=group),
    )


def contributing(
    n_groups: int, result: Result, problem: Problem | None = None
) -> npt.NDArray[np.bool_]:
    """Groups with load in a frame that is still overloaded after the moves.

    With the problem this is exact.  Without it, the curtailment tells: curtailment is planned
    exactly in the frames overloaded after the moves, and the post-move load of a group in such a
    frame is either curtailed (so it was > 0) or still in ``group_after``."""
    if problem is not None:
        moved = apply_moves(problem.totals, result.moves)
        over = moved.sum(axis=0) > problem.capacity
        return np.asarray((moved[:, over] > 0).any(axis=1), dtype=bool)
    c = np.zeros(n_groups, dtype=bool)
    frames = sorted({f for _, f, _ in result.curtail})
    if frames:
        ga = np.asarray(result.group_after)
        c |= (ga[:, frames] > 0).any(axis=1)
    for g, _, _ in result.curtail:
        c[g] = True
    return c


def refine(
    groups: Sequence[Group],
    result: Result,
    k: int,
    problem: Problem | None = None,
    frozen: Collection[str] = (),
) -> list[Group] | None:
    """Split the groups that contribute to a still-overloaded frame (module docstring).

    ``result`` is the solve of ``groups`` (same order); pass ``problem`` when curtailment was not
    allowed.  ``frozen`` names groups not to split again (a split a broker refused).  Returns the
    new grouping (children in place of their parent) or None when no group can be split."""
    contrib = contributing(len(groups), result, problem)
    out: list[Group] = []
    changed = False
    for i, g in enumerate(groups):
        halves = split(g, k) if contrib[i] and g.id not in frozen else None
        if halves is None:
            out.append(g)
        else:
            out.extend(halves)
            changed = True
    return out if changed else None
