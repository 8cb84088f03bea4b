"""The coordinator as a long-running service: rounds on a schedule, day after day.

``Daemon`` owns the rounds that are still open (a round stays open until its planned day has
ended: it serves re-sends to homes that come back), starts each scheduled round when its
announcement is due (schedule.py), routes every incoming message to the round it belongs to,
keeps ``status.json`` up to date, and archives what is finished.  One-shot mode (``--day``) is
the same daemon with one fixed round and no schedule: it returns when that round ends.

Restarts.  Every round has its own journal in the state dir (journal.py).  A daemon started at
any moment (after a kill -9 too) looks at the schedule around the clock: a round with a journal
is resumed where it stood (round.py replays it); a round whose announcement is due but has no
journal is announced now, if its deadline has not passed (else it was missed: recorded as such,
the homes follow their own plans); a round whose day has ended is archived.  Nothing is announced
twice with different contents: the announcement is journaled before it is published, and a
resumed round re-publishes the very same one.

The state dir (docs/operations.md)::

    round-<day>-<round>.jsonl    the journal of a round (and .w<i>.jsonl per --workers process)
    results/<day>-r<round>.json  its record (record.py), written when it completes, fails or ends
    status.json                  where every open round stands, rewritten at every phase change
    supply.json                  the latest capacity profiles (the grid feed may be down later)

A round's journal is deleted ``keep_journal_days`` days after its planned day ended (its record
stays); records older than ``keep_result_days`` days are deleted: the state dir does not grow
without bound.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from backend.common import fastjson
from backend.common.files import write_atomic
from backend.coordinator.journal import Journal
from backend.coordinator.lifecycle import Phase
from backend.coordinator.memory import Memory
from backend.coordinator.ports import Clock, Transport
from backend.coordinator.record import round_record
from backend.coordinator.round import IntakePool, Round, RoundFailed, RoundSettings
from backend.coordinator.schedule import RoundTime, Schedule
from backend.coordinator.supply import SupplyBook
from hemsfw import protocol, protocol_svc

__all__ = ["Daemon", "DaemonConfig", "Replies"]

log = logging.getLogger("hems.coordinator")

Replies = list[tuple[str, bytes]]
_GROUPSUM = protocol.PREFIX + "/groupsum/"
_FLPVER = protocol.PREFIX + "/flpver/"
_STATUS = protocol.PREFIX + "/status/"
_PLAN = protocol.PREFIX + "/plan/"


@dataclass(frozen=True)
class DaemonConfig:
    #: every round's settings; day, round, start, deadline and serve_until come from the
    #: schedule (daemon) or are the one round's own (one-shot)
    template: RoundSettings
    schedule: Schedule | None = None
    state_dir: Path | None = None
    keep_journal_days: int = 2
    keep_result_days: int = 400


class Daemon:
    def __init__(self, cfg: DaemonConfig, clock: Clock, supply: SupplyBook,
                 on_record: Callable[[Round, dict[str, Any]], None] | None = None,
                 pool: Callable[[], IntakePool | None] = lambda: None) -> None:
        if cfg.schedule is not None and cfg.state_dir is None:
            raise ValueError("a scheduled coordinator needs a state dir (--state-dir)")
        self.cfg = cfg
        self.clock = clock
        self.supply = supply
        self.out: Transport | None = None
        self.on_record = on_record
        self.pool = pool
        t = cfg.template
        #: what the rounds leave for the next ones (memory.py); ValueError if unreadable
        self.memory = Memory.load(cfg.state_dir, t.k, t.brokers)
        self.open: list[Round] = []
        self.current: Round | None = None
        self.finished: list[tuple[Round, str | None]] = []  # (round, error) in end order
        self.next_round: RoundTime | None = None
        self.started_at = time.time()
        #: adapter facts for the status file (connected, connects), set by __main__
        self.link_info: Callable[[], dict[str, Any]] = dict

    def attach(self, out: Transport) -> None:
        self.out = out

    # ------------------------------------------------------------ running

    async def run(self) -> None:
        """One-shot: until the round ends (RoundFailed if it fails).  Scheduled: for ever."""
        if self.cfg.schedule is None:
            r = self._open(self.cfg.template)
            await self._drive(r, raise_failure=True)
            return
        self._prune()
        async with asyncio.TaskGroup() as tg:
            for rt in self.cfg.schedule.from_(self.clock.now()):
                due = await self._due(rt)
                if due is not None:
                    tg.create_task(self._drive(due), name=f"round {rt.day}/{rt.round}")

    async def _due(self, rt: RoundTime) -> Round | None:
        """The round of ``rt`` to run now, after waiting for its announcement; None when it is
        over (archived) or was missed."""
        s = self._settings(rt)
        journal = self._journal(s)
        known = journal is not None and journal.path.exists()
        now = self.clock.now()
        if rt.end <= now:
            if known:
                self._expire(s)
            return None
        if not known:
            if rt.deadline <= now:
                self._missed(s, "the coordinator was not running between the announcement "
                                "time and the deadline")
                return None
            self.next_round = rt
            self.write_status()
            await self.clock.sleep_until(rt.announce_at)
            self.next_round = None
        return self._open(s)

    def _settings(self, rt: RoundTime) -> RoundSettings:
        return replace(self.cfg.template, day=rt.day, round=rt.round, start=rt.start,
                       deadline=rt.deadline, serve_until=float(rt.end))

    def _journal(self, s: RoundSettings) -> Journal | None:
        d = self.cfg.state_dir
        return None if d is None else Journal(d, s.day, s.round)

    def _open(self, s: RoundSettings) -> Round:
        assert self.out is not None, "attach() a transport first"
        r = Round(s, self.out, self.clock, self.supply, self._journal(s), self.pool(),
                  self.memory)
        r.life_changed = self._phase_changed
        self.open.append(r)
        self.current = r
        return r

    async def _drive(self, r: Round, raise_failure: bool = False) -> None:
        error: str | None = None
        try:
            await r.run()
        except RoundFailed as e:
            error = str(e)
            if raise_failure:
                raise
        except asyncio.CancelledError:
            if not r.life.adjusted:
                error = "terminated by a signal before the round completed"
            raise
        finally:
            self._close(r, error)

    def _close(self, r: Round, error: str | None) -> None:
        if r in self.open:
            self.open.remove(r)
        self.finished.append((r, error))
        self._record(r, error)
        if r.journal is not None:
            r.journal.close()
        self.write_status()
        if self.cfg.schedule is not None:
            self._prune()

    def _phase_changed(self, r: Round) -> None:
        # What the next rounds must know (the brokers' partitions, the reports they may
        # carry, the grouping), fsync'ed.  As soon as the sums are in and the groups final
        # (publishing), not only once every adjustment is acknowledged: the mask brokers took
        # this round's reports as the homes' latest released ones when they answered, and a
        # next round that closes before the adjustments are all out (a slow or disconnected
        # broker) must carry the same reports, or its requests are refused (report_mismatch)
        # and the divergence stays.  Absorbing the same round twice changes nothing.
        if r.phase in (Phase.PUBLISHING, Phase.SERVING) and self.memory.absorb(
                r.key, *r.settled()):
            self.memory.save(self.cfg.state_dir)
        if r.phase is Phase.SERVING:
            self._record(r, None)  # completed: its record is there while it serves on
        self.write_status()

    # ------------------------------------------------------------ routing (mqtt_adapter)

    def dispatch(self, topic: str, payload: bytes, retained: bool, out: Replies,
                 batch: bool) -> None:
        try:
            self._dispatch(topic, payload, retained, out, batch)
        except Exception:  # no payload may stop the service
            log.exception("internal error handling a message on %r", topic)
            if self.current is not None:
                self.current.rejections.reject("message", "internal_error", topic)

    def _dispatch(self, topic: str, payload: bytes, retained: bool, out: Replies,
                  batch: bool) -> None:
        cur = self.current
        if topic.startswith(_PLAN):
            if cur is not None:
                cur.take_plan(topic, payload, retained, out, flush=not batch)
        elif topic.startswith(_GROUPSUM):
            self._route_groupsum(topic, payload)
        elif topic.startswith(_FLPVER):
            self._route_flpver(topic, payload)
        elif topic.startswith(protocol_svc.t_capacity()):
            why = self.supply.offer(topic, payload, self.clock.now())
            if why is not None and cur is not None:
                cur.rejections.reject("capacity", why, topic)
            self._save_supply()
        elif topic.startswith(_STATUS):
            home = topic[len(_STATUS):]
            if not protocol.valid_id(home) or payload not in (b"online", b"offline"):
                if cur is not None:
                    cur.rejections.reject("status", "bad_home" if not protocol.valid_id(home)
                                          else "bad_status", topic)
                return
            for r in self.open:
                r.take_status(home, payload, retained)
        elif cur is not None:
            cur.rejections.reject("message", "unexpected_topic", topic)

    def _route_groupsum(self, topic: str, payload: bytes) -> None:
        """To the round that asked (its request id), else the current one (which refuses it)."""
        req = None
        try:
            obj = fastjson.loads(payload)
            req = obj.get("req") if isinstance(obj, dict) else None
        except ValueError:
            pass
        for r in self.open:
            if isinstance(req, str) and r.asked(req):
                r.take_groupsum(topic, payload)
                return
        if self.current is not None:
            self.current.take_groupsum(topic, payload)

    def _route_flpver(self, topic: str, payload: bytes) -> None:
        """Range-proof answers: to the round that asked, else the current one (refuses it)."""
        req = None
        try:
            obj = fastjson.loads(payload)
            req = obj.get("req") if isinstance(obj, dict) else None
        except ValueError:
            pass
        for r in self.open:
            if isinstance(req, str) and r.asked_flp(req):
                r.take_flpver(topic, payload)
                return
        if self.current is not None:
            self.current.take_flpver(topic, payload)

    async def commit(self) -> None:
        for r in list(self.open):
            await r.commit()

    def sync(self) -> None:
        cur = self.current
        if cur is not None and cur.journal is not None:
            cur.journal.sync()

    def republish(self) -> list[tuple[str, bytes, bool]]:
        out: list[tuple[str, bytes, bool]] = []
        for r in self.open:
            out += r.republish(announcement=r is self.current)
        return out

    # ------------------------------------------------------------ the state dir

    def _result_path(self, day: str, rnd: int) -> Path | None:
        d = self.cfg.state_dir
        return None if d is None else d / "results" / f"{day}-r{rnd}.json"

    def _record(self, r: Round, error: str | None) -> None:
        done = r.phase in (Phase.SERVING, Phase.ENDED)
        rec = round_record(r, "completed" if done else "failed", error)
        if self.on_record is not None:
            self.on_record(r, rec)
        path = self._result_path(r.s.day, r.s.round)
        if path is not None and self.cfg.schedule is not None:
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            write_atomic(path, json.dumps(rec, indent=1) + "\n")

    def _expire(self, s: RoundSettings) -> None:
        """A journaled round whose day ended while the daemon was down: record it as it stood
        (completed if its adjustments had gone out), archive it."""
        path = self._result_path(s.day, s.round)
        if path is not None and path.exists():
            return  # recorded when it completed; the journal goes with the pruning
        try:
            r = Round(s, self._transport(), self.clock, self.supply, self._journal(s))
        except RoundFailed as e:
            log.error("round %s/%d: %s", s.day, s.round, e)
            return
        r.expire("the planned day ended while the coordinator was not running")
        self._record(r, r.life.reason)
        if r.journal is not None:
            r.journal.close()

    def _missed(self, s: RoundSettings, why: str) -> None:
        path = self._result_path(s.day, s.round)
        if path is None or path.exists():
            return
        log.warning("round %s/%d missed: %s; the homes follow their own plans", s.day, s.round,
                    why)
        r = Round(s, self._transport(), self.clock, self.supply, None)
        r.expire(f"missed: {why}")
        self._record(r, r.life.reason)

    def _transport(self) -> Transport:
        assert self.out is not None
        return self.out

    def _prune(self) -> None:
        """Delete journals of days ended ``keep_journal_days`` ago (their record stays) and
        records older than ``keep_result_days``."""
        d, sched = self.cfg.state_dir, self.cfg.schedule
        if d is None or sched is None:
            return
        today = sched.local_date(self.clock.now())
        open_keys = {(dt.date.fromisoformat(r.s.day), r.s.round) for r in self.open}
        for path in d.glob("round-*.jsonl"):
            parsed = _journal_key(path.name)
            if parsed is None or parsed in open_keys:
                continue
            day, _ = parsed
            if (today - day).days > self.cfg.keep_journal_days:
                log.info("deleting the journal %s (day over, record kept)", path.name)
                path.unlink(missing_ok=True)
        for path in (d / "results").glob("*.json"):
            try:
                day = dt.date.fromisoformat(path.name[:10])
            except ValueError:
                continue
            if (today - day).days > self.cfg.keep_result_days:
                path.unlink(missing_ok=True)

    def _save_supply(self) -> None:
        d = self.cfg.state_dir
        if d is not None and self.supply.fixed is None:
            try:
                # durable before the message is acknowledged: a restart after a broker that
                # lost the retained profile still has it
                write_atomic(d / "supply.json", json.dumps(self.supply.to_json()) + "\n",
                             durable=True)
            except OSError as e:
                log.warning("cannot save the capacity profiles: %s", e)

    def write_status(self) -> None:
        d = self.cfg.state_dir
        if d is None:
            return
        try:
            write_atomic(d / "status.json", json.dumps(self.status(), indent=1) + "\n", 0o644)
        except OSError as e:
            log.warning("cannot write %s: %s", d / "status.json", e)

    def status(self) -> dict[str, Any]:
        """Where every open round stands (docs/operations.md, "Reading its state")."""
        def row(r: Round, error: str | None = None) -> dict[str, Any]:
            res = r.solution
            return {"day": r.s.day, "round": r.s.round, "phase": r.phase.value,
                    "since": r.life.history[-1][1] if r.life.history else None,
                    "deadline": r.cfg.deadline or r.s.deadline, "start": r.s.start,
                    "end": r.s.end, "homes": r.intake.accepted if r.intake else 0,
                    "excluded": len(r.excluded), "adjusted_homes": r.adjusted_homes,
                    "overload_before_wh": res.overload_before_wh if res else None,
                    "overload_after_wh": res.overload_after_wh if res else None,
                    "curtailed_wh": res.curtailed_wh if res else None,
                    "error": error or r.life.reason}

        nxt = self.next_round
        return {
            "pid": os.getpid(),
            "mode": "one-shot" if self.cfg.schedule is None else "scheduled",
            "written_at": round(time.time(), 3),
            "clock": round(self.clock.now(), 3),
            "started_at": round(self.started_at, 3),
            "rounds": [row(r) for r in self.open],
            "recent": [row(r, e) for r, e in self.finished[-10:]],
            "next": None if nxt is None else {"day": nxt.day, "round": nxt.round,
                                               "announce_at": nxt.announce_at,
                                               "deadline": nxt.deadline},
            "mqtt": self.link_info(),
        }


def _journal_key(name: str) -> tuple[dt.date, int] | None:
    """``round-<day>-<round>[.w<i>].jsonl`` -> (day, round)."""
    stem = name.split(".", 1)[0]
    try:
        _, y, m, d, rnd = stem.split("-")
        return dt.date(int(y), int(m), int(d)), int(rnd)
    except ValueError:
        return None
