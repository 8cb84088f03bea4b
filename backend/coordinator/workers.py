"""``--workers N``: the plan ingest shared by N processes over an MQTT 5 shared subscription
(mosquitto) or as competing consumers of one quorum queue (RabbitMQ; backend/common/transport.py).

Every process (the main coordinator process is worker 0, ``N - 1`` more are started here)
subscribes to ``$share/coordinator/hems/v1/plan/+`` on its own lean connection
(``<client id>-ingest`` for the main process, ``<client id>-ingest-w<i>`` for worker i); mosquitto
hands each report to one of them.  A worker runs the coordinator's own intake (intake.py: the same
checks, reason codes, journal records and replies) on its own journal
(``round-<day>-<round>.w<i>.jsonl``); it tells the main process how many reports it holds, and
which homes, after every batch (so ``--expected-homes`` counts every worker's distinct homes;
the round is announced only once every worker is subscribed), and when collection closes it
closes too (later reports are ``late``) and sends its rows.  The main process adds them to its
own rows and goes on as with one process; at the end it stops the workers.

Merging: a home whose report reached two workers (a redelivery or a resend landing elsewhere;
mosquitto spreads a shared subscription round-robin) or a report id seen by two workers is kept
once: the main process's own rows first, then worker 1's, 2's, ...; the copies dropped are counted
(``plan:duplicate_home`` / ``plan:replay`` in the rejections, once the rows are merged).  The
home was told "accepted" by the worker that dropped copy came to; its first report counts.

Why rows and not partial sums: the grouping needs every home's magnification and report id in
one place anyway, and the rows move once (384 bytes per home at 96 frames: 37 MB at 100k, tens of
ms over a pipe), after which every refinement sums contiguous slices in one process.

Restart: each worker reloads its journal (its reports and whether it closed); the main process
merges again at the same point of the round.  The pool is the round's ``IntakePool``
(round.py): started before the announcement, merged at the close, stopped after.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import multiprocessing.connection
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from backend.common.bulk_mqtt import Message
from backend.common.mqtt import MqttSettings
from backend.common.rejects import Rejections
from backend.common.transport import bulk_transport
from backend.coordinator.intake import Intake, IntakeFailed, RoundConfig
from backend.coordinator.journal import Journal
from backend.coordinator.ports import Clock
from hemsfw import protocol

__all__ = ["SHARE_GROUP", "WorkerHandle", "WorkerPool", "shared_topic"]

log = logging.getLogger("hems.coordinator.workers")

SHARE_GROUP = "coordinator"
#: how long the main process waits for a worker's rows at close
ROWS_TIMEOUT_S = 60.0
#: how long the round announcement waits for every worker to be subscribed (else reports
#: published right after it would all go to the processes already subscribed)
UP_TIMEOUT_S = 60.0


def shared_topic(topic: str) -> str:
    return f"$share/{SHARE_GROUP}/{topic}"


@dataclass
class WorkerHandle:
    """The main process's handle on one ingest worker process."""

    index: int
    proc: multiprocessing.process.BaseProcess
    conn: multiprocessing.connection.Connection
    accepted: int = 0
    rows: tuple[Any, ...] | None = None
    up: asyncio.Event = field(default_factory=asyncio.Event)  # subscribed to the plan topic
    ready: asyncio.Event = field(default_factory=asyncio.Event)  # its rows arrived
    gone: bool = False


@dataclass(frozen=True)
class _Spec:
    """What a worker process needs (picklable)."""

    index: int
    cfg: RoundConfig
    settings: MqttSettings
    client_id: str
    state_dir: Path | None
    rows: int
    clock: Clock


class WorkerPool:
    """Workers 1 .. n - 1 of one round (the main process is worker 0)."""

    def __init__(self, n: int, settings: MqttSettings, client_id: str,
                 state_dir: Path | None, clock: Clock, rows: int = 1024) -> None:
        self.n = n
        self.clock = clock
        self.settings = settings
        self.client_id = client_id
        self.state_dir = state_dir
        self.rows = rows
        self.workers: list[WorkerHandle] = []
        self.on_count: Callable[[], None] = lambda: None
        self.failure: str | None = None
        self._homes: set[str] = set()
        self._new_homes: list[str] = []  # distinct, in arrival order

    # ------------------------------------------------------------ round.IntakePool

    def held(self) -> int:
        return sum(w.accepted for w in self.workers)

    def homes(self) -> list[str]:
        return self._new_homes

    @property
    def up(self) -> bool:
        """Every worker is started and subscribed."""
        return len(self.workers) == self.n - 1 and all(w.up.is_set() for w in self.workers)

    async def start(self, cfg: RoundConfig, on_count: Callable[[], None]) -> None:
        """Start the workers (spawned: a clean interpreter each) and wait until every one is
        subscribed; IntakeFailed after UP_TIMEOUT_S."""
        self.on_count = on_count
        ctx = multiprocessing.get_context("spawn")
        loop = asyncio.get_running_loop()
        for i in range(1, self.n):
            parent, child = ctx.Pipe()
            spec = _Spec(i, cfg, self.settings, self.client_id, self.state_dir,
                         self.rows // self.n + 16, self.clock)
            proc = ctx.Process(target=worker_main, args=(spec, child),
                               name=f"coordinator-w{i}", daemon=True)
            proc.start()
            child.close()
            w = WorkerHandle(i, proc, parent)
            self.workers.append(w)
            loop.add_reader(parent.fileno(), self._on_pipe, w)
        try:
            await asyncio.wait_for(asyncio.gather(*(w.up.wait() for w in self.workers)),
                                   UP_TIMEOUT_S)
        except TimeoutError:
            raise IntakeFailed(
                f"ingest worker(s) not subscribed within {UP_TIMEOUT_S}s") from None

    async def merge(self, intake: Intake) -> tuple[int, int]:
        """Close every worker and add its rows to ``intake`` (the module docstring says which
        copy of a duplicate is kept).  Returns (reports added, copies dropped)."""
        for w in self.workers:
            w.conn.send(("close",))
        st = intake.state
        added = dropped = 0
        for w in self.workers:
            try:
                await asyncio.wait_for(w.ready.wait(), ROWS_TIMEOUT_S)
            except TimeoutError:
                raise IntakeFailed(f"ingest worker {w.index} did not send its reports within "
                                   f"{ROWS_TIMEOUT_S}s") from None
            if w.rows is None:
                raise IntakeFailed(self.failure or f"ingest worker {w.index} exited")
            keys, rids, mags, raw, rejections, late = w.rows
            rows = np.frombuffer(raw, dtype="<u4").reshape(len(keys), st.cfg.frames)
            for home, rid, mag, row in zip(keys, rids, mags, rows, strict=True):
                try:
                    st.restore(home, rid, int(mag), row.tobytes())
                    added += 1
                except ValueError:
                    dropped += 1
                    reason = "replay" if rid in st.seen else "duplicate_home"
                    intake.rejections.reject("plan", reason, protocol.t_plan(home),
                                             f"(worker {w.index})")
            for key, n in rejections.items():
                intake.rejections.counts[key] += n
            intake.late_homes.update(h for h in late if h not in st.reports)
        log.info("%d report(s) from %d ingest worker(s) added, %d duplicate(s) dropped",
                 added, len(self.workers), dropped)
        return added, dropped

    async def stop(self, timeout: float = 5.0) -> None:
        loop = asyncio.get_running_loop()
        for w in self.workers:
            if not w.gone:
                w.gone = True
                loop.remove_reader(w.conn.fileno())
        await asyncio.to_thread(self._stop, timeout)

    def _stop(self, timeout: float) -> None:
        for w in self.workers:
            with contextlib.suppress(OSError, ValueError):
                w.conn.send(("stop",))
        end = time.monotonic() + timeout
        for w in self.workers:
            w.proc.join(max(0.0, end - time.monotonic()))
            if w.proc.is_alive():
                log.warning("worker %d did not stop: terminating it", w.index)
                w.proc.terminate()
                w.proc.join(1.0)
            with contextlib.suppress(OSError):
                w.conn.close()

    def _on_pipe(self, w: WorkerHandle) -> None:
        """Read what worker ``w`` sent (the event loop calls this when its pipe is readable)."""
        try:
            while w.conn.poll():
                msg = w.conn.recv()
                if msg[0] == "accepted":
                    w.accepted = int(msg[1])
                    for h in msg[2]:
                        if h not in self._homes:
                            self._homes.add(h)
                            self._new_homes.append(h)
                    self.on_count()
                elif msg[0] == "up":
                    w.up.set()
                elif msg[0] == "rows":
                    w.rows = tuple(msg[1:])
                    w.ready.set()
        except (EOFError, OSError):
            w.gone = True
            asyncio.get_running_loop().remove_reader(w.conn.fileno())
            if not w.ready.is_set():
                self.failure = f"ingest worker {w.index} exited (exit code {w.proc.exitcode})"
                log.error("%s", self.failure)
                w.ready.set()  # merge() sees rows None and fails the round


# ------------------------------------------------------------------ the worker process


def worker_main(spec: _Spec, conn: multiprocessing.connection.Connection) -> None:
    logging.basicConfig(level=logging.INFO,
                        format=f"%(asctime)s %(levelname)s w{spec.index} %(name)s: %(message)s")
    with contextlib.suppress(KeyboardInterrupt):  # the main process's Ctrl-C reaches us too
        asyncio.run(_serve(spec, conn))


def _open_intake(spec: _Spec) -> Intake:
    """The worker's intake, its journal replayed (a restarted round) or begun."""
    cfg = spec.cfg
    journal = (Journal(spec.state_dir, cfg.day, cfg.round, f"w{spec.index}")
               if spec.state_dir is not None else None)
    intake = Intake(cfg, journal, Rejections(log), spec.rows)
    records = journal.load() if journal is not None else []
    for rec in records:
        if rec["kind"] != "round":
            intake.replay(rec)
    if journal is not None and not records:
        journal.append("round", day=cfg.day, round=cfg.round, deadline=cfg.deadline,
                       at=time.time())
    if journal is not None:
        journal.sync()
    return intake


async def _serve(spec: _Spec, conn: multiprocessing.connection.Connection) -> None:
    intake = _open_intake(spec)
    s = spec.settings
    stop = asyncio.Event()
    sent = 0

    def send_count() -> None:
        """The count, and the homes accepted since the last one (the main process counts
        distinct homes across the processes)."""
        nonlocal sent
        keys = intake.state.sink.store.keys
        conn.send(("accepted", intake.accepted, keys[sent:]))
        sent = len(keys)

    def on_batch(batch: list[Message]) -> None:
        out: list[tuple[str, bytes]] = []
        for topic, payload in batch:
            try:
                intake.take(topic, payload, spec.clock.now(), False, out, flush=False)
            except Exception:  # no payload may stop the worker
                log.exception("internal error handling a message on %r", topic)
        if intake.journal is not None:
            try:
                intake.journal.sync()
            except OSError as e:  # fail closed: the main process fails the round
                log.error("cannot write the journal: %s", e)
                bulk.drop_connection()
                stop.set()
                return
        for topic, payload in out:
            bulk.publish(topic, payload)
        send_count()

    bulk = bulk_transport(
        s, f"{spec.client_id}-ingest-w{spec.index}", f"{s.username}-ingest-w{spec.index}",
        protocol.t_plan("+"), on_batch, queue=f"hems.{s.username}.plan", share_group=SHARE_GROUP,
        tls=s.tls_context(), max_packet=protocol.MAX_PAYLOAD + 1024, log=log)

    def on_pipe() -> None:
        try:
            while conn.poll():
                msg = conn.recv()
                if msg[0] == "close":
                    _close(intake, conn, spec.clock.now())
                elif msg[0] == "stop":
                    stop.set()
        except (EOFError, OSError):  # the main process is gone
            stop.set()

    loop = asyncio.get_running_loop()
    loop.add_reader(conn.fileno(), on_pipe)
    send_count()
    try:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(bulk.run(), name="bulk")
            await bulk.wait_connected(UP_TIMEOUT_S)
            conn.send(("up",))
            await stop.wait()
            with contextlib.suppress(TimeoutError):
                await bulk.flush(2.0)  # the last replies go out
            bulk.stop()
    finally:
        loop.remove_reader(conn.fileno())
        if intake.journal is not None:
            intake.journal.close()


def _close(intake: Intake, conn: multiprocessing.connection.Connection, now: float) -> None:
    """Collection closed: later reports are ``late``; send the rows to the main process."""
    intake.close(now)
    if intake.journal is not None:
        intake.journal.sync()
    sink = intake.state.sink
    n = sink.store.count
    conn.send(("rows", list(sink.store.keys), list(sink.report_ids),
               sink.mags[:n].tolist(), sink.store.view().tobytes(),
               intake.rejections.as_dict(), sorted(intake.late_homes)))
