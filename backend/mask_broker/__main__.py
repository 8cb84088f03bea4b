"""python -m backend.mask_broker --broker-id mb1 --registry REG.json --k 3 [...]

(also `hems mask-broker ...`).  Exit status 0 after a clean stop (SIGTERM / SIGINT), 2 on bad
arguments or a bad registry.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import os
import sys
import time
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from backend.common.clock import AcceleratedClock, SystemClock
from backend.common.mqtt import add_mqtt_args, settings_from_args
from backend.common.usage import Parser, bounded_int, port

from .core import MAX_ROUNDS, DayWindow, MaskBroker
from .release_log import ReleaseLog
from .service import Fatal, MetricsUnavailable, Service, configure_logging
from .state_dir import StateDir

log = logging.getLogger("hems.mask_broker")


def load_registry(path: Path) -> dict[str, bytes]:
    """{"homes": {"<home id>": {"key": "<64 hex>"}}} -> {home id: 32-byte key}.

    Read once at start; the coordinator has no way to add a home to it."""
    obj = json.loads(path.read_text())
    homes = obj.get("homes") if isinstance(obj, dict) else None
    if not isinstance(homes, dict):
        raise ValueError('expected {"homes": {...}}')
    keys = {}
    for home, entry in homes.items():
        key = entry.get("key") if isinstance(entry, dict) else None
        if not isinstance(key, str) or len(key) != 64:
            raise ValueError(f"home {home!r}: key must be 64 hex digits")
        keys[home] = bytes.fromhex(key)
    return keys


def parser(prog: str = "python -m backend.mask_broker") -> argparse.ArgumentParser:
    p = Parser(
        prog=prog,
        description="Mask broker: stores sealed mask seeds, answers group mask sums "
        "under the release rule (docs/privacy.md).")
    p.add_argument("--broker-id", help="this broker's id (also its MQTT "
                   "user and client id unless --user is given); required")
    p.add_argument("--registry", type=Path,
                   help='JSON {"homes": {"<home id>": {"key": "<64 hex>"}}}')
    p.add_argument("--k", type=int, default=3,
                   help="smallest group and smallest atom answered (>= 2; default 3)")
    p.add_argument("--state-dir", type=Path,
                   help="keep the day's answered groups and the round's masks across restarts "
                   "(without it a restart forgets them: see docs/privacy.md)")
    p.add_argument("--stats-file", type=Path, help="JSON stats, rewritten atomically")
    p.add_argument("--release-log", type=Path, default=None,
                   help="append every released group's membership (never a value) to this "
                   "file, for an auditor: python -m backend.mask_broker.audit FILE")
    p.add_argument("--stats-interval", type=float, default=1.0,
                   help="seconds between stats writes while masks arrive (default 1)")
    p.add_argument("--metrics-port", type=port, default=None,
                   help="serve Prometheus metrics (hems_mask_broker_*) on "
                   "http://HOST:PORT/metrics (default: off)")
    p.add_argument("--metrics-host", default="127.0.0.1",
                   help="address for --metrics-port (default 127.0.0.1, loopback only)")
    p.add_argument("--timezone", default="UTC",
                   help="the deployment's IANA time zone (default UTC): a round is accepted "
                   "only for today or the next --days-ahead days on this broker's own clock")
    p.add_argument("--days-ahead", type=bounded_int(0, 7), default=1,
                   help="how many days ahead a round may be announced (default 1)")
    p.add_argument("--max-rounds", type=bounded_int(1, 96), default=MAX_ROUNDS,
                   help=f"rounds a planned day may have (default {MAX_ROUNDS})")
    p.add_argument("--accelerate", type=AcceleratedClock.parse, default=None,
                   help=argparse.SUPPRESS)  # the lab's clock: ANCHOR,VIRTUAL,SPEED
    p.add_argument("--check", action="store_true",
                   help="health check of the mask broker writing --stats-file: exit 0 if it "
                   "runs, is connected and its stats are fresh, else 1 (for systemd, "
                   "monitoring)")
    p.add_argument("--log-level", default="info")
    add_mqtt_args(p, default_user="")
    return p


#: stats older than this make --check report the service unhealthy (HEARTBEAT_S is 30 s)
STATS_FRESH_S = 120.0


def check(stats_file: Path | None, now: float) -> str | None:
    """Why the mask broker behind ``stats_file`` is unhealthy, or None."""
    if stats_file is None:
        return "--check reads --stats-file: give it"
    try:
        st = json.loads(stats_file.read_text())
        pid = int(st["pid"])
        age = now - float(st["written_at"])
        connected = bool(st["mqtt"]["connected"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        return f"no usable stats in {stats_file}: {e}"
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return f"process {pid} is not running"
    except PermissionError:
        pass
    if age > STATS_FRESH_S:
        return f"stats not updated for {age:.0f}s"
    if not connected:
        return "not connected to the MQTT broker"
    return None


def main(argv: list[str] | None = None, prog: str = "python -m backend.mask_broker") -> int:
    p = parser(prog)
    a = p.parse_args(argv)
    if not a.check and (a.broker_id is None or a.registry is None):
        p.error("--broker-id and --registry are required")
    if a.check:
        problem = check(a.stats_file, time.time())
        print("healthy" if problem is None else f"unhealthy: {problem}")
        return 0 if problem is None else 1
    configure_logging(a.log_level)
    try:
        ZoneInfo(a.timezone)
    except (ZoneInfoNotFoundError, ValueError):
        p.error(f"--timezone {a.timezone}: not an IANA time zone name")
    clock = a.accelerate if a.accelerate is not None else SystemClock()
    try:
        core = MaskBroker(a.broker_id, load_registry(a.registry), a.k, clock=clock.now,
                          window=DayWindow(a.timezone, a.days_ahead), max_rounds=a.max_rounds)
    except (OSError, ValueError) as e:
        log.error("cannot start: %s", e)
        return 2
    settings = settings_from_args(a)
    if not settings.username:
        settings = dataclasses.replace(settings, username=a.broker_id)
    state = None
    if a.state_dir is not None:
        state = StateDir(a.state_dir)
        try:
            for kind, data in state.records():
                try:
                    core.restore(kind, data)
                except ValueError as e:
                    log.error("state: skipping a %s record: %s", kind, e)
        except OSError as e:  # fail closed: never answer without the partition it had
            log.error("cannot read the state dir %s: %s", a.state_dir, e)
            return 1
        log.info("state restored from %s: round %s, %d masks, %d atoms", a.state_dir,
                 core.round, core.masks.count, len(core.partition.atom_sizes()))
    else:
        log.warning("no --state-dir: a restart forgets today's answered groups")
    try:
        release_log = ReleaseLog(a.release_log) if a.release_log is not None else None
    except OSError as e:
        log.error("cannot open --release-log %s: %s", a.release_log, e)
        return 2
    service = Service(core, settings, state, a.stats_file, a.stats_interval,
                      metrics_port=a.metrics_port, metrics_host=a.metrics_host,
                      release_log=release_log)
    try:
        asyncio.run(service.run())
    except MetricsUnavailable as e:  # the metrics port is taken, or not ours to bind
        log.error("cannot serve metrics: %s", e)
        return 1
    except Fatal:  # a refusal retrying cannot fix, or a state dir that cannot be written: logged
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
