"""``python -m backend.coordinator``: run one coordinator round (backend/coordinator/service.py).

Exit status 0 when the round completed (every adjustment acknowledged by the broker), 1 when it
could not (the reason is printed and written to the result file), 2 on bad arguments.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any

from backend.common.mqtt import add_mqtt_args, settings_from_args
from backend.coordinator.service import Coordinator, CoordinatorError, ServiceConfig
from hemsfw import protocol

log = logging.getLogger("hems.coordinator")


def _brokers(s: str) -> tuple[str, ...]:
    out = tuple(b.strip() for b in s.split(",") if b.strip())
    if not out or len(set(out)) != len(out) or not all(protocol.valid_id(b) for b in out):
        raise argparse.ArgumentTypeError(f"expected distinct broker ids [a-z0-9_-], got {s!r}")
    return out


def _positive(kind: type[int] | type[float]) -> Any:
    def conv(s: str) -> int | float:
        v = kind(s)
        if v <= 0:
            raise argparse.ArgumentTypeError(f"must be > 0, got {s}")
        return v

    conv.__name__ = kind.__name__
    return conv


def _port(s: str) -> int:
    v = int(s)
    if not 0 < v < 65536:
        raise argparse.ArgumentTypeError(f"not a TCP port: {s}")
    return v


def _k(s: str) -> int:
    # The mask broker refuses k < 2 (a group of one is that home's plan); agree with it here.
    v = int(s)
    if v < 2:
        raise argparse.ArgumentTypeError(f"k must be at least 2, got {s}")
    return v


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m backend.coordinator",
        description="Run one demand-response round: announce it, collect masked plans, get the "
        "group sums from the mask brokers, adjust, and send every group its adjustment.",
    )
    r = p.add_argument_group("round")
    r.add_argument("--day", required=True, help="the planned day, YYYY-MM-DD")
    r.add_argument("--round", type=_positive(int), default=1, help="round number within the day")
    r.add_argument("--frames", type=_positive(int), default=96, help="frames per day")
    r.add_argument("--frame-s", type=_positive(int), default=900, help="seconds per frame")
    r.add_argument("--quantum-wh", type=_positive(int), default=1,
                   help="Wh per plan unit on the wire")
    r.add_argument("--start", type=int, required=True, help="epoch seconds of frame 0")
    r.add_argument("--collect-s", type=_positive(float), default=10.0,
                   help="collection window after the announcement (seconds)")
    r.add_argument("--expected-homes", type=_positive(int), default=None,
                   help="close collection early once this many homes were accepted")
    r.add_argument("--brokers", type=_brokers, required=True,
                   help="comma-separated mask broker ids, e.g. mb1,mb2")
    r.add_argument("--k", type=_k, default=3,
                   help="minimum homes per group (>= 2; the same k as the mask brokers)")
    a = p.add_argument_group("adjustment")
    a.add_argument("--solver", choices=("heuristic", "exact"), default="heuristic")
    a.add_argument("--window", choices=("defer", "symmetric"), default="defer",
                   help="magnification window: defer = k+1..k+m-1 (docs/adjustment.md)")
    a.add_argument("--time-limit", type=_positive(float), default=10.0,
                   help="solver time limit per solve (seconds)")
    a.add_argument("--target-weight", type=float, default=0.0,
                   help="weight of the capacity message's target profile (0 = ignore it)")
    c = p.add_argument_group("inputs and timeouts")
    c.add_argument("--capacity-file", type=Path, default=None,
                   help="capacity JSON (protocol_svc.make_capacity) instead of hems/v1/capacity")
    c.add_argument("--capacity-wait-s", type=float, default=10.0,
                   help="how long to wait for the retained capacity after collection")
    c.add_argument("--answer-timeout-s", type=_positive(float), default=10.0,
                   help="how long to wait for each mask broker's answer")
    c.add_argument("--missing-grace-s", type=float, default=1.0,
                   help="how long to keep asking a broker again (once a second) about members "
                   "it had no mask for")
    c.add_argument("--reask-s", type=_positive(float), default=5.0,
                   help="publish a group request again when unanswered for this long")
    d = p.add_argument_group("durability and operations (docs/reliability.md)")
    d.add_argument("--state-dir", type=Path, default=None,
                   help="journal the round here; restarted with the same arguments, the "
                   "coordinator resumes the round where it stood (without it a crash loses it)")
    d.add_argument("--reconnect-s", type=_positive(float), default=60.0,
                   help="give up when the MQTT broker cannot be reached for this long")
    d.add_argument("--linger-s", type=float, default=0.0,
                   help="after the round, serve this long more: a home that comes back online "
                        "gets its adjustment again (a broker crash may have lost the queued "
                        "copy); SIGTERM ends the wait with a completed round (default 0)")
    d.add_argument("--metrics-port", type=_port, default=None,
                   help="serve Prometheus metrics on 127.0.0.1:PORT/metrics (default off)")
    d.add_argument("--workers", type=_positive(int), default=1,
                   help="plan ingest processes sharing the plan topic over an MQTT 5 shared "
                   "subscription ($share/coordinator/...; default 1: no sharing)")
    d.add_argument("--debug-pause-at", default=None, help=argparse.SUPPRESS)
    p.add_argument("--result", type=Path, required=True, help="where to write the round's JSON")
    p.add_argument("--log-level", default=os.environ.get("HEMS_LOG_LEVEL", "INFO"))
    add_mqtt_args(p, "coordinator")
    return p


def write_json_atomic(path: Path, obj: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, str(args.log_level).upper(), logging.INFO),
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    cfg = ServiceConfig(
        day=args.day, round=args.round, frames=args.frames, frame_s=args.frame_s,
        quantum_wh=args.quantum_wh, start=args.start, collect_s=args.collect_s,
        brokers=args.brokers, k=args.k, expected_homes=args.expected_homes,
        solver=args.solver, window=args.window, time_limit_s=args.time_limit,
        target_weight=args.target_weight, capacity_file=args.capacity_file,
        capacity_wait_s=args.capacity_wait_s, answer_timeout_s=args.answer_timeout_s,
        missing_grace_s=args.missing_grace_s, reask_s=args.reask_s, state_dir=args.state_dir,
        reconnect_s=args.reconnect_s, metrics_port=args.metrics_port, linger_s=args.linger_s,
        pause_at=args.debug_pause_at, workers=args.workers,
    )
    settings = settings_from_args(args)
    if settings.password is None:
        log.warning("no password in $%s", args.password_env)
    if args.state_dir is None:
        log.warning("no --state-dir: a crash of this process loses the round")

    async def go() -> tuple[Coordinator, str | None]:
        coord = Coordinator(cfg, settings)
        coord.on_complete = lambda: write_json_atomic(args.result, coord.result("completed"))
        task = asyncio.current_task()
        loop = asyncio.get_running_loop()
        assert task is not None
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, task.cancel)
        try:
            await coord.run()
        except CoordinatorError as e:
            return coord, str(e)
        except asyncio.CancelledError:
            if coord.completed:  # stopped while lingering: the round itself is done
                return coord, None
            return coord, "terminated by a signal before the round completed"
        except Exception as e:  # a bug: still leave a record and a clear exit status
            log.exception("internal error")
            return coord, f"internal error: {e!r}"
        return coord, None

    coord, error = asyncio.run(go())
    record = coord.result("failed" if error else "completed", error)
    try:
        write_json_atomic(args.result, record)
    except OSError as e:
        print(f"coordinator: cannot write {args.result}: {e}", file=sys.stderr)
        return 1
    if error:
        print(f"coordinator: round {cfg.day}/{cfg.round} failed: {error}", file=sys.stderr)
        return 1
    print(f"coordinator: round {cfg.day}/{cfg.round} completed: {record['homes']} homes, "
          f"{len(record['groups'])} groups, overload {record['overload_before_wh']} -> "
          f"{record['overload_after_wh']} Wh after moves, {record['curtailed_wh']} Wh curtailed",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
