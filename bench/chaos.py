"""Chaos bench: lab rounds while the coordinator, a mask broker, mosquitto and homes are killed.

    .venv/bin/python bench/chaos.py --trials 20 --json     # JSON on stdout, table on stderr
    .venv/bin/python bench/chaos.py --trials 3 --out chaos-out --keep

Each trial is a full lab round (real mosquitto on a free loopback port with the generated ACL, the
real mask broker(s) and coordinator, N homes running the firmware under ``micropython``), run
twice with the same scenario seed: once without faults (the reference), then with faults.  The
faulty run kills, with SIGKILL, the coordinator, a mask broker, mosquitto and one or two random
homes, one at a time, at random moments of the round (after a random gap, each target stays down
for a random 0.2-2 s, then is restarted with the very same arguments and state), and a rogue home
(valid credentials, its own topics) publishes hostile messages in between.  Every wait is bounded.
mosquitto runs the shipped template (database saved every 60 s, so a kill loses what it held
since); ``--per-change-autosave`` saves after every change instead.

A trial is *identical* when the coordinator's decision (groups and their members, moves,
curtailment, loads before and after, overload, exclusions) and every home's stored adjustment are
the same as in the reference.  ``lost_reports``: homes counted in the reference but not in the
faulty run; ``lost_adjustments``: homes the reference adjusted that ended without the same
adjustment; ``duplicate_reports``: reports (plan or mask) recorded more than once for one home in
the services' durable state.  docs/reliability.md has the figures and how they were made.

Reused from the lab: ``Mosquitto`` (backend/common/broker.py), ``Procs`` (backend/lab/procs.py),
the scenario (backend/lab/scenario.py) and ``choose_capacity``, ``Conn``, ``Observer`` and
``publish_as`` (backend/lab/lab.py).  The same machinery drives tests/test_durability.py, whose
faults are placed deterministically (a ``Step`` waits for a condition, then acts).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import random
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import paho.mqtt.client as mqtt  # noqa: E402
from paho.mqtt.enums import CallbackAPIVersion  # noqa: E402

from backend.common.broker import COORDINATOR_USER, GRID_USER, LAB_USER, Mosquitto  # noqa: E402
from backend.lab import procs, scenario  # noqa: E402
from backend.lab.lab import Conn, Observer, choose_capacity, publish_as  # noqa: E402
from hemsfw import protocol, protocol_svc  # noqa: E402

ROGUE = "x666"  # the hostile home: registered, with credentials, never sends a valid report
_REJECTED = re.compile(r"rejected (plan|mask|groupsum) on '[^']*': "
                       r"(replay|duplicate_home|duplicate_answer|late|unknown_req)")


@dataclass(frozen=True)
class Options:
    homes: int = 12
    k: int = 3
    mask_brokers: int = 1
    frames: int = 96
    collect_s: float = 120.0  # the deadline; collection ends early once every home reported
    round_s: float = 240.0  # bound on one round, faults included
    python_homes: bool = False
    stagger_s: float = 5.0  # chaos trials start the homes over this long after the coordinator
    #: True: mosquitto snapshots its database after every change (docs/reliability.md);
    #: False (default): the shipped template's time-based saves, every 60 s
    autosave_on_changes: bool = False


# ------------------------------------------------------------------ one cluster


class Cluster:
    """mosquitto, mask brokers, homes and the coordinator of one round, each restartable."""

    def __init__(self, work: Path, seed: int, o: Options) -> None:
        self.work, self.seed, self.o = work, seed, o
        work.mkdir(parents=True, exist_ok=True)
        self.homes = scenario.make_homes(o.homes, seed, o.frames)
        self.home_ids = [h.home_id for h in self.homes]
        cap_wh, _ = choose_capacity(self.homes, o.frames)
        self.capacity = [cap_wh] * o.frames
        self.brokers = [f"mb{i + 1}" for i in range(o.mask_brokers)]
        self.pw = {u: secrets.token_hex(12)
                   for u in [COORDINATOR_USER, GRID_USER, LAB_USER, *self.brokers,
                             *self.home_ids, ROGUE]}
        self.keys = {h: {b: secrets.token_hex(32) for b in self.brokers}
                     for h in [*self.home_ids, ROGUE]}
        for b in self.brokers:
            reg = {"homes": {h: {"key": self.keys[h][b]} for h in self.keys}}
            (work / f"registry-{b}.json").write_text(json.dumps(reg))
        self.mq = Mosquitto(work / "mosquitto", self.pw, self.brokers)
        self.ps = procs.Procs(work / "logs")
        self.running: dict[str, procs.Proc] = {}
        self.starts: Counter[str] = Counter()
        self.lock = threading.RLock()
        day = dt.datetime.now(dt.UTC).date() + dt.timedelta(days=1)
        self.day = day.isoformat()
        self.start = int(dt.datetime.combine(day, dt.time(), dt.UTC).timestamp())
        self.t0 = time.monotonic()
        self.events: list[dict[str, Any]] = []
        self.coordinator_extra: list[str] = []
        self.t_coord = time.monotonic()  # when the coordinator was first started

    # ------------------------------------------------------------ paths

    @property
    def result_path(self) -> Path:
        return self.work / "result.json"

    @property
    def journal_path(self) -> Path:
        return self.work / "coordinator-state" / f"round-{self.day}-1.jsonl"

    def masks_path(self, b: str) -> Path:
        return self.work / f"state-{b}" / f"masks-{self.day}-1.jsonl"

    def stats_path(self, b: str) -> Path:
        return self.work / f"stats-{b}.json"

    def home_dir(self, h: str) -> Path:
        return self.work / "homes" / h

    # ------------------------------------------------------------ processes

    def _argv(self, name: str) -> tuple[list[str], dict[str, str]]:
        py, o, port = sys.executable, self.o, self.mq.port
        env = procs.micropython_env()
        if name == "coordinator":
            return ([py, "-m", "backend.coordinator", "--day", self.day, "--round", "1",
                     "--frames", str(o.frames), "--frame-s", "900", "--quantum-wh", "1",
                     "--start", str(self.start), "--collect-s", str(o.collect_s),
                     "--expected-homes", str(o.homes), "--brokers", ",".join(self.brokers),
                     "--k", str(o.k), "--result", str(self.result_path),
                     "--state-dir", str(self.work / "coordinator-state"),
                     "--capacity-wait-s", "30", "--answer-timeout-s", "90", "--reask-s", "3",
                     "--missing-grace-s", "20", "--reconnect-s", "90",
                     # serve on after the round, re-sending adjustments to homes that come
                     # back; the harness ends it with SIGTERM once every home has its own
                     "--linger-s", "120",
                     "--port", str(port), "--user", COORDINATOR_USER, *self.coordinator_extra],
                    {**env, "HEMS_MQTT_PASSWORD": self.pw[COORDINATOR_USER]})
        if name in self.brokers:
            return ([py, "-m", "backend.mask_broker", "--broker-id", name,
                     "--registry", str(self.work / f"registry-{name}.json"), "--k", str(o.k),
                     "--stats-file", str(self.stats_path(name)), "--stats-interval", "0.2",
                     "--state-dir", str(self.work / f"state-{name}"),
                     "--port", str(port), "--user", name],
                    {**env, "HEMS_MQTT_PASSWORD": self.pw[name]})
        exe = py if o.python_homes else procs.micropython_exe()
        return [exe, str(procs.FIRMWARE / "run_home.py"),
                str(self.home_dir(name) / "config.json")], env

    def launch(self, name: str) -> procs.Proc:
        with self.lock:
            argv, env = self._argv(name)
            self.starts[name] += 1
            p = self.ps.start(f"{name}.{self.starts[name]}", argv, env=env)
            self.running[name] = p
            return p

    def alive(self, name: str) -> bool:
        p = self.running.get(name)
        return p is not None and p.popen.poll() is None

    def signal(self, name: str, sig: signal.Signals) -> None:
        with self.lock:
            p = self.running.get(name)
            if p is not None and p.popen.poll() is None:
                p.popen.send_signal(sig)
                if sig == signal.SIGKILL:
                    p.popen.wait(10)

    def write_homes(self) -> None:
        for h in self.homes:
            d = self.home_dir(h.home_id)
            d.mkdir(parents=True, exist_ok=True)
            cfg = {
                "home_id": h.home_id,
                "mqtt": {"host": "127.0.0.1", "port": self.mq.port, "user": h.home_id,
                         "password": self.pw[h.home_id], "keepalive": 30},
                "magnification": h.magnification, "plan_wh": h.plan_wh,
                "keys": self.keys[h.home_id], "state_dir": str(d), "board": "unix",
                "clock": "lab", "safe_state": False, "exit_after_day": False, "loop_ms": 10,
            }
            (d / "config.json").write_text(json.dumps(cfg))

    # ------------------------------------------------------------ mosquitto

    def start_mosquitto(self) -> None:
        conf = self.mq.data_dir / "mosquitto.conf"
        if not conf.exists():
            conf = self.mq.write()
            if self.o.autosave_on_changes:
                text = re.sub(r"^(autosave_on_changes|autosave_interval) .*\n", "",
                              conf.read_text(), flags=re.M)
                conf.write_text(text + "\nautosave_on_changes true\nautosave_interval 1\n")
        self.mq.start()

    def kill_mosquitto(self) -> None:
        with self.lock:
            if self.mq.proc is not None:
                self.mq.proc.kill()
                self.mq.proc.wait(10)
                self.mq.proc = None

    # ------------------------------------------------------------ what the parts recorded

    def journal(self) -> list[dict[str, Any]]:
        return _jsonl(self.journal_path)

    def phase(self) -> str:
        kinds = {r.get("kind") for r in self.journal()}
        if "done" in kinds:
            return "adjusted"
        if "solve" in kinds:
            return "adjusting"
        if "ask" in kinds:
            return "sums"
        if "closed" in kinds:
            return "closed"
        if "round" in kinds:
            return "collecting"
        return "starting"

    def connected(self, b: str) -> bool:
        try:
            st = json.loads(self.stats_path(b).read_text())
            return bool(st["mqtt"]["connected"]) and st["pid"] == self.running[b].popen.pid
        except (OSError, ValueError, KeyError, TypeError):
            return False

    def home_state(self, h: str) -> dict[str, Any] | None:
        try:
            obj = json.loads((self.home_dir(h) / "round.json").read_text())
        except (OSError, ValueError):
            return None
        return obj if isinstance(obj, dict) else None

    def adjustment(self, h: str) -> Any:
        st = self.home_state(h)
        a = st.get("adjustment") if st else None
        return None if a is None else [a.get("group"), a.get("moves"), a.get("curtail")]

    def coordinator_done(self) -> bool:
        p = self.running.get("coordinator")
        return p is not None and p.popen.poll() == 0

    def log(self, what: str) -> None:
        ev = {"t": round(time.monotonic() - self.t0, 2), "what": what, "phase": self.phase()}
        self.events.append(ev)

    def close(self) -> None:
        self.ps.stop_all()
        self.mq.stop()


def _jsonl(path: Path) -> list[dict[str, Any]]:
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return []
    out = []
    for line in lines:
        try:
            obj = json.loads(line)
        except ValueError:
            continue
        if isinstance(obj, dict):
            out.append(obj)
    return out


def wait_for(cond: Callable[[], bool], timeout: float, what: str, step: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(step)


# ------------------------------------------------------------------ faults


@dataclass(frozen=True)
class Step:
    """A scripted fault: wait (bounded) until ``when`` holds, then ``do``."""

    label: str
    when: Callable[[Cluster], bool]
    do: Callable[[Cluster], None]
    timeout: float = 120.0
    poll: float = 0.02


def at(seconds: float) -> Callable[[Cluster], bool]:
    """True once ``seconds`` have passed since the coordinator was first started."""
    return lambda c: time.monotonic() - c.t_coord >= seconds


def journaled(kind: str, n: int = 1) -> Callable[[Cluster], bool]:
    """True once the coordinator's journal holds ``n`` records of ``kind`` (store.py)."""
    return lambda c: sum(r.get("kind") == kind for r in c.journal()) >= n


def running(name: str) -> Callable[[Cluster], bool]:
    return lambda c: c.alive(name)


def _and(*conds: Callable[[Cluster], bool]) -> Callable[[Cluster], bool]:
    return lambda c: all(f(c) for f in conds)


def logged(name: str, text: str) -> Callable[[Cluster], bool]:
    """True once the running process ``name`` has written ``text`` to its log."""
    return lambda c: name in c.running and text in c.running[name].tail(1 << 20)


def masks_stored(broker: str, n: int) -> Callable[[Cluster], bool]:
    """True once the mask broker's state dir holds ``n`` accepted masks of the round."""
    return lambda c: len(_jsonl(c.masks_path(broker))) >= n


def answered(broker: str, n: int = 1) -> Callable[[Cluster], bool]:
    """True once the mask broker's stats count ``n`` group requests answered."""

    def cond(c: Cluster) -> bool:
        st = _jsonl_obj(c.stats_path(broker)) or {}
        groups = st.get("groups")
        return isinstance(groups, dict) and int(groups.get("requests", 0)) >= n

    return cond


def kill(name: str) -> Callable[[Cluster], None]:
    def act(c: Cluster) -> None:
        c.signal(name, signal.SIGKILL)
        c.log(f"killed {name}")

    return act


def launch(name: str) -> Callable[[Cluster], None]:
    def act(c: Cluster) -> None:
        c.launch(name)
        c.log(f"restarted {name}")

    return act


def freeze(name: str, on: bool = True) -> Callable[[Cluster], None]:
    """SIGSTOP (or SIGCONT) a process: it keeps its connection but handles nothing."""

    def act(c: Cluster) -> None:
        c.signal(name, signal.SIGSTOP if on else signal.SIGCONT)
        c.log(f"{'froze' if on else 'thawed'} {name}")

    return act


def start_homes(homes: Sequence[str]) -> Callable[[Cluster], None]:
    """Start homes and wait (bounded) until each has handed its report to mosquitto."""

    def act(c: Cluster) -> None:
        for h in homes:
            c.launch(h)

        def sent() -> bool:
            sts = [c.home_state(h) for h in homes]
            return all(st is not None and st.get("sent") for st in sts)

        wait_for(sent, 60, "homes sent their reports")
        c.log(f"started {len(homes)} homes; their reports are with mosquitto")

    return act


def kill_restart(name: str, down_s: float) -> Callable[[Cluster], None]:
    """SIGKILL a process (a mask broker, a home, the coordinator, or "mosquitto"), keep it down
    ``down_s`` seconds, start it again with the same arguments and state."""

    def act(c: Cluster) -> None:
        if name == "mosquitto":
            c.kill_mosquitto()
            c.log("killed mosquitto")
            time.sleep(down_s)
            c.start_mosquitto()
            c.log("restarted mosquitto")
            return
        with c.lock:
            if name == "coordinator" and c.coordinator_done():
                c.log("coordinator already done: not killed")
                return
            if name not in c.running:  # a home whose (staggered) start is still to come
                c.log(f"{name} not started yet: not killed")
                return
            c.signal(name, signal.SIGKILL)
        c.log(f"killed {name}")
        time.sleep(down_s)
        c.launch(name)
        c.log(f"restarted {name}")
        if name in c.brokers:
            wait_for(lambda: c.connected(name), 60, f"{name} did not reconnect")

    return act


def random_faults(rng: random.Random, homes: Sequence[str], brokers: Sequence[str],
                  span_s: float) -> list[Step]:
    """The coordinator, a mask broker, mosquitto and one or two homes, each killed at a random
    moment of the reference round's span (one at a time: a fault that is due while another is
    being played waits for it), down for 0.2-1.5 s.  Half of the coordinator's kills wait for a
    phase instead: its first group request or its first solver result (then the adjustments go
    out), phases that last milliseconds and that a uniform moment would rarely hit."""
    targets = ["coordinator", rng.choice(list(brokers)), "mosquitto",
               *rng.sample(list(homes), rng.choice((1, 2)))]
    rng.shuffle(targets)
    moments = sorted(rng.uniform(0.0, span_s) for _ in targets)
    steps = []
    for t, m in zip(targets, moments, strict=True):
        when, label = at(m), f"kill {t} at {m:.2f}s"
        if t == "coordinator":
            phase = rng.choice(("time", "time", "ask", "solve"))
            if phase != "time":
                when, label = journaled(phase), f"kill {t} at its first {phase}"
        elif t in homes:  # not before its (staggered) start
            when = _and(when, running(t))
        steps.append(Step(label, when, kill_restart(t, rng.uniform(0.2, 1.5)), poll=0.005))
    return steps


def hostile_payloads(c: Cluster, rng: random.Random) -> list[tuple[str, bytes]]:
    """Messages the rogue home publishes on its own topics: every one must be rejected."""
    day, f = c.day, c.o.frames
    rid = secrets.token_hex(16)

    def plan(**kw: Any) -> bytes:
        obj: dict[str, Any] = {"v": 1, "home": ROGUE, "day": day, "round": 1, "report_id": rid,
                               "mag": 2, "masked": protocol.b64(bytes(4 * f))}
        obj.update(kw)
        return json.dumps(obj).encode()

    tp, tm = protocol.t_plan(ROGUE), protocol.t_mask(c.brokers[0], ROGUE)
    out = [
        (tp, b'{"v": 1, "home": '), (tp, b"\xff\xfe"), (tp, b"[]" * 10), (tp, b"null"),
        (tp, b" " * (protocol.MAX_PAYLOAD + 1)), (tp, plan(v=2)), (tp, plan(round=99)),
        (tp, plan(round=-1)), (tp, plan(round=2**70)), (tp, plan(mag=-3)), (tp, plan(mag=1e300)),
        (tp, plan(home="h001")), (tp, plan(day="2000-01-01")), (tp, plan(report_id="zz")),
        (tp, plan(masked=protocol.b64(bytes(4 * f - 4)))), (tp, plan(masked="not base64!")),
        (tp, plan(masked=123)),
        (tm, b"{}"), (tm, json.dumps({"v": 1, "home": ROGUE, "day": day, "round": 1,
                                      "report_id": rid, "sealed": protocol.b64(bytes(80))}
                                     ).encode()),
        (tm, b"\x00" * 100),
    ]
    rng.shuffle(out)
    return out


def rogue(c: Cluster, messages: Sequence[tuple[str, bytes]], stop: threading.Event,
          rng: random.Random) -> int:
    """Publish the hostile messages one by one at random moments (reconnecting as needed)."""
    sent = 0
    cl = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"{ROGUE}-chaos")
    cl.username_pw_set(ROGUE, c.pw[ROGUE])
    try:
        cl.connect("127.0.0.1", c.mq.port)
    except OSError:
        return 0
    cl.loop_start()
    try:
        for topic, payload in messages:
            if stop.wait(rng.uniform(0.0, 0.4)):
                break
            info = cl.publish(topic, payload, qos=1)
            info.wait_for_publish(2)
            sent += int(info.is_published())
    except (RuntimeError, ValueError, OSError):
        pass
    finally:
        cl.loop_stop()
        cl.disconnect()
    return sent


# ------------------------------------------------------------------ one round


def run_round(work: Path, seed: int, o: Options, script: Sequence[Step] = (),
              first_homes: int | None = None, hostile: bool = False,
              coordinator_extra: Sequence[str] = (),
              before_coordinator: Callable[[Cluster], None] | None = None,
              late_starts: dict[str, float] | None = None) -> dict[str, Any]:
    """One lab round with the scripted faults; returns what every part recorded.

    ``first_homes``: only that many homes run when the coordinator starts (a script starts the
    others).  ``late_starts``: homes started that many seconds after the coordinator (so that
    collection takes a while, as in a real fleet).  ``coordinator_extra``: arguments of the
    coordinator's *first* process only."""
    c = Cluster(work, seed, o)
    failures: list[str] = []
    out: dict[str, Any] = {"seed": seed, "work": str(work), "home_ids": c.home_ids,
                           "brokers": c.brokers}
    observer: Observer | None = None
    stop = threading.Event()
    t_start = time.monotonic()
    try:
        c.start_mosquitto()
        conn = Conn(c.mq.port)
        observer = Observer(conn, c.pw[LAB_USER])
        publish_as(conn, GRID_USER, c.pw[GRID_USER], [(
            protocol_svc.t_capacity(), protocol.encode(protocol_svc.make_capacity(o.frames,
                                                                          c.capacity)))])
        for b in c.brokers:
            c.launch(b)
        wait_for(lambda: all(c.connected(b) for b in c.brokers), 60, "mask brokers connect")
        c.write_homes()
        late = late_starts or {}
        first = [h for h in c.home_ids[: first_homes if first_homes is not None
                                       else len(c.home_ids)] if h not in late]
        for h in first:
            c.launch(h)
        wait_for(lambda: set(first) <= observer.online if observer else False, 60,
                 "homes online")
        if before_coordinator is not None:
            before_coordinator(c)
        c.coordinator_extra = list(coordinator_extra)
        c.launch("coordinator")
        c.coordinator_extra = []
        t_coord = c.t_coord = time.monotonic()
        c.log("coordinator started")

        script_error: list[str] = []

        def ready(s: Step) -> Callable[[], bool]:
            return lambda: s.when(c) or stop.is_set()

        def play() -> None:
            for s in script:
                try:
                    wait_for(ready(s), s.timeout, s.label, s.poll)
                except TimeoutError:
                    script_error.append(f"step {s.label!r}: condition not met in {s.timeout}s")
                    return
                if stop.is_set():
                    return
                try:
                    s.do(c)
                except Exception as e:  # a fault that cannot be injected is a failed trial
                    script_error.append(f"step {s.label!r}: {type(e).__name__}: {e}")
                    return

        def start_late() -> None:
            for h, delay in sorted(late.items(), key=lambda hd: hd[1]):
                if stop.wait(max(0.0, t_coord + delay - time.monotonic())):
                    return
                with c.lock:  # not when the fault script started it already
                    if h not in c.running:
                        c.launch(h)

        starter = threading.Thread(target=start_late, name="homes", daemon=True)
        starter.start()
        player = threading.Thread(target=play, name="faults", daemon=True)
        player.start()
        hostile_sent: list[int] = []
        hthread = None
        if hostile:
            rng = random.Random(seed)
            msgs = hostile_payloads(c, rng)

            def attack() -> None:
                hostile_sent.append(rogue(c, msgs, stop, rng))

            hthread = threading.Thread(target=attack, daemon=True)
            hthread.start()

        # Supervise the coordinator like systemd's Restart=on-failure would: a process that
        # failed (exit 1) is started again; a killed one is the script's to restart.
        deadline = time.monotonic() + o.round_s
        supervisor_restarts = 0
        while True:
            with c.lock:
                p = c.running["coordinator"]
                rc = p.popen.poll()
                # done: exited 0, or lingering with the round's record written
                done = rc == 0 or (rc is None and c.result_path.exists())
                if done and not player.is_alive() and not starter.is_alive():
                    break
                if rc == 1:
                    supervisor_restarts += 1
                    c.log(f"coordinator exited 1: {p.tail(300)!r}; restarting")
                    if supervisor_restarts > 3:
                        raise RuntimeError("coordinator failed 4 times")
                    c.launch("coordinator")
            if time.monotonic() > deadline:
                raise TimeoutError(f"round not done within {o.round_s}s (phase {c.phase()})")
            time.sleep(0.05)
        round_s = time.monotonic() - t_coord
        result = json.loads(c.result_path.read_text())
        counted = sorted(h for g in result["groups"] for h in g["members"])

        # Every counted home must end up with its adjustment (killed homes get theirs from
        # their persistent session after the restart).
        def adjusted() -> bool:
            return all(c.adjustment(h) is not None for h in counted)

        try:
            wait_for(adjusted, 60, "homes adjusted", step=0.1)
        except TimeoutError:
            failures.append("not every counted home stored its adjustment within 60 s")
        with c.lock:
            p = c.running["coordinator"]
            if p.popen.poll() is None:
                p.popen.send_signal(signal.SIGTERM)   # end the linger: a completed round
            try:
                rc = p.popen.wait(30)
            except subprocess.TimeoutExpired:
                rc = None
            # -SIGTERM: a coordinator the script had just restarted, stopped before it
            # installed its handler; the round's record is the earlier process's
            if rc not in (0, -signal.SIGTERM):
                failures.append(f"coordinator did not end cleanly after the linger: {rc}")
        result = json.loads(c.result_path.read_text())
        stop.set()
        player.join(30)
        if hthread is not None:
            hthread.join(30)
        failures += script_error

        journal = c.journal()
        reports = Counter(r["home"] for r in journal if r.get("kind") == "report")
        # redeliveries the services turned away (every process's log): idempotence at work
        seen: Counter[str] = Counter()
        for log in (c.work / "logs").glob("*.log"):
            if log.name.startswith(("coordinator.", "mb")):
                for m in _REJECTED.finditer(log.read_text(errors="replace")):
                    if ROGUE not in m.group(0):
                        seen[f"{m.group(1)}:{m.group(2)}"] += 1
        masks = {b: Counter(r.get("home") for r in _jsonl(c.masks_path(b))) for b in c.brokers}
        stats = {}
        for b in c.brokers:
            with_err = _jsonl_obj(c.stats_path(b))
            if with_err is not None:
                stats[b] = with_err
        out.update({
            "result": result,
            "counted": counted,
            "adjustments": {h: c.adjustment(h) for h in c.home_ids},
            "journal_reports": dict(reports),
            "mask_records": {b: dict(m) for b, m in masks.items()},
            "mask_broker_stats": stats,
            "turned_away": dict(seen),
            "events": c.events,
            "starts": dict(c.starts),
            "supervisor_restarts": supervisor_restarts,
            "hostile_sent": hostile_sent[0] if hostile_sent else 0,
            "round_s": round(round_s, 2),
        })
    except Exception as e:
        failures.append(f"{type(e).__name__}: {e}")
        out["events"] = c.events
    finally:
        stop.set()
        if observer is not None:
            try:
                observer.close()
            except Exception as e:  # the broker may be gone already
                failures.append(f"observer: {e}")
        c.close()
    out["failures"] = failures
    out["total_s"] = round(time.monotonic() - t_start, 2)
    return out


def _jsonl_obj(path: Path) -> dict[str, Any] | None:
    try:
        obj = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return obj if isinstance(obj, dict) else None


# ------------------------------------------------------------------ comparing


def decision(result: dict[str, Any]) -> dict[str, Any]:
    """What the round decided: the part that must not depend on faults."""
    return {
        "homes": result["homes"],
        "groups": sorted((g["id"], tuple(g["members"])) for g in result["groups"]),
        "moves": sorted(map(tuple, result["moves"])),
        "curtail": sorted(map(tuple, result["curtail"])),
        "load_before": result["coordinator_load_before_wh"],
        "load_after": result["coordinator_load_after_wh"],
        "overload_before_wh": result["overload_before_wh"],
        "overload_after_wh": result["overload_after_wh"],
        "curtailed_wh": result["curtailed_wh"],
        "excluded": sorted((e["home"], e["reason"]) for e in result["excluded"]),
    }


def compare(ref: dict[str, Any], run: dict[str, Any]) -> dict[str, Any]:
    if ref.get("failures") or "result" not in ref:
        return {"identical": False, "diffs": ["reference run failed"], "lost_reports": 0,
                "lost_adjustments": 0, "duplicate_reports": 0}
    if "result" not in run:
        return {"identical": False, "diffs": run.get("failures", []),
                "lost_reports": len(ref["counted"]), "lost_adjustments": len(ref["counted"]),
                "duplicate_reports": 0}
    a, b = decision(ref["result"]), decision(run["result"])
    diffs = [k for k in a if a[k] != b[k]]
    bad_homes = [h for h, adj in ref["adjustments"].items()
                 if adj is not None and run["adjustments"].get(h) != adj]
    if bad_homes:
        diffs.append(f"home adjustments differ: {bad_homes}")
    diffs += run.get("failures", [])
    dup = sum(n - 1 for n in run["journal_reports"].values() if n > 1)
    dup += sum(n - 1 for m in run["mask_records"].values() for n in m.values() if n > 1)
    dup += max(0, run["result"]["homes"] - len(run["journal_reports"]))
    return {
        "identical": not diffs,
        "diffs": diffs,
        "lost_reports": len(set(ref["counted"]) - set(run["counted"])),
        "lost_adjustments": len(bad_homes),
        "duplicate_reports": dup,
    }


# ------------------------------------------------------------------ the bench


def trial(n: int, base_seed: int, o: Options, work: Path) -> dict[str, Any]:
    seed = base_seed + n
    rng = random.Random(seed * 7919)
    homes = [f"h{i + 1:03d}" for i in range(o.homes)]  # scenario.make_homes' ids
    late = {h: rng.uniform(0.0, o.stagger_s) for h in homes}
    ref = run_round(work / f"t{n:02d}-ref", seed, o, late_starts=late)
    span = float(ref.get("round_s") or 5.0)
    steps = random_faults(rng, homes, ref.get("brokers", ["mb1"]), span)
    run = run_round(work / f"t{n:02d}-chaos", seed, o, steps, hostile=True, late_starts=late)
    cmp = compare(ref, run)
    return {
        "trial": n, "seed": seed, **cmp,
        "faults": [e["what"] for e in run.get("events", []) if e["what"].startswith("killed")],
        "fault_phases": [e["phase"] for e in run.get("events", [])
                         if e["what"].startswith("killed")],
        "hostile_sent": run.get("hostile_sent", 0),
        "turned_away": run.get("turned_away", {}),
        "coordinator_processes": run.get("starts", {}).get("coordinator", 0),
        "supervisor_restarts": run.get("supervisor_restarts", 0),
        "reference_round_s": ref.get("round_s"), "chaos_round_s": run.get("round_s"),
        "total_s": round(float(ref.get("total_s", 0)) + float(run.get("total_s", 0)), 1),
        "failures": ref.get("failures", []) + run.get("failures", []),
    }


def summarise(trials: list[dict[str, Any]], elapsed: float, o: Options) -> dict[str, Any]:
    kinds: Counter[str] = Counter()
    phases: Counter[str] = Counter()
    for t in trials:
        for f, ph in zip(t["faults"], t["fault_phases"], strict=False):
            target = f.removeprefix("killed ")
            kinds["home" if target.startswith("h") else
                  "mask_broker" if target.startswith("mb") else target] += 1
            phases[ph] += 1
    return {
        "trials": len(trials),
        "identical_results": sum(t["identical"] for t in trials),
        "lost_reports": sum(t["lost_reports"] for t in trials),
        "duplicate_reports": sum(t["duplicate_reports"] for t in trials),
        "lost_adjustments": sum(t["lost_adjustments"] for t in trials),
        "faults": dict(sorted(kinds.items())),
        "fault_phases": dict(sorted(phases.items())),
        "hostile_messages": sum(t["hostile_sent"] for t in trials),
        "turned_away": dict(sum((Counter(t["turned_away"]) for t in trials), Counter())),
        "homes": o.homes, "mask_brokers": o.mask_brokers, "k": o.k,
        "mosquitto_autosave": "on every change" if o.autosave_on_changes else "template",
        "elapsed_s": round(elapsed, 1),
        "per_trial": trials,
    }


def print_table(s: dict[str, Any], out: Any) -> None:
    w = out.write
    w(f"\nchaos: {s['trials']} trials, {s['homes']} homes, {s['mask_brokers']} mask broker(s), "
      f"{s['elapsed_s']} s\n")
    w(f"  identical results   {s['identical_results']} / {s['trials']}\n")
    w(f"  lost reports        {s['lost_reports']}\n")
    w(f"  duplicate reports   {s['duplicate_reports']}\n")
    w(f"  lost adjustments    {s['lost_adjustments']}\n")
    w(f"  faults injected     {s['faults']}\n")
    w(f"  ... landing in      {s['fault_phases']}\n")
    w(f"  hostile messages    {s['hostile_messages']}\n")
    w(f"  redeliveries turned away {s['turned_away']}\n")
    for t in s["per_trial"]:
        mark = "ok " if t["identical"] else "BAD"
        w(f"  {mark} trial {t['trial']:2d} seed {t['seed']:3d}  {t['chaos_round_s']!s:>6} s "
          f"(ref {t['reference_round_s']!s:>5} s)  {', '.join(t['faults'])}\n")
        for d in t["diffs"]:
            w(f"        {d}\n")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trials", type=int, default=5)
    p.add_argument("--seed", type=int, default=1, help="trial n uses scenario seed SEED + n")
    p.add_argument("--homes", type=int, default=Options.homes)
    p.add_argument("--mask-brokers", type=int, default=Options.mask_brokers)
    p.add_argument("--python-homes", action="store_true",
                   help="run the firmware under CPython (paho) instead of micropython")
    p.add_argument("--per-change-autosave", action="store_true",
                   help="make mosquitto save its database after every change instead of the "
                        "shipped template's every 60 s")
    p.add_argument("--template-autosave", action="store_true",
                   help="the default (kept for old command lines)")
    p.add_argument("--out", type=Path, default=None, help="keep every run's files here")
    p.add_argument("--keep", action="store_true", help="keep the files of identical trials too")
    p.add_argument("--json", action="store_true", help="JSON on stdout, table on stderr")
    a = p.parse_args(argv)
    o = Options(homes=a.homes, mask_brokers=a.mask_brokers, python_homes=a.python_homes,
                autosave_on_changes=a.per_change_autosave)
    work = a.out or Path(tempfile.mkdtemp(prefix="hems-chaos-"))
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    trials = []
    for n in range(a.trials):
        t = trial(n, a.seed, o, work)
        trials.append(t)
        print(f"chaos: trial {n}: {'identical' if t['identical'] else 'DIFFERENT'} "
              f"({t['total_s']} s; {', '.join(t['faults'])})", file=sys.stderr, flush=True)
        if t["identical"] and not a.keep:
            for sub in work.glob(f"t{n:02d}-*"):
                shutil.rmtree(sub, ignore_errors=True)
    s = summarise(trials, time.monotonic() - t0, o)
    if a.json:
        json.dump(s, sys.stdout)
        sys.stdout.write("\n")
    print_table(s, sys.stderr if a.json else sys.stdout)
    if a.out is None and not a.keep and s["identical_results"] == s["trials"]:
        shutil.rmtree(work, ignore_errors=True)
    else:
        print(f"chaos: files in {work}", file=sys.stderr)
    ok = (s["identical_results"] == s["trials"] and s["lost_reports"] == 0
          and s["duplicate_reports"] == 0)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
