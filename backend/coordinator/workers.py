"""``--workers N``: the plan ingest shared by N processes over an MQTT 5 shared subscription.

Every process (the main coordinator process is worker 0, ``N - 1`` more are started here)
subscribes to ``$share/coordinator/hems/v1/plan/+`` on its own lean connection
(``<client id>-ingest`` for the main process, ``<client id>-ingest-w<i>`` for worker i); mosquitto
hands each report to one of them.  A worker is the coordinator's own code
(``Coordinator._on_batch``: the same checks, reason codes, journal and replies) on its own
``RoundState`` and its own journal (``round-<day>-<round>.w<i>.jsonl``); it tells the main process
how many reports it holds after every batch (so ``--expected-homes`` counts every worker; the
round is announced only once every worker is subscribed), and when collection closes it closes
too (later reports are ``late``) and sends its rows.  The main
process adds them to its own rows and goes on as with one process; at the end it stops the
workers.

Merging: a home whose report reached two workers (a redelivery or a resend landing elsewhere;
mosquitto spreads a shared subscription round-robin) or a report id seen by two workers is
kept once: the main process's own rows first, then worker 1's, 2's, ...; the copies dropped are
counted (``plan:duplicate_home`` / ``plan:replay`` in the rejections, once the rows are merged).
The home was told "accepted" by the worker that dropped copy came to; its first report counts.

Why rows and not partial sums: the grouping needs every home's magnification and report id in
one place anyway, and the rows move once (384 bytes per home at 96 frames: 37 MB at 100k, tens of
ms over a pipe), after which every refinement sums contiguous slices in one process
(``RowStore.partial_sums`` / ``add_partials`` remain for workers that keep their rows).

Restart: each worker reloads its journal (its reports and whether it closed); the main process
merges again at the same point of the round.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import multiprocessing.connection
import time
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from backend.common.bulk_mqtt import BulkClient, Message
from backend.common.mqtt import MqttSettings
from hemsfw import protocol

if TYPE_CHECKING:
    from backend.coordinator.service import Coordinator, ServiceConfig

__all__ = ["SHARE_GROUP", "Worker", "shared_topic", "start_workers"]

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
class Worker:
    """The main process's handle on one ingest worker process."""

    index: int
    proc: multiprocessing.process.BaseProcess
    conn: multiprocessing.connection.Connection
    accepted: int = 0
    rows: tuple[Any, ...] | None = None
    up: asyncio.Event = field(default_factory=asyncio.Event)  # subscribed to the plan topic
    ready: asyncio.Event = field(default_factory=asyncio.Event)  # its rows arrived
    gone: bool = False


def start_workers(cfg: ServiceConfig, settings: MqttSettings, deadline: int) -> list[Worker]:
    """Start workers 1 .. cfg.workers - 1 (spawned: a clean interpreter each)."""
    ctx = multiprocessing.get_context("spawn")
    out = []
    for i in range(1, cfg.workers):
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=worker_main, args=(replace(cfg, worker=i), settings,
                                                     deadline, child),
                           name=f"coordinator-w{i}", daemon=True)
        proc.start()
        child.close()
        out.append(Worker(i, proc, parent))
    return out


def stop_workers(workers: list[Worker], timeout: float = 5.0) -> None:
    for w in workers:
        with contextlib.suppress(OSError, ValueError):
            w.conn.send(("stop",))
    end = time.monotonic() + timeout
    for w in workers:
        w.proc.join(max(0.0, end - time.monotonic()))
        if w.proc.is_alive():
            log.warning("worker %d did not stop: terminating it", w.index)
            w.proc.terminate()
            w.proc.join(1.0)
        with contextlib.suppress(OSError):
            w.conn.close()


# ------------------------------------------------------------------ the worker process


def worker_main(cfg: ServiceConfig, settings: MqttSettings, deadline: int,
                conn: multiprocessing.connection.Connection) -> None:
    logging.basicConfig(level=logging.INFO,
                        format=f"%(asctime)s %(levelname)s w{cfg.worker} %(name)s: %(message)s")
    with contextlib.suppress(KeyboardInterrupt):  # the main process's Ctrl-C reaches us too
        asyncio.run(_serve(cfg, settings, deadline, conn))


async def _serve(cfg: ServiceConfig, settings: MqttSettings, deadline: int,
                 conn: multiprocessing.connection.Connection) -> None:
    from backend.coordinator.intake import RoundState
    from backend.coordinator.service import BULK_TOPIC, Coordinator

    c = Coordinator(cfg, settings)
    c._restore()
    if c.state is None:  # a fresh worker: the round as the main process announced it
        c.round_cfg = replace(c.round_cfg, deadline=deadline)
        c.state = RoundState(c.round_cfg, capacity=c._expected_rows() // cfg.workers + 16)
        c._append("round", **c._round_record(), at=time.time())
    if c.journal is not None:
        c.journal.sync()
    s = c.settings
    stop = asyncio.Event()

    def on_batch(batch: list[Message]) -> None:
        c._on_batch(batch)
        if c._failed.is_set():  # its journal cannot be written: exit, the main process fails
            log.error("%s", c._failure)
            stop.set()
            return
        assert c.state is not None
        conn.send(("accepted", c.state.accepted))

    c.ingest = ingest = BulkClient(
        s.host, s.port, f"{cfg.client_id}-ingest-w{cfg.worker}", s.username, s.password,
        [(shared_topic(BULK_TOPIC), 1)], on_batch, tls=s.tls_context(),
        max_packet=protocol.MAX_PAYLOAD + 1024, reconnect_max_s=5.0, log=log)

    def on_pipe() -> None:
        try:
            while conn.poll():
                msg = conn.recv()
                if msg[0] == "close":
                    _close(c, conn)
                elif msg[0] == "stop":
                    stop.set()
        except (EOFError, OSError):  # the main process is gone
            stop.set()

    loop = asyncio.get_running_loop()
    loop.add_reader(conn.fileno(), on_pipe)
    conn.send(("accepted", c.state.accepted))
    try:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(ingest.run(), name="ingest")
            await ingest.wait_connected(UP_TIMEOUT_S)
            conn.send(("up",))
            await stop.wait()
            with contextlib.suppress(TimeoutError):
                await ingest.flush(2.0)  # the last replies go out
            ingest.stop()
    finally:
        loop.remove_reader(conn.fileno())
        if c.journal is not None:
            c.journal.close()


def _close(c: Coordinator, conn: multiprocessing.connection.Connection) -> None:
    """Collection closed: later reports are ``late``; send the rows to the main process."""
    st = c.state
    assert st is not None
    if not st.closed:
        st.close()
        c._append("closed", accepted=st.accepted, at=time.time())
    if c.journal is not None:
        c.journal.sync()
    sink = st.sink
    n = sink.store.count
    conn.send(("rows", list(sink.store.keys), list(sink.report_ids),
               sink.mags[:n].tolist(), sink.store.view().tobytes(),
               c.rejections.as_dict(), sorted(c.late_homes)))


# ------------------------------------------------------------------ the main process's side


def on_message(c: Coordinator, w: Worker) -> None:
    """Read what worker ``w`` sent (the event loop calls this when its pipe is readable)."""
    try:
        while w.conn.poll():
            msg = w.conn.recv()
            if msg[0] == "accepted":
                w.accepted = int(msg[1])
                c._check_enough()
            elif msg[0] == "up":
                w.up.set()
            elif msg[0] == "rows":
                w.rows = tuple(msg[1:])
                w.ready.set()
    except (EOFError, OSError):
        w.gone = True
        asyncio.get_running_loop().remove_reader(w.conn.fileno())
        if not w.ready.is_set():
            c._fail(f"ingest worker {w.index} exited (exit code {w.proc.exitcode})")


async def wait_up(workers: list[Worker]) -> None:
    """Until every worker is subscribed; TimeoutError after UP_TIMEOUT_S."""
    await asyncio.wait_for(asyncio.gather(*(w.up.wait() for w in workers)), UP_TIMEOUT_S)


async def merge(c: Coordinator, workers: list[Worker]) -> tuple[int, int]:
    """Close every worker and add its rows to the main process's (module docstring: which copy
    of a duplicate is kept).  Returns (reports added, copies dropped)."""
    for w in workers:
        w.conn.send(("close",))
    st = c.state
    assert st is not None
    added = dropped = 0
    for w in workers:
        try:
            await asyncio.wait_for(w.ready.wait(), ROWS_TIMEOUT_S)
        except TimeoutError:
            c._fail(f"ingest worker {w.index} did not send its reports within "
                    f"{ROWS_TIMEOUT_S}s")
            raise
        assert w.rows is not None
        keys, rids, mags, raw, rejections, late = w.rows
        rows = np.frombuffer(raw, dtype="<u4").reshape(len(keys), c.cfg.frames)
        for home, rid, mag, row in zip(keys, rids, mags, rows, strict=True):
            try:
                st.restore(home, rid, int(mag), row.tobytes())
                added += 1
            except ValueError:
                dropped += 1
                reason = "replay" if rid in st.seen else "duplicate_home"
                c.rejections.reject("plan", reason, protocol.t_plan(home), f"(worker {w.index})")
        for key, n in rejections.items():
            c.rejections.counts[key] += n
        c.late_homes.update(h for h in late if h not in st.reports)
    return added, dropped
