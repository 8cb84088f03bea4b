"""``hems coordinator`` (``python -m backend.coordinator``): the coordinator service.

Two modes, one code path (daemon.py):

* scheduled (production): ``--timezone``, ``--announce`` and ``--deadline`` set when each day's
  round(s) are announced and closed; runs until stopped (SIGTERM, SIGINT, SIGHUP: exit 0),
  resumes from ``--state-dir`` after any restart.  ``--status`` prints where it stands (from the
  state dir) and ``--check`` is its health check (exit 0 healthy, 1 not).
* one-shot: ``--day`` runs exactly that round, writes ``--result`` and exits: 0 when the round
  completed (every adjustment acknowledged by the broker), 1 when it could not (the reason is
  printed and in the result file).

Usage errors (exit 2, one line) are found before anything starts.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from backend.common.files import write_atomic
from backend.common.metrics import serve
from backend.common.mqtt import add_mqtt_args, mqtt_args_problem, settings_from_args
from backend.common.sdnotify import notify, watchdog_interval_s
from backend.common.usage import Parser, UsageError, bounded_float, bounded_int, port
from backend.coordinator import metrics
from backend.coordinator.adjust import SOLVERS
from backend.coordinator.daemon import Daemon, DaemonConfig
from backend.coordinator.mqtt_adapter import AdapterError, MqttAdapter
from backend.coordinator.ports import AcceleratedClock, Clock, SystemClock
from backend.coordinator.reserve import DEFAULT_RATED_W, MAX_RATED_W, HomeCaps
from backend.coordinator.round import Round, RoundFailed, RoundSettings
from backend.coordinator.schedule import Schedule, ScheduleError, parse_clock_time
from backend.coordinator.supply import SupplyBook, parse_capacity, valid_day
from backend.coordinator.workers import SHARE_GROUP, WorkerPool
from hemsfw import protocol

log = logging.getLogger("hems.coordinator")

CLIENT_ID = "coordinator"
#: how stale status.json may be before --check calls the service unhealthy
STATUS_FRESH_S = 120.0
STATUS_EVERY_S = 30.0


def _brokers(s: str) -> tuple[str, ...]:
    out = tuple(b.strip() for b in s.split(",") if b.strip())
    if not out or len(set(out)) != len(out) or not all(protocol.valid_id(b) for b in out):
        raise argparse.ArgumentTypeError(f"expected distinct broker ids [a-z0-9_-], got {s!r}")
    return out


def _day(s: str) -> str:
    if not valid_day(s):
        raise argparse.ArgumentTypeError(f"not a day YYYY-MM-DD: {s!r}")
    return s


def _times(s: str) -> list[Any]:
    try:
        return [parse_clock_time(t.strip()) for t in s.split(",") if t.strip()]
    except ScheduleError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def build_parser(prog: str = "python -m backend.coordinator") -> argparse.ArgumentParser:
    p = Parser(
        prog=prog,
        description="The coordinator: announces each day's round, collects masked plans, gets "
        "the group sums from the mask brokers, adjusts, and sends every group its adjustment. "
        "Scheduled (--timezone/--announce/--deadline, runs until stopped) or one round "
        "(--day, exits when it is done).",
    )
    sch = p.add_argument_group("schedule (the service)")
    sch.add_argument("--timezone", default=None,
                     help="the deployment's IANA time zone, e.g. Asia/Tokyo (default UTC)")
    sch.add_argument("--announce", type=_times, default=None, metavar="HH:MM[,HH:MM...]",
                     help="local time(s) each round is announced, on the day before the "
                     "planned day (one per round of the day)")
    sch.add_argument("--deadline", type=_times, default=None, metavar="HH:MM[,HH:MM...]",
                     help="local time(s) each round's collection closes (same count)")
    sch.add_argument("--days-ahead", type=bounded_int(0, 7), default=1,
                     help="announce this many days before the planned day (default 1)")
    sch.add_argument("--keep-journal-days", type=bounded_int(0), default=2,
                     help="delete a round's journal this many days after its day (default 2)")
    sch.add_argument("--keep-result-days", type=bounded_int(1), default=400,
                     help="delete a round's record after this many days (default 400)")
    sch.add_argument("--status", action="store_true",
                     help="print where the service in --state-dir stands, then exit")
    sch.add_argument("--check", action="store_true",
                     help="health check of the service in --state-dir: exit 0 if it runs, "
                     "is connected and its status is fresh, else 1")
    r = p.add_argument_group("one round (one-shot)")
    r.add_argument("--day", type=_day, default=None, help="run only this day's round, "
                   "YYYY-MM-DD, and exit")
    r.add_argument("--round", type=bounded_int(1), default=1, help="round number within the day")
    r.add_argument("--start", type=int, default=None,
                   help="epoch seconds of frame 0 (with --day)")
    r.add_argument("--collect-s", type=bounded_float(0.0, lo_open=True), default=10.0,
                   help="collection window after the announcement (seconds)")
    r.add_argument("--linger-s", type=bounded_float(0.0), default=0.0,
                   help="after the round, serve this long more: a home that comes back "
                   "online gets its adjustment again; SIGTERM ends the wait with a completed "
                   "round (default 0)")
    r.add_argument("--result", type=Path, default=None,
                   help="where to write the round's JSON (one-shot; required with --day)")
    g = p.add_argument_group("every round")
    g.add_argument("--frames", type=bounded_int(1, protocol.MAX_FRAMES), default=96,
                   help="frames per day")
    g.add_argument("--frame-s", type=bounded_int(1), default=900, help="seconds per frame")
    g.add_argument("--quantum-wh", type=bounded_int(1), default=1,
                   help="Wh per plan unit on the wire")
    g.add_argument("--expected-homes", type=bounded_int(1), default=None,
                   help="close collection early once this many homes were accepted")
    g.add_argument("--brokers", type=_brokers, default=None,
                   help="comma-separated mask broker ids, e.g. mb1,mb2")
    g.add_argument("--verify-proofs", action="store_true",
                   help="every home must prove its plan in [0, its cap] per frame (its cap: "
                   "--homes / --rated-w, rated power x frame length, in quanta of --quantum-wh); "
                   "checked with the mask brokers before grouping (docs/integrity.md)")
    g.add_argument("--k", type=bounded_int(2), default=3,
                   help="minimum homes per group (>= 2; the same k as the mask brokers)")
    a = p.add_argument_group("adjustment")
    a.add_argument("--solver", choices=SOLVERS, default="portfolio",
                   help="portfolio (default): heuristic, then the exact model where it fits in "
                   "the time left, the better plan of both")
    a.add_argument("--window", choices=("defer", "symmetric"), default="defer",
                   help="magnification window: defer = k+1..k+m-1 (docs/adjustment.md)")
    a.add_argument("--time-limit", type=bounded_float(0.0, lo_open=True), default=10.0,
                   help="wall-clock budget of a round's adjustment, every regrouping "
                   "re-solve included (seconds)")
    a.add_argument("--target-weight", type=bounded_float(0.0), default=0.0,
                   help="weight of the capacity message's target profile (0 = ignore it)")
    c = p.add_argument_group("inputs and timeouts")
    c.add_argument("--capacity-file", type=Path, default=None,
                   help="capacity JSON (protocol_svc.make_capacity) for every day, instead of "
                   "hems/v1/capacity[/<day>]")
    c.add_argument("--homes", type=Path, default=None,
                   help='the registered homes, JSON {"homes": {"<id>": {"rated_w": W}}}: '
                   "each one outside every released total is reserved at its cap (rated "
                   "power x frame length) in the adjustment (docs/adjustment.md, Reserve)")
    c.add_argument("--rated-w", type=bounded_int(0, MAX_RATED_W), default=DEFAULT_RATED_W,
                   help="rated power (W) of a home's circuit the registry does not rate "
                   f"(default {DEFAULT_RATED_W})")
    c.add_argument("--capacity-wait-s", type=bounded_float(0.0), default=10.0,
                   help="how long to wait for the day's capacity after collection")
    c.add_argument("--answer-timeout-s", type=bounded_float(0.0, lo_open=True), default=10.0,
                   help="how long to wait for each mask broker's answer")
    c.add_argument("--missing-grace-s", type=bounded_float(0.0), default=1.0,
                   help="how long to keep asking a broker again (once a second) about members "
                   "it had no mask for")
    c.add_argument("--reask-s", type=bounded_float(0.0, lo_open=True), default=5.0,
                   help="publish a group request again when unanswered for this long")
    d = p.add_argument_group("durability and operations (docs/operations.md)")
    d.add_argument("--state-dir", type=Path, default=None,
                   help="journals, records and status (required when scheduled; one-shot: "
                   "without it a crash loses the round)")
    d.add_argument("--reconnect-s", type=bounded_float(0.0, lo_open=True), default=60.0,
                   help="give up when the MQTT broker cannot be reached for this long")
    d.add_argument("--metrics-port", type=port, default=None,
                   help="serve Prometheus metrics on 127.0.0.1:PORT/metrics (default off)")
    d.add_argument("--workers", type=bounded_int(1, 64), default=1,
                   help="plan ingest processes sharing the plan topic over an MQTT 5 shared "
                   "subscription ($share/coordinator/...; one-shot only; default 1)")
    d.add_argument("--debug-pause-at", default=None, help=argparse.SUPPRESS)
    d.add_argument("--accelerate", type=AcceleratedClock.parse, default=None,
                   help=argparse.SUPPRESS)  # the lab's clock: ANCHOR,VIRTUAL,SPEED
    p.add_argument("--log-level", default=os.environ.get("HEMS_LOG_LEVEL", "INFO"))
    add_mqtt_args(p, "coordinator")
    return p


def check(a: argparse.Namespace) -> None:
    """Combinations argparse cannot check; UsageError (one line)."""
    if a.status or a.check:
        if a.state_dir is None:
            raise UsageError("--status and --check read --state-dir: give it")
        return
    if a.brokers is None:
        raise UsageError("--brokers is required")
    if a.verify_proofs and a.workers > 1:
        raise UsageError("--verify-proofs needs --workers 1")
    if a.day is not None:
        if a.start is None or a.result is None:
            raise UsageError("one round (--day) needs --start and --result")
        if a.announce or a.deadline:
            raise UsageError("--day runs one round: --announce/--deadline are for the schedule")
        return
    if not a.announce or not a.deadline:
        raise UsageError("give --announce and --deadline (the schedule), or --day (one round)")
    if len(a.announce) != len(a.deadline):
        raise UsageError(f"{len(a.announce)} --announce time(s) but {len(a.deadline)} "
                         "--deadline time(s): one pair per round")
    if a.state_dir is None:
        raise UsageError("a scheduled coordinator needs --state-dir (restarts resume from it)")
    if a.workers > 1:
        raise UsageError("--workers is for one round (--day) only")
    if a.result is not None:
        raise UsageError("--result is for one round (--day); the service writes its records "
                         "to --state-dir/results")
    a.schedule = Schedule(a.timezone or "UTC", tuple(zip(a.announce, a.deadline, strict=True)),
                          a.frames, a.frame_s, a.days_ahead)


def settings_of(a: argparse.Namespace) -> RoundSettings:
    return RoundSettings(
        day=a.day or "", round=a.round, frames=a.frames, frame_s=a.frame_s,
        quantum_wh=a.quantum_wh, start=a.start or 0, brokers=a.brokers, k=a.k,
        collect_s=a.collect_s, expected_homes=a.expected_homes, solver=a.solver,
        window=a.window, time_limit_s=a.time_limit, target_weight=a.target_weight,
        capacity_wait_s=a.capacity_wait_s, answer_timeout_s=a.answer_timeout_s,
        missing_grace_s=a.missing_grace_s, reask_s=a.reask_s, linger_s=a.linger_s,
        pause_at=a.debug_pause_at, caps=a.caps, verify_proofs=a.verify_proofs)


def read_status(state_dir: Path) -> dict[str, Any]:
    return dict(json.loads((state_dir / "status.json").read_text()))


def status_problem(st: dict[str, Any], now: float) -> str | None:
    """Why the service whose status this is is unhealthy, or None."""
    pid = st.get("pid")
    try:
        os.kill(int(str(pid)), 0)
    except (TypeError, ValueError, ProcessLookupError):
        return f"process {pid} is not running"
    except PermissionError:
        pass
    age = now - float(st.get("written_at", 0))
    if age > STATUS_FRESH_S:
        return f"status not updated for {age:.0f}s"
    if not st.get("mqtt", {}).get("connected"):
        return "not connected to the MQTT broker"
    return None


def main(argv: list[str] | None = None, prog: str = "python -m backend.coordinator") -> int:
    p = build_parser(prog)
    args = p.parse_args(argv)
    if (problem := mqtt_args_problem(args)) is not None:
        p.error(problem)
    try:
        check(args)
        capacity = None
        if args.capacity_file is not None:
            capacity = args.capacity_file.read_bytes()
            parse_capacity(capacity, args.frames)
    except (UsageError, ScheduleError) as e:
        p.exit(2, f"{prog}: error: {e}\n")
    except OSError as e:
        p.exit(2, f"{prog}: error: --capacity-file {args.capacity_file}: {e.strerror or e}\n")
    except ValueError as e:
        p.exit(2, f"{prog}: error: --capacity-file {args.capacity_file}: {e} (expected "
                  f"protocol_svc.make_capacity JSON for {args.frames} frames)\n")
    try:
        args.caps = (HomeCaps(default_w=args.rated_w) if args.homes is None
                     else HomeCaps.load(args.homes, args.rated_w))
    except ValueError as e:
        p.exit(2, f"{prog}: error: --homes {e}\n")
    if args.status or args.check:
        return show_status(args)
    logging.basicConfig(
        level=getattr(logging, str(args.log_level).upper(), logging.INFO),
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    return asyncio.run(run(args, capacity))


def show_status(a: argparse.Namespace) -> int:
    try:
        st = read_status(a.state_dir)
    except (OSError, ValueError) as e:
        print(f"coordinator: no status in {a.state_dir}: {e}", file=sys.stderr)
        return 1
    problem = status_problem(st, time.time())
    if a.check:
        print("healthy" if problem is None else f"unhealthy: {problem}")
        return 0 if problem is None else 1
    st["healthy"] = problem is None
    st["problem"] = problem
    print(json.dumps(st, indent=1))
    return 0


async def run(a: argparse.Namespace, capacity: bytes | None) -> int:
    settings = settings_from_args(a)
    if settings.password is None:
        log.warning("no password in $%s", a.password_env)
    if a.state_dir is None:
        log.warning("no --state-dir: a crash of this process loses the round")
    clock: Clock = a.accelerate if a.accelerate is not None else SystemClock()
    supply = SupplyBook(fixed=capacity, frames=a.frames)
    if a.state_dir is not None:
        a.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        with contextlib.suppress(OSError, ValueError):
            supply.load(json.loads((a.state_dir / "supply.json").read_text()))
    records: dict[str, Any] = {}

    def on_record(r: Round, rec: dict[str, Any]) -> None:
        rec.update(state_dir=None if a.state_dir is None else str(a.state_dir),
                   mqtt_connects=adapter.connects, ingest=dict(adapter.bulk.stats))
        records["last"] = rec
        if a.result is not None:
            write_atomic(a.result, json.dumps(rec, indent=1) + "\n", 0o644)

    template = settings_of(a)

    def pool() -> WorkerPool | None:
        return (WorkerPool(a.workers, settings, CLIENT_ID, a.state_dir, clock,
                           a.expected_homes or 1024) if a.workers > 1 else None)

    daemon = Daemon(DaemonConfig(template, getattr(a, "schedule", None), a.state_dir,
                                 a.keep_journal_days, a.keep_result_days),
                    clock, supply, on_record, pool)
    adapter = MqttAdapter(settings, CLIENT_ID, daemon, a.reconnect_s,
                          SHARE_GROUP if a.workers > 1 else None)
    daemon.attach(adapter)
    daemon.link_info = lambda: {"connected": adapter.connected, "connects": adapter.connects}
    server = None
    if a.metrics_port is not None:
        try:
            server = await serve(a.metrics_port, lambda: metrics.samples(daemon, adapter))
        except OSError as e:
            print(f"coordinator: metrics port {a.metrics_port}: {e}", file=sys.stderr)
            return 1

    async def main_job() -> None:
        async with asyncio.TaskGroup() as tg:
            beat = tg.create_task(heartbeat(daemon, adapter), name="status")
            await daemon.run()
            beat.cancel()

    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        loop.add_signal_handler(sig, task.cancel)
    error: str | None = None
    stopped = False
    try:
        await adapter.serve(main_job)
    except RoundFailed as e:
        error = str(e)
    except AdapterError as e:
        error = str(e)
    except asyncio.CancelledError:
        stopped = True
    finally:
        if server is not None:
            server.close()
    if a.day is None:  # the service
        if error:
            print(f"coordinator: stopped: {error}", file=sys.stderr)
            return 1
        log.info("stopped%s", " by a signal" if stopped else "")
        return 0
    return one_shot_exit(a, records.get("last"), error, stopped)


async def heartbeat(daemon: Daemon, adapter: MqttAdapter) -> None:
    """status.json every STATUS_EVERY_S, and systemd's watchdog while connected (sdnotify)."""
    notify("READY=1")
    every = min(STATUS_EVERY_S, watchdog_interval_s() or STATUS_EVERY_S)
    while True:
        daemon.write_status()
        if adapter.connected:
            notify("WATCHDOG=1", f"STATUS={len(daemon.open)} round(s) open")
        await asyncio.sleep(every)


def one_shot_exit(a: argparse.Namespace, rec: dict[str, Any] | None, error: str | None,
                  stopped: bool) -> int:
    """Exit status and last words of a one-shot run (its record is written already, unless
    the round never started; an MQTT failure's reason replaces a cancelled round's)."""
    if rec is None or (error and rec["status"] != "completed"):
        rec = rec or {"status": "failed", "day": a.day, "round": a.round}
        rec["error"] = error or rec.get("error") or "terminated before the round started"
        write_atomic(a.result, json.dumps(rec, indent=1) + "\n", 0o644)
    if rec["status"] == "completed":
        print(f"coordinator: round {a.day}/{a.round} completed: {rec['homes']} homes, "
              f"{len(rec['groups'])} groups, overload {rec['overload_before_wh']} -> "
              f"{rec['overload_after_wh']} Wh after moves, {rec['curtailed_wh']} Wh curtailed",
              file=sys.stderr)
        return 0
    why = rec.get("error") or ("terminated by a signal" if stopped else "failed")
    print(f"coordinator: round {a.day}/{a.round} failed: {why}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
