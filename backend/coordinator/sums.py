"""Group sums from the mask brokers (the seed's units 13 and 14) and the group totals they give.

Pure: ``SumLedger`` decides what to ask which broker and what every answer means; service.py only
sends the requests and feeds the answers back.  The loop is::

    while asks := ledger.requests(groups):      # per broker, the groups it has not released
        answers = <ask every broker, bounded wait>
        ledger.record(broker, asked, answers)     # for each broker
        groups = ledger.resolve(groups)           # what the refusals change
    groups = ledger.finish(groups)                # give up on what is still unanswered

``settle`` runs that loop with the asking passed in (service.py passes MQTT, tests a fake).

A group's total (in quanta, per frame) is the sum of its members' masked vectors minus every
broker's mask sum, in uint32 (mod 2^32) arithmetic: exact while the true total stays below 2^32
quanta (docs/protocol.md, "Quantum").  The masked rows are held as one ``Arranged`` block; the
service arranges them in the split order, so the sum over a group is one contiguous slice sum
(``Arranged.group_sum``; any other order still works, by a gather).

What a refusal changes (reason codes are the broker's; exclusion reasons are ours):

* ``missing_members`` naming members of the group: a broker has no mask for them (yet).  The group
  is asked again from that broker after a short grace (the sealed seed may still be in flight, or
  the broker may be catching up after a restart), up to ``missing_retries`` times (default once).
  If the homes are still missing they leave the round (exclusion ``mask_missing``: a home
  whose mask did not reach every broker cannot be counted) and the rest is re-asked from every
  broker as a new group (id ``<id>m``) when it still has >= k homes and the request passes the
  release rule at every broker (``release.Partition.check``, the broker's own code).  If a
  broker already released the full group, the dropped homes would form an atom there: when
  fewer than k are missing, the fewest further homes (lowest magnification first) leave too,
  so the dropped set has k homes (exclusion ``atom_guard``).  A rest below k is merged into a
  group re-formed in the same pass whose source
  was never released (nearest lower-or-equal magnification, else nearest higher; id ``<id>p``);
  merging into an already released group would make the rest an atom below k at every broker that
  released it, so it is never tried.  Rests that find no partner join each other when together
  >= k; otherwise they leave (exclusion ``group_too_small``).
* ``checksum_mismatch`` (the members' report ids at the broker are not the ones the coordinator
  holds: one home sent different report ids with its plan and its seal): the group is asked
  again from that broker once, naming each member's report id; the broker then names the
  members whose id differs (``report_mismatch``, list ``mismatched``).  Those homes alone leave
  the round (exclusion ``report_mismatch``) and the rest is re-formed exactly as for missing
  members (``<id>m``, ``atom_guard``, merges): one bad report costs only its sender.
* any other reason, or no answer within the timeout: the whole group leaves the round (exclusion
  ``refused`` or ``no_answer``, with the broker and its reason), unless the group is half of a
  refinement split: then the split is undone, the parent (released earlier) is used again and is
  not split any more.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from backend.common.rows import Arranged
from backend.common.vectors import unwrap
from backend.coordinator.grouping import Group, child_id, make_group
from backend.coordinator.intake import RoundConfig
from backend.coordinator.memory import Carried
from backend.mask_broker.release import Partition
from hemsfw import protocol, protocol_svc

__all__ = ["MAX_PASSES", "Answer", "Exclusion", "Refusal", "SumLedger", "parse_answer", "settle",
           "split_mismatch"]

MISSING = "missing_members"
CHECKSUM = "checksum_mismatch"
MISMATCH = "report_mismatch"  # the broker's refusal naming the members (mask_broker/core.py)
MAX_PASSES = 8  # request/answer passes per settle (retry, re-form, merge, ...)


@dataclass(frozen=True)
class Refusal:
    """A broker's refusal of a group; ``missing``: the members it names (those without a mask
    for ``missing_members``, those whose report id differs for ``report_mismatch``)."""

    reason: str
    missing: tuple[str, ...] = ()

    def names_within(self, members: set[str]) -> bool:
        """It names some members of the group, and only members of it."""
        return self.reason in (MISSING, MISMATCH) and bool(self.missing) and set(
            self.missing) <= members


#: A broker's answer for one group: its mask sum (LE uint32 bytes), a refusal, or no answer.
Answer = bytes | Refusal | None


@dataclass(frozen=True)
class Exclusion:
    """A home that was accepted but could not be counted."""

    home: str
    reason: str
    group: str
    broker: str | None = None
    detail: str = ""

    def as_json(self) -> dict[str, Any]:
        return {"home": self.home, "reason": self.reason, "group": self.group,
                "broker": self.broker, "detail": self.detail}


def parse_answer(
    topic: str, payload: bytes, cfg: RoundConfig
) -> tuple[str, str, dict[str, Answer]]:
    """A ``hems/v1/groupsum/<broker>`` message -> (broker, req, {group id: answer}).

    Raises ValueError(reason): the parser's reasons, ``bad_topic``, ``broker_mismatch``,
    ``unknown_broker``, ``unknown_round``."""
    tail = protocol.topic_tail(topic, "groupsum")
    if tail is None or len(tail) != 1 or not protocol.valid_id(tail[0]):
        raise ValueError("bad_topic")
    req, broker, day, rnd, out = protocol_svc.parse_group_sums(
        protocol.decode(payload, protocol.MAX_GROUP_PAYLOAD), cfg.frames)
    if broker != tail[0]:
        raise ValueError("broker_mismatch")
    if broker not in cfg.brokers:
        raise ValueError("unknown_broker")
    if day != cfg.day or rnd != cfg.round:
        raise ValueError("unknown_round")
    results: dict[str, Answer] = {}
    for gid, v in out.items():
        if isinstance(v, bytes | bytearray):
            results[gid] = bytes(v)
        else:
            reason, missing = v
            ids = tuple(m for m in missing if protocol.valid_id(m))
            results[gid] = Refusal(reason[:64], ids)
    return broker, req, results


class SumLedger:
    """Every broker's answers for every group of one round (see the module docstring)."""

    def __init__(
        self,
        brokers: Sequence[str],
        k: int,
        homes: Sequence[str],
        masked: npt.NDArray[np.uint32],
        report_ids: Mapping[str, str],
        missing_retries: int = 1,
        partitions: Mapping[str, Partition] | None = None,
        carried: Mapping[str, Carried] | None = None,
    ) -> None:
        """``homes``/``masked``/``report_ids``: this round's accepted reports.  ``partitions``:
        what each broker released in earlier rounds (memory.py; copied, not changed);
        ``carried``: the homes' latest released reports, which a member that has no report
        here (or whose mask a broker lacks) may count with (``carry``)."""
        self.brokers = tuple(brokers)
        self.missing_retries = missing_retries
        self.k = k
        self.frames = int(masked.shape[1])
        self._arranged = Arranged(list(homes), masked)
        self._row = self._arranged.pos
        # SHA-256 of each report id as 4 LE uint64 words: a group's checksum is their XOR
        # (protocol_svc.report_checksum, vectorised).
        sha, unhex = hashlib.sha256, bytes.fromhex
        digests = b"".join([sha(unhex(report_ids[h])).digest() for h in homes])
        self._digest = np.frombuffer(digests, dtype="<u8").reshape(len(homes), 4)
        self._report_ids = {h: report_ids[h] for h in homes}
        #: groups asked (again) with each member's report id, after a checksum mismatch
        self._check_ids: set[str] = set()
        self.sums: dict[str, dict[str, npt.NDArray[np.uint32]]] = {}
        self._refusals: dict[str, dict[str, Refusal]] = {}
        self._retried: dict[str, int] = {}
        #: per broker, the partition its releases generated (every round so far): the broker's
        #: own release rule (backend/mask_broker/release.py), run here as a dry run
        self.partitions: dict[str, Partition] = {
            b: (Partition.load(partitions[b].snapshot(), k) if partitions and b in partitions
                else Partition(self.k)) for b in self.brokers}
        self._carried_avail = dict(carried or {})
        #: members that count with their carried report this round (not this round's)
        self.carried: dict[str, Carried] = {}
        self._carried_digest: dict[str, npt.NDArray[np.uint64]] = {}
        #: homes counted with this round's report in a released group (no swap any more)
        self._used_current: set[str] = set()
        self.released: list[dict[str, Any]] = []
        self.refused: list[dict[str, Any]] = []
        self.excluded: dict[str, Exclusion] = {}
        #: groups whose split a broker refused: not to be split again
        self.frozen: set[str] = set()
        #: a missing-members retry is due: the adapter waits the grace before the next asks
        self.grace_due = False

    # ------------------------------------------------------------ asking

    def can_carry(self, home: str) -> bool:
        return home in self._carried_avail

    def carry(self, home: str) -> None:
        """Count ``home`` with its latest released report (memory.py) instead of one of this
        round (it has none, or a broker lacks its mask); KeyError if there is none."""
        c = self._carried_avail[home]
        self.carried[home] = c
        d = hashlib.sha256(bytes.fromhex(c.report_id)).digest()
        self._carried_digest[home] = np.frombuffer(d, dtype="<u8")

    def current(self, g: Group) -> list[str]:
        """The members counted with this round's report."""
        return [h for h in g.members if h not in self.carried]

    def carried_in(self, g: Group) -> list[str]:
        return sorted(h for h in g.members if h in self.carried)

    def checksum(self, g: Group) -> str:
        """protocol_svc.report_checksum of the report ids the members count with."""
        cur = self.current(g)
        rows = np.fromiter((self._row[h] for h in cur), dtype=np.intp, count=len(cur))
        x = np.bitwise_xor.reduce(self._digest[rows], axis=0) if len(cur) else np.zeros(
            4, dtype="<u8")
        for h in self.carried_in(g):
            x = x ^ self._carried_digest[h]
        return bytes(x.astype("<u8").tobytes()).hex()

    def report_id(self, home: str) -> str:
        """The report id ``home`` counts with (this round's, or its carried one)."""
        c = self.carried.get(home)
        return c.report_id if c is not None else self._report_ids[home]

    def request_entry(self, g: Group) -> tuple[Any, ...]:
        """(id, members, checksum, carried members[, report ids]) as
        protocol_svc.make_group_request takes it; the report ids (per member) only when the
        group is asked again after a checksum mismatch."""
        members = sorted(g.members)
        if g.id in self._check_ids:
            return (g.id, members, self.checksum(g), self.carried_in(g),
                    [self.report_id(h) for h in members])
        return g.id, members, self.checksum(g), self.carried_in(g)

    def complete(self, g: Group) -> bool:
        got = self.sums.get(g.id, {})
        return all(b in got for b in self.brokers)

    def requests(self, groups: Sequence[Group]) -> dict[str, list[Group]]:
        out: dict[str, list[Group]] = {}
        for b in self.brokers:
            gs = [g for g in groups if b not in self.sums.get(g.id, {})]
            if gs:
                out[b] = gs
        return out

    def record(self, broker: str, asked: Sequence[Group], answers: Mapping[str, Answer]) -> None:
        """One broker's answers to a request for ``asked`` (a group it left out: no answer)."""
        for g in asked:
            a = answers.get(g.id)
            if isinstance(a, bytes) and len(a) == 4 * self.frames:
                self.sums.setdefault(g.id, {})[broker] = np.frombuffer(a, dtype="<u4").copy()
                self.partitions[broker].commit(g.members)
                self._used_current.update(self.current(g))
                self.released.append({"id": g.id, "broker": broker, "size": g.size})
                continue
            ref = a if isinstance(a, Refusal) else Refusal("no_answer" if a is None else "bad_sum")
            self._refusals.setdefault(g.id, {})[broker] = ref
            rec: dict[str, Any] = {"id": g.id, "broker": broker, "reason": ref.reason}
            if ref.missing:
                rec["mismatched" if ref.reason == MISMATCH else "missing"] = list(ref.missing)
            self.refused.append(rec)

    # ------------------------------------------------------------ what the answers change

    def resolve(self, groups: Sequence[Group]) -> list[Group]:
        refs_by_group = {g.id: self._refusals.pop(g.id) for g in groups if g.id in self._refusals}
        failed_parents = {
            g.parent.id for g in groups if g.parent is not None and g.id in refs_by_group
        }
        out: list[Group] = []
        reinstated: set[str] = set()
        reduced: list[tuple[Group, list[tuple[str, int]], int]] = []
        for g in groups:
            if g.parent is not None and g.parent.id in failed_parents:
                p = g.parent
                if p.id not in reinstated:
                    reinstated.add(p.id)
                    self.frozen.add(p.id)
                    out.append(p)
                continue
            refs = refs_by_group.get(g.id)
            if not refs:
                out.append(g)
                continue
            members = set(g.members)
            if (g.id not in self._check_ids and any(r.reason == CHECKSUM for r in refs.values())
                    and all(r.reason == CHECKSUM or r.names_within(members)
                            for r in refs.values())):
                self._check_ids.add(g.id)  # ask again naming each member's report id
                out.append(g)
                continue
            if all(r.names_within(members) for r in refs.values()) and any(
                    r.reason == MISMATCH for r in refs.values()):
                named: dict[str, str] = {}
                for b, r in refs.items():
                    for h in r.missing:
                        if h not in named:
                            named[h] = b
                            if r.reason == MISMATCH:
                                self._exclude(h, "report_mismatch", g.id, b,
                                              "its report id at the mask broker is not the one "
                                              "of its plan report")
                            else:
                                self._exclude(h, "mask_missing", g.id, b)
                rest = [(h, m) for h, m in zip(g.members, g.mags, strict=True) if h not in named]
                reduced.append((g, rest, len(named)))
                continue
            missing_only = all(
                r.reason == MISSING and r.missing and set(r.missing) <= members
                for r in refs.values()
            )
            if missing_only and self._retried.get(g.id, 0) < self.missing_retries:
                self._retried[g.id] = self._retried.get(g.id, 0) + 1
                self.grace_due = True
                out.append(g)
                continue
            if missing_only and self._swap_to_carried(g, refs):
                out.append(g)  # asked again, the missing counted with their carried reports
                continue
            if missing_only:
                gone: dict[str, str] = {}
                for b, r in refs.items():
                    for h in r.missing:
                        gone.setdefault(h, b)
                for h, b in gone.items():
                    self._exclude(h, "mask_missing", g.id, b)
                rest = [(h, m) for h, m in zip(g.members, g.mags, strict=True) if h not in gone]
                reduced.append((g, rest, len(gone)))
                continue
            others = [(b, r) for b, r in refs.items() if not r.names_within(members)]
            b, r = others[0]
            why = "no_answer" if r.reason == "no_answer" else "refused"
            for h in g.members:
                self._exclude(h, why, g.id, b, r.reason)
        out.extend(self._reform(reduced))
        return out

    def finish(self, groups: Sequence[Group]) -> list[Group]:
        """The complete groups; the others give up (split undone, or members ``no_answer``)."""
        out: list[Group] = []
        seen: set[str] = set()
        for g in groups:
            if self.complete(g):
                if g.id not in seen:
                    seen.add(g.id)
                    out.append(g)
            elif g.parent is not None and self.complete(g.parent):
                self.frozen.add(g.parent.id)
                if g.parent.id not in seen:
                    seen.add(g.parent.id)
                    out.append(g.parent)
            else:
                missing = [b for b in self.brokers if b not in self.sums.get(g.id, {})]
                for h in g.members:
                    self._exclude(h, "no_answer", g.id, missing[0] if missing else None)
        # a parent reinstated above replaces its complete children as well
        parents = {g.id for g in out}
        return [g for g in out if g.parent is None or g.parent.id not in parents]

    def _swap_to_carried(self, g: Group, refs: Mapping[str, Refusal]) -> bool:
        """A broker has no mask for members whose plan arrived: count them with their latest
        released report instead, if every one has one and none was counted with this round's
        report in a released sum already (a broker counts a home with one report per round).
        So a lost mask costs its home the round, not its group."""
        missing = {h for r in refs.values() for h in r.missing}
        if not all(self.can_carry(h) and h not in self._used_current and h not in self.carried
                   for h in missing):
            return False
        for h in sorted(missing):
            self.carry(h)
        return True

    def _exclude(self, home: str, reason: str, group: str, broker: str | None,
                 detail: str = "") -> None:
        if home not in self.excluded:
            self.excluded[home] = Exclusion(home, reason, group, broker, detail)

    def _atoms_ok(self, members: Sequence[str]) -> bool:
        return all(self.partitions[b].check(members) is None for b in self.brokers)

    def _released_anywhere(self, g: Group) -> bool:
        return bool(self.sums.get(g.id))

    def _reform(self, reduced: list[tuple[Group, list[tuple[str, int]], int]]) -> list[Group]:
        """New groups for what is left of groups that lost members (module docstring)."""
        k = self.k
        out: list[Group] = []
        mergeable: list[Group] = []  # re-formed from never-released sources
        leftovers: list[tuple[Group, list[tuple[str, int]]]] = []
        for g, rest, dropped in reduced:
            if not rest:
                continue
            if len(rest) < k:
                if self._released_anywhere(g):
                    for h, _ in rest:
                        self._exclude(h, "group_too_small", g.id, None)
                else:
                    leftovers.append((g, rest))
                continue
            keep = rest
            if not self._atoms_ok([h for h, _ in keep]):
                need = k - dropped
                keep = rest[need:] if need > 0 else []
                if len(keep) < k or not self._atoms_ok([h for h, _ in keep]):
                    keep = []
            for h, _ in rest[: len(rest) - len(keep)]:
                self._exclude(h, "atom_guard", g.id, None)
            if keep:
                ng = make_group(child_id(g.id, "m"), keep)
                out.append(ng)
                if not self._released_anywhere(g):
                    mergeable.append(ng)
        pool: list[tuple[Group, list[tuple[str, int]]]] = []
        for g, rest in sorted(leftovers, key=lambda gr: -min(m for _, m in gr[1])):
            mag = min(m for _, m in rest)
            lower = [t for t in mergeable if t.magnification <= mag]
            higher = [t for t in mergeable if t.magnification > mag]
            target = (max(lower, key=lambda t: t.magnification) if lower
                      else min(higher, key=lambda t: t.magnification) if higher else None)
            if target is None:
                pool.append((g, rest))
                continue
            merged = make_group(
                child_id(target.id, "p"), [*zip(target.members, target.mags, strict=True), *rest]
            )
            if not self._atoms_ok(merged.members):
                pool.append((g, rest))
                continue
            out[out.index(target)] = merged
            mergeable[mergeable.index(target)] = merged
        everyone = [hm for _, rest in pool for hm in rest]
        if pool and len(everyone) >= k and self._atoms_ok([h for h, _ in everyone]):
            out.append(make_group(child_id(pool[0][0].id, "p"), everyone))
        else:
            for g, rest in pool:
                for h, _ in rest:
                    self._exclude(h, "group_too_small", g.id, None)
        return out

    # ------------------------------------------------------------ totals

    def total_quanta(self, g: Group) -> npt.NDArray[np.int64]:
        """The group's true total per frame, in quanta (requires ``complete(g)``); carried
        members count with their carried masked plan."""
        cur = self.current(g)
        acc = (self._arranged.group_sum(cur) if cur
               else np.zeros(self.frames, dtype=np.uint32))
        for h in self.carried_in(g):
            acc = acc + self.carried[h].vector()
        for b in self.brokers:
            acc = acc - self.sums[g.id][b]
        return unwrap(acc)


Ask = Callable[[str, list[Group]], Awaitable[Mapping[str, Answer]]]


def split_mismatch(ledger: SumLedger, groups: Sequence[Group]) -> str | None:
    """Why the parts of a split do not add up to their parent (mod 2^32), or None.  The brokers'
    sums must be consistent with each other and over time, or nothing they said can be
    trusted."""
    families: dict[str, list[Group]] = {}
    for g in groups:
        if g.parent is not None:
            families.setdefault(g.parent.id, []).append(g)
    for kids in families.values():
        parent = kids[0].parent
        assert parent is not None
        got = sum(ledger.total_quanta(g) for g in kids) % (1 << 32)
        if not np.array_equal(got, ledger.total_quanta(parent)):
            return (f"inconsistent mask sums: the parts of group {parent.id} "
                    f"({', '.join(g.id for g in kids)}) do not add up to it")
    return None


async def settle(
    ledger: SumLedger,
    groups: list[Group],
    ask: Ask,
    grace: Callable[[], Awaitable[None]],
    max_passes: int | None = None,
) -> list[Group]:
    """Ask until every group of ``groups`` (or what replaces it) has every broker's sum.

    ``ask(broker, groups)`` sends one request and returns the answers (an empty mapping after a
    timeout); the brokers are asked concurrently.  ``grace()`` waits before a missing-members
    retry.  Returns the complete groups (see SumLedger.finish).  ``max_passes`` defaults to
    MAX_PASSES plus the ledger's missing-members retries."""
    if max_passes is None:
        max_passes = MAX_PASSES + max(0, ledger.missing_retries - 1)
    for _ in range(max_passes):
        asks = ledger.requests(groups)
        if not asks:
            return groups
        if ledger.grace_due:
            ledger.grace_due = False
            await grace()
        answers = await asyncio.gather(*(ask(b, gs) for b, gs in asks.items()))
        for (b, gs), ans in zip(asks.items(), answers, strict=True):
            ledger.record(b, gs, ans)
        groups = ledger.resolve(groups)
    return ledger.finish(groups)
