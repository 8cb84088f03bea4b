"""Ingest benchmark: how fast can a service take real reports off mosquitto, and what does the
decoding cost?  One run, JSON and a readable table.

    .venv/bin/python bench/ingest.py                       # 50k plan reports, 3 repeats
    .venv/bin/python bench/ingest.py --json > ingest.json  # table on stderr
    .venv/bin/python bench/ingest.py --quick               # 10k reports, 1 repeat, fewer rows
    .venv/bin/python bench/ingest.py --only paho-q1,lean-q1-store --repeats 5

Traffic: the fleet simulator (bench/fleet.py) builds N homes' real reports with the firmware
core (masked plan ~645 B JSON, sealed seed ~231 B, 96 frames) and publishes one family (the
plans, or mb1's masks) with its raw engine: pre-encoded QoS 1 frames, ~200k msg/s into
mosquitto, so the publisher is never the limit.  Each subscriber candidate runs in its own
process(es) (``--role``), subscribes, and records when its first and last message arrived and
the CPU it spent in between:

  mosquitto_sub-q1     the C client (baseline: "the broker's pace" for one subscriber)
  paho-q0 / paho-q1    paho-mqtt 2.x, count only
  aiomqtt-q1           aiomqtt 2.5 ``async for message in client.messages``, count only
  gmqtt-q1             gmqtt 0.8 (asyncio, its own MQTT codec), count only; its default
                       "optimistic" PUBACK goes out before the handler runs (*-ackafter: after
                       it, which gmqtt does only for a coroutine handler: a Task per message)
  lean-q1              a ~60-line raw-socket MQTT 3.1.1 subscriber (batched PUBACKs): the
                       floor for Python, to see whether a lean path of our own is needed
  leanlib-q1           the library made from it (backend/common/bulk_mqtt.BulkClient,
                       MQTT 5, asyncio, PUBACKs after the batch handler): the services' path
  *-store              + the validation + numpy store step (backend/common/ingest.PlanSink:
                       the coordinator's checks, json) or, for masks, the real mask broker
                       core (MaskBroker.handle: MAC, seed expansion, row, reply encoding)
  *-store-orjson       the same with orjson.loads (a drop-in for json.loads)
  *-store-reply        + one QoS 1 reply published per report, as the services do today
  share2-*             two processes on ``$share/ingest/<topic>`` (MQTT 5 shared subscription)

Rates are messages received / (last arrival - first arrival) per candidate (summed over the
workers of a shared subscription).  Runs are interleaved (every candidate once per repeat) and
the median, min and max over repeats are reported: the machine is shared.

The CPU part (no broker) times the decode + validate step per message for the current format
(JSON with base64 vectors: protocol.decode + parse_plan_report + np.frombuffer) against orjson
and a fixed-layout binary payload (struct + the same checks; and a numpy batch decoder), and the
mask broker's per-mask crypto (firmware seal.open_sealed vs the stdlib hmac, seed expansion).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import hmac
import importlib.util
import json
import os
import resource
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from backend.common.bulk_mqtt import mqtt_string, varlen  # noqa: E402
from backend.common.fleet_acl import FLEET_USER, FleetMosquitto  # noqa: E402
from backend.common.rows import PlanSink  # noqa: E402
from bench import fleet as fl  # noqa: E402
from hemsfw import masking, protocol, protocol_svc, seal  # noqa: E402

orjson: Any
try:  # optional: measured when installed (pip install orjson)
    import orjson  # type: ignore[import-not-found,unused-ignore]
except ImportError:  # pragma: no cover
    orjson = None

SHARE_GROUP = "ingest"
PASSWORDS = {FLEET_USER: "fleet-pw", "coordinator": "coord-pw", "mb1": "mb1-pw"}
IDLE_S = 3.0  # a subscriber stops this long after its last message
RUN_TIMEOUT_S = 120.0


# ------------------------------------------------------------------ candidate binary format


#: magic, version, kind (1 = plan), round, day, report id (16 raw bytes), magnification,
#: home id length, home id (zero-padded to 32), frames; then 4*frames bytes of LE uint32.
BIN_PLAN = struct.Struct("<2sBBI10s16sBB32sH")
BIN_MAGIC = b"HP"
_ID_OK = np.zeros(256, dtype=bool)
for _c in b"abcdefghijklmnopqrstuvwxyz0123456789-_":
    _ID_OK[_c] = True


def pack_plan_bin(home: str, day: str, rnd: int, report_id: str, mag: int,
                  masked: bytes) -> bytes:
    """What a board would send instead of the JSON report (MicroPython has struct.pack)."""
    h = home.encode()
    return BIN_PLAN.pack(BIN_MAGIC, 1, 1, rnd, day.encode(), bytes.fromhex(report_id), mag,
                         len(h), h, len(masked) // 4) + masked


def parse_plan_bin(payload: bytes, frames: int) -> tuple[str, str, int, str, int, bytes]:
    """The same checks as protocol_svc.parse_plan_report, on the binary layout."""
    if len(payload) != BIN_PLAN.size + 4 * frames:
        raise ValueError("bad_length")
    magic, ver, kind, rnd, day_b, rid, mag, hlen, home_b, n = BIN_PLAN.unpack_from(payload)
    if magic != BIN_MAGIC or ver != 1 or kind != 1:
        raise ValueError("bad_version")
    home = home_b[:hlen].decode("ascii", "replace")
    if not protocol.valid_id(home):
        raise ValueError("bad_home")
    day = day_b.decode("ascii", "replace")
    protocol.day_field({"day": day})
    if not 1 <= rnd <= 1 << 30:
        raise ValueError("bad_round")
    if not 1 <= mag <= protocol.MAX_MAG:
        raise ValueError("bad_mag")
    if n != frames:
        raise ValueError("bad_length")
    return home, day, rnd, rid.hex(), mag, payload[BIN_PLAN.size:]


def bin_batch_dtype(frames: int) -> np.dtype[Any]:
    return np.dtype([("magic", "S2"), ("ver", "u1"), ("kind", "u1"), ("round", "<u4"),
                     ("day", "S10"), ("rid", "V16"), ("mag", "u1"), ("hlen", "u1"),
                     ("home", "u1", (32,)), ("frames", "<u2"), ("masked", "<u4", (frames,))])


def parse_plan_bin_batch(payloads: Sequence[bytes], frames: int, day: str, rnd: int
                         ) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    """A batch of equal-size binary reports at once: (ok mask, masked rows).  Vectorised
    checks: magic, version, day, round, magnification, frames, id charset and length."""
    dt = bin_batch_dtype(frames)
    rec = np.frombuffer(b"".join(payloads), dtype=dt)
    hl = rec["hlen"].astype(np.int64)
    col = np.arange(32)[None, :]
    inside = col < hl[:, None]
    ids_ok = np.all(_ID_OK[rec["home"]] | ~inside, axis=1) & np.all(
        (rec["home"] == 0) | inside, axis=1)
    ok = ((rec["magic"] == BIN_MAGIC) & (rec["ver"] == 1) & (rec["kind"] == 1)
          & (rec["round"] == rnd) & (rec["day"] == day.encode()) & (rec["mag"] >= 1)
          & (rec["mag"] <= protocol.MAX_MAG) & (hl >= 1) & (hl <= 32)
          & (rec["frames"] == frames) & ids_ok)
    return ok, rec["masked"]


# ------------------------------------------------------------------ CPU micro-benchmarks


def _time_per_msg(fn: Callable[[], object], n: int, repeats: int) -> dict[str, float]:
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        ts.append((time.perf_counter() - t) / n * 1e6)
    return {"median_us": round(statistics.median(ts), 2), "min_us": round(min(ts), 2),
            "max_us": round(max(ts), 2)}


def _open_stdlib(k_enc: bytes, k_mac: bytes, ad: bytes, blob: bytes) -> bytes:
    """seal.open_sealed with the stdlib's C HMAC and per-home keys derived once."""
    nonce, ct, tag = blob[:16], blob[16:-32], blob[-32:]
    n = len(ad)
    want = hmac.new(k_mac, bytes((n & 0xFF, n >> 8)) + ad + nonce + ct, hashlib.sha256).digest()
    if not hmac.compare_digest(want, tag):
        raise ValueError("bad_mac")
    out = bytearray()
    for i in range((len(ct) + 31) // 32):
        out += hmac.new(k_enc, nonce + bytes((i & 0xFF, i >> 8)), hashlib.sha256).digest()
    return bytes(a ^ b for a, b in zip(ct, out, strict=False))


def cpu_bench(fleet: fl.Fleet, repeats: int) -> dict[str, dict[str, float]]:
    spec = fleet.spec
    plans = fleet.topics("plan")
    masks = fleet.topics("mask/mb1")
    n = len(plans)
    frames = spec.frames
    payloads = [p for _, p in plans]
    out: dict[str, dict[str, float]] = {}

    def current() -> None:
        for p in payloads:
            obj = protocol.decode(p)
            rep = protocol_svc.parse_plan_report(obj, frames)
            np.frombuffer(rep[5], dtype="<u4")

    out["plan json.loads only"] = _time_per_msg(lambda: [json.loads(p) for p in payloads],
                                                n, repeats)
    out["plan json + parse_plan_report + frombuffer (current)"] = _time_per_msg(
        current, n, repeats)
    if orjson is not None:
        loads = orjson.loads
        out["plan orjson.loads only"] = _time_per_msg(lambda: [loads(p) for p in payloads],
                                                      n, repeats)

        def with_orjson() -> None:
            for p in payloads:
                rep = protocol_svc.parse_plan_report(loads(p), frames)
                np.frombuffer(rep[5], dtype="<u4")

        out["plan orjson + parse_plan_report + frombuffer"] = _time_per_msg(
            with_orjson, n, repeats)

    def sink(loads: Callable[[bytes], object]) -> Callable[[], None]:
        def run() -> None:
            s = PlanSink(spec.day, spec.round, frames, n, loads)
            for t, p in plans:
                s.offer(t, p)
            if s.store.count != n:
                raise RuntimeError("PlanSink rejected real reports")
        return run

    out["plan PlanSink (json): validate + replay + RowStore row"] = _time_per_msg(
        sink(json.loads), n, repeats)
    if orjson is not None:
        out["plan PlanSink (orjson)"] = _time_per_msg(sink(orjson.loads), n, repeats)
    try:
        from backend.coordinator.intake import RoundConfig, RoundState

        rc = RoundConfig(spec.day, spec.round, frames, spec.frame_s, spec.quantum_wh,
                         spec.start, 2**40, spec.brokers)

        def offer() -> None:
            st = RoundState(rc)
            for t, p in plans:
                st.offer(t, p, 0.0)
            st.masked_matrix()

        out["plan coordinator RoundState.offer + masked_matrix (today)"] = _time_per_msg(
            offer, n, repeats)
    except Exception as e:  # the coordinator is being reworked: measure what imports
        print(f"(RoundState not measured: {e})", file=sys.stderr)

    bins = []
    for _, p in plans:
        o = json.loads(p)
        bins.append(pack_plan_bin(o["home"], o["day"], o["round"], o["report_id"], o["mag"],
                                  protocol_svc.unb64(o["masked"], 4 * frames)))

    def binary() -> None:
        for b in bins:
            rep = parse_plan_bin(b, frames)
            np.frombuffer(rep[5], dtype="<u4")

    out["plan binary (struct) + same checks + frombuffer"] = _time_per_msg(binary, n, repeats)

    def batch() -> None:
        ok, _rows = parse_plan_bin_batch(bins, frames, spec.day, spec.round)
        if not bool(ok.all()):
            raise RuntimeError("batch decoder rejected real reports")

    out["plan binary, numpy batch decode (per message)"] = _time_per_msg(batch, n, repeats)
    out["_sizes"] = {"plan_json_bytes": float(len(payloads[0])),
                     "plan_binary_bytes": float(len(bins[0])),
                     "mask_json_bytes": float(len(masks[0][1]))}

    # mask broker: the per-mask crypto
    keys = {fl.home_id(i): fl.home_key(spec.seed, fl.home_id(i), "mb1")
            for i in range(1, spec.homes + 1)}
    parsed = [protocol_svc.parse_mask_report(protocol.decode(p)) for _, p in masks]
    ads = [protocol.mask_ad("mb1", h, d, r, rid) for h, d, r, rid, _ in parsed]

    def parse_masks() -> None:
        for _, p in masks:
            protocol_svc.parse_mask_report(protocol.decode(p))

    def open_fw() -> None:
        for (h, _d, _r, _rid, blob), ad in zip(parsed, ads, strict=True):
            seal.open_sealed(keys[h], ad, blob)

    derived = {h: (seal.hmac_sha256(k, b"hems/v1 enc"), seal.hmac_sha256(k, b"hems/v1 mac"))
               for h, k in keys.items()}

    def open_std() -> None:
        for (h, _d, _r, _rid, blob), ad in zip(parsed, ads, strict=True):
            ke, km = derived[h]
            _open_stdlib(ke, km, ad, blob)

    seeds = [seal.open_sealed(keys[h], ad, blob) for (h, _d, _r, _rid, blob), ad in
             zip(parsed, ads, strict=True)]
    if any(_open_stdlib(*derived[h], ad, blob) != s for (h, _d, _r, _rid, blob), ad, s in
           zip(parsed, ads, seeds, strict=True)):
        raise RuntimeError("stdlib HMAC opening differs from hemsfw.seal")

    out["mask json + parse_mask_report"] = _time_per_msg(parse_masks, n, repeats)
    out["mask seal.open_sealed (firmware, pure-Python HMAC)"] = _time_per_msg(open_fw, n,
                                                                             repeats)
    out["mask open with stdlib hmac, keys derived once"] = _time_per_msg(open_std, n, repeats)
    out["mask masking.expand_seed (96 frames)"] = _time_per_msg(
        lambda: [masking.expand_seed(s, frames) for s in seeds], n, repeats)
    from backend.mask_broker.core import MaskBroker

    def core() -> None:
        mb = MaskBroker("mb1", keys, 3)
        mb.handle(protocol.t_round(), protocol.encode(spec.announcement()))
        for t, p in masks:
            mb.handle(t, p)
        if mb.masks.count != n:
            raise RuntimeError("mask broker rejected real masks")

    out["mask MaskBroker.handle (today: all of the above + reply)"] = _time_per_msg(
        core, n, repeats)
    return out


def rowstore_bench(homes: int, frames: int, repeats: int) -> dict[str, Any]:
    """RowStore at ``homes`` x ``frames``: append, arrange (one gather), group sums as slice
    sums for G groups, and 2 workers' partial sums added (timings in ms, median of repeats)."""
    from backend.common.rows import RowStore, add_partials

    rng = np.random.default_rng(1)
    data = rng.integers(0, 2**32, size=(homes, frames), dtype=np.uint32)
    raws = [data[i].tobytes() for i in range(homes)]
    keys = [fl.home_id(i + 1) for i in range(homes)]

    def ms(fn: Callable[[], object]) -> dict[str, float]:
        ts = []
        for _ in range(repeats):
            t = time.perf_counter()
            fn()
            ts.append((time.perf_counter() - t) * 1e3)
        return {"median_ms": round(statistics.median(ts), 2), "min_ms": round(min(ts), 2),
                "max_ms": round(max(ts), 2)}

    def fill() -> RowStore:
        s = RowStore(homes, frames)
        for k, r in zip(keys, raws, strict=True):
            s.add(k, r)
        return s

    out: dict[str, Any] = {"homes": homes, "frames": frames}
    add = ms(fill)
    out["add_us_per_row"] = round(add["median_ms"] * 1e3 / homes, 3)
    store = fill()
    perm = rng.permutation(homes)
    order = [keys[i] for i in perm]
    out["arrange_by_keys"] = ms(lambda: store.arrange(order))
    buf = np.empty((homes, frames), dtype=np.uint32)
    out["arrange_rows_int_order_reused_buffer"] = ms(lambda: store.arrange_rows(perm, buf))
    arr = store.arrange(order)
    out["column_sum_all_rows"] = ms(lambda: store.view().sum(axis=0, dtype=np.uint32))
    for g in (10, 100, 1000, 10000):
        b = np.linspace(0, homes, g + 1).astype(np.int64)
        def group_sums(b: np.ndarray[Any, Any] = b) -> object:
            return arr.interval_sums(b[:-1], b[1:])

        out[f"group_sums_{g}_groups"] = ms(group_sums)
    halves = [RowStore(homes, frames), RowStore(homes, frames)]
    for i, (k, r) in enumerate(zip(keys, raws, strict=True)):
        halves[i % 2].add(k, r)
    groups = [order[a:b] for a, b in zip(range(0, homes, homes // 100),
                                         range(homes // 100, homes + 1, homes // 100),
                                         strict=False)]
    out["partial_sums_2_workers_100_groups"] = ms(
        lambda: add_partials([h.partial_sums(groups) for h in halves]))
    sums, counts = add_partials([h.partial_sums(groups) for h in halves])
    whole = np.stack([arr.group_sum(g) for g in groups])
    if not (np.array_equal(sums, whole) and int(counts.sum()) == homes):
        raise RuntimeError("partial sums disagree with the whole")
    out["rows_mb"] = round(store.rows.nbytes / 2**20, 1)
    return out


# ------------------------------------------------------------------ subscriber roles


@dataclass
class Tally:
    """What one subscriber process saw (written as JSON to --out)."""

    n: int = 0
    t_first: float = 0.0
    t_last: float = 0.0
    cpu_first: float = 0.0
    cpu_last: float = 0.0
    accepted: int = 0
    rejected: Counter[str] | None = None

    def hit(self) -> None:
        if self.n == 0:
            self.t_first, self.cpu_first = time.time(), time.process_time()
        self.n += 1
        self.t_last = time.time()

    def done(self) -> None:
        self.cpu_last = time.process_time()

    def as_json(self) -> dict[str, Any]:
        return {"received": self.n, "t_first": self.t_first, "t_last": self.t_last,
                "cpu_s": self.cpu_last - self.cpu_first, "accepted": self.accepted,
                "rejected": dict(self.rejected or {}),
                "maxrss_mb": peak_rss_mb()}


def peak_rss_mb() -> float:
    """This process's peak RSS (VmHWM: unlike ru_maxrss it does not carry the parent's peak
    over fork + exec)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


Handler = Callable[[str, bytes], str | None]  # -> reply topic (or None)


def make_handler(a: argparse.Namespace, tally: Tally) -> Handler | None:
    """The store step for --store: PlanSink for plans, the real MaskBroker core for masks."""
    if not a.store:
        return None
    spec = fl.FleetSpec(a.homes, ("mb1",))
    rej: Counter[str] = Counter()
    tally.rejected = rej
    if a.family == "plan":
        loads: Callable[[bytes], object] = json.loads
        if a.orjson:
            if orjson is None:
                raise SystemExit("orjson is not installed")
            loads = orjson.loads
        sink = PlanSink(spec.day, spec.round, spec.frames, a.homes, loads)

        def plan(topic: str, payload: bytes) -> str | None:
            home, reason = sink.offer(topic, payload)
            if reason:
                rej[reason] += 1
            else:
                tally.accepted += 1
            return None if home is None else protocol.t_reply("coordinator", home)

        return plan
    from backend.mask_broker.core import MaskBroker, Publish

    keys = {h: fl.home_key(spec.seed, h, "mb1") for h in spec.ids()}
    mb = MaskBroker("mb1", keys, 3)
    mb.handle(protocol.t_round(), protocol.encode(spec.announcement()))

    def mask(topic: str, payload: bytes) -> str | None:
        out = mb.handle(topic, payload)
        if mb.masks.count > tally.accepted:
            tally.accepted = mb.masks.count
        else:
            rej["rejected"] += 1
        for o in out:
            if isinstance(o, Publish):
                return o.topic
        return None

    return mask


REPLY = protocol.encode(protocol_svc.make_reply(fl.DAY, 1, "0" * 32, True, ""))


def _topic(a: argparse.Namespace) -> str:
    t = protocol.t_plan("+") if a.family == "plan" else protocol.t_mask("mb1", "+")
    return f"$share/{SHARE_GROUP}/{t}" if a.share else t


def _user(a: argparse.Namespace) -> tuple[str, str]:
    u = "coordinator" if a.family == "plan" else "mb1"
    return u, os.environ.get("BENCH_PW", "")


def _ready(a: argparse.Namespace) -> None:
    Path(a.ready).write_text("ready")


def _finish(a: argparse.Namespace, tally: Tally) -> None:
    Path(a.out).write_text(json.dumps(tally.as_json()))


def role_paho(a: argparse.Namespace) -> None:
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    tally = Tally()
    handler = make_handler(a, tally)
    v5 = bool(a.share)
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-{os.getpid()}",
                    protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311)
    c.username_pw_set(*_user(a))
    c.max_inflight_messages_set(1000)
    c.max_queued_messages_set(0)
    subscribed: list[bool] = []

    def on_message(cl: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        tally.hit()
        if handler is not None:
            rt = handler(msg.topic, bytes(msg.payload))
            if a.reply and rt is not None:
                cl.publish(rt, REPLY, qos=1)
        if tally.n >= a.n:
            tally.done()

    c.on_message = on_message
    c.on_subscribe = lambda *args: subscribed.append(True)
    c.connect("127.0.0.1", a.port, keepalive=60)
    c.subscribe(_topic(a), qos=a.qos)
    end = time.monotonic() + RUN_TIMEOUT_S
    while not subscribed and time.monotonic() < end:
        c.loop(0.05)
    _ready(a)
    while tally.n < a.n and time.monotonic() < end:
        c.loop(0.05)
        if tally.n and time.time() - tally.t_last > IDLE_S:
            break
    if tally.cpu_last == 0.0:
        tally.done()
    c.disconnect()
    _finish(a, tally)


async def _aiomqtt(a: argparse.Namespace) -> None:
    import aiomqtt

    tally = Tally()
    handler = make_handler(a, tally)
    proto = aiomqtt.ProtocolVersion.V5 if a.share else aiomqtt.ProtocolVersion.V311
    user, pw = _user(a)
    tasks: set[asyncio.Task[None]] = set()
    sem = asyncio.Semaphore(1000)
    async with aiomqtt.Client("127.0.0.1", a.port, username=user, password=pw,
                              identifier=f"bench-{os.getpid()}", protocol=proto,
                              max_inflight_messages=1000) as c:
        c.pending_calls_threshold = 1_000_000
        await c.subscribe(_topic(a), qos=a.qos)
        _ready(a)

        async def reply(t: str) -> None:
            try:
                await c.publish(t, REPLY, qos=1)
            finally:
                sem.release()

        async def consume() -> None:
            async for msg in c.messages:
                tally.hit()
                if handler is not None:
                    p = msg.payload
                    rt = handler(msg.topic.value, p if isinstance(p, bytes) else b"")
                    if a.reply and rt is not None:
                        await sem.acquire()
                        task = asyncio.create_task(reply(rt))
                        tasks.add(task)
                        task.add_done_callback(tasks.discard)
                if tally.n >= a.n:
                    tally.done()
                    return

        consumer = asyncio.create_task(consume())
        end = time.monotonic() + RUN_TIMEOUT_S
        while not consumer.done() and time.monotonic() < end:
            await asyncio.sleep(0.1)
            if tally.n and time.time() - tally.t_last > IDLE_S:
                break
        consumer.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=10)
    if tally.cpu_last == 0.0:
        tally.done()
    _finish(a, tally)


def role_aiomqtt(a: argparse.Namespace) -> None:
    asyncio.run(_aiomqtt(a))


async def _gmqtt(a: argparse.Namespace) -> None:
    import gmqtt  # type: ignore[import-untyped,import-not-found,unused-ignore]

    tally = Tally()
    handler = make_handler(a, tally)
    done = asyncio.Event()
    # Default (optimistic) gmqtt sends the PUBACK *before* the handler runs.  With
    # optimistic_acknowledgement=False it sends it after the handler, but only for a coroutine
    # handler (one Task per message); a plain function then gets no PUBACK at all (gmqtt 0.8).
    c = gmqtt.Client(f"bench-{os.getpid()}", optimistic_acknowledgement=not a.ack_after)
    c.set_auth_credentials(*_user(a))

    def on_message(_c: Any, topic: str, payload: bytes, _qos: int, _p: Any) -> int:
        tally.hit()
        if handler is not None:
            handler(topic, payload)
        if tally.n >= a.n:
            tally.done()
            done.set()
        return 0

    async def on_message_async(_c: Any, topic: str, payload: bytes, qos: int, p: Any) -> int:
        return on_message(_c, topic, payload, qos, p)

    c.on_message = on_message_async if a.ack_after else on_message
    await c.connect("127.0.0.1", a.port, version=5 if a.share else 4)
    c.subscribe(_topic(a), qos=a.qos)
    await asyncio.sleep(0.3)
    _ready(a)
    end = time.monotonic() + RUN_TIMEOUT_S
    while not done.is_set() and time.monotonic() < end:
        await asyncio.sleep(0.1)
        if tally.n and time.time() - tally.t_last > IDLE_S:
            break
    if tally.cpu_last == 0.0:
        tally.done()
    await c.disconnect()
    _finish(a, tally)


def role_gmqtt(a: argparse.Namespace) -> None:
    asyncio.run(_gmqtt(a))


def role_lean(a: argparse.Namespace) -> None:
    """A raw-socket MQTT 3.1.1 subscriber: parse every frame of each recv() in one pass and
    acknowledge the whole batch with one send().  Measurement only (not a service path)."""
    tally = Tally()
    handler = make_handler(a, tally)
    user, pw = _user(a)
    s = socket.create_connection(("127.0.0.1", a.port), timeout=10)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    s.sendall(fl.connect_packet(f"bench-{os.getpid()}", user, pw))
    if s.recv(4) != b"\x20\x02\x00\x00":
        raise SystemExit("lean: connection refused")
    body = struct.pack("!H", 1) + mqtt_string(_topic(a).encode()) + bytes((a.qos,))
    s.sendall(b"\x82" + varlen(len(body)) + body)
    suback = s.recv(5)
    if len(suback) != 5 or suback[4] >= 0x80:
        raise SystemExit(f"lean: subscription refused {suback.hex()}")
    _ready(a)
    s.settimeout(0.2)
    buf = b""
    end = time.monotonic() + RUN_TIMEOUT_S
    while tally.n < a.n and time.monotonic() < end:
        try:
            data = s.recv(1 << 18)
        except TimeoutError:
            if tally.n and time.time() - tally.t_last > IDLE_S:
                break
            continue
        if not data:
            break
        buf = buf + data if buf else data
        pos, size = 0, len(buf)
        acks = []
        while size - pos >= 2:
            b0 = buf[pos]
            i = pos + 1
            mult, rl = 1, 0
            while i < size:
                d = buf[i]
                rl += (d & 0x7F) * mult
                i += 1
                if d < 0x80:
                    break
                mult *= 128
            else:
                break
            if i + rl > size:
                break
            if b0 >> 4 == 3:
                qos = (b0 >> 1) & 3
                tl = (buf[i] << 8) | buf[i + 1]
                topic = buf[i + 2:i + 2 + tl].decode()
                j = i + 2 + tl
                if qos:
                    acks.append(buf[j:j + 2])
                    j += 2
                tally.hit()
                if handler is not None:
                    handler(topic, buf[j:i + rl])
            pos = i + rl
        buf = buf[pos:]
        if acks:
            s.sendall(b"".join(b"\x40\x02" + m for m in acks))
    tally.done()
    s.close()
    _finish(a, tally)


async def _leanlib(a: argparse.Namespace) -> None:
    from backend.common.bulk_mqtt import BulkClient, Message

    tally = Tally()
    handler = make_handler(a, tally)
    done = asyncio.Event()

    def on_batch(batch: list[Message]) -> None:
        for t, p in batch:
            tally.hit()
            if handler is not None:
                rt = handler(t, p)
                if a.reply and rt is not None:
                    ing.publish(rt, REPLY)
        if tally.n >= a.n:
            tally.done()
            done.set()

    user, pw = _user(a)
    ing = BulkClient("127.0.0.1", a.port, f"bench-{os.getpid()}", user, pw,
                     [(_topic(a), a.qos)], on_batch, clean_start=True, session_expiry=0)
    task = asyncio.create_task(ing.run())
    await ing.wait_connected(30)
    _ready(a)
    end = time.monotonic() + RUN_TIMEOUT_S
    while not done.is_set() and time.monotonic() < end:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(done.wait(), 0.2)
        if tally.n and time.time() - tally.t_last > IDLE_S:
            break
    if tally.cpu_last == 0.0:
        tally.done()
    with contextlib.suppress(TimeoutError):
        await ing.flush(30)
    ing.stop()
    await task
    _finish(a, tally)


def role_leanlib(a: argparse.Namespace) -> None:
    """backend/common/bulk_mqtt.BulkClient (MQTT 5, PUBACKs after each batch's handler):
    the library the services use, against the prototype above."""
    asyncio.run(_leanlib(a))


ROLES = {"paho": role_paho, "aiomqtt": role_aiomqtt, "gmqtt": role_gmqtt, "lean": role_lean,
         "leanlib": role_leanlib}


# ------------------------------------------------------------------ publishing adjustments


def adjustments(n: int, group_size: int = 1000) -> list[tuple[str, bytes]]:
    """N adjustment messages, one payload per group of ``group_size`` (as the coordinator
    encodes one adjustment per group and sends it to every member)."""
    out = []
    for g in range(0, n, group_size):
        adj = protocol_svc.make_adjustment(fl.DAY, 1, f"r1g{g // group_size}",
                                       [(72, 73), (73, 75)], [80], fl.START + 86400)
        payload = protocol.encode(adj)
        out += [(protocol.t_adjust(fl.home_id(i + 1)), payload)
                for i in range(g, min(n, g + group_size))]
    return out


def _pub_paho(msgs: list[tuple[str, bytes]], port: int) -> None:
    fl.publish_paho(msgs, "127.0.0.1", port, "coordinator", PASSWORDS["coordinator"],
                    window=1000, client_id="coordinator")


def _pub_raw(msgs: list[tuple[str, bytes]], port: int) -> None:
    fl.publish_raw(msgs, "127.0.0.1", port, "coordinator", PASSWORDS["coordinator"],
                   window=1000, client_id="coordinator")


def _pub_aiomqtt(msgs: list[tuple[str, bytes]], port: int) -> None:
    import aiomqtt

    async def run() -> None:
        async with aiomqtt.Client("127.0.0.1", port, username="coordinator",
                                  password=PASSWORDS["coordinator"], identifier="coordinator",
                                  max_inflight_messages=1000) as c:
            c.pending_calls_threshold = 1_000_000
            sem = asyncio.Semaphore(1000)  # as the coordinator service: INFLIGHT concurrent

            async def one(t: str, p: bytes) -> None:
                async with sem:
                    await c.publish(t, p, qos=1, timeout=60)

            await asyncio.gather(*(one(t, p) for t, p in msgs))

    asyncio.run(run())


def _pub_gmqtt(msgs: list[tuple[str, bytes]], port: int) -> None:
    import gmqtt  # type: ignore[import-untyped,import-not-found,unused-ignore]

    async def run() -> None:
        # gmqtt has no PUBACK callback: its persistent storage holds every QoS 1 message
        # until its PUBACK arrives, so "all acknowledged" = that storage is empty.
        c = gmqtt.Client("coordinator")
        c.set_auth_credentials("coordinator", PASSWORDS["coordinator"])
        await c.connect("127.0.0.1", port, version=4)
        for i, (t, p) in enumerate(msgs):
            c.publish(t, p, qos=1)
            if i % 1000 == 999:
                await asyncio.sleep(0)  # let the loop write and read acks
        await asyncio.wait_for(c._persistent_storage.wait_empty(), 120)
        await c.disconnect()

    asyncio.run(run())


PUBLISHERS: dict[str, Callable[[list[tuple[str, bytes]], int], None]] = {
    "paho": _pub_paho, "aiomqtt": _pub_aiomqtt, "gmqtt": _pub_gmqtt, "raw (pre-encoded)": _pub_raw}


def publish_bench(n: int, repeats: int) -> dict[str, Any]:
    """The coordinator's last step: N adjustments, QoS 1, every PUBACK awaited, while a fleet
    listener (QoS 0) receives them all.  msgs/s and CPU per message of the publisher."""
    msgs = adjustments(n)
    out: dict[str, Any] = {"messages": n}
    res: dict[str, list[tuple[float, float]]] = {k: [] for k in PUBLISHERS}
    with tempfile.TemporaryDirectory(prefix="hems-pub-") as tmp, \
            FleetMosquitto(Path(tmp) / "mq", dict(PASSWORDS), ["mb1"]) as mq:
        for _ in range(repeats):
            for name, fn in PUBLISHERS.items():
                if name == "gmqtt" and importlib.util.find_spec("gmqtt") is None:
                    continue
                with fl.Listener("127.0.0.1", mq.port, FLEET_USER, PASSWORDS[FLEET_USER],
                                 [protocol.t_adjust("+")], qos=0,
                                 client_id=f"ears-{time.monotonic_ns()}") as ears:
                    t, c = time.perf_counter(), time.process_time()
                    fn(msgs, mq.port)
                    dt, cpu = time.perf_counter() - t, time.process_time() - c
                    ears.wait(n, 30)
                    if ears.count < n:
                        raise RuntimeError(f"{name}: {ears.count}/{n} adjustments delivered")
                res[name].append((n / dt, 1e6 * cpu / n))
    for name, rs in res.items():
        if rs:
            out[name] = {"msgs_per_s": round(statistics.median(r for r, _ in rs)),
                         "msgs_per_s_min": round(min(r for r, _ in rs)),
                         "msgs_per_s_max": round(max(r for r, _ in rs)),
                         "cpu_us_per_msg": round(statistics.median(c for _, c in rs), 1)}
    return out


# ------------------------------------------------------------------ candidates and runs


@dataclass(frozen=True)
class Candidate:
    name: str
    role: str  # a ROLES key, or "mosquitto_sub"
    qos: int = 1
    store: bool = False
    orjson: bool = False
    reply: bool = False
    ack_after: bool = False
    workers: int = 1
    family: str = "plan"


def candidates(quick: bool) -> list[Candidate]:
    c = [
        Candidate("mosquitto_sub-q1", "mosquitto_sub"),
        Candidate("paho-q0", "paho", qos=0),
        Candidate("paho-q1", "paho"),
        Candidate("aiomqtt-q1", "aiomqtt"),
        Candidate("gmqtt-q1", "gmqtt"),
        Candidate("lean-q1", "lean"),
        Candidate("paho-q1-store", "paho", store=True),
        Candidate("paho-q1-store-orjson", "paho", store=True, orjson=True),
        Candidate("paho-q1-store-reply", "paho", store=True, reply=True),
        Candidate("aiomqtt-q1-store", "aiomqtt", store=True),
        Candidate("aiomqtt-q1-store-reply", "aiomqtt", store=True, reply=True),
        Candidate("gmqtt-q1-store", "gmqtt", store=True),
        Candidate("gmqtt-q1-store-orjson", "gmqtt", store=True, orjson=True),
        Candidate("gmqtt-q1-store-ackafter", "gmqtt", store=True, ack_after=True),
        Candidate("lean-q1-store-orjson", "lean", store=True, orjson=True),
        Candidate("leanlib-q1", "leanlib"),
        Candidate("leanlib-q1-store-orjson", "leanlib", store=True, orjson=True),
        Candidate("leanlib-q1-store-orjson-reply", "leanlib", store=True, orjson=True,
                  reply=True),
        Candidate("share2-leanlib-q1-store-orjson", "leanlib", store=True, orjson=True,
                  workers=2),
        Candidate("share2-paho-q1-store", "paho", store=True, workers=2),
        Candidate("share2-aiomqtt-q1-store", "aiomqtt", store=True, workers=2),
        Candidate("share2-gmqtt-q1-store-orjson", "gmqtt", store=True, orjson=True, workers=2),
        Candidate("share2-lean-q1-store-orjson", "lean", store=True, orjson=True, workers=2),
        Candidate("mask:mosquitto_sub-q1", "mosquitto_sub", family="mask"),
        Candidate("mask:aiomqtt-q1-store", "aiomqtt", store=True, family="mask"),
        Candidate("mask:paho-q1-store", "paho", store=True, family="mask"),
        Candidate("mask:gmqtt-q1-store", "gmqtt", store=True, family="mask"),
        Candidate("mask:share2-paho-q1-store", "paho", store=True, workers=2, family="mask"),
        Candidate("mask:share2-gmqtt-q1-store", "gmqtt", store=True, workers=2, family="mask"),
    ]
    if orjson is None:
        c = [x for x in c if not x.orjson]
    if importlib.util.find_spec("gmqtt") is None:
        c = [x for x in c if x.role != "gmqtt"]
    if quick:
        keep = {"mosquitto_sub-q1", "paho-q1", "aiomqtt-q1", "paho-q1-store",
                "aiomqtt-q1-store", "share2-paho-q1-store", "mask:paho-q1-store"}
        c = [x for x in c if x.name in keep]
    return c


def _wait_files(paths: Sequence[Path], timeout: float) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if all(p.exists() for p in paths):
            return True
        time.sleep(0.02)
    return False


def proc_cpu_s(pid: int) -> float:
    """utime + stime of a process (from /proc), seconds; 0.0 if unreadable."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def run_candidate(c: Candidate, fleet: fl.Fleet, port: int, work: Path,
                  broker_pid: int = 0) -> dict[str, Any]:
    broker_cpu0 = proc_cpu_s(broker_pid) if broker_pid else 0.0
    family = "plan" if c.family == "plan" else "mask/mb1"
    msgs = fleet.topics(family)
    n = len(msgs)
    user = "coordinator" if c.family == "plan" else "mb1"
    env = dict(os.environ, BENCH_PW=PASSWORDS[user])
    tag = f"{c.name.replace(':', '_')}-{time.monotonic_ns()}"
    outs: list[Path] = []
    procs: list[subprocess.Popen[bytes]] = []
    if c.role == "mosquitto_sub":
        topic = protocol.t_plan("+") if c.family == "plan" else protocol.t_mask("mb1", "+")
        ts = work / f"{tag}.ts"
        p = subprocess.Popen(["mosquitto_sub", "-h", "127.0.0.1", "-p", str(port), "-u", user,
                              "-P", PASSWORDS[user], "-t", topic, "-q", str(c.qos), "-C",
                              str(n), "-W", str(int(RUN_TIMEOUT_S)), "-F", "%U"],
                             stdout=ts.open("wb"), stderr=subprocess.DEVNULL)
        time.sleep(0.5)
        stats = fl.publish_raw(msgs, "127.0.0.1", port, FLEET_USER, PASSWORDS[FLEET_USER])
        _pid, _status, ru = os.wait4(p.pid, 0)
        p.returncode = 0
        stamps = [float(x) for x in ts.read_text().split()]
        tallies: list[dict[str, Any]] = [{
                    "received": len(stamps), "t_first": stamps[0] if stamps else 0.0,
                    "t_last": stamps[-1] if stamps else 0.0,
                    "cpu_s": ru.ru_utime + ru.ru_stime, "accepted": 0, "rejected": {},
                    "maxrss_mb": 0.0}]  # not measurable after exit (ru_maxrss: the parent's)
    else:
        readies = []
        for w in range(c.workers):
            ready, out = work / f"{tag}-{w}.ready", work / f"{tag}-{w}.json"
            readies.append(ready)
            outs.append(out)
            args = [sys.executable, __file__, "--role", c.role, "--port", str(port),
                    "--family", c.family, "--n", str(n), "--homes", str(fleet.spec.homes),
                    "--qos", str(c.qos), "--ready", str(ready), "--out", str(out)]
            args += ["--store"] * c.store + ["--orjson"] * c.orjson + ["--reply"] * c.reply
            args += ["--share"] * (c.workers > 1) + ["--ack-after"] * c.ack_after
            procs.append(subprocess.Popen(args, env=env))
        if not _wait_files(readies, 30):
            for p in procs:
                p.kill()
                p.wait()
            raise RuntimeError(f"{c.name}: subscriber(s) not ready")
        stats = fl.publish_raw(msgs, "127.0.0.1", port, FLEET_USER, PASSWORDS[FLEET_USER])
        for p in procs:
            try:
                p.wait(RUN_TIMEOUT_S + 30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        tallies = [json.loads(o.read_text()) for o in outs if o.exists()]
    broker_cpu = proc_cpu_s(broker_pid) - broker_cpu0 if broker_pid else 0.0
    received = sum(t["received"] for t in tallies)
    got = [t for t in tallies if t["received"]]
    span = max(t["t_last"] for t in got) - min(t["t_first"] for t in got) if got else 0.0
    cpu = sum(t["cpu_s"] for t in tallies)
    rejected: Counter[str] = Counter()
    for t in tallies:
        rejected.update(t["rejected"])
    return {
        "candidate": c.name, "messages": n, "received": received,
        "msgs_per_s": received / span if span > 0 else 0.0,
        "cpu_us_per_msg": 1e6 * cpu / max(1, received),
        "accepted": sum(t["accepted"] for t in tallies), "rejected": dict(rejected),
        "per_worker": [t["received"] for t in tallies],
        "maxrss_mb": max((t["maxrss_mb"] for t in tallies), default=0.0),
        "publisher_msgs_per_s": stats.msgs_per_s,
        # mosquitto's CPU for this candidate's run (in from the fleet + out to the subscriber)
        "broker_cpu_us_per_msg": 1e6 * broker_cpu / max(1, n),
    }


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    rates = [r["msgs_per_s"] for r in runs]
    cpus = [r["cpu_us_per_msg"] for r in runs]
    last = runs[-1]
    return {
        "msgs_per_s": round(statistics.median(rates)),
        "msgs_per_s_min": round(min(rates)),
        "msgs_per_s_max": round(max(rates)),
        "cpu_us_per_msg": round(statistics.median(cpus), 1),
        "received_min": min(r["received"] for r in runs),
        "messages": last["messages"],
        "accepted": last["accepted"],
        "rejected": last["rejected"],
        "per_worker": last["per_worker"],
        "maxrss_mb": round(max(r["maxrss_mb"] for r in runs), 1),
        "publisher_msgs_per_s": round(statistics.median(r["publisher_msgs_per_s"]
                                                        for r in runs)),
        "broker_cpu_us_per_msg": round(statistics.median(r["broker_cpu_us_per_msg"]
                                                         for r in runs), 1),
        "runs": len(runs),
    }


def environment() -> dict[str, Any]:
    ver = subprocess.run(["mosquitto", "-h"], capture_output=True, text=True).stdout
    vers = {"mosquitto": ver.splitlines()[0] if ver else "?", "python": sys.version.split()[0],
            "cores": os.cpu_count(), "loadavg_start": os.getloadavg()}
    for mod in ("paho.mqtt", "aiomqtt", "gmqtt", "orjson", "numpy"):
        try:
            m = __import__(mod, fromlist=["__version__"])
            vers[mod] = getattr(m, "__version__", "?")
        except ImportError:
            vers[mod] = None
    return vers


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench/ingest.py", description=__doc__.split("\n")[0])
    p.add_argument("--homes", type=int, default=50_000)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--only", help="comma-separated candidate names")
    p.add_argument("--no-cpu", action="store_true", help="skip the CPU micro-benchmarks")
    p.add_argument("--no-mqtt", action="store_true", help="only the CPU micro-benchmarks")
    p.add_argument("--publish", type=int, default=0, metavar="N",
                   help="also time publishing N adjustments (QoS 1) per client")
    p.add_argument("--rowstore", type=int, default=0, metavar="HOMES",
                   help="also time RowStore (append, arrange, group sums) at HOMES x 96")
    p.add_argument("--cache", type=Path, help="fleet payload cache (bench/fleet.py)")
    p.add_argument("--broker-inflight", type=int, default=0,
                   help="mosquitto max_inflight_messages (0: the shipped template's, i.e. "
                   "mosquitto's default 20 QoS 1 messages in flight to each client)")
    p.add_argument("--json", action="store_true")
    # --role: one subscriber process (internal)
    p.add_argument("--role", choices=sorted(ROLES))
    p.add_argument("--port", type=int)
    p.add_argument("--family", choices=("plan", "mask"), default="plan")
    p.add_argument("--n", type=int, default=0)
    p.add_argument("--qos", type=int, default=1)
    p.add_argument("--store", action="store_true")
    p.add_argument("--orjson", action="store_true")
    p.add_argument("--reply", action="store_true")
    p.add_argument("--share", action="store_true")
    p.add_argument("--ack-after", action="store_true")
    p.add_argument("--ready")
    p.add_argument("--out")
    a = p.parse_args(argv)
    if a.role:
        ROLES[a.role](a)
        return 0
    if a.quick:
        a.homes, a.repeats = min(a.homes, 10_000), 1
    log = sys.stderr if a.json else sys.stdout
    spec = fl.FleetSpec(a.homes, ("mb1",))
    fleet = fl.load_or_build(spec, a.cache)
    print(f"fleet: {a.homes} homes, {len(fleet.messages)} messages (built in "
          f"{fleet.build_s:.1f} s)", file=log)
    result: dict[str, Any] = {"homes": a.homes, "repeats": a.repeats,
                              "environment": environment()}
    if not a.no_cpu:
        result["cpu"] = cpu_bench(fleet, max(3, a.repeats))
        print("\nDecode + validate, per message (CPU, no broker), median [min-max] us:",
              file=log)
        for k, v in result["cpu"].items():
            if not k.startswith("_"):
                print(f"  {k:64} {v['median_us']:8.2f}  [{v['min_us']:.2f}-{v['max_us']:.2f}]",
                      file=log)
        print(f"  sizes: {result['cpu']['_sizes']}", file=log)
    if a.publish:
        pb = result["publish"] = publish_bench(a.publish, max(1, a.repeats))
        print(f"\nPublishing {a.publish} adjustments QoS 1 (all PUBACKs), median [min-max]:",
              file=log)
        for k, v in pb.items():
            if isinstance(v, dict):
                print(f"  {k:20} {v['msgs_per_s']:8d} msg/s [{v['msgs_per_s_min']}-"
                      f"{v['msgs_per_s_max']}]  {v['cpu_us_per_msg']:6.1f} us CPU/msg", file=log)
    if a.rowstore:
        rs = result["rowstore"] = rowstore_bench(a.rowstore, 96, max(5, a.repeats))
        print(f"\nRowStore {rs['homes']} x {rs['frames']} ({rs['rows_mb']} MB): append "
              f"{rs['add_us_per_row']} us/row; median [min-max] ms:", file=log)
        for k, v in rs.items():
            if isinstance(v, dict):
                print(f"  {k:40} {v['median_ms']:8.2f}  [{v['min_ms']:.2f}-{v['max_ms']:.2f}]",
                      file=log)
    if not a.no_mqtt:
        cands = candidates(a.quick)
        if a.only:
            names = set(a.only.split(","))
            cands = [c for c in cands if c.name in names]
        runs: dict[str, list[dict[str, Any]]] = {c.name: [] for c in cands}
        with tempfile.TemporaryDirectory(prefix="hems-ingest-") as tmp:
            work = Path(tmp)
            extra = (f"max_inflight_messages {a.broker_inflight}" if a.broker_inflight
                     else "")
            result["broker_extra_conf"] = extra
            with FleetMosquitto(work / "mq", dict(PASSWORDS), ["mb1"], extra_conf=extra) as mq:
                for rep in range(a.repeats):
                    for c in cands:
                        assert mq.proc is not None
                        r = run_candidate(c, fleet, mq.port, work, mq.proc.pid)
                        runs[c.name].append(r)
                        print(f"  [{rep + 1}/{a.repeats}] {c.name:28} {r['msgs_per_s']:9.0f} "
                              f"msg/s  {r['cpu_us_per_msg']:6.1f} us CPU/msg  "
                              f"received {r['received']}/{r['messages']}", file=log)
        result["mqtt"] = {k: summarize(v) for k, v in runs.items() if v}
        base = {"plan": result["mqtt"].get("mosquitto_sub-q1"),
                "mask": result["mqtt"].get("mask:mosquitto_sub-q1")}
        print(f"\nIngest of {a.homes} real reports, QoS as named, median of {a.repeats} "
              "(min-max):", file=log)
        print(f"  {'candidate':30} {'msg/s':>8} {'min-max':>15} {'us CPU/msg':>10} "
              f"{'vs mosquitto_sub':>16} {'received':>9} {'RSS MB':>7} {'broker us':>9}",
              file=log)
        for name, s in result["mqtt"].items():
            b = base["mask" if name.startswith("mask:") else "plan"]
            ratio = s["msgs_per_s"] / b["msgs_per_s"] if b and b["msgs_per_s"] else None
            s["ratio_to_mosquitto_sub"] = None if ratio is None else round(ratio, 3)
            rtxt = "-" if ratio is None else f"{ratio:.2f}"
            print(f"  {name:30} {s['msgs_per_s']:8d} {s['msgs_per_s_min']:7d}-"
                  f"{s['msgs_per_s_max']:<7d} {s['cpu_us_per_msg']:10.1f} {rtxt:>16} "
                  f"{s['received_min']:9d} {s['maxrss_mb']:7.1f} "
                  f"{s['broker_cpu_us_per_msg']:9.1f}", file=log)
    result["environment"]["loadavg_end"] = os.getloadavg()
    if a.json:
        print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
