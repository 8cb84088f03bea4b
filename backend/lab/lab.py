"""`hems lab`: one real privacy-preserving round on one machine.

Starts mosquitto (own port, own data dir, generated passwd + ACL), the mask broker(s), N home
firmware processes on the MicroPython unix binary and the coordinator; publishes a capacity that
only shifting can satisfy; runs one round; plays the day out on the accelerated clock; then reads
what each home recorded (its own plan, its adjusted plan, its relay's switching) and checks the
invariants:

* true_load_wh == coordinator_load_before_wh   (the masking arithmetic is exact)
* relay_load_after_wh == coordinator_load_after_wh   (the relays did what was decided)

Everything it started is stopped, whatever happens.  Exit status 0 only if every part worked.
The long steps show progress bars on a terminal (progress.py); the summary (summary.py) is
printed, or printed as JSON, and drawn as a self-contained HTML report (report.py).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import secrets
import shutil
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from backend.common.broker import COORDINATOR_USER, GRID_USER, LAB_USER, Mosquitto
from backend.common.tls import make_pki
from backend.coordinator.adjust import Policy, Problem, solve
from backend.lab import procs, scenario
from backend.lab.progress import Progress, Step, live
from backend.lab.summary import print_table, relay_per_frame, summarise
from hemsfw import protocol, protocol_svc

log = logging.getLogger("hems.lab")

__all__ = ["LabOptions", "add_args", "main", "relay_per_frame", "run_lab",
           "summarise"]


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
    collect_s: float = 30.0
    out_dir: Path | None = None
    keep: bool = False
    python_homes: bool = False  # run the firmware under CPython (paho) instead of micropython
    record: bool = False  # record everything the services' identities can receive (tests)
    tls: bool = False  # every client connects over TLS to mosquitto's TLS listener


# ------------------------------------------------------------------------- capacity


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


# ------------------------------------------------------------------------- MQTT observer


@dataclass(frozen=True)
class Conn:
    """Where the lab's own clients connect (with TLS when the lab runs with --tls)."""

    port: int
    cafile: Path | None = None

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
        self.c = conn.client(LAB_USER, password, "hems-lab")
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
        self.c = conn.client(user, password, f"recorder-{user}")
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


def publish_as(conn: Conn, user: str, password: str, topic: str, payload: bytes) -> None:
    """One retained QoS 1 publish under another identity (the grid feed's capacity)."""
    c = conn.client(user, password)
    c.connect(conn.host, conn.port)
    c.loop_start()
    try:
        c.publish(topic, payload, qos=1, retain=True).wait_for_publish(10)
    finally:
        c.disconnect()
        c.loop_stop()


def _stats(work: Path, brokers: list[str]) -> list[dict[str, Any]]:
    """The mask brokers' stats files, those readable now (they are rewritten atomically)."""
    out = []
    for b in brokers:
        try:
            obj = json.loads((work / f"stats-{b}.json").read_text())
        except (OSError, ValueError):
            continue
        if isinstance(obj, dict):
            out.append(obj)
    return out


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


def run_lab(o: LabOptions, progress: Progress | None = None) -> tuple[dict[str, Any], list[str]]:
    """Run one lab round; returns (the JSON summary, the list of failures)."""
    pg = progress or Progress()
    failures: list[str] = []
    work = o.out_dir or Path(tempfile.mkdtemp(prefix="hems-lab-"))
    if work.exists() and o.out_dir is not None:
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    log.info("lab directory %s%s", work, "" if o.out_dir or o.keep or o.record
             else " (temporary; --out DIR keeps it)")
    t0 = time.monotonic()
    timings: dict[str, float] = {}

    homes = scenario.make_homes(o.homes, o.seed, o.frames)
    cap_wh, cap_frac = choose_capacity(homes, o.frames)
    capacity = np.full(o.frames, cap_wh, dtype=np.int64)
    brokers = [f"mb{i + 1}" for i in range(o.mask_brokers)]

    # Identities: MQTT passwords for everyone, one 32-byte key per (home, mask broker).
    pw = {u: secrets.token_hex(16) for u in [COORDINATOR_USER, GRID_USER, LAB_USER, *brokers]}
    keys = {h.home_id: {b: secrets.token_hex(32) for b in brokers} for h in homes}
    for h in homes:
        pw[h.home_id] = secrets.token_hex(16)
    for b in brokers:
        reg = {"homes": {h: {"key": keys[h][b]} for h in keys}}
        (work / f"registry-{b}.json").write_text(json.dumps(reg))

    pki = make_pki(work / "pki") if o.tls else None
    broker = Mosquitto(work / "mosquitto", pw, brokers, tls=pki)
    ps = procs.Procs(work / "logs")
    observer: Observer | None = None
    recorders: list[Recorder] = []
    day_dt = dt.datetime.now(dt.UTC).date() + dt.timedelta(days=1)
    day = day_dt.isoformat()
    start = int(dt.datetime.combine(day_dt, dt.time(), dt.UTC).timestamp())
    summary: dict[str, Any] = {}
    try:
        with pg.step("mosquitto, mask brokers", total=1 + len(brokers)) as st:
            broker.start()
            # With --tls every client (services, homes, the lab's own) uses the TLS listener.
            port = broker.tls_port if pki is not None and broker.tls_port else broker.port
            tls_args = ["--host", "localhost", "--cafile", str(pki.cafile)] if pki else []
            log.info("mosquitto on 127.0.0.1:%d%s", port, " (TLS)" if pki else "")
            st.update(1)
            conn = Conn(port, pki.cafile if pki else None)
            observer = Observer(conn, pw[LAB_USER])
            if o.record:
                for ident in [COORDINATOR_USER, *brokers]:
                    recorders.append(Recorder(conn, ident, pw[ident],
                                              work / f"recorded-{ident}.jsonl"))
            publish_as(conn, GRID_USER, pw[GRID_USER], protocol_svc.t_capacity(),
                       protocol.encode(protocol_svc.make_capacity(o.frames, capacity.tolist())))

            py = sys.executable
            for b in brokers:
                ps.start(
                    b,
                    [py, "-m", "backend.mask_broker", "--broker-id", b,
                     "--registry", str(work / f"registry-{b}.json"), "--k", str(o.k),
                     "--stats-file", str(work / f"stats-{b}.json"), "--stats-interval", "0.2",
                     "--state-dir", str(work / f"state-{b}"),
                     "--port", str(port), "--user", b, *tls_args],
                    env={**procs.micropython_env(), "HEMS_MQTT_PASSWORD": pw[b]},
                )

            # Masks must find their mask broker subscribed: wait until each reports a connection.
            def n_connected() -> int:
                return 1 + sum(_connected(work / f"stats-{b}.json") for b in brokers)

            wait_for(lambda: n_connected() == 1 + len(brokers), 20,
                     "mask broker(s) did not connect", st, n_connected)
            st.update(1 + len(brokers))
        timings["services"] = time.monotonic() - t0

        t_fleet = time.monotonic()
        home_procs = []
        with pg.step("homes online", total=len(homes)) as st:
            for h in homes:
                sdir = work / "homes" / h.home_id
                sdir.mkdir(parents=True)
                cfg = {
                    "home_id": h.home_id,
                    "mqtt": {"host": "localhost" if pki else "127.0.0.1", "port": port,
                             "user": h.home_id, "password": pw[h.home_id], "keepalive": 30,
                             "cafile_der": str(pki.cafile.with_suffix(".der")) if pki else None},
                    "magnification": h.magnification, "plan_wh": h.plan_wh,
                    "keys": keys[h.home_id], "state_dir": str(sdir), "board": "unix",
                    "clock": "lab", "safe_state": False, "exit_after_day": True, "loop_ms": 10,
                }
                (sdir / "config.json").write_text(json.dumps(cfg))
                exe = py if o.python_homes else procs.micropython_exe()
                home_procs.append(ps.start(
                    h.home_id,
                    [exe, str(procs.FIRMWARE / "run_home.py"), str(sdir / "config.json")],
                    env=procs.micropython_env()))

            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and len(observer.online) < len(homes):
                dead = [p.name for p in home_procs if p.popen.poll() is not None]
                if dead:
                    raise RuntimeError(f"home(s) exited at start: {dead}: {home_procs[0].tail()}")
                st.update(len(observer.online))
                time.sleep(0.05)
            st.update(len(observer.online))
        log.info("%d/%d homes online after %.1fs", len(observer.online), len(homes),
                 time.monotonic() - t0)
        timings["fleet"] = time.monotonic() - t_fleet

        t_round = time.monotonic()
        coord = ps.start(
            "coordinator",
            [py, "-m", "backend.coordinator", "--day", day, "--round", "1",
             "--frames", str(o.frames), "--frame-s", str(o.frame_s), "--quantum-wh", "1",
             "--start", str(start), "--collect-s", str(o.collect_s),
             "--expected-homes", str(len(homes)), "--brokers", ",".join(brokers),
             "--k", str(o.k), "--solver", o.solver, "--result", str(work / "result.json"),
             "--state-dir", str(work / "state-coordinator"),
             "--port", str(port), "--user", COORDINATOR_USER, *tls_args],
            env={**procs.micropython_env(), "HEMS_MQTT_PASSWORD": pw[COORDINATOR_USER]},
        )
        follow_round(coord, work, brokers, len(homes), o.collect_s + 60, pg)
        if coord.popen.returncode != 0:
            raise RuntimeError(f"coordinator failed:\n{coord.tail()}")
        result = json.loads((work / "result.json").read_text())
        round_s = time.monotonic() - t_round
        timings["round"] = round_s
        log.info("round complete in %.1fs; playing the day out", round_s)

        # Give every home time to receive its adjustment, then start the accelerated day.
        t_day = time.monotonic()
        time.sleep(0.5)
        speed = o.frame_s / o.frame_real_s
        anchor = time.time() + 1.0
        observer.publish(protocol.t_clock(),
                         {"v": 1, "anchor": anchor, "virtual": start, "speed": speed},
                         retain=True)
        left = play_day(home_procs, anchor, o, pg)
        if left:
            failures.append(f"homes still running after the day: {[p.name for p in left]}")
        for p in home_procs:
            if p.popen.returncode not in (0, None):
                failures.append(f"home {p.name} exited {p.popen.returncode}: {p.tail(500)}")
        timings["day"] = time.monotonic() - t_day

        params = {"frame_s": o.frame_s, "frame_real_s": o.frame_real_s, "seed": o.seed,
                  "k": o.k, "day": day, "capacity_fraction": cap_frac, "solver": o.solver}
        summary = summarise(work, homes, result, capacity, {"frames": o.frames, **params},
                            brokers, failures)
        timings["total"] = time.monotonic() - t0
        summary["timings_s"] = {k: round(v, 2) for k, v in timings.items()}
    except Exception as e:
        log.exception("lab failed")
        failures.append(f"{type(e).__name__}: {e}")
    finally:
        if observer is not None:
            observer.close()
        for r in recorders:
            r.close()
        ps.stop_all()
        broker.stop()
        if not o.keep and not o.record and o.out_dir is None and not failures:
            shutil.rmtree(work, ignore_errors=True)
    summary["failures"] = failures
    summary["lab_dir"] = str(work)
    return summary, failures


def follow_round(coord: procs.Proc, work: Path, brokers: list[str], n_homes: int,
                 timeout: float, pg: Progress) -> None:
    """Wait for the coordinator's round, showing the reports the mask brokers hold and then
    their group sums (released / refused) as the coordinator groups and regroups."""
    deadline = time.monotonic() + timeout
    with pg.step("collecting reports", total=n_homes) as st:
        while coord.popen.poll() is None and time.monotonic() < deadline:
            ss = _stats(work, brokers)
            if ss:
                st.update(min(int(s.get("masks", {}).get("this_round", 0)) for s in ss))
                if any(s.get("groups", {}).get("requests", 0) for s in ss):
                    break
            time.sleep(0.1)
    with pg.step("group sums, regrouping") as st:
        while True:
            g = [s.get("groups", {}) for s in _stats(work, brokers)]
            n = sum(x.get("requests", 0) for x in g)
            st.update(0, note=f"{n} request{'' if n == 1 else 's'}, "
                      f"{sum(x.get('released', 0) for x in g)} released, "
                      f"{sum(x.get('refused', 0) for x in g)} refused")
            if coord.popen.poll() is not None or time.monotonic() > deadline:
                break
            time.sleep(0.1)
    if coord.popen.poll() is None:
        raise RuntimeError("coordinator did not finish the round")


def play_day(home_procs: list[procs.Proc], anchor: float, o: LabOptions,
             pg: Progress) -> list[procs.Proc]:
    """Wait while the homes play the day out on the accelerated clock; returns those still
    running at the (generous) deadline."""
    deadline = time.monotonic() + 1.0 + o.frames * o.frame_real_s + 30
    with pg.step("playing out the day", total=o.frames) as st:
        while time.monotonic() < deadline:
            done = sum(p.popen.poll() is not None for p in home_procs)
            frame = int(min(max((time.time() - anchor) / o.frame_real_s, 0), o.frames))
            st.update(frame, note=f"{done}/{len(home_procs)} homes finished the day")
            if done == len(home_procs):
                st.update(o.frames)
                return []
            time.sleep(0.1)
    return [p for p in home_procs if p.popen.poll() is None]


def add_args(p: argparse.ArgumentParser) -> None:
    d = LabOptions()
    p.add_argument("--homes", type=int, default=d.homes, help="number of homes (default 20)")
    p.add_argument("--seed", type=int, default=d.seed, help="scenario seed (default 1)")
    p.add_argument("--frames", type=int, default=d.frames, help="frames per day (default 96)")
    p.add_argument("--frame-s", type=int, default=d.frame_s, help="frame length, s (900)")
    p.add_argument("--frame-real-s", type=float, default=d.frame_real_s,
                   help="real seconds per frame on the accelerated clock (default 0.2)")
    p.add_argument("--k", type=int, default=d.k, help="minimum group size (default 3)")
    p.add_argument("--mask-brokers", type=int, default=d.mask_brokers,
                   help="number of mask brokers (default 1)")
    p.add_argument("--solver", choices=["heuristic", "exact"], default=d.solver,
                   help="adjustment engine (default heuristic)")
    p.add_argument("--collect-s", type=float, default=d.collect_s,
                   help="collection window before the deadline, s (ends early when all "
                   "homes reported)")
    p.add_argument("--out", type=Path, default=None,
                   help="keep everything (configs, logs, state) in this directory")
    p.add_argument("--python-homes", action="store_true",
                   help="run the firmware under CPython (paho) instead of micropython")
    p.add_argument("--tls", action="store_true",
                   help="generate a CA and server certificate; every client uses TLS")
    p.add_argument("--json", action="store_true",
                   help="print one JSON object on stdout (the table goes to stderr)")
    p.add_argument("--report", type=Path, default=None, metavar="PATH",
                   help="write the HTML report here (default: OUT/report.html with --out, "
                   "else lab-out/report.html)")
    p.add_argument("--no-report", action="store_true", help="do not write the HTML report")
    p.add_argument("--no-progress", action="store_true",
                   help="no progress bars (they are shown only on a terminal, never "
                   "with --json)")


def report_path(a: argparse.Namespace) -> Path | None:
    if a.no_report:
        return None
    if a.report is not None:
        return Path(a.report)
    return Path(a.out or "lab-out") / "report.html"


def main(a: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    o = LabOptions(homes=a.homes, seed=a.seed, frames=a.frames, frame_s=a.frame_s,
                   frame_real_s=a.frame_real_s, k=a.k, mask_brokers=a.mask_brokers,
                   solver=a.solver, collect_s=a.collect_s, out_dir=a.out,
                   python_homes=a.python_homes, tls=a.tls)
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
