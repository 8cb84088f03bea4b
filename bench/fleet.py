"""Fleet simulator: real MQTT traffic for N homes from one process (no process per home).

    .venv/bin/python bench/fleet.py --homes 10000 --port 1883 --password-env FLEET_PW [--json]
    .venv/bin/python bench/fleet.py --homes 1000 --self-test [--engine paho] [--json]

Each simulated home is the real firmware core: ``hemsfw.home.Home.on_round`` (CPython) plans
the day (a seeded realistic special-circuit day from bench/daygen.py), draws its report id and
one seed per mask broker with ``os.urandom``, masks (``hemsfw.masking``), seals
(``hemsfw.seal``) and encodes (``hemsfw.protocol``) exactly as a board does.  Every payload is
computed *before* publishing (~190 us per home on one core; two processes build in parallel),
then published as fast as mosquitto takes it, QoS 1, by one connection:

* ``--engine raw`` (default): the PUBLISH packets are pre-encoded MQTT 3.1.1 frames written in
  large chunks to one TCP socket, with up to ``--window`` unacknowledged; a reader thread checks
  that every PUBACK arrives, in order, with the right packet id.  ~1.3 us CPU per message, so
  the publisher is never the bottleneck of an ingest measurement (mosquitto takes ~200k msg/s
  on this machine).  A load generator only: it never subscribes and speaks only CONNECT,
  PUBLISH (QoS 1) and DISCONNECT.
* ``--engine paho``: paho-mqtt 2.x, manual loop, the same window (~12-13k msg/s here).

Home ids are ``h000001`` ... ``h<N>``.  Homes publish under the TEST-ONLY ``fleet`` identity
(backend/common/fleet_acl.py), which may publish plans and masks for every home: never deploy
it.  ``write_registry`` writes each mask broker's registry (home keys, derived from the seed:
test keys, also TEST ONLY), ``home_passwords`` the passwd entries for per-home identities.

``--self-test`` starts its own mosquitto (with the fleet identity), publishes, and checks with
``mosquitto_sub`` as the coordinator and as each mask broker that every report arrived intact.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import pickle
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import numpy.typing as npt  # noqa: E402
import paho.mqtt.client as mqtt  # noqa: E402
from paho.mqtt.enums import CallbackAPIVersion  # noqa: E402

from backend.common.bulk_mqtt import mqtt_string, varlen  # noqa: E402
from backend.common.fleet_acl import FLEET_USER  # noqa: E402
from bench.daygen import MAG_PROBS, MAGNIFICATIONS  # noqa: E402
from bench.daygen import _homes as day_loads  # noqa: E402
from hemsfw import home as fw_home  # noqa: E402
from hemsfw import protocol, protocol_svc  # noqa: E402

Engine = Literal["raw", "paho"]
Message = tuple[str, bytes]

#: tomorrow (UTC): the mask brokers accept rounds only for today and the next days on their own
#: clock (docs/privacy.md, "Days follow the clock")
_TOMORROW = dt.datetime.now(dt.UTC).date() + dt.timedelta(days=1)
DAY = _TOMORROW.isoformat()
START = int(dt.datetime.combine(_TOMORROW, dt.time(), dt.UTC).timestamp())
DEFAULT_WINDOW = 10_000
MAX_WINDOW = 60_000  # < 65535 packet ids in flight
BUILD_CHUNK = 5_000


class FleetError(Exception):
    """The fleet could not publish (refused connection, lost connection, timeout)."""


def home_id(i: int) -> str:
    """Home i (1-based) -> ``h000001``; 6 digits up to 999,999 homes, more digits beyond."""
    return f"h{i:06d}"


@dataclass(frozen=True)
class FleetSpec:
    """The round the fleet reports in, and who the fleet is."""

    homes: int
    brokers: tuple[str, ...] = ("mb1",)
    day: str = DAY
    round: int = 1
    frames: int = 96
    frame_s: int = 900
    quantum_wh: int = 1
    start: int = START
    deadline: int = START  # the announcement's deadline; homes are not told the wall clock
    seed: int = 1

    def announcement(self) -> dict[str, Any]:
        ann: dict[str, Any] = protocol_svc.make_round(
            self.day, self.round, self.frames, self.frame_s, self.quantum_wh, self.start,
            self.deadline, list(self.brokers))
        return ann

    def ids(self) -> list[str]:
        return [home_id(i) for i in range(1, self.homes + 1)]


def home_key(seed: int, home: str, broker: str) -> bytes:
    """TEST ONLY: a home's 32-byte key for one broker, derived from the fleet seed."""
    return hashlib.sha256(f"hems fleet test key|{seed}|{home}|{broker}".encode()).digest()


def home_password(seed: int, home: str) -> str:
    """TEST ONLY: a home's MQTT password (per-home identities, small fleets)."""
    return hashlib.sha256(f"hems fleet test password|{seed}|{home}".encode()).hexdigest()[:24]


def home_passwords(spec: FleetSpec) -> dict[str, str]:
    """passwd entries (user -> password) for the fleet's homes as their own identities."""
    return {h: home_password(spec.seed, h) for h in spec.ids()}


def write_registry(spec: FleetSpec, directory: Path) -> dict[str, Path]:
    """Each mask broker's enrollment registry for the fleet: ``registry-<broker>.json``."""
    directory.mkdir(parents=True, exist_ok=True)
    out = {}
    ids = spec.ids()
    for b in spec.brokers:
        reg = {"homes": {h: {"key": home_key(spec.seed, h, b).hex()} for h in ids}}
        path = directory / f"registry-{b}.json"
        path.write_text(json.dumps(reg))
        out[b] = path
    return out


def plans_wh(spec: FleetSpec) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Seeded day plans (homes x frames, Wh) and magnifications for the whole fleet."""
    rng = np.random.default_rng(spec.seed)
    mags = rng.choice(np.array(MAGNIFICATIONS, dtype=np.int64), size=spec.homes,
                      p=list(MAG_PROBS)).astype(np.int64)
    wh = np.rint(day_loads(rng, spec.homes, "weekday")).astype(np.int64)  # (N, 96)
    if spec.frames != wh.shape[1]:
        if wh.shape[1] % spec.frames:
            raise ValueError(f"frames must divide 96 (got {spec.frames})")
        wh = wh.reshape(spec.homes, spec.frames, -1).sum(axis=2)
    return wh, mags


class _MemStore:
    """hemsfw.store.Store in memory (the fleet has no flash)."""

    def __init__(self) -> None:
        self.d: dict[str, Any] = {}

    def read(self, name: str, default: Any = None) -> Any:
        return self.d.get(name, default)

    def write(self, name: str, obj: Any) -> None:
        self.d[name] = obj

    def rename(self, old: str, new: str) -> None:
        self.d[new] = self.d.pop(old)

    def remove(self, name: str) -> None:
        self.d.pop(name, None)


def _build_chunk(spec: FleetSpec, lo: int, wh: npt.NDArray[np.int64],
                 mags: npt.NDArray[np.int64]) -> tuple[list[Message], list[list[int]]]:
    """Homes lo+1 .. lo+len(wh): the firmware's own round, message for message."""
    ann = spec.announcement()
    msgs: list[Message] = []
    quanta: list[list[int]] = []
    for j in range(len(wh)):
        h = home_id(lo + j + 1)
        cfg = {"home_id": h, "magnification": int(mags[j]),
               "plan_wh": [int(x) for x in wh[j]],
               "keys": {b: home_key(spec.seed, h, b).hex() for b in spec.brokers}}
        home = fw_home.Home(cfg, _MemStore(), os.urandom)
        out = home.on_round(ann)
        if home.new is None or len(out) != 1 + len(spec.brokers):
            raise FleetError(f"home {h} did not report: {home.new and home.new['status']}")
        msgs.extend((str(t), bytes(p)) for t, p in out)
        quanta.append(list(home.new["plan"]))
    return msgs, quanta


@dataclass
class Fleet:
    """A fleet's precomputed round: every message in publish order, and the truth to check."""

    spec: FleetSpec
    messages: list[Message]
    plans: npt.NDArray[np.int64]  # (N, frames) quanta: what the homes planned
    mags: npt.NDArray[np.int64]  # (N,)
    build_s: float = 0.0

    def topics(self, family: str) -> list[Message]:
        """The messages of one topic family: "plan" or "mask/<broker>"."""
        head = f"{protocol.PREFIX}/{family}/"
        return [m for m in self.messages if m[0].startswith(head)]


def build(spec: FleetSpec, workers: int = 0) -> Fleet:
    """Run every home's round (hemsfw.home.Home.on_round); ``workers`` processes (0: one per
    core, capped at 2 below 2,000 homes it runs inline)."""
    t = time.perf_counter()
    wh, mags = plans_wh(spec)
    jobs = [(lo, wh[lo:lo + BUILD_CHUNK], mags[lo:lo + BUILD_CHUNK])
            for lo in range(0, spec.homes, BUILD_CHUNK)]
    n_workers = workers or min(2, os.cpu_count() or 1)
    if spec.homes < 2000 or n_workers <= 1:
        parts = [_build_chunk(spec, lo, w, m) for lo, w, m in jobs]
    else:
        with ProcessPoolExecutor(n_workers) as ex:
            futs = [ex.submit(_build_chunk, spec, lo, w, m) for lo, w, m in jobs]
            parts = [f.result() for f in futs]
    msgs = [m for p, _ in parts for m in p]
    quanta = np.array([q for _, qs in parts for q in qs], dtype=np.int64).reshape(
        spec.homes, spec.frames)
    return Fleet(spec, msgs, quanta, mags, time.perf_counter() - t)


def load_or_build(spec: FleetSpec, cache: Path | None) -> Fleet:
    """``build`` with an on-disk cache (the payloads of a 100k-home fleet take ~10 s to make).
    A cached fleet re-sends the very same reports, like a home after a restart; use a fresh
    broker and services (or another round) per run, or they are replays."""
    if cache is not None and cache.exists():
        with cache.open("rb") as f:
            obj = pickle.load(f)  # a file this function wrote: plain types only
        if isinstance(obj, dict) and obj.get("spec") == asdict(spec):
            return Fleet(spec, obj["messages"], obj["plans"], obj["mags"], 0.0)
    fleet = build(spec)
    if cache is not None:
        tmp = cache.with_name(cache.name + ".tmp")
        with tmp.open("wb") as f:
            pickle.dump({"spec": asdict(spec), "messages": fleet.messages,
                         "plans": fleet.plans, "mags": fleet.mags}, f,
                        protocol=pickle.HIGHEST_PROTOCOL)
        tmp.replace(cache)
    return fleet


# ------------------------------------------------------------------ MQTT 3.1.1 framing (raw)


def _str(s: str) -> bytes:
    return mqtt_string(s.encode())


def connect_packet(client_id: str, user: str, password: str, keepalive: int = 0) -> bytes:
    """CONNECT, MQTT 3.1.1, clean session, username + password."""
    body = (_str("MQTT") + bytes((4, 0xC2)) + struct.pack("!H", keepalive)
            + _str(client_id) + _str(user) + _str(password))
    return b"\x10" + varlen(len(body)) + body


def publish_packet(topic: str, payload: bytes, mid: int) -> bytes:
    """PUBLISH, QoS 1, not retained."""
    body = _str(topic) + struct.pack("!H", mid) + payload
    return b"\x32" + varlen(len(body)) + body


def mid_of(i: int) -> int:
    """Packet id of the i-th message (0-based): 1..65535, cycling."""
    return i % 65535 + 1


@dataclass
class PublishStats:
    engine: str
    messages: int
    bytes: int
    seconds: float  # first byte sent -> last PUBACK
    cpu_s: float  # this process, pre-encoding included
    t_first: float = 0.0  # wall clock (time.time) of the first send
    t_last: float = 0.0  # wall clock of the last PUBACK

    @property
    def msgs_per_s(self) -> float:
        return self.messages / self.seconds if self.seconds > 0 else 0.0

    def as_json(self) -> dict[str, Any]:
        return {"engine": self.engine, "messages": self.messages, "bytes": self.bytes,
                "seconds": round(self.seconds, 4), "msgs_per_s": round(self.msgs_per_s),
                "cpu_us_per_msg": round(1e6 * self.cpu_s / max(1, self.messages), 2),
                "t_first": self.t_first, "t_last": self.t_last}


@dataclass
class _Acks:
    n: int = 0
    error: str | None = None
    cv: threading.Condition = field(default_factory=threading.Condition)


def _read_acks(sock: socket.socket, total: int, acks: _Acks, ordered: bool = True) -> None:
    """Count PUBACKs: each must be 0x40 0x02 <mid> with the next expected packet id
    (``ordered``; a RabbitMQ cluster acknowledges as its queues confirm: not in order, and
    then each packet id must be one not yet acknowledged of those sent)."""
    outstanding: dict[int, int] = {}  # unordered: mid -> acknowledgements still due
    buf = b""
    try:
        while acks.n < total:
            data = sock.recv(1 << 16)
            if not data:
                raise FleetError("broker closed the connection")
            buf += data
            pos = 0
            n = acks.n
            while len(buf) - pos >= 4:
                if buf[pos] != 0x40 or buf[pos + 1] != 0x02:
                    raise FleetError(f"unexpected packet 0x{buf[pos]:02x} (expected PUBACK)")
                mid = (buf[pos + 2] << 8) | buf[pos + 3]
                if ordered and mid != mid_of(n):
                    raise FleetError(f"PUBACK for packet id {mid}, expected {mid_of(n)}")
                if not ordered:
                    due = outstanding.get(mid)
                    if due is None:  # every id sent so far: as many as cycles reached it
                        due = outstanding[mid] = (total - mid) // 65535 + 1 if mid <= total \
                            else 0
                    if due <= 0:
                        raise FleetError(f"PUBACK for packet id {mid}: not outstanding")
                    outstanding[mid] = due - 1
                n += 1
                pos += 4
            buf = buf[pos:]
            with acks.cv:
                acks.n = n
                acks.cv.notify_all()
    except (OSError, FleetError) as e:
        with acks.cv:
            acks.error = str(e) or type(e).__name__
            acks.cv.notify_all()


def publish_raw(messages: Sequence[Message], host: str, port: int, user: str, password: str,
                window: int = DEFAULT_WINDOW, chunk: int = 256, timeout: float = 300.0,
                rate: float = 0.0, client_id: str = "fleet",
                ordered: bool = True) -> PublishStats:
    """Publish every message QoS 1 over one connection with pre-encoded frames (module doc).
    ``ordered``: PUBACKs must come in order (mosquitto); False for a RabbitMQ cluster.

    ``rate`` > 0 paces the sending (messages per second); 0 sends as fast as the broker reads.
    Raises FleetError when the broker refuses the connection, closes it, acknowledges out of
    order, or the whole run exceeds ``timeout`` seconds."""
    if not 1 <= window <= MAX_WINDOW:
        raise ValueError(f"window must be 1..{MAX_WINDOW}")
    cpu0 = time.process_time()
    frames = [publish_packet(t, p, mid_of(i)) for i, (t, p) in enumerate(messages)]
    nbytes = sum(map(len, frames))
    total = len(frames)
    deadline = time.monotonic() + timeout
    try:
        sock = socket.create_connection((host, port), timeout=10.0)
    except OSError as e:
        raise FleetError(f"cannot connect to {host}:{port}: {e}") from e
    with sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            sock.sendall(connect_packet(client_id, user, password))
            ack = b""
            while len(ack) < 4:
                more = sock.recv(4 - len(ack))
                if not more:
                    raise FleetError("connection closed before CONNACK (wrong credentials?)")
                ack += more
        except OSError as e:
            raise FleetError(f"CONNECT to {host}:{port} failed: {e}") from e
        if ack[:2] != b"\x20\x02" or ack[3] != 0:
            raise FleetError(f"broker refused the connection as {user!r}: CONNACK {ack.hex()}")
        sock.settimeout(None)
        acks = _Acks()
        reader = threading.Thread(target=_read_acks, args=(sock, total, acks, ordered),
                                  daemon=True)
        reader.start()
        t0, w0 = time.perf_counter(), time.time()
        sent = 0
        try:
            while sent < total:
                with acks.cv:
                    while sent - acks.n >= window and acks.error is None:
                        if not acks.cv.wait(max(0.0, deadline - time.monotonic())):
                            break
                    if acks.error is not None:
                        raise FleetError(acks.error)
                if time.monotonic() > deadline:
                    raise FleetError(f"timeout: {acks.n}/{total} acknowledged")
                if rate > 0:
                    ahead = t0 + sent / rate - time.perf_counter()
                    if ahead > 0:
                        time.sleep(ahead)
                j = min(total, sent + chunk, acks.n + window)
                sock.sendall(b"".join(frames[sent:j]))
                sent = j
            with acks.cv:
                while acks.n < total and acks.error is None:
                    if not acks.cv.wait(max(0.0, deadline - time.monotonic())):
                        break
            if acks.error is not None or acks.n < total:
                raise FleetError(acks.error or f"timeout: {acks.n}/{total} acknowledged")
            seconds, w1 = time.perf_counter() - t0, time.time()
            sock.sendall(b"\xe0\x00")  # DISCONNECT
        except OSError as e:
            raise FleetError(f"connection lost: {e}") from e
        finally:
            with acks.cv:  # let the reader end (it may wait in recv: the close ends it)
                acks.cv.notify_all()
    reader.join(5.0)
    return PublishStats("raw", total, nbytes, seconds, time.process_time() - cpu0, w0, w1)


def publish_paho(messages: Sequence[Message], host: str, port: int, user: str, password: str,
                 window: int = DEFAULT_WINDOW, timeout: float = 300.0,
                 client_id: str = "fleet") -> PublishStats:
    """Publish every message QoS 1 with paho-mqtt 2.x (one client, manual loop)."""
    cpu0 = time.process_time()
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id)
    c.username_pw_set(user, password)
    c.max_inflight_messages_set(min(window, MAX_WINDOW))
    c.max_queued_messages_set(0)
    state: dict[str, Any] = {"acked": 0, "rc": None}

    def on_connect(_c: Any, _u: Any, _f: Any, rc: Any, _p: Any = None) -> None:
        state["rc"] = rc

    def on_publish(_c: Any, _u: Any, _mid: int, _rc: Any, _p: Any) -> None:
        state["acked"] += 1

    c.on_connect = on_connect
    c.on_publish = on_publish
    deadline = time.monotonic() + timeout
    try:
        c.connect(host, port, keepalive=60)
    except OSError as e:
        raise FleetError(f"cannot connect to {host}:{port}: {e}") from e
    try:
        while state["rc"] is None and time.monotonic() < deadline:
            if c.loop(0.05) != mqtt.MQTT_ERR_SUCCESS:
                break
        if state["rc"] is None or state["rc"].is_failure:
            raise FleetError(f"broker refused the connection as {user!r}: {state['rc']}")
        total = len(messages)
        nbytes = 0
        t0, w0 = time.perf_counter(), time.time()
        for i, (t, p) in enumerate(messages):
            info = c.publish(t, p, qos=1)
            if info.rc != mqtt.MQTT_ERR_SUCCESS:
                raise FleetError(f"publish failed: {mqtt.error_string(info.rc)}")
            nbytes += len(p)
            if i % 64 == 63:
                c.loop(0)
        while state["acked"] < total:
            if time.monotonic() > deadline:
                raise FleetError(f"timeout: {state['acked']}/{total} acknowledged")
            rc = c.loop(0.01)
            if rc != mqtt.MQTT_ERR_SUCCESS:
                raise FleetError(f"connection lost: {mqtt.error_string(rc)}")
        seconds, w1 = time.perf_counter() - t0, time.time()
    finally:
        c.disconnect()
    return PublishStats("paho", total, nbytes, seconds, time.process_time() - cpu0, w0, w1)


def publish(messages: Sequence[Message], host: str, port: int, user: str, password: str,
            engine: Engine = "raw", window: int = DEFAULT_WINDOW, timeout: float = 300.0,
            rate: float = 0.0) -> PublishStats:
    if engine == "raw":
        return publish_raw(messages, host, port, user, password, window, timeout=timeout,
                           rate=rate)
    if rate:
        raise ValueError("--rate needs --engine raw")
    return publish_paho(messages, host, port, user, password, window, timeout)


# ------------------------------------------------------------------ receiving (adjustments)


class Listener:
    """The fleet's ears: counts what arrives for its homes on ``topics`` (paho, its own
    thread), e.g. ``hems/v1/adjust/+``.  QoS 0 keeps the count cheap at 100k messages."""

    def __init__(self, host: str, port: int, user: str, password: str,
                 topics: Sequence[str], qos: int = 0, client_id: str = "fleet-listener",
                 keep: Callable[[str, bytes], bool] | None = None) -> None:
        self.count = 0
        self.kept: list[Message] = []
        self.t_last = 0.0
        self.keep = keep
        self._subscribed = threading.Event()
        self._granted: list[int] = []
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id)
        self.c.username_pw_set(user, password)
        self.c.on_connect = self._on_connect
        self.c.on_subscribe = self._on_subscribe
        self.c.on_message = self._on_message
        self.topics = list(topics)
        self.qos = qos
        self.host, self.port = host, port

    def _on_connect(self, c: mqtt.Client, _u: Any, _f: Any, rc: Any, _p: Any = None) -> None:
        if not rc.is_failure:
            c.subscribe([(t, self.qos) for t in self.topics])

    def _on_subscribe(self, _c: Any, _u: Any, _mid: int, granted: list[Any], _p: Any) -> None:
        self._granted = [int(getattr(g, "value", g)) for g in granted]
        self._subscribed.set()

    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        self.count += 1
        self.t_last = time.time()
        if self.keep is not None and self.keep(msg.topic, bytes(msg.payload)):
            self.kept.append((msg.topic, bytes(msg.payload)))

    def __enter__(self) -> Listener:
        self.c.connect(self.host, self.port, keepalive=60)
        self.c.loop_start()
        if not self._subscribed.wait(10.0):
            self.c.loop_stop()
            raise FleetError("listener: no SUBACK within 10 s (credentials?)")
        if any(g >= 0x80 for g in self._granted):
            self.c.loop_stop()
            raise FleetError(f"listener: subscription refused {self._granted}")
        return self

    def wait(self, n: int, timeout: float) -> bool:
        """Until ``n`` messages arrived (True) or ``timeout`` seconds passed (False)."""
        deadline = time.monotonic() + timeout
        while self.count < n and time.monotonic() < deadline:
            time.sleep(0.01)
        return self.count >= n

    def __exit__(self, *exc: object) -> None:
        self.c.disconnect()
        self.c.loop_stop()


# ------------------------------------------------------------------ self-test and CLI


def _sub_timestamps(port: int, user: str, password: str, topic: str, n: int,
                    out: Path) -> subprocess.Popen[bytes]:
    """mosquitto_sub printing one line "<unix ns time> <topic> <payload hex>" per message."""
    return subprocess.Popen(
        ["mosquitto_sub", "-h", "127.0.0.1", "-p", str(port), "-u", user, "-P", password,
         "-t", topic, "-q", "1", "-C", str(n), "-W", "600", "-F", "%U %t %x"],
        stdout=out.open("wb"), stderr=subprocess.DEVNULL)


def _read_sub(path: Path) -> Iterator[tuple[float, str, bytes]]:
    for line in path.read_text().splitlines():
        ts, topic, hx = line.split(" ")
        yield float(ts), topic, bytes.fromhex(hx)


def self_test(spec: FleetSpec, engine: Engine, window: int, cache: Path | None
              ) -> dict[str, Any]:
    """Own mosquitto; publish the fleet; check every report arrived byte for byte."""
    from backend.common.fleet_acl import FleetMosquitto

    fleet = load_or_build(spec, cache)
    with tempfile.TemporaryDirectory(prefix="hems-fleet-") as tmp:
        users = {FLEET_USER: "fleet-pw", "coordinator": "coord-pw"}
        users |= {b: f"{b}-pw" for b in spec.brokers}
        with FleetMosquitto(Path(tmp) / "mq", users, list(spec.brokers)) as mq:
            watch = [("coordinator", protocol.t_plan("+"), "plan")]
            watch += [(b, protocol.t_mask(b, "+"), f"mask/{b}") for b in spec.brokers]
            subs = []
            for user, topic, family in watch:
                path = Path(tmp) / f"{user}.out"
                n = len(fleet.topics(family))
                subs.append((family, path, _sub_timestamps(mq.port, user, users[user], topic,
                                                           n, path)))
            time.sleep(0.5)  # the subscriptions are in place
            stats = publish(fleet.messages, "127.0.0.1", mq.port, FLEET_USER,
                            users[FLEET_USER], engine, window)
            received: dict[str, Any] = {}
            ok = True
            for family, path, proc in subs:
                try:
                    proc.wait(60)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
                got = list(_read_sub(path))
                want = fleet.topics(family)
                same = sorted((t, p) for _, t, p in got) == sorted(want)
                ok &= same
                rate = (len(got) - 1) / (got[-1][0] - got[0][0]) if len(got) > 1 else 0.0
                received[family] = {"expected": len(want), "received": len(got),
                                    "intact": same, "sub_msgs_per_s": round(rate)}
    return {"homes": spec.homes, "brokers": list(spec.brokers), "messages": len(fleet.messages),
            "build_s": round(fleet.build_s, 3), "publish": stats.as_json(),
            "received": received, "ok": ok}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench/fleet.py", description=__doc__.split("\n")[0])
    p.add_argument("--homes", type=int, default=1000)
    p.add_argument("--brokers", default="mb1", help="comma-separated mask broker ids")
    p.add_argument("--day", default=DAY)
    p.add_argument("--round", type=int, default=1)
    p.add_argument("--frames", type=int, default=96)
    p.add_argument("--deadline", type=int, default=START)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--engine", choices=("raw", "paho"), default="raw")
    p.add_argument("--window", type=int, default=DEFAULT_WINDOW)
    p.add_argument("--rate", type=float, default=0.0, help="msgs/s (raw engine; 0 = max)")
    p.add_argument("--cache", type=Path, help="keep the precomputed payloads here")
    p.add_argument("--registry-dir", type=Path, help="write registry-<broker>.json here")
    p.add_argument("--self-test", action="store_true",
                   help="own mosquitto; check every report arrives intact")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=1883)
    p.add_argument("--user", default=FLEET_USER)
    p.add_argument("--password-env", default="FLEET_PW")
    p.add_argument("--json", action="store_true")
    a = p.parse_args(argv)
    spec = FleetSpec(a.homes, tuple(a.brokers.split(",")), a.day, a.round, a.frames,
                     deadline=a.deadline, seed=a.seed)
    if a.registry_dir is not None:
        write_registry(spec, a.registry_dir)
    try:
        if a.self_test:
            out = self_test(spec, a.engine, a.window, a.cache)
        else:
            fleet = load_or_build(spec, a.cache)
            stats = publish(fleet.messages, a.host, a.port, a.user,
                            os.environ.get(a.password_env, ""), a.engine, a.window,
                            rate=a.rate)
            out = {"homes": spec.homes, "messages": len(fleet.messages),
                   "build_s": round(fleet.build_s, 3), "publish": stats.as_json(), "ok": True}
    except FleetError as e:
        print(f"fleet: {e}", file=sys.stderr)
        return 1
    if a.json:
        print(json.dumps(out))
    else:
        pub = out["publish"]
        print(f"{out['homes']} homes, {out['messages']} messages built in {out['build_s']} s; "
              f"published ({pub['engine']}) in {pub['seconds']} s = {pub['msgs_per_s']} msg/s, "
              f"{pub['cpu_us_per_msg']} us CPU/msg")
        for fam, r in out.get("received", {}).items():
            print(f"  {fam:10} {r['received']}/{r['expected']} intact={r['intact']} "
                  f"(mosquitto_sub {r['sub_msgs_per_s']} msg/s)")
    return 0 if out["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
