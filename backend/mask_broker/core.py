"""The mask broker's state machine (the seed's mask server 30), without any I/O.

`MaskBroker.handle(topic, payload)` takes one MQTT message and returns what to do about it: a list
of `Record` (state to persist first) and `Publish` (messages to send, in order).  The adapter
(service.py) owns the sockets, the files and the clock; the rules live here and in release.py.

Per message family (docs/protocol.md, docs/privacy.md):

* round announcement: the current (day, round, frames).  A new round drops the previous round's
  masks (a home's latest *released* report is kept: it can be carried forward, below).  The
  release partition is never reset: it covers every group answered over the deployment's life
  (docs/privacy.md).  An announcement is refused when its day is earlier than the current one
  (``stale_round``), outside the window this broker's own clock allows (``day_window``: today or
  the next ``days_ahead`` days in the deployment's time zone) or beyond the rounds a day may
  have (``too_many_rounds``).  Until the first announcement is known, masks and group requests
  are held (bounded) and handled in arrival order right after it, so a persistent session's
  queued messages that overtake the retained announcement are not lost.
* mask report, checked in this order: topic home == payload home (``home_mismatch``),
  registered (``unregistered``), current round (``unknown_round``), MAC (``bad_mac``), seed
  length (``bad_seed``), report id not seen this round (``replay``), home not already in this
  round (``duplicate_home``).  Accepted: the seed is kept, and expanded into a uint32 row in
  a batch when a group request first needs it (``RoundMasks``).  The home gets a reply either
  way (when the topic names a valid home id).  A redelivered mask (the same
  report again, e.g. after a restart) is a ``replay``: it changes nothing.  There is no deadline
  here: the coordinator alone decides which reports count (it closes collection), and a mask that
  came too late is simply never asked for.
* group request: each group, in request order, is refused with a reason or answered with the
  uint32 sum of its members' masks.  The release rule sees every group answered before, ever,
  including the earlier groups of this very request.  Asking the same group again (a
  coordinator re-asking after a restart or a lost answer) gets the same sum.  Members the
  request names as ``carried`` are counted with their latest released report of an earlier round
  (a home that missed this round keeps its atom releasable: docs/privacy.md, "Over time"); the
  others with this round's mask.  Within a round every home counts with one report only
  (``report_conflict`` otherwise), so no two sums differ by one home's two reports.

Stragglers and dropouts are reported in the stats (``round_homes``): homes with a mask this round
that are in no released group (their plan never reached the coordinator, came late, or the home was
excluded) and homes a request named that have no mask here (``missing``).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import time
from collections import Counter, deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
from numpy.typing import NDArray

from backend.common import fastjson
from backend.common.fastcheck import RoundKey, fast_mask_report
from backend.common.rejects import Rejections
from backend.common.vectors import U32
from hemsfw import protocol, protocol_svc

from . import unseal
from .release import Partition

log = logging.getLogger("hems.mask_broker")

#: Members over all groups of one request, per registered home (groups may nest: a group and
#: its parts in the same request).
MEMBERS_PER_HOME = 8
#: Messages held while no round announcement is known yet.
PENDING_MAX = 200_000
#: Group outcomes kept in the stats (the most recent ones).
RECENT_GROUPS = 1000
#: Home ids listed per kind in the stats' ``round_homes``.
LISTED_HOMES = 1000
#: Seeds expanded per step of ``RoundMasks._expand``.
EXPAND_CHUNK = 4096

_DIGEST = np.dtype("<u8")  # SHA-256 of a report id as 4 words, for a vectorised XOR checksum


@dataclass(frozen=True)
class Publish:
    topic: str
    payload: bytes
    qos: int = 1


@dataclass(frozen=True)
class Record:
    """State the adapter persists before the publishes that follow it in the output list.

    kind "round": {day, round, frames}; "mask": {day, round, home, report_id, seed (hex)};
    "release": {day, round, req, group, members}."""

    kind: str
    data: dict[str, Any]


Output = Publish | Record


@dataclass(frozen=True)
class Round:
    day: str
    round: int
    frames: int


@dataclass(frozen=True)
class DayWindow:
    """Which planned days this broker accepts a round for, by its own clock: today and the next
    ``days_ahead`` days in the deployment's time zone.  A coordinator (or the MQTT operator) that
    announces other days is refused: days follow the clock, not the announcer."""

    timezone: str = "UTC"
    days_ahead: int = 1

    def allows(self, day: str, now: float) -> bool:
        today = dt.datetime.fromtimestamp(now, ZoneInfo(self.timezone)).date()
        try:
            d = dt.date.fromisoformat(day)
        except ValueError:
            return False
        return 0 <= (d - today).days <= self.days_ahead


class RoundMasks:
    """The accepted masks of one round: one uint32 row per home, summed with numpy.

    Ingest only keeps what a mask is (its validated 32-byte seed and its report id, in row
    order); the rows (SHA-256 counter-mode expansion, ~6 us per seed) and the report-id
    digests are computed in one batch when a group request first needs them (``rows``,
    ``digests``), after collection, instead of on the ingest path where the mask broker shares
    the CPU with the coordinator and mosquitto (docs/scaling.md).  Masks that arrive after a
    request are expanded at the next one."""

    def __init__(self, n_homes: int, frames: int) -> None:
        self.frames = frames
        self.row_of = np.full(n_homes, -1, dtype=np.int64)  # home index -> row (-1: none)
        self.count = 0
        self.report_ids: set[str] = set()
        self.released = np.zeros(n_homes, dtype=bool)  # home index -> in a released group
        self.missing: set[int] = set()  # home indices a request named without a mask here
        self._seeds = bytearray()  # the accepted seeds, SEED_LEN bytes each, in row order
        self._rids: list[str] = []  # their report ids, in row order
        self._rows = np.zeros((0, frames), dtype=U32)  # rows [0, _expanded) are expanded
        self._digests = np.zeros((0, 4), dtype=_DIGEST)
        self._expanded = 0

    def report(self, row: int) -> tuple[str, bytes]:
        """(report id, seed) of a row."""
        k = protocol.SEED_LEN
        return self._rids[row], bytes(self._seeds[row * k: (row + 1) * k])

    def add(self, home: int, report_id: str, seed: bytes) -> None:
        """Keep an accepted seed (already checked: SEED_LEN bytes) as the next row."""
        self._seeds += seed
        self._rids.append(report_id)
        self.row_of[home] = self.count
        self.report_ids.add(report_id)
        self.count += 1

    @property
    def rows(self) -> NDArray[np.uint32]:
        """Every accepted row, expanded (``(count, frames)``; expands the pending seeds)."""
        self._expand()
        return self._rows[: self.count]

    @property
    def digests(self) -> NDArray[np.uint64]:
        """SHA-256 of each row's report id as 4 words (``(count, 4)``)."""
        self._expand()
        return self._digests[: self.count]

    def _expand(self) -> None:
        """Expand the seeds (and digest the report ids) added since the last call, into rows
        grown by doubling up to one per home."""
        lo, hi = self._expanded, self.count
        if lo == hi:
            return
        if hi > len(self._rows):
            cap = min(max(hi, 2 * len(self._rows)), max(hi, len(self.row_of)))
            rows = np.zeros((cap, self.frames), dtype=U32)
            digests = np.zeros((cap, 4), dtype=_DIGEST)
            rows[:lo], digests[:lo] = self._rows[:lo], self._digests[:lo]
            self._rows, self._digests = rows, digests
        k, f = protocol.SEED_LEN, self.frames
        sha, unhex = hashlib.sha256, bytes.fromhex
        for a in range(lo, hi, EXPAND_CHUNK):  # in chunks: no 100k-row temporaries
            b = min(hi, a + EXPAND_CHUNK)
            seeds = bytes(self._seeds[a * k: b * k])
            self._rows[a:b] = np.frombuffer(unseal.expand_seeds(seeds, f),
                                            dtype=U32).reshape(b - a, f)
            digest = b"".join([sha(unhex(r)).digest() for r in self._rids[a:b]])
            self._digests[a:b] = np.frombuffer(digest, dtype=_DIGEST).reshape(b - a, 4)
        self._expanded = hi

    def checksum(self, rows: NDArray[np.int64]) -> str:
        """protocol_svc.report_checksum of the rows' report ids (XOR of SHA-256), vectorised."""
        acc: NDArray[np.uint64] = np.bitwise_xor.reduce(self.digests[rows], axis=0)
        return acc.tobytes().hex()

    def total(self, rows: NDArray[np.int64]) -> NDArray[np.uint32]:
        """The rows' sum mod 2^32 per frame."""
        out: NDArray[np.uint32] = self.rows[rows].sum(axis=0, dtype=U32)
        return out


class Stats:
    """What the service did, for --stats-file (docs/privacy.md, "Stats")."""

    def __init__(self) -> None:
        self.masks_accepted = 0
        self.requests = 0
        self.released = 0
        self.refused: Counter[str] = Counter()
        self.recent: deque[dict[str, Any]] = deque(maxlen=RECENT_GROUPS)

    def group(self, req: str, day: str, rnd: int, gid: str, size: int,
              reason: str | None, missing: int = 0) -> None:
        entry: dict[str, Any] = {"req": req, "day": day, "round": rnd, "group": gid,
                                 "size": size}
        if reason is None:
            self.released += 1
            entry["status"] = "released"
        else:
            self.refused[reason] += 1
            entry["status"] = "refused"
            entry["reason"] = reason
            if missing:
                entry["missing"] = missing
        self.recent.append(entry)


def _refused(gid: str, reason: str, missing: Sequence[str] = ()) -> dict[str, Any]:
    r: dict[str, Any] = {"id": gid, "status": "refused", "reason": reason}
    if missing:
        r["missing"] = list(missing)
    return r


def decode_request(payload: bytes) -> Any:
    """A group request may be larger than a home's message (it names up to every home)."""
    return protocol.decode(payload, protocol.MAX_GROUP_PAYLOAD)


#: A group refusal naming the members whose report id differs from the coordinator's.
REPORT_MISMATCH = "report_mismatch"

#: rounds a planned day may have (round numbers above it are refused: ``too_many_rounds``)
MAX_ROUNDS = 8


class MaskBroker:
    def __init__(self, broker_id: str, keys: Mapping[str, bytes], k: int,
                 logger: logging.Logger = log, clock: Callable[[], float] = time.time,
                 window: DayWindow | None = None, max_rounds: int = MAX_ROUNDS) -> None:
        """keys: registered home id -> that home's 32-byte key for this broker.  clock: the
        deployment's time (epoch s); window: the days a round may be announced for (None: any,
        for tests of other rules); max_rounds: rounds a day may have."""
        if not protocol.valid_id(broker_id):
            raise ValueError(f"bad broker id {broker_id!r}")
        for h, key in keys.items():
            if not protocol.valid_id(h) or len(key) != 32:
                raise ValueError(f"bad registry entry for {h!r}")
        self.id = broker_id
        self.k = k
        self.log = logger
        self.homes = sorted(keys)
        self.index = {h: i for i, h in enumerate(self.homes)}
        #: per home (k_enc, k_mac), derived once here instead of twice per mask
        self.keys = [unseal.derive(keys[h]) for h in self.homes]
        self.rejections = Rejections(logger)
        self.stats = Stats()
        self.round: Round | None = None
        self.masks = RoundMasks(0, 1)
        self.key: RoundKey | None = None  # the round's fast accept path (fastcheck.py)
        self._reply_topic = protocol.t_reply(self.id, "")
        self.partition = Partition(k)
        self.clock = clock
        self.window = window
        self.max_rounds = max_rounds
        #: home index -> its latest released report (report id, seed): what a carried member
        #: of a later round counts with
        self.carried: dict[int, tuple[str, bytes]] = {}
        #: home index -> the report it counted with in a released group of this round
        self.used: dict[int, str] = {}
        self.version = 0  # bumped whenever the stats change
        self._pending: deque[tuple[str, bytes]] = deque()

    def subscriptions(self) -> list[tuple[str, int]]:
        return [(protocol.t_round(), 1), (protocol.t_mask(self.id, "+"), 1),
                (protocol_svc.t_groupreq(self.id), 1)]

    # ------------------------------------------------------------ dispatch

    def handle(self, topic: str, payload: bytes) -> list[Output]:
        """One message in, what to persist and publish out.  Never raises."""
        self.version += 1
        try:
            if topic == protocol.t_round():
                return self._on_round(payload)
            if self.round is None and self._is_held(topic):
                if len(self._pending) < PENDING_MAX:
                    self._pending.append((topic, payload))
                    return []
                self.rejections.reject("held", "unknown_round", topic)
                return []
            if topic == protocol_svc.t_groupreq(self.id):
                return self._on_group_request(payload)
            tail = protocol.topic_tail(topic, "mask")
            if tail is not None:
                return self._on_mask(topic, tail, payload)
            self.rejections.reject("topic", "unexpected_topic", topic)
        except Exception:  # defence in depth: one bad message must not stop the service
            self.log.exception("internal error on %r", topic)
            self.rejections.reject("internal", "internal_error", topic)
        return []

    def _is_held(self, topic: str) -> bool:
        return topic == protocol_svc.t_groupreq(self.id) or topic.startswith(
            protocol.t_mask(self.id, ""))

    # ------------------------------------------------------------ rounds

    def _start_round(self, day: str, rnd: int, frames: int) -> None:
        self.round = Round(day, rnd, frames)
        self.used = {}
        self.key = RoundKey(day, rnd, "ok")
        self.masks = RoundMasks(len(self.homes), frames)

    def _on_round(self, payload: bytes) -> list[Output]:
        try:
            ann = protocol.parse_round(protocol.decode(payload))
        except ValueError as e:
            self.rejections.reject("round", str(e), protocol.t_round())
            return []
        day, rnd, frames = ann["day"], ann["round"], ann["frames"]
        cur = self.round
        if cur is not None and (day, rnd) == (cur.day, cur.round):
            if frames != cur.frames:
                self.rejections.reject("round", "round_conflict", protocol.t_round())
            return []  # the retained announcement again (reconnect): keep the masks
        if cur is not None and day < cur.day:
            self.rejections.reject("round", "stale_round", protocol.t_round(), day)
            return []
        if self.window is not None and not self.window.allows(day, self.clock()):
            self.rejections.reject("round", "day_window", protocol.t_round(), day)
            return []
        if rnd > self.max_rounds:
            self.rejections.reject("round", "too_many_rounds", protocol.t_round(),
                                   f"{day}/{rnd}")
            return []
        out: list[Output] = []
        if cur is not None:  # the state dir keeps the partition and the carried reports
            out.append(Record("compact", self.snapshot()))
        self._start_round(day, rnd, frames)
        self.log.info("round %s/%d (%d frames)", day, rnd, frames)
        out.append(Record("round", {"day": day, "round": rnd, "frames": frames}))
        while self._pending:
            out += self.handle(*self._pending.popleft())
        return out

    # ------------------------------------------------------------ masks

    def _on_mask(self, topic: str, tail: list[str], payload: bytes) -> list[Output]:
        if len(tail) != 2 or tail[0] != self.id or not protocol.valid_id(tail[1]):
            self.rejections.reject("mask", "bad_topic", topic)
            return []
        home = tail[1]
        key = self.key
        if key is not None:
            # The fast path (backend/common/fastcheck.py): a report the full parse below
            # would accept for this home and round; anything else takes the full path, which
            # gives the reason.  Same decisions, same reasons.
            fast = fast_mask_report(payload, home, key)
            if fast is not None:
                rid = fast[0]
                try:
                    record = self._accept(home, home, key.day, key.round, rid, fast[1])
                except ValueError as e:
                    reason = str(e)
                    self.rejections.reject("mask", reason, topic)
                    reply = protocol_svc.make_reply(key.day, key.round, rid, False, reason)
                    return [Publish(self._reply_topic + home, fastjson.dumps(reply))]
                self.stats.masks_accepted += 1
                return [record, Publish(self._reply_topic + home, key.accepted_reply(rid))]
        return self._on_mask_full(topic, tail, payload)

    def _on_mask_full(self, topic: str, tail: list[str], payload: bytes) -> list[Output]:
        """The full path: every check in order, with the parser's reason on a refusal."""
        day: str | None = None
        rnd: int | None = None
        rid: str | None = None
        out: list[Output] = []
        try:
            home, day, rnd, rid, blob = protocol_svc.parse_mask_report(fastjson.decode(payload))
            record = self._accept(tail[1], home, day, rnd, rid, blob)
            out.append(record)
            self.stats.masks_accepted += 1
            ok, reason = True, "ok"
        except ValueError as e:
            ok, reason = False, str(e)
            self.rejections.reject("mask", reason, topic)
        reply = protocol_svc.make_reply(day, rnd, rid, ok, reason)
        out.append(Publish(protocol.t_reply(self.id, tail[1]), fastjson.dumps(reply)))
        return out

    def _accept(self, topic_home: str, home: str, day: str, rnd: int, rid: str,
                blob: bytes) -> Record:
        """Check an authentic, fresh, first mask of the round and store it, or ValueError."""
        if home != topic_home:
            raise ValueError("home_mismatch")
        i = self.index.get(home)
        if i is None:
            raise ValueError("unregistered")
        cur = self.round
        if cur is None or (day, rnd) != (cur.day, cur.round):
            raise ValueError("unknown_round")
        seed = unseal.open_sealed(self.keys[i],
                                  protocol.mask_ad(self.id, home, day, rnd, rid), blob)
        if len(seed) != protocol.SEED_LEN:
            raise ValueError("bad_seed")
        if rid in self.masks.report_ids:
            raise ValueError("replay")
        if self.masks.row_of[i] >= 0:
            raise ValueError("duplicate_home")
        self.masks.add(i, rid, seed)
        return Record("mask", {"day": day, "round": rnd, "home": home, "report_id": rid,
                               "seed": seed.hex()})

    # ------------------------------------------------------------ group requests

    def _on_group_request(self, payload: bytes) -> list[Output]:
        topic = protocol_svc.t_groupreq(self.id)
        try:
            req, day, rnd, groups = protocol_svc.parse_group_request(
                decode_request(payload), MEMBERS_PER_HOME * max(1, len(self.homes)))
        except ValueError as e:
            self.rejections.reject("groupreq", str(e), topic)
            return []
        self.stats.requests += 1
        cur = self.round
        out: list[Output] = []
        results = []
        if cur is None or (day, rnd) != (cur.day, cur.round):
            self.rejections.reject("groupreq", "unknown_round", topic, f"{day}/{rnd}")
            for gid, members, *_ in groups:
                self.stats.group(req, day, rnd, gid, len(members), "unknown_round")
                results.append(_refused(gid, "unknown_round"))
        else:
            for entry in groups:
                gid, members, checksum = entry[0], entry[1], entry[2]
                carried = list(entry[3]) if len(entry) > 3 else []
                rids = list(entry[4]) if len(entry) > 4 else []
                result = self._group(gid, members, checksum, carried, rids)
                reason = result.get("reason")
                self.stats.group(req, day, rnd, gid, len(members), reason,
                                 len(result.get("missing", ())))
                if reason is None:
                    out.append(Record("release", {"day": day, "round": rnd, "req": req,
                                                  "group": gid, "members": members,
                                                  "carried": carried}))
                else:
                    self.log.info("group %s/%s refused: %s", req, gid, reason)
                results.append(result)
        reply = protocol_svc.make_group_sums(req, self.id, day, rnd, results)
        out.append(Publish(protocol_svc.t_groupsum(self.id), protocol.encode(reply)))
        return out

    def _group(self, gid: str, members: list[str], checksum: str,
               carried: Sequence[str] = (), report_ids: Sequence[str] = ()) -> dict[str, Any]:
        """One group's result: refused with a reason, or released with its sum.  With
        ``report_ids`` (one per member) the members whose report id is not the one this broker
        counts them with are named (``report_mismatch``, list ``mismatched``): a function of
        report ids only, never of a mask or a plan."""
        if len(set(members)) != len(members):
            return _refused(gid, "duplicate_members")
        get = self.index.get
        idx = np.fromiter((get(h, -1) for h in members), dtype=np.int64, count=len(members))
        if bool(np.any(idx < 0)):
            return _refused(gid, "unregistered_member")
        if len(members) < self.k:
            return _refused(gid, "too_small")
        carry = set(carried)
        if not carry <= set(members):
            return _refused(gid, "bad_carried")
        is_carried = np.fromiter((h in carry for h in members), dtype=bool, count=len(members))
        rows = self.masks.row_of[idx]
        have = np.where(is_carried, [int(i) in self.carried for i in idx], rows >= 0)
        absent = np.flatnonzero(~have)
        if len(absent):
            self.masks.missing.update(int(idx[j]) for j in absent if not is_carried[j])
            return _refused(gid, "missing_members", [members[j] for j in absent])
        current = np.flatnonzero(~is_carried)
        old = np.flatnonzero(is_carried)
        rids = {int(idx[j]): self.masks.report(int(rows[j]))[0] for j in current.tolist()}
        rids.update({int(idx[j]): self.carried[int(idx[j])][0] for j in old.tolist()})
        if report_ids:
            wrong = [h for h, i, r in zip(members, idx.tolist(), report_ids, strict=True)
                     if rids[int(i)] != r]
            if wrong:
                return {"id": gid, "status": "refused", "reason": REPORT_MISMATCH,
                        "mismatched": wrong}
        if any(self.used.get(i, r) != r for i, r in rids.items()):
            return _refused(gid, "report_conflict")
        digest = np.bitwise_xor.reduce(self.masks.digests[rows[current]], axis=0) if len(
            current) else np.zeros(4, dtype=_DIGEST)
        for j in old.tolist():
            d = hashlib.sha256(bytes.fromhex(self.carried[int(idx[j])][0])).digest()
            digest = digest ^ np.frombuffer(d, dtype=_DIGEST)
        if digest.tobytes().hex() != checksum:
            return _refused(gid, "checksum_mismatch")
        reason = self.partition.release(members)
        if reason is not None:
            return _refused(gid, reason)
        total = self.masks.total(rows[current]) if len(current) else np.zeros(
            self.masks.frames, dtype=U32)
        if len(old):
            seeds = b"".join(self.carried[int(idx[j])][1] for j in old.tolist())
            exp = np.frombuffer(unseal.expand_seeds(seeds, self.masks.frames),
                                dtype=U32).reshape(len(old), self.masks.frames)
            total = (total + exp.sum(axis=0, dtype=U32)).astype(U32)
        self._released(idx, rows, is_carried, rids)
        return {"id": gid, "status": "released", "sum": protocol.b64(total.tobytes())}

    def _released(self, idx: NDArray[np.int64], rows: NDArray[np.int64],
                  is_carried: NDArray[np.bool_], rids: Mapping[int, str]) -> None:
        """A release fixes each member's report for the round; this round's reports become
        the members' latest released ones (what a later round may carry)."""
        self.used.update(rids)
        cur = idx[~is_carried]
        self.masks.released[cur] = True
        for i, r in zip(cur.tolist(), rows[~is_carried].tolist(), strict=True):
            self.carried[i] = self.masks.report(r)

    def snapshot(self) -> dict[str, Any]:
        """What outlives a round (the state dir's compaction): the release partition and each
        home's latest released report."""
        return {"partition": self.partition.snapshot(),
                "carried": {self.homes[i]: [r, s.hex()] for i, (r, s) in
                            sorted(self.carried.items())}}

    # ------------------------------------------------------------ restart

    def restore(self, kind: str, data: Mapping[str, Any]) -> None:
        """Replay a persisted Record (service start-up).  ValueError if it does not fit."""
        try:
            if kind == "compact":
                self.partition = Partition.load(data["partition"], self.k)
                self.carried = {}
                for h, (rid, seed) in data["carried"].items():
                    i = self.index.get(h)
                    if i is not None:  # a home no longer registered is not carried
                        self.carried[i] = (str(rid), bytes.fromhex(seed))
                return
            day, rnd = data["day"], data["round"]
            cur = self.round
            if kind == "round":
                self._start_round(day, rnd, int(data["frames"]))
            elif kind == "release":
                members = [str(h) for h in data["members"]]
                self.partition.commit(members)  # idempotent for a release seen before
                if cur is not None and (day, rnd) == (cur.day, cur.round):
                    carry = set(data.get("carried") or [])
                    idx = np.array([self.index[h] for h in members], dtype=np.int64)
                    rows = self.masks.row_of[idx]
                    is_carried = np.array([h in carry for h in members], dtype=bool)
                    if bool(np.any((rows < 0) & ~is_carried)):
                        raise ValueError("release of a mask that is not in the round")
                    rids = {int(i): self.masks.report(int(r))[0]
                            for i, r, c in zip(idx, rows, is_carried, strict=True) if not c}
                    rids.update({int(i): self.carried[int(i)][0]
                                 for i, c in zip(idx, is_carried, strict=True)
                                 if c and int(i) in self.carried})
                    self._released(idx, rows, is_carried, rids)
            elif kind == "mask":
                if cur is None or (day, rnd) != (cur.day, cur.round):
                    raise ValueError("mask record of another round")
                i = self.index.get(data["home"])
                rid = str(data["report_id"])
                seed = bytes.fromhex(data["seed"])
                if (i is None or self.masks.row_of[i] >= 0
                        or len(rid) != protocol.REPORT_ID_HEX or len(seed) != protocol.SEED_LEN):
                    raise ValueError("mask record does not fit the registry or round")
                self.masks.add(i, rid, seed)
            else:
                raise ValueError(f"unexpected record {kind!r}")
        except (KeyError, TypeError) as e:
            raise ValueError(f"malformed {kind!r} record") from e

    # ------------------------------------------------------------ stats

    def stats_dict(self) -> dict[str, Any]:
        s = self.stats
        cur = self.round
        atoms = self.partition.atom_sizes()
        return {
            "broker": self.id,
            "k": self.k,
            "homes_registered": len(self.homes),
            "round": None if cur is None else {"day": cur.day, "round": cur.round,
                                               "frames": cur.frames},
            "masks": {"accepted_total": s.masks_accepted, "this_round": self.masks.count},
            "rejections": self.rejections.as_dict(),
            "rejections_total": self.rejections.total(),
            "groups": {"requests": s.requests, "released": s.released,
                       "refused": sum(s.refused.values()),
                       "refused_by_reason": dict(sorted(s.refused.items()))},
            "atoms": {"count": len(atoms),
                      "min_size": int(atoms.min()) if len(atoms) else None},
            "carried_homes": len(self.carried),
            "round_homes": self._round_homes(),
            "recent_groups": list(s.recent),
        }

    def _round_homes(self) -> dict[str, Any]:
        """Stragglers and dropouts of the current round, as this broker sees them."""
        m = self.masks
        have = m.row_of >= 0
        unreleased = np.flatnonzero(have & ~m.released)
        missing = sorted(i for i in m.missing if m.row_of[i] < 0)
        return {
            "with_mask": int(have.sum()),
            "released": int((have & m.released).sum()),
            "unreleased": [self.homes[i] for i in unreleased[:LISTED_HOMES]],
            "missing": [self.homes[i] for i in missing[:LISTED_HOMES]],
        }
