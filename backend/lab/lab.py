"""`hems lab`: the whole system on one machine, day after day, on an accelerated clock.

Starts mosquitto (own port, own data dir, generated passwd + ACL), the mask broker(s), N home
firmware processes on the MicroPython unix binary and ONE long-running coordinator service
(``hems coordinator --announce ... --deadline ...``, the production daemon) for ``--days`` days.
Each day's round is announced the day before, collected, grouped, adjusted and delivered; the
homes play every day out on the lab's clock (timeline.py).  Capacity varies by day (published on
``hems/v1/capacity/<day>``, or by openleadr's real VTN through the OpenADR grid feed with
``--grid-feed openadr``); from day 2 some homes lose their network over their round's window
(``--dropout``), miss it and follow their own plan that day.  At the end the lab reads what each
home recorded itself and checks, day by day (days.py):

* true_load_wh == coordinator_load_before_wh   (the masking arithmetic is exact)
* relay_load_after_wh == coordinator_load_after_wh   (the relays did what was decided)
* metered_load_after_wh <= coordinator_load_after_wh + one pulse per home, and no home's metered
  energy above its frame's budget by more than one pulse   (the homes drew what they were told)

Everything it started is stopped, whatever happens (SIGTERM, SIGINT, SIGHUP included; children
die with it even on SIGKILL).  Exit status 0 only if every part worked.  The long steps show
progress bars on a terminal (progress.py); the summary (summary.py) is printed, or printed as
JSON, and drawn as a self-contained HTML report (report.py).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import random
import secrets
import shutil
import signal
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from backend.common.broker import COORDINATOR_USER, GRID_USER, LAB_USER, Mosquitto
from backend.common.children import Stopped, stop_on_signals
from backend.common.rabbitmq import RabbitCluster, why_unavailable
from backend.common.tls import make_pki
from backend.common.usage import UsageError, bounded_float, bounded_int
from backend.coordinator.adjust import Policy, Problem, solve
from backend.lab import budget, days, procs, scenario
from backend.lab.outdir import OutDir, check_out, check_report
from backend.lab.progress import Progress, Step, live
from backend.lab.rogue import Rogue
from backend.lab.summary import print_table
from backend.lab.timeline import ANNOUNCE, DAY_S, DEADLINE, Timeline
from hemsfw import protocol, protocol_svc

log = logging.getLogger("hems.lab")

__all__ = ["LabOptions", "add_args", "main", "run_lab"]

EXIT_USAGE = 2
#: mask brokers the lab can run (ids mb1..mb9)
MAX_MASK_BROKERS = 9
MAX_DAYS = 30
#: a lab day shorter than this (frames x --frame-real-s) leaves the homes too little real time
#: to report and the coordinator too little to adjust (a quarter of the day each)
MIN_DAY_REAL_S = 2.0
#: real seconds from the moment the lab fixes its clock's anchor to the anchor: the mask
#: brokers and the coordinator start before it, so no announcement is due while they start
CLOCK_LEAD_S = 4.0
#: ... plus this per home: a large fleet's MicroPython processes, all booting, slow down the
#: services' start (200 homes on 2 cores: the mask brokers took over 20 s to connect, and the
#: first two lab days passed before the coordinator ran)
CLOCK_LEAD_S_PER_HOME = 0.1
#: capacity of day d: the tightest level only shifting can satisfy, times this (cycled); below
#: 1 the day needs curtailment too
DAY_FACTORS = (1.0, 0.97, 1.03)
#: the lab homes' simulated S0 meters: 1 Wh per pulse; a closed relay with no pulse for two
#: frames counts as a stuck meter (a heat pump's off phase is 10 min)
METER_PPKWH = 1000
METER_STUCK_S = 1800


@dataclass(frozen=True)
class LabOptions:
    homes: int = 20
    seed: int = 1
    frames: int = 96
    frame_s: int = 900
    frame_real_s: float = 0.2
    k: int = 3
    mask_brokers: int = 1
    solver: str = "heuristic"
    days: int = 1
    #: share of the homes absent (no network over their round) on each day from day 2
    dropout: float = 0.1
    #: homes that join late (absent before a day drawn in 2..days) and as many that leave
    #: (absent from such a day on): the coordinator's carry-forward and new-group paths
    churn: int = 0
    out_dir: Path | None = None
    keep: bool = False
    python_homes: bool = False  # run the firmware under CPython (paho) instead of micropython
    record: bool = False  # record everything the services' identities can receive (tests)
    tls: bool = False  # every client connects over TLS to mosquitto's TLS listener
    grid_feed: str | None = None  # "openadr": capacity from openleadr's VTN via the VEN
    #: fault injection: kill -9 the coordinator at these points ("<day>:<phase>" or
    #: "boundary:<day>"), in order, restarting it each time
    kill_coordinator: tuple[str, ...] = ()
    #: fault injection: the last home is a rogue (rogue.py) instead of a firmware process
    rogue: bool = False
    #: homes prove their plans in [0, cap] and the coordinator verifies (docs/integrity.md)
    proofs: bool = False
    #: "mosquitto" or "rabbitmq" (a cluster of ``nodes``: backend/common/rabbitmq.py)
    broker: str = "mosquitto"
    nodes: int = 1


# ------------------------------------------------------------------------- the scenario


def choose_capacity(homes: list[scenario.HomeSpec], frames: int) -> tuple[int, float]:
    """The tightest flat capacity (1% steps below the peak) that whole-frame shifting of the
    magnification classes' totals can satisfy: a day "only shifting can satisfy"."""
    mags = sorted({h.magnification for h in homes})
    totals = np.array(
        [np.sum([h.plan_wh for h in homes if h.magnification == m], axis=0) for m in mags],
        dtype=np.int64,
    ).reshape(len(mags), frames)
    peak = int(totals.sum(axis=0).max())
    best = (peak, 1.0)
    for pct in range(99, 49, -1):
        cap = peak * pct // 100
        res = solve(
            Problem(totals=totals, capacity=np.full(frames, cap, dtype=np.int64),
                    magnification=np.array(mags, dtype=np.int64),
                    policy=Policy(allow_curtail=False)),
            solver="heuristic",
        )
        if res.overload_after_wh > 0:
            break
        best = (cap, pct / 100)
    return best


def absent_homes(homes: list[scenario.HomeSpec], o: LabOptions) -> dict[int, list[str]]:
    """Day -> the homes without network over that day's round (none on day 1 but the late
    joiners; at least one on every later day when ``dropout`` > 0 and enough homes remain to
    form a group), plus the ``churn`` homes that join late and leave early."""
    rng = random.Random(f"absent:{o.seed}")
    out: dict[int, list[str]] = {1: []}
    for d in range(2, o.days + 1):
        n = round(o.dropout * len(homes))
        if o.dropout > 0:
            n = max(1, n)
        n = min(n, len(homes) - o.k)
        out[d] = sorted(h.home_id for h in rng.sample(homes, max(0, n)))
    for d, hs in churn_absent(homes, o).items():
        out[d] = sorted(set(out[d]) | hs)
    return out


def churn_days(homes: list[scenario.HomeSpec], o: LabOptions
               ) -> tuple[dict[str, int], dict[str, int]]:
    """(home -> the day it joins, home -> the day it leaves) for ``churn`` homes each."""
    if o.churn == 0 or o.days < 2:
        return {}, {}
    rng = random.Random(f"churn:{o.seed}")
    picked = rng.sample([h.home_id for h in homes], 2 * o.churn)
    joins = {h: rng.randint(2, o.days) for h in picked[: o.churn]}
    leaves = {h: rng.randint(2, o.days) for h in picked[o.churn:]}
    return joins, leaves


def churn_absent(homes: list[scenario.HomeSpec], o: LabOptions) -> dict[int, set[str]]:
    joins, leaves = churn_days(homes, o)
    out: dict[int, set[str]] = {d: set() for d in range(1, o.days + 1)}
    for h, j in joins.items():
        for d in range(1, j):
            out[d].add(h)
    for h, left in leaves.items():
        for d in range(left, o.days + 1):
            out[d].add(h)
    return out


def cap_wh(rated: dict[str, int], frame_s: int) -> dict[str, int]:
    """Each home's contracted cap per frame (Wh): its rating x the frame's length, rounded up
    (as the coordinator's reserve.py computes it from the same registry)."""
    return {h: -(-w * frame_s // 3600) for h, w in rated.items()}


def day_capacity(homes: list[scenario.HomeSpec], outside: list[str], d: int,
                 frames: int, caps: dict[str, int] | None = None
                 ) -> tuple[np.ndarray[Any, np.dtype[np.int64]], float]:
    """Day d's capacity: the tightest level only shifting can satisfy for the homes that will
    report (times the day's factor), plus the caps of the homes ``outside`` (absent, the
    rogue), which the coordinator must reserve: the grid carries their contracted load too."""
    present = [h for h in homes if h.home_id not in outside]
    cap, frac = choose_capacity(present, frames)
    factor = DAY_FACTORS[(d - 1) % len(DAY_FACTORS)]
    reserve = sum((caps or {}).get(h, 0) for h in outside)
    return np.full(frames, int(cap * factor) + reserve, dtype=np.int64), frac * factor


# ------------------------------------------------------------------------- MQTT clients


@dataclass(frozen=True)
class Conn:
    """Where the lab's own clients connect (with TLS when the lab runs with --tls)."""

    port: int
    cafile: Path | None = None
    #: a cluster's other nodes' MQTT ports: retained messages go to each (node-local there)
    others: tuple[int, ...] = ()

    def client(self, user: str, password: str, client_id: str = "") -> mqtt.Client:
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id)
        c.username_pw_set(user, password)
        if self.cafile is not None:
            c.tls_set(ca_certs=str(self.cafile))
        return c

    @property
    def host(self) -> str:
        return "localhost" if self.cafile is not None else "127.0.0.1"


class Observer:
    """The lab's own MQTT client (user `lab`): sees availability, publishes the lab clock."""

    def __init__(self, conn: Conn, password: str) -> None:
        self.online: set[str] = set()
        self.lock = threading.Lock()
        self.conn, self.password = conn, password
        # client id = user name (RabbitMQ ties an identity's subscription queue to it)
        self.c = conn.client(LAB_USER, password, LAB_USER)
        self.c.on_message = self._on_message
        self.c.connect(conn.host, conn.port)
        self.c.subscribe(protocol.PREFIX + "/status/+", qos=1)
        self.c.loop_start()

    def _on_message(self, _c: object, _u: object, msg: mqtt.MQTTMessage) -> None:
        home = msg.topic.rsplit("/", 1)[-1]
        with self.lock:
            if msg.payload == b"online":
                self.online.add(home)
            else:
                self.online.discard(home)

    def publish(self, topic: str, obj: dict[str, Any], retain: bool) -> None:
        self.c.publish(topic, json.dumps(obj), qos=1, retain=retain).wait_for_publish(10)
        if retain and self.conn.others:
            publish_as(self.conn, LAB_USER, self.password, [(topic, json.dumps(obj).encode())],
                       others_only=True)

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


class Recorder:
    """Subscribes to '#' with a service's own identity and keeps every message the broker lets
    that identity receive: a superset of what the service itself ever holds."""

    def __init__(self, conn: Conn, user: str, password: str, path: Path) -> None:
        self.path = path
        self.f = path.open("w")
        self.lock = threading.Lock()
        # Its own identity (broker.connection_users): the service's would take over its session.
        self.c = conn.client(f"{user}-rec", password, f"{user}-rec")
        self.c.on_message = self._on_message
        self.c.connect(conn.host, conn.port)
        self.c.subscribe("#", qos=1)
        self.c.loop_start()

    def _on_message(self, _c: object, _u: object, msg: mqtt.MQTTMessage) -> None:
        with self.lock:
            self.f.write(json.dumps({"topic": msg.topic,
                                     "payload": msg.payload.decode("latin-1")}) + "\n")

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()
        with self.lock:
            self.f.close()


def publish_as(conn: Conn, user: str, password: str,
               messages: list[tuple[str, bytes]], others_only: bool = False) -> None:
    """Retained QoS 1 publishes under another identity (the grid feed's capacity), on every
    node of a cluster (``others_only``: not on the first)."""
    for port in (() if others_only else (conn.port,)) + conn.others:
        c = conn.client(user, password, f"{user}-pub{port}")
        c.connect(conn.host, port)
        c.loop_start()
        try:
            for topic, payload in messages:
                c.publish(topic, payload, qos=1, retain=True).wait_for_publish(10)
        finally:
            c.disconnect()
            c.loop_stop()


def _connected(stats: Path) -> bool:
    try:
        return bool(json.loads(stats.read_text())["mqtt"]["connected"])
    except (OSError, ValueError, KeyError, TypeError):
        return False


def wait_for(cond: Any, timeout: float, what: str, step: Step | None = None,
             count: Any = None) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if step is not None and count is not None:
            step.update(count())
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.05)


# ------------------------------------------------------------------------- the run


@dataclass
class Run:
    """What one lab run holds while it runs."""

    o: LabOptions
    out: OutDir
    tl: Timeline
    homes: list[scenario.HomeSpec]
    absent: dict[int, list[str]]
    brokers: list[str]
    pw: dict[str, str]
    ps: procs.Procs
    conn: Conn | None = None
    port: int = 0
    tls_args: list[str] = field(default_factory=list)
    #: the services' --broker rabbitmq arguments; the nodes' MQTT ports (homes spread over them)
    broker_args: list[str] = field(default_factory=list)
    mqtt_ports: list[int] = field(default_factory=list)
    stopping: threading.Event = field(default_factory=threading.Event)
    coordinator: procs.Proc | None = None
    coordinator_starts: int = 0
    anchor: float = 0.0
    snapshots: dict[int, dict[str, dict[str, Any] | None]] = field(default_factory=dict)
    #: each home's contracted rating (W), as in the coordinator's registry
    rated: dict[str, int] = field(default_factory=dict)
    #: the rogue home (--debug-rogue), played by the lab: no firmware process
    rogue: str | None = None

    def now(self) -> float:
        """The lab clock (virtual epoch seconds)."""
        return self.tl.begin + (time.time() - self.anchor) * self.tl.speed

    def real_until(self, virtual: float) -> float:
        return (virtual - self.now()) / self.tl.speed

    @property
    def state_dir(self) -> Path:
        return self.out.root / "state-coordinator"


def run_lab(o: LabOptions, progress: Progress | None = None) -> tuple[dict[str, Any], list[str]]:
    """Run the lab; returns (the JSON summary, the list of failures)."""
    pg = progress or Progress()
    failures: list[str] = []
    # Never delete what the lab did not create (outdir.py): --out is checked and cleaned of an
    # earlier run's own entries only; without it the lab works in a fresh temporary folder.
    out = (OutDir.open(o.out_dir) if o.out_dir is not None
           else OutDir(Path(tempfile.mkdtemp(prefix="hems-lab-")), []))
    work = out.root
    log.info("lab directory %s%s", work, "" if o.out_dir or o.keep or o.record
             else " (temporary; --out DIR keeps it)")
    t0 = time.monotonic()
    timings: dict[str, float] = {}
    homes = scenario.make_homes(o.homes, o.seed, o.frames)
    first = dt.datetime.now(dt.UTC).date() + dt.timedelta(days=1)
    tl = Timeline(first, o.days, o.frame_real_s, o.frame_s)
    brokers = [f"mb{i + 1}" for i in range(o.mask_brokers)]
    pw = {u: secrets.token_hex(16) for u in [COORDINATOR_USER, GRID_USER, LAB_USER, *brokers]}
    for h in homes:
        pw[h.home_id] = secrets.token_hex(16)
    run = Run(o, out, tl, homes, absent_homes(homes, o), brokers, pw,
              procs.Procs(out.path("logs")))
    run.rated = {h.home_id: scenario.rated_w(h, o.frame_s) for h in homes}
    run.rogue = homes[-1].home_id if o.rogue else None
    hcaps = cap_wh(run.rated, o.frame_s)
    caps = {d: day_capacity(homes, sorted({*run.absent[d], *([run.rogue] if run.rogue else [])}),
                            d, o.frames, hcaps) for d in range(1, o.days + 1)}
    pki = make_pki(out.path("pki")) if o.tls else None
    broker: Mosquitto | RabbitCluster = (
        RabbitCluster(out.path("rabbitmq"), pw, brokers, o.nodes) if o.broker == "rabbitmq"
        else Mosquitto(out.path("mosquitto"), pw, brokers, tls=pki, recorder=o.record))
    observer: Observer | None = None
    recorders: list[Recorder] = []
    rogue: Rogue | None = None
    vtn: Any = None
    summary: dict[str, Any] = {}
    try:
        keys = {h.home_id: {b: secrets.token_hex(32) for b in brokers} for h in homes}
        for b in brokers:
            reg = {"homes": {h: {"key": keys[h][b], "rated_w": run.rated[h]} for h in keys}}
            out.path(f"registry-{b}.json").write_text(json.dumps(reg))
        # the coordinator's registry: every home and its circuit's rating, no keys
        out.path("homes-coordinator.json").write_text(json.dumps(
            {"homes": {h: {"rated_w": w} for h, w in run.rated.items()}}))
        with pg.step(o.broker, total=1) as st:
            broker.start()
            if isinstance(broker, RabbitCluster):
                run.mqtt_ports = broker.mqtt_ports()
                run.port = run.mqtt_ports[0]
                run.broker_args = [
                    "--broker", "rabbitmq",
                    "--amqp-ports", ",".join(str(n.amqp_port) for n in broker.nodes),
                    "--mqtt-ports", ",".join(map(str, run.mqtt_ports))]
                log.info("RabbitMQ cluster of %d nodes, MQTT on 127.0.0.1:%s", o.nodes,
                         ",".join(map(str, run.mqtt_ports)))
            else:
                # With --tls every client (services, homes, the lab's own) uses the TLS
                # listener.
                run.port = broker.tls_port if pki is not None and broker.tls_port else broker.port
                run.tls_args = ["--host", "localhost", "--cafile", str(pki.cafile)] if pki else []
                log.info("mosquitto on 127.0.0.1:%d%s", run.port, " (TLS)" if pki else "")
            st.update(1)
            run.conn = conn = Conn(run.port, pki.cafile if pki else None,
                                   tuple(run.mqtt_ports[1:]))
            observer = Observer(conn, pw[LAB_USER])
            if o.record:
                for ident in [COORDINATOR_USER, *brokers]:
                    recorders.append(Recorder(conn, ident, pw[ident],
                                              out.path(f"recorded-{ident}.jsonl")))
        vtn = publish_capacity(run, caps)
        timings["services"] = time.monotonic() - t0

        t_fleet = time.monotonic()
        home_procs = start_homes(run, keys, pki is not None, observer, pg)
        if run.rogue is not None:
            rh = next(h for h in homes if h.home_id == run.rogue)
            rogue = Rogue(conn.client(rh.home_id, pw[rh.home_id]), conn.host, conn.port,
                          rh.home_id, rh.magnification, rh.plan_wh, keys[rh.home_id])
        timings["fleet"] = time.monotonic() - t_fleet

        # The lab clock starts a few seconds from now, when the services are up (every one
        # gets the same anchor: the homes on hems/v1/lab/clock, the services as --accelerate;
        # the mask brokers refuse a round outside today..tomorrow on it).
        lead = CLOCK_LEAD_S + CLOCK_LEAD_S_PER_HOME * len(homes)
        run.anchor = time.time() + lead
        with pg.step("mask brokers", total=len(brokers)) as st:
            start_mask_brokers(run)
            wait_for(lambda: all(_connected(work / f"stats-{b}.json") for b in brokers),
                     16 + lead,
                     "mask broker(s) did not connect", st,
                     lambda: sum(_connected(work / f"stats-{b}.json") for b in brokers))
            st.update(len(brokers))
        observer.publish(protocol.t_clock(), {"v": 1, "anchor": run.anchor,
                                              "virtual": tl.begin, "speed": tl.speed},
                         retain=True)
        kills = _kill_plan(run)
        start_coordinator(run, _pause_of(run, kills[0] if kills else None))
        t_days = time.monotonic()
        play_days(run, home_procs, kills, pg, failures)
        timings["days"] = time.monotonic() - t_days
        if vtn is not None:
            summary["openadr_report_sent"] = openadr_reported(vtn, run)
        timings["total"] = time.monotonic() - t0
        summary.update(summarise(run, caps, failures))
        summary["timings_s"] = {k: round(v, 2) for k, v in timings.items()}
        if o.grid_feed:
            summary["grid_feed"] = o.grid_feed
    except Exception as e:
        log.exception("lab failed")
        failures.append(f"{type(e).__name__}: {e}")
    finally:
        if observer is not None:
            observer.close()
        if rogue is not None:
            rogue.close()
        for r in recorders:
            r.close()
        run.stopping.set()
        run.ps.stop_all()
        broker.stop()
        if vtn is not None:
            vtn.stop()
        if not o.keep and not o.record and o.out_dir is None and not failures:
            shutil.rmtree(work, ignore_errors=True)
    summary["failures"] = failures
    summary["lab_dir"] = str(work)
    return summary, failures


def start_mask_brokers(run: Run) -> None:
    py, out = sys.executable, run.out
    for b in run.brokers:
        run.ps.start(
            b,
            [py, "-m", "backend.mask_broker", "--broker-id", b,
             "--registry", str(out.root / f"registry-{b}.json"), "--k", str(run.o.k),
             "--stats-file", str(out.path(f"stats-{b}.json")),
             "--stats-interval", "0.2", "--state-dir", str(out.path(f"state-{b}")),
             "--release-log", str(out.path(f"releases-{b}.jsonl")),
             "--timezone", "UTC", "--accelerate", f"{run.anchor},{run.tl.begin},{run.tl.speed}",
             "--port", str(run.port), "--user", b, *run.tls_args, *run.broker_args],
            env={**procs.micropython_env(), "HEMS_MQTT_PASSWORD": run.pw[b]},
        )


def publish_capacity(run: Run, caps: dict[int, tuple[Any, float]]) -> Any:
    """Each day's capacity: retained day profiles (as the grid feed publishes them), or an
    OpenADR event per day on openleadr's VTN, turned into day profiles by the VEN."""
    o, tl = run.o, run.tl
    if o.grid_feed != "openadr":
        assert run.conn is not None
        msgs = [(protocol_svc.t_day_capacity(tl.date(d).isoformat()), protocol.encode(
            protocol_svc.make_day_capacity(tl.date(d).isoformat(), o.frames, cap.tolist(),
                                           source="lab")))
                for d, (cap, _) in caps.items()]
        publish_as(run.conn, GRID_USER, run.pw[GRID_USER], msgs)
        if o.broker == "rabbitmq":
            # RabbitMQ (3.10) delivers a retained message only to a subscription to its exact
            # topic, and the coordinator subscribes to hems/v1/capacity/+: the lab's grid
            # feed re-publishes the profiles until the end, so they arrive live.
            conn, pw = run.conn, run.pw[GRID_USER]
            threading.Thread(target=_repeat, args=(run.stopping, lambda: publish_as(
                conn, GRID_USER, pw, msgs)), name="capacity", daemon=True).start()
        return None
    from backend.grid_feed import vtn as openadr

    day1 = tl.date(1).isoformat()
    vtn = openadr.start_vtn(day1, caps[1][0].tolist(), tl.start(1), o.frame_s,
                            ven_name="hems-lab")
    for d in range(2, o.days + 1):
        vtn.add(openadr.capacity_event(f"hems-{tl.date(d).isoformat()}", "hems-lab",
                                       tl.start(d), o.frame_s, caps[d][0].tolist()))
    feed_dir = run.out.path("grid-feed")
    argv, env = openadr.ven_command(vtn.url, "hems-lab", run.port, run.pw[GRID_USER], feed_dir,
                                    frames=o.frames, frame_s=o.frame_s,
                                    host="localhost" if run.tls_args else "127.0.0.1",
                                    cafile=Path(run.tls_args[3]) if run.tls_args else None)
    run.ps.start("grid-feed", argv, env=env)
    wait_for(lambda: all(openadr.published_capacity(feed_dir, tl.date(d).isoformat())
                         is not None for d in caps), 60,
             "the OpenADR grid feed did not publish every day's capacity")
    return vtn


def openadr_reported(vtn: Any, run: Run) -> bool:
    """The VEN reported each day's planned load to the VTN (equal to the outcomes)."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if len(vtn.report_values("planned_load")) >= run.o.frames:
            return True
        time.sleep(0.1)
    return False


def _repeat(stopping: threading.Event, job: Any, every_s: float = 2.0) -> None:
    """``job()`` every ``every_s`` until ``stopping`` (errors logged)."""
    while not stopping.wait(every_s):
        try:
            job()
        except Exception as e:
            log.warning("re-publishing the capacity: %s", e)


def _spread(ports: list[int], i: int) -> list[str]:
    """The nodes for the i-th home, starting with node i mod n (homes spread over the nodes)."""
    k = i % len(ports)
    return [f"127.0.0.1:{p}" for p in ports[k:] + ports[:k]]


def start_homes(run: Run, keys: dict[str, dict[str, str]], tls: bool, observer: Observer,
                pg: Progress) -> list[procs.Proc]:
    o, out = run.o, run.out
    py = sys.executable
    home_procs: list[procs.Proc] = []
    fleet = [h for h in run.homes if h.home_id != run.rogue]
    with pg.step("homes online", total=len(fleet)) as st:
        for h in fleet:
            sdir = out.path("homes") / h.home_id
            sdir.mkdir(parents=True)
            (sdir / "wifi").write_text("up\n")  # the lab's stand-in for the home's Wi-Fi
            cafile = out.root / "pki" / "ca.der"
            cfg = {
                "home_id": h.home_id,
                "mqtt": {"host": "localhost" if tls else "127.0.0.1", "port": run.port,
                         "user": h.home_id, "password": run.pw[h.home_id], "keepalive": 30,
                         "cafile_der": str(cafile) if tls else None,
                         # a cluster: every node, each home starting on the next one
                         **({"hosts": _spread(run.mqtt_ports, len(home_procs))}
                            if run.mqtt_ports else {})},
                "magnification": h.magnification, "plan_wh": h.plan_wh,
                "keys": keys[h.home_id], "state_dir": str(sdir), "board": "unix",
                "clock": "lab", "safe_state": False, "loop_ms": 10,
                "unix": {"wifi_file": str(sdir / "wifi")},
                # the circuit's simulated load and its pulse meter (issue 15, simload.py)
                "meter": {"kind": "sim", "pulses_per_kwh": METER_PPKWH, "rated_w": h.load_w,
                          "stuck_s": METER_STUCK_S, "frame_log": True, "loads": h.loads},
            }
            if o.proofs:   # the registries' rating: each report carries its range proof
                cfg["rated_w"] = run.rated[h.home_id]
            (sdir / "config.json").write_text(json.dumps(cfg))
            exe = py if o.python_homes else procs.micropython_exe()
            home_procs.append(run.ps.start(
                h.home_id,
                [exe, str(procs.FIRMWARE / "run_home.py"), str(sdir / "config.json")],
                env=procs.micropython_env()))
            if len(home_procs) == 1:
                check_fleet_memory(home_procs[0], observer, len(run.homes))
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and len(observer.online) < len(fleet):
            dead = [p.name for p in home_procs if p.popen.poll() is not None]
            if dead:
                raise RuntimeError(f"home(s) exited at start: {dead}: {home_procs[0].tail()}")
            st.update(len(observer.online))
            time.sleep(0.05)
        st.update(len(observer.online))
    if len(observer.online) < len(fleet):
        raise RuntimeError(f"only {len(observer.online)}/{len(fleet)} homes came online")
    log.info("%d/%d homes online", len(observer.online), len(fleet))
    return home_procs


def check_fleet_memory(first: procs.Proc, observer: Observer, homes: int) -> None:
    """Once the first home is up, read its real memory and check the fleet again (budget.py)."""
    wait_for(lambda: bool(observer.online) or first.popen.poll() is not None, 30,
             "the first home did not come online")
    if first.popen.poll() is not None:
        raise RuntimeError(f"home {first.name} exited at start: {first.tail()}")
    pss = budget.pss_bytes(first.popen.pid)
    if pss is None:
        return
    problem = budget.fleet_problem(homes, pss)
    if problem is not None:
        raise RuntimeError(f"measured {pss / budget.MIB:.1f} MiB for the first home: {problem}")


def coordinator_argv(run: Run, pause: str | None) -> list[str]:
    o, tl = run.o, run.tl
    return [
        sys.executable, "-m", "backend.coordinator",
        "--timezone", "UTC", "--announce", Timeline.hhmm(ANNOUNCE),
        "--deadline", Timeline.hhmm(DEADLINE),
        "--frames", str(o.frames), "--frame-s", str(o.frame_s), "--quantum-wh", "1",
        "--expected-homes", str(len(run.homes)), "--brokers", ",".join(run.brokers),
        "--k", str(o.k), "--solver", o.solver, "--state-dir", str(run.state_dir),
        "--capacity-wait-s", "10", "--keep-journal-days", str(o.days + 1),
        "--homes", str(run.out.root / "homes-coordinator.json"),
        *(["--verify-proofs"] if o.proofs else []),
        "--accelerate", f"{run.anchor},{tl.begin},{tl.speed}",
        "--port", str(run.port), "--user", COORDINATOR_USER, *run.tls_args, *run.broker_args,
        *(["--debug-pause-at", pause] if pause else []),
    ]


def start_coordinator(run: Run, pause: str | None) -> None:
    run.coordinator_starts += 1
    if run.coordinator_starts == 1:
        run.out.path("state-coordinator")
    run.coordinator = run.ps.start(
        f"coordinator-{run.coordinator_starts}", coordinator_argv(run, pause),
        env={**procs.micropython_env(), "HEMS_MQTT_PASSWORD": run.pw[COORDINATOR_USER]})


# ------------------------------------------------------------------------- playing the days


@dataclass(order=True)
class _Event:
    at: float  # virtual time
    what: str
    day: int = 0
    home: str = ""


def _kill_plan(run: Run) -> list[tuple[str, int, str]]:
    """--kill-coordinator items as (kind, day, phase): kind "phase" or "boundary"."""
    out = []
    for item in run.o.kill_coordinator:
        a, _, b = item.partition(":")
        if a == "boundary":
            out.append(("boundary", int(b), ""))
        else:
            out.append(("phase", int(a), b))
    return out


def _pause_of(run: Run, step: tuple[str, int, str] | None) -> str | None:
    if step is None or step[0] != "phase":
        return None
    return f"{run.tl.date(step[1]).isoformat()}:{step[2]}"


def _coordinator_status(run: Run) -> dict[str, Any]:
    try:
        return dict(json.loads((run.state_dir / "status.json").read_text()))
    except (OSError, ValueError):
        return {}


def play_days(run: Run, home_procs: list[procs.Proc], kills: list[tuple[str, int, str]],
              pg: Progress, failures: list[str]) -> None:
    """Wait while the days go by on the lab clock: take the homes' network away and give it
    back (absent homes), read every home's record of each day, kill the coordinator where
    --kill-coordinator says; until the last day has ended."""
    o, tl = run.o, run.tl
    events = []
    for d in range(1, o.days + 1):
        events.append(_Event(tl.snapshot(d), "snapshot", d))
        off, on = tl.offline(d)
        for h in run.absent.get(d, []):
            events += [_Event(off, "offline", d, h), _Event(on, "online", d, h)]
    events.sort()
    total = o.days * o.frames
    limit = time.monotonic() + tl.real_s(tl.finish - tl.begin) + 120
    with pg.step(f"playing {o.days} day{'s' if o.days > 1 else ''}", total=total) as st:
        while True:
            now = run.now()
            while events and events[0].at <= now:
                ev = events.pop(0)
                handle(run, ev)
            if kills:
                kills = maybe_kill(run, kills)
            if run.coordinator is not None and run.coordinator.popen.poll() is not None:
                raise RuntimeError(f"the coordinator exited:\n{run.coordinator.tail()}")
            dead = [p.name for p in home_procs if p.popen.poll() is not None]
            if dead:
                raise RuntimeError(f"home(s) exited: {dead}: "
                                   + next(p for p in home_procs if p.name == dead[0]).tail())
            done = int(min(max((now - tl.start(1)) / o.frame_s, 0), total))
            status = _coordinator_status(run)
            phases = ", ".join(f"{r['day']} {r['phase']}" for r in status.get("rounds", []))
            st.update(done, note=phases)
            if now >= tl.finish and not events:
                break
            if time.monotonic() > limit:
                raise TimeoutError("the lab's days did not end in time")
            time.sleep(0.05)
        st.update(total)
    if kills:
        failures.append(f"--kill-coordinator points never reached: {kills}")


def handle(run: Run, ev: _Event) -> None:
    if ev.home and ev.home == run.rogue:
        return  # no firmware process: nothing to take offline
    flag = run.out.root / "homes" / ev.home / "wifi"
    if ev.what == "offline":
        flag.unlink(missing_ok=True)
    elif ev.what == "online":
        flag.write_text("up\n")
    elif ev.what == "snapshot":
        snap: dict[str, dict[str, Any] | None] = {}
        for h in run.homes:
            try:
                snap[h.home_id] = json.loads(
                    (run.out.root / "homes" / h.home_id / "round.json").read_text())
            except (OSError, ValueError):
                snap[h.home_id] = None
        run.snapshots[ev.day] = snap


def restart_coordinator(run: Run, pause: str | None) -> None:
    c = run.coordinator
    if c is not None and c.popen.poll() is None:
        c.popen.send_signal(signal.SIGKILL)
        c.popen.wait(30)
    log.warning("coordinator killed (kill -9); starting it again%s",
                f" to pause at {pause}" if pause else "")
    start_coordinator(run, pause)


def maybe_kill(run: Run, kills: list[tuple[str, int, str]]) -> list[tuple[str, int, str]]:
    """Kill -9 the coordinator once it stands at the first kill point; returns the rest."""
    kind, d, phase = kills[0]
    if kind == "boundary":
        hit = run.now() >= run.tl.start(d) + 60
    else:
        day = run.tl.date(d).isoformat()
        status = _coordinator_status(run)
        hit = status.get("pid") == (run.coordinator.popen.pid if run.coordinator else None) and \
            any(r["day"] == day and r["phase"] == phase for r in status.get("rounds", []))
    if not hit:
        return kills
    rest = kills[1:]
    restart_coordinator(run, _pause_of(run, rest[0] if rest else None))
    return rest


# ------------------------------------------------------------------------- the summary


def summarise(run: Run, caps: dict[int, Any], failures: list[str]) -> dict[str, Any]:
    o, tl = run.o, run.tl
    relays = {h.home_id: days.relay_days(run.out.root / "homes" / h.home_id / "relay.log", tl,
                                         o.frames) for h in run.homes}
    metered = {h.home_id: days.metered_days(run.out.root / "homes" / h.home_id / "meter.log",
                                            o.frames, METER_PPKWH) for h in run.homes}
    per_day = []
    for d in range(1, o.days + 1):
        day = tl.date(d).isoformat()
        try:
            record = json.loads((run.state_dir / "results" / f"{day}-r1.json").read_text())
        except (OSError, ValueError):
            record = None
        snap = run.snapshots.get(d, {h.home_id: None for h in run.homes})
        s = days.day_summary(d, tl, o.frames, snap, relays, record, caps[d][0], failures,
                             cap_wh(run.rated, o.frame_s), metered, 1000 / METER_PPKWH)
        s["capacity_fraction"] = round(caps[d][1], 4)
        per_day.append(s)
    first = per_day[0]
    stats = {}
    for b in run.brokers:
        p = run.out.root / f"stats-{b}.json"
        if p.exists():
            stats[b] = json.loads(p.read_text())
    sample = relay_sample(first, run.snapshots.get(1, {}), relays,
                          {h.home_id: h.magnification for h in run.homes},
                          {h: m.get(first["day"]) for h, m in metered.items()})
    return {
        # day 1 at the top (the report's headline), every day in "days"
        "homes": len(run.homes), "frames": o.frames, "frame_s": o.frame_s,
        "frame_real_s": o.frame_real_s, "seed": o.seed, "k": o.k, "day": first["day"],
        "days_run": o.days, "dropout": o.dropout, "solver": o.solver,
        "mask_brokers": len(run.brokers),
        "capacity_fraction": first["capacity_fraction"],
        **{k: first[k] for k in (
            "capacity_wh", "true_load_wh", "coordinator_load_before_wh",
            "coordinator_load_after_wh", "relay_load_after_wh", "metered_load_after_wh",
            "over_budget", "meter_pulse_wh", "overload_before_wh",
            "overload_after_wh", "curtailed_wh", "moved_wh", "groups", "moves", "curtail",
            "regroup_rounds", "released_groups", "refusals", "excluded_homes", "reserve_wh",
            "reserve_homes", "true_overload_after_wh")},
        "rogue": run.rogue,
        "refused_groups": first["refusals"],
        "relay_timelines": sample,
        "coordinator_rejections": first["coordinator_rejections"],
        "coordinator_resends": first["coordinator_resends"],
        "days": per_day,
        "period": days.period_summary(per_day),
        "coordinator_processes": run.coordinator_starts,
        "schedule": {"announce": Timeline.hhmm(ANNOUNCE), "deadline": Timeline.hhmm(DEADLINE),
                     "timezone": "UTC", "day_real_s": round(o.frames * o.frame_real_s, 2)},
        "absent": {tl.date(d).isoformat(): hs for d, hs in run.absent.items() if hs},
        "churn": {kind: {h: tl.date(d).isoformat() for h, d in days_of.items()}
                  for kind, days_of in zip(("joined", "left"), churn_days(run.homes, o),
                                           strict=True)},
        "mask_broker_stats": stats,
    }


def relay_sample(first: dict[str, Any], snapshot: dict[str, dict[str, Any] | None],
                 relays: dict[str, dict[int, list[bool]]], mags: dict[str, int],
                 metered: dict[str, list[int] | None] | None = None,
                 n: int = 12) -> list[dict[str, Any]]:
    """Day 1's plan, adjusted plan and relay of up to n counted homes, round-robin over the
    groups (groups with moves first), from their own records: the report's relay timelines."""
    moved = {m[0] for m in first["moves"]}
    order = sorted(first["groups"], key=lambda g: (g["id"] not in moved, g["id"]))
    queues = [sorted(g.get("members", [])) for g in order]
    picked: list[tuple[str, str]] = []
    while len(picked) < n and any(queues):
        for g, q in zip(order, queues, strict=True):
            if q and len(picked) < n:
                picked.append((q.pop(0), g["id"]))
    out = []
    for h, gid in picked:
        st = snapshot.get(h)
        if st is None:
            continue
        quantum = int(st["quantum_wh"])
        adj = st.get("adjusted") or st["plan"]
        out.append({"home": h, "group": gid, "magnification": mags[h],
                    "plan_wh": [v * quantum for v in st["plan"]],
                    "adjusted_wh": [v * quantum for v in adj],
                    "relay_on": [int(x) for x in relays[h][1]],
                    "metered_wh": list((metered or {}).get(h) or [0] * len(st["plan"]))})
    return sorted(out, key=lambda t: (t["group"], t["home"]))


# ------------------------------------------------------------------------- the command line


def add_args(p: argparse.ArgumentParser) -> None:
    d = LabOptions()
    p.add_argument("--homes", type=bounded_int(2), default=d.homes,
                   help="number of homes, at least --k (default 20)")
    p.add_argument("--days", type=bounded_int(1, MAX_DAYS), default=d.days,
                   help=f"consecutive days, 1-{MAX_DAYS} (default 1)")
    p.add_argument("--dropout", type=bounded_float(0.0, 0.5), default=None,
                   help="share of the homes that miss each day's round from day 2 (no "
                   "network over it), 0-0.5 (default 0.1 with --days > 1)")
    p.add_argument("--churn", type=bounded_int(0), default=0, metavar="N",
                   help="N homes join on a later day and N others leave on a later day "
                   "(with --days > 1; default 0)")
    p.add_argument("--seed", type=bounded_int(0), default=d.seed, help="scenario seed (default 1)")
    p.add_argument("--frames", type=bounded_int(1, protocol.MAX_FRAMES), default=d.frames,
                   help="frames per day, a divisor of 86400 s (default 96)")
    p.add_argument("--frame-real-s", type=bounded_float(0.0, 60.0, lo_open=True),
                   default=d.frame_real_s,
                   help="real seconds per frame on the accelerated clock (default 0.2); a day "
                   f"must last at least {MIN_DAY_REAL_S:g} real seconds")
    p.add_argument("--k", type=bounded_int(2), default=d.k,
                   help="minimum group size, at least 2 (default 3)")
    p.add_argument("--mask-brokers", type=bounded_int(1, MAX_MASK_BROKERS),
                   default=d.mask_brokers,
                   help=f"number of mask brokers, 1-{MAX_MASK_BROKERS} (default 1)")
    p.add_argument("--solver", choices=["heuristic", "exact", "portfolio"], default=d.solver,
                   help="adjustment engine (default heuristic: a lab day lasts seconds)")
    p.add_argument("--grid-feed", choices=["openadr"], default=None,
                   help="capacity from openleadr's real VTN through the OpenADR grid feed "
                   "(installed by ./run lab when given)")
    p.add_argument("--out", type=Path, default=None,
                   help="keep everything (configs, logs, state) in this folder: a new or "
                   "empty one, or an earlier lab output (only what the lab created there is "
                   "replaced)")
    p.add_argument("--python-homes", action="store_true",
                   help="run the firmware under CPython (paho) instead of micropython")
    p.add_argument("--tls", action="store_true",
                   help="generate a CA and server certificate; every client uses TLS")
    p.add_argument("--json", action="store_true",
                   help="print one JSON object on stdout (the table goes to stderr)")
    p.add_argument("--report", type=Path, default=None, metavar="PATH",
                   help="write the HTML report here (default: OUT/report.html with --out, "
                   "else lab-out/report.html); an existing file is replaced only if it is "
                   "an earlier lab report")
    p.add_argument("--no-report", action="store_true", help="do not write the HTML report")
    p.add_argument("--no-progress", action="store_true",
                   help="no progress bars (they are shown only on a terminal, never "
                   "with --json)")
    p.add_argument("--kill-coordinator", default="", help=argparse.SUPPRESS)
    p.add_argument("--debug-rogue", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--proofs", action="store_true",
                   help="every home proves its plan in [0, its cap] per frame and the "
                   "coordinator verifies it with the mask brokers (docs/integrity.md)")
    p.add_argument("--broker", choices=["mosquitto", "rabbitmq"], default=d.broker,
                   help="mosquitto (default) or a RabbitMQ cluster (installed by ./run lab "
                   "--broker rabbitmq; docs/scaling.md)")
    p.add_argument("--nodes", type=bounded_int(3, 9), default=None,
                   help="RabbitMQ cluster nodes, 3-9 (default 3; --broker rabbitmq only)")


PHASES = ("collecting", "closed", "summing", "solving", "publishing", "serving")


def check_args(a: argparse.Namespace) -> None:
    """Checks that need more than one option or the machine; UsageError (one line) if the run
    cannot go ahead.  Makes paths absolute: the services run in another working directory."""
    if a.homes < a.k:
        raise UsageError(f"--homes {a.homes}: fewer homes than --k {a.k} cannot form a group")
    if a.broker != "rabbitmq" and a.nodes is not None:
        raise UsageError("--nodes needs --broker rabbitmq")
    if a.broker == "rabbitmq":
        a.nodes = a.nodes or 3
        for flag, on in (("--tls", a.tls), ("--grid-feed", a.grid_feed),
                         ("--kill-coordinator", a.kill_coordinator)):
            if on:
                raise UsageError(f"{flag} is not supported with --broker rabbitmq")
        why = why_unavailable()
        if why is not None:
            raise UsageError(why)
    if DAY_S % a.frames:
        raise UsageError(f"--frames {a.frames}: a day (86400 s) must split into whole frames")
    if a.frames * a.frame_real_s < MIN_DAY_REAL_S:
        raise UsageError(f"a lab day of {a.frames} x {a.frame_real_s:g} s is shorter than "
                         f"{MIN_DAY_REAL_S:g} real seconds: raise --frame-real-s")
    if a.dropout is None:
        a.dropout = 0.1 if a.days > 1 else 0.0
    if a.churn and a.days < 2:
        raise UsageError(f"--churn {a.churn}: homes join and leave between days: give --days")
    if a.homes - 2 * a.churn - round(a.dropout * a.homes) < a.k:
        raise UsageError(f"--churn {a.churn} with --dropout {a.dropout:g}: fewer than --k "
                         f"{a.k} homes would be left on some day")
    for item in filter(None, a.kill_coordinator.split(",")):
        kind, _, rest = item.partition(":")
        ok = (kind == "boundary" and rest.isdigit() and 2 <= int(rest) <= a.days) or (
            kind.isdigit() and 1 <= int(kind) <= a.days and rest in PHASES)
        if not ok:
            raise UsageError(f"--kill-coordinator {item}: expected DAY:PHASE ({', '.join(PHASES)}"
                             f") or boundary:DAY, days 1-{a.days}")
    if a.out is not None:
        a.out = Path(os.path.abspath(a.out))
        check_out(a.out)
    if a.report is not None:
        a.report = Path(os.path.abspath(a.report))
    rpath = report_path(a)
    if rpath is not None:
        check_report(rpath)
    kind = budget.home_kind(a.python_homes)
    problem = budget.fleet_problem(a.homes, budget.HOME_PSS[kind])
    if problem is not None:
        raise UsageError(problem)


def report_path(a: argparse.Namespace) -> Path | None:
    if a.no_report:
        return None
    if a.report is not None:
        return Path(a.report)
    return Path(os.path.abspath(a.out or "lab-out")) / "report.html"


def main(a: argparse.Namespace) -> int:
    try:
        check_args(a)
    except UsageError as e:
        print(f"hems lab: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        with stop_on_signals():
            return _run(a)
    except Stopped as e:
        print(f"hems lab: stopped by {e}; every process it started was stopped",
              file=sys.stderr)
        return e.exit_status


def _run(a: argparse.Namespace) -> int:
    o = LabOptions(homes=a.homes, seed=a.seed, frames=a.frames, frame_s=DAY_S // a.frames,
                   frame_real_s=a.frame_real_s, k=a.k, mask_brokers=a.mask_brokers,
                   solver=a.solver, days=a.days, dropout=a.dropout, churn=a.churn, out_dir=a.out,
                   python_homes=a.python_homes, tls=a.tls, grid_feed=a.grid_feed,
                   kill_coordinator=tuple(filter(None, a.kill_coordinator.split(","))),
                   rogue=a.debug_rogue, broker=a.broker, nodes=a.nodes or 1,
                   proofs=a.proofs)
    rpath = report_path(a)
    show = not a.json and not a.no_progress and sys.stderr.isatty()
    with live(show) as pg:
        summary, failures = run_lab(o, pg)
        summary["report"] = None
        if rpath is not None and "homes" in summary:
            with pg.step("writing the report"):
                try:
                    from backend.lab import report

                    report.write(summary, rpath)
                    summary["report"] = str(rpath.resolve())
                except Exception as e:  # the run's results still print
                    log.exception("report failed")
                    failures.append(f"report: {type(e).__name__}: {e}")
    if a.json:
        json.dump(summary, sys.stdout)
        sys.stdout.write("\n")
    if "homes" in summary:
        print_table(summary, sys.stderr if a.json else sys.stdout)
        if summary["report"]:
            print(f"  report  {summary['report']}", file=sys.stderr if a.json else sys.stdout)
    else:
        for f in failures:
            print(f"hems lab FAILED: {f}", file=sys.stderr)
    return 1 if failures else 0
