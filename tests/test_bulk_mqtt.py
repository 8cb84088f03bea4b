"""backend/common/bulk_mqtt.BulkClient: our own MQTT ingest client, tested like a library.

Against a real mosquitto (the project's broker config, a free loopback port, passwd + ACL):
delivery in order at QoS 0 and 1 over MQTT 5 and 3.1.1, every QoS 1 message acknowledged (a
reconnect with the same session gets nothing again), acknowledgement only after the handler
(a dropped batch is redelivered with DUP), a raising handler is counted and does not cause
redelivery, stop() mid-stream (even with run() cancelled) loses no PUBACK, persistent and
clean sessions, refused credentials, an ACL-denied subscription, a broker restart, large
messages and the MQTT 5 maximum packet size, keepalive over idle periods, publishing with
PUBACK counting and flush(), re-sends after a broker restart, $share splitting, TLS.

Against a scripted fake broker (asyncio server on loopback): malformed frames of every kind
are counted, logged and followed by a reconnect, never an exception out of run(); a silent
server is detected by the keepalive; SUBACK refusals raise BulkMqttError, a "server busy"
CONNACK is retried; unacknowledged publishes are re-sent with DUP and their packet ids after a
reconnect; the publish window follows the broker's Receive Maximum; refused PUBACKs count.

And the frame parser directly (hypothesis): any split of a valid byte stream into reads gives
the same messages and the same PUBACKs; arbitrary bytes never raise out of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import ssl
import struct
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from backend.common.bulk_mqtt import BulkClient, BulkMqttError, Message, _Conn
from backend.common.fleet_acl import FLEET_USER, FleetMosquitto
from backend.common.tls import make_pki
from bench import fleet as fl

pytestmark = pytest.mark.integration

PW = {FLEET_USER: "fleet-pw", "coordinator": "coord-pw", "mb1": "mb1-pw"}
PLAN = "hems/v1/plan/+"
T = 20.0  # the bound on every wait in this file


def plans(n: int, tag: str = "") -> list[Message]:
    return [(f"hems/v1/plan/h{i:06d}", f"{tag}report {i}".encode() * 3) for i in range(n)]


def publish(port: int, msgs: list[Message]) -> None:
    """The fleet's raw QoS 1 publisher (pre-encoded frames, every PUBACK checked)."""
    fl.publish_raw(msgs, "127.0.0.1", port, FLEET_USER, PW[FLEET_USER], timeout=T)


async def apublish(port: int, msgs: list[Message]) -> None:
    await asyncio.to_thread(publish, port, msgs)


def arun(coro: Awaitable[Any], timeout: float = 30.0) -> Any:
    async def bounded() -> Any:
        return await asyncio.wait_for(coro, timeout)
    return asyncio.run(bounded())


async def until(cond: Callable[[], bool], timeout: float = T, what: str = "") -> None:
    end = asyncio.get_running_loop().time() + timeout
    while not cond():
        if asyncio.get_running_loop().time() > end:
            raise TimeoutError(f"timed out waiting for {what or cond}")
        await asyncio.sleep(0.005)


class Sink:
    """on_batch that records every message and batch."""

    def __init__(self) -> None:
        self.msgs: list[Message] = []
        self.batches = 0

    def __call__(self, batch: list[Message]) -> None:
        self.msgs.extend(batch)
        self.batches += 1


@contextlib.asynccontextmanager
async def running(ing: BulkClient, connected: bool = True) -> AsyncIterator[asyncio.Task[None]]:
    """run() as a task; stop() and a clean return (no exception) on the way out."""
    task = asyncio.create_task(ing.run())
    try:
        if connected:
            await ing.wait_connected(T)
        yield task
    finally:
        ing.stop()
        await asyncio.wait_for(task, T)


def lean(port: int, sink: Callable[[list[Message]], None], cid: str, **kw: Any) -> BulkClient:
    kw.setdefault("reconnect_min_s", 0.05)
    kw.setdefault("reconnect_max_s", 0.2)
    subs = kw.pop("subs", [(PLAN, 1)])
    user = kw.pop("user", "coordinator")
    return BulkClient("127.0.0.1", port, cid, user, kw.pop("password", PW[user]), subs, sink,
                      **kw)


async def forget(port: int, *cids: str) -> None:
    """End persistent sessions (MQTT 5 clean start, expiry 0): the module's broker is shared
    and an offline session would keep queueing every later test's messages."""
    for cid in cids:
        ing = lean(port, Sink(), cid, subs=[], clean_start=True, session_expiry=0)
        async with running(ing):
            pass


@pytest.fixture(scope="module")
def mq(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FleetMosquitto]:
    d = tmp_path_factory.mktemp("lean")
    with FleetMosquitto(d / "mq", dict(PW), ["mb1"], tls=make_pki(d / "pki")) as m:
        yield m


@pytest.fixture
def own_mq(tmp_path: Path) -> Iterator[FleetMosquitto]:
    """A broker of the test's own (it gets restarted)."""
    m = FleetMosquitto(tmp_path / "mq", dict(PW), ["mb1"])
    m.start()
    try:
        yield m
    finally:
        m.stop()


# ------------------------------------------------------------------ real mosquitto


@pytest.mark.parametrize("protocol", [5, 4])
@pytest.mark.parametrize("qos", [1, 0])
def test_delivers_everything_in_order_and_acks_every_qos1(mq: FleetMosquitto, protocol: int,
                                                          qos: int) -> None:
    """20k messages (4k for the QoS 0 cases), in publish order; every QoS 1 message
    acknowledged: a reconnect with the same persistent session gets nothing redelivered."""
    n = 20_000 if qos else 4_000
    msgs = plans(n, f"{protocol}{qos}")
    cid = f"order-{protocol}-{qos}"

    async def go() -> None:
        sink = Sink()
        ing = lean(mq.port, sink, cid, protocol=protocol, subs=[(PLAN, qos)])
        async with running(ing):
            await apublish(mq.port, msgs)
            await until(lambda: len(sink.msgs) >= n, what="all messages")
        assert sink.msgs == msgs
        assert ing.stats["received"] == n and ing.stats["acked"] == (n if qos else 0)
        assert ing.stats["malformed"] == ing.stats["reconnects"] == 0
        assert ing.stats["dup_received"] == 0 and sink.batches < n  # batched, not 1 by 1
        again = Sink()
        ing2 = lean(mq.port, again, cid, protocol=protocol, subs=[(PLAN, qos)])
        async with running(ing2):
            assert ing2.session_present
            await apublish(mq.port, [("hems/v1/plan/marker", b"end")])
            await until(lambda: bool(again.msgs), what="the marker")
        assert again.msgs == [("hems/v1/plan/marker", b"end")]  # nothing held back
        await forget(mq.port, cid)

    arun(go())


def test_ack_after_handling_dropped_batch_is_redelivered_with_dup(mq: FleetMosquitto) -> None:
    """The handler drops the connection on its first batch: nothing of that batch was
    acknowledged, so mosquitto redelivers it (DUP) after the reconnect, to on_batch again."""
    msgs = plans(500, "drop")

    async def go() -> None:
        seen: list[Message] = []
        first: list[Message] = []

        def handler(batch: list[Message]) -> None:
            seen.extend(batch)
            if not first:
                first.extend(batch)
                ing.drop_connection()

        ing = lean(mq.port, handler, "ackafter", receive_maximum=50)
        async with running(ing):
            await apublish(mq.port, msgs)
            await until(lambda: set(seen) >= set(msgs), what="all messages")
            await asyncio.sleep(0.1)
        assert first and ing.stats["reconnects"] >= 1
        assert ing.stats["dup_received"] >= len(first)
        for m in first:  # handled twice: the first time never acknowledged
            assert seen.count(m) == 2
        assert sorted(set(seen)) == sorted(msgs)
        await forget(mq.port, "ackafter")

    arun(go())


def test_raising_handler_is_counted_acked_and_not_redelivered(
        mq: FleetMosquitto, caplog: pytest.LogCaptureFixture) -> None:
    msgs = plans(300, "raise")

    async def go() -> None:
        seen: list[Message] = []

        def handler(batch: list[Message]) -> None:
            seen.extend(batch)
            raise ValueError("bad report")

        ing = lean(mq.port, handler, "raiser")
        async with running(ing):
            await apublish(mq.port, msgs)
            await until(lambda: len(seen) >= len(msgs), what="all messages")
        assert seen == msgs
        assert ing.stats["handler_errors"] == ing.stats["batches"] >= 1
        assert ing.stats["acked"] == len(msgs) and ing.stats["reconnects"] == 0
        again = Sink()
        async with running(lean(mq.port, again, "raiser")):
            await apublish(mq.port, [("hems/v1/plan/marker", b"end")])
            await until(lambda: bool(again.msgs), what="the marker")
        assert again.msgs == [("hems/v1/plan/marker", b"end")]
        await forget(mq.port, "raiser")

    with caplog.at_level(logging.ERROR):
        arun(go())
    assert "on_batch raised" in caplog.text and "bad report" in caplog.text


def test_stop_from_the_handler_acknowledges_the_batch_first(mq: FleetMosquitto) -> None:
    msgs = plans(500, "stop")

    async def go() -> None:
        first: list[Message] = []

        def handler(batch: list[Message]) -> None:
            if not first:
                first.extend(batch)
                ing.stop()

        ing = lean(mq.port, handler, "stopper")
        task = asyncio.create_task(ing.run())
        await ing.wait_connected(T)
        await apublish(mq.port, msgs)
        await asyncio.wait_for(task, T)  # run() returns
        rest = Sink()
        async with running(lean(mq.port, rest, "stopper")):
            await until(lambda: len(first) + len(rest.msgs) >= len(msgs))
            await asyncio.sleep(0.1)
        assert first + rest.msgs == msgs  # the first batch was acknowledged: not again
        assert ing.stats["acked"] == len(first)
        await forget(mq.port, "stopper")

    arun(go())


@pytest.mark.parametrize("cancel", [False, True])
def test_stop_mid_stream_loses_no_ack(mq: FleetMosquitto, cancel: bool) -> None:
    """stop() while mosquitto is still sending (unread input): the PUBACKs written reach the
    broker (no TCP RST), so the next session gets exactly the rest: nothing acknowledged comes
    again, nothing is lost.  Also when run()'s task is cancelled right after stop()."""
    msgs = plans(6000, f"mid{cancel}")
    cid = f"midstream-{cancel}"

    async def go() -> None:
        first = Sink()
        ing = lean(mq.port, first, cid)
        task = asyncio.create_task(ing.run())
        await ing.wait_connected(T)
        pub = asyncio.create_task(apublish(mq.port, msgs))
        await until(lambda: len(first.msgs) >= 300)
        ing.stop()
        if cancel:
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, T)
        await pub
        await asyncio.sleep(0.05)  # the cancelled client's DISCONNECT completes
        rest = Sink()
        async with running(lean(mq.port, rest, cid)):
            await until(lambda: len(first.msgs) + len(rest.msgs) >= len(msgs))
            await asyncio.sleep(0.1)
        assert first.msgs + rest.msgs == msgs
        await forget(mq.port, cid)

    arun(go())


@pytest.mark.parametrize("protocol", [5, 4])
def test_persistent_session_gets_what_arrived_while_away_clean_start_does_not(
        mq: FleetMosquitto, protocol: int) -> None:
    away = plans(1000, f"away{protocol}")
    cid = f"persist-{protocol}"

    async def go() -> None:
        async with running(lean(mq.port, Sink(), cid, protocol=protocol)):
            pass  # the session (with its subscription) exists now
        await apublish(mq.port, away)
        sink = Sink()
        async with running(lean(mq.port, sink, cid, protocol=protocol)) as _:
            await until(lambda: len(sink.msgs) >= len(away), what="queued messages")
        assert sink.msgs == away
        await apublish(mq.port, away[:10])  # queued again while away ...
        clean = Sink()
        async with running(lean(mq.port, clean, cid, protocol=protocol, clean_start=True)):
            await apublish(mq.port, [("hems/v1/plan/marker", b"end")])
            await until(lambda: bool(clean.msgs), what="the marker")
        assert clean.msgs == [("hems/v1/plan/marker", b"end")]  # ... and dropped

    arun(go())


@pytest.mark.parametrize("protocol", [5, 4])
def test_bad_password_raises_without_retrying(mq: FleetMosquitto, protocol: int) -> None:
    async def go() -> None:
        ing = lean(mq.port, Sink(), "badpw", protocol=protocol, password="wrong")
        with pytest.raises(BulkMqttError, match="refused the connection as 'coordinator'"):
            await asyncio.wait_for(ing.run(), 5)
        assert ing.stats["reconnects"] == 0 and ing.stats["connects"] == 0

    arun(go())


def test_acl_denied_subscription_on_mosquitto_receives_nothing(mq: FleetMosquitto) -> None:
    """mosquitto 2.0's acl_file grants the SUBACK of a denied subscription and filters the
    deliveries (so the module docs say); a broker that refuses it makes run() raise."""
    async def go() -> None:
        sink = Sink()
        ing = lean(mq.port, sink, "acl", subs=[("hems/v1/mask/mb1/+", 1)], clean_start=True,
                   session_expiry=0)
        task = asyncio.create_task(ing.run())
        done, _ = await asyncio.wait([task], timeout=1.0)
        if done:  # refused: the error names the filter
            with pytest.raises(BulkMqttError, match="mask/mb1"):
                task.result()
            return
        await apublish(mq.port, [("hems/v1/mask/mb1/h1", b"sealed")])
        await asyncio.sleep(0.2)
        ing.stop()
        await asyncio.wait_for(task, T)
        assert sink.msgs == [] and ing.stats["connects"] == 1

    arun(go())


def test_broker_restart_reconnects_resubscribes_and_keeps_receiving(
        own_mq: FleetMosquitto) -> None:
    before, after = plans(2000, "before"), plans(2000, "after")

    async def go() -> None:
        sink = Sink()
        ing = lean(own_mq.port, sink, "restart")
        async with running(ing):
            await apublish(own_mq.port, before)
            await until(lambda: len(sink.msgs) >= len(before))
            await asyncio.to_thread(own_mq.stop)
            await until(lambda: not ing.connected, what="the disconnect")
            await asyncio.to_thread(own_mq.start)
            await ing.wait_connected(T)
            await apublish(own_mq.port, after)
            await until(lambda: len(set(sink.msgs)) >= len(before) + len(after))
        # The last PUBACKs may race the broker's shutdown: those messages come again (DUP)
        assert list(dict.fromkeys(sink.msgs)) == before + after
        assert ing.stats["dup_received"] >= len(sink.msgs) - len(before) - len(after)
        assert ing.stats["reconnects"] >= 1 and ing.stats["connects"] >= 2

    arun(go())


def test_large_messages_and_the_maximum_packet_size(mq: FleetMosquitto) -> None:
    """A 200 kB message arrives intact (many reads, joined once); MQTT 5 tells the broker our
    max_packet, so mosquitto drops a 400 kB one instead of sending it (no malformed frame, no
    reconnect loop on a message that can never be taken)."""
    big, huge = b"b" * 200_000, b"h" * 400_000
    msgs = [("hems/v1/plan/h1", b"small"), ("hems/v1/plan/h2", big),
            ("hems/v1/plan/h3", huge), ("hems/v1/plan/h4", b"small 2")]

    async def go() -> None:
        sink = Sink()
        ing = lean(mq.port, sink, "big", max_packet=300_000, clean_start=True,
                   session_expiry=0)
        async with running(ing):
            await apublish(mq.port, msgs)
            await until(lambda: len(sink.msgs) >= 3)
            await asyncio.sleep(0.1)
        assert sink.msgs == [msgs[0], msgs[1], msgs[3]]
        assert ing.stats["malformed"] == ing.stats["reconnects"] == 0

    arun(go())


def test_keepalive_keeps_an_idle_connection(mq: FleetMosquitto) -> None:
    """keepalive 1 s: mosquitto drops a client silent for 1.5 s; PINGREQs keep this one."""
    async def go() -> None:
        sink = Sink()
        ing = lean(mq.port, sink, "idle", keepalive=1)
        async with running(ing):
            await asyncio.sleep(3.2)
            await apublish(mq.port, [("hems/v1/plan/h1", b"after idle")])
            await until(lambda: bool(sink.msgs))
        assert ing.stats["pings"] >= 3
        assert ing.stats["reconnects"] == 0 and ing.stats["dead_connections"] == 0

    arun(go())


def test_publish_counts_pubacks_and_flush_waits_for_them(mq: FleetMosquitto) -> None:
    """The coordinator publishes 5,000 QoS 1 adjustments (no subscriptions: publish only);
    the fleet identity (may read adjust/+) receives them all, in order."""
    adj = [(f"hems/v1/adjust/h{i:06d}", b"adj %d" % i) for i in range(5000)]

    async def go() -> None:
        got = Sink()
        sub = lean(mq.port, got, "adj-sub", user=FLEET_USER, subs=[("hems/v1/adjust/+", 1)])
        pub = lean(mq.port, Sink(), "adj-pub", subs=[], max_inflight=200)
        async with running(sub), running(pub):
            for t, p in adj:
                pub.publish(t, p)
            pub.publish("hems/v1/adjust/q0", b"qos0", qos=0)
            await pub.flush(T)
            assert pub.stats["puback_received"] == pub.stats["published"] - 1 == 5000
            await until(lambda: len(got.msgs) >= 5001)
            await pub.flush(0.01)  # nothing pending: returns at once
        assert got.msgs == [*adj, ("hems/v1/adjust/q0", b"qos0")]
        assert pub.stats["puback_errors"] == pub.stats["resent"] == 0
        await forget(mq.port, "adj-sub", "adj-pub")

    arun(go())


def test_flush_times_out_while_the_broker_is_down(own_mq: FleetMosquitto) -> None:
    """Publishes made while the broker is down wait, flush() says so, and they go out after
    the broker is back; the subscriber's persistent session receives them all."""
    adj = [(f"hems/v1/adjust/h{i:06d}", b"adj %d" % i) for i in range(300)]

    async def go() -> None:
        got = Sink()
        sub = lean(own_mq.port, got, "down-sub", user=FLEET_USER,
                   subs=[("hems/v1/adjust/+", 1)])
        pub = lean(own_mq.port, Sink(), "down-pub", subs=[])
        async with running(sub), running(pub):
            await asyncio.to_thread(own_mq.stop)  # SIGTERM: the sessions are saved
            await until(lambda: not pub.connected)
            for t, p in adj:
                pub.publish(t, p)
            with pytest.raises(TimeoutError):
                await pub.flush(0.3)
            await asyncio.to_thread(own_mq.start)
            await pub.flush(T)
            await until(lambda: len(got.msgs) >= len(adj))
        assert got.msgs == adj

    arun(go())


def test_unacked_publishes_are_resent_after_a_broker_restart(own_mq: FleetMosquitto) -> None:
    """mosquitto frozen (SIGSTOP) while publishes are written (a window of 20: its Receive
    Maximum), then restarted: those it did not acknowledge are re-sent (DUP); the subscriber
    (persistent session, saved at SIGTERM) ends up with every one of them (at least once)."""
    adj = [(f"hems/v1/adjust/h{i:06d}", b"adj %d" % i) for i in range(300)]

    async def go() -> None:
        got = Sink()
        sub = lean(own_mq.port, got, "rs-sub", user=FLEET_USER,
                   subs=[("hems/v1/adjust/+", 1)])
        pub = lean(own_mq.port, Sink(), "rs-pub", subs=[])
        async with running(sub), running(pub):
            assert own_mq.proc is not None
            pid = own_mq.proc.pid
            os.kill(pid, signal.SIGSTOP)
            try:
                for t, p in adj:
                    pub.publish(t, p)
                # mosquitto's Receive Maximum (20) bounds what is written before the acks
                await until(lambda: pub.stats["published"] >= 20)
                await asyncio.sleep(0.1)
                os.kill(pid, signal.SIGTERM)
            finally:
                os.kill(pid, signal.SIGCONT)
            await asyncio.to_thread(own_mq.stop)
            await asyncio.to_thread(own_mq.start)
            await pub.flush(T)
            await until(lambda: set(got.msgs) >= set(adj))
        assert pub.stats["resent"] > 0 and pub.stats["reconnects"] >= 1
        assert sorted(set(got.msgs)) == sorted(adj)

    arun(go())


def test_shared_subscription_splits_without_loss_or_duplicates(mq: FleetMosquitto) -> None:
    msgs = plans(4000, "share")

    async def go() -> None:
        a, b = Sink(), Sink()
        share = [("$share/lean/" + PLAN, 1)]
        async with running(lean(mq.port, a, "share-a", subs=share)), \
                running(lean(mq.port, b, "share-b", subs=share)):
            await apublish(mq.port, msgs)
            await until(lambda: len(a.msgs) + len(b.msgs) >= len(msgs))
            await asyncio.sleep(0.1)
        assert a.msgs and b.msgs
        assert sorted(a.msgs + b.msgs) == sorted(msgs)  # no loss, no duplicate
        index = {m: i for i, m in enumerate(msgs)}
        for part in (a.msgs, b.msgs):  # each worker sees its share in publish order
            assert [index[m] for m in part] == sorted(index[m] for m in part)
        await forget(mq.port, "share-a", "share-b")

    arun(go())


def test_tls(mq: FleetMosquitto) -> None:
    assert mq.tls is not None and mq.tls_port
    ctx = ssl.create_default_context(cafile=str(mq.tls.cafile))

    async def go() -> None:
        sink = Sink()
        ing = BulkClient("127.0.0.1", mq.tls_port or 0, "tls", "coordinator",
                         PW["coordinator"], [(PLAN, 1)], sink, tls=ctx)
        async with running(ing):
            await apublish(mq.port, plans(500, "tls"))
            await until(lambda: len(sink.msgs) >= 500)
        assert sink.msgs == plans(500, "tls")
        await forget(mq.port, "tls")

    arun(go())


# ------------------------------------------------------------------ a scripted fake broker


def varlen(n: int) -> bytes:
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def s16(b: bytes) -> bytes:
    return struct.pack("!H", len(b)) + b


def pkt(b0: int, body: bytes) -> bytes:
    return bytes((b0,)) + varlen(len(body)) + body


def publish_frame(topic: str, payload: bytes, qos: int = 0, mid: int = 1, v5: bool = True,
                  dup: bool = False, props: bytes = b"") -> bytes:
    body = s16(topic.encode()) + (struct.pack("!H", mid) if qos else b"")
    body += (varlen(len(props)) + props if v5 else b"") + payload
    return pkt(0x30 | (qos << 1) | (8 if dup else 0), body)


def connack(v5: bool = True, code: int = 0) -> bytes:
    return pkt(0x20, bytes((0, code)) + (b"\x00" if v5 else b""))


async def read_packet(r: asyncio.StreamReader) -> tuple[int, bytes]:
    b0 = (await r.readexactly(1))[0]
    n = shift = 0
    while True:
        d = (await r.readexactly(1))[0]
        n |= (d & 0x7F) << shift
        shift += 7
        if d < 0x80:
            break
    return b0, await r.readexactly(n)


Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter, "Fake"], Awaitable[None]]


class Fake:
    """A loopback MQTT server: connection k runs scripts[min(k, len - 1)], then records the
    client's packets until it closes."""

    def __init__(self, scripts: list[Script], v5: bool = True) -> None:
        self.scripts = scripts
        self.v5 = v5
        self.connections = 0
        self.packets: list[list[tuple[int, bytes]]] = []
        self.port = 0

    async def handshake(self, r: asyncio.StreamReader, w: asyncio.StreamWriter,
                        codes: bytes = b"\x01") -> None:
        b0, _ = await read_packet(r)
        assert b0 == 0x10
        w.write(connack(self.v5))
        b0, body = await read_packet(r)
        assert b0 == 0x82
        w.write(pkt(0x90, body[:2] + (b"\x00" if self.v5 else b"") + codes))
        await w.drain()

    async def _serve(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        k = self.connections
        self.connections += 1
        self.packets.append([])
        try:
            await self.scripts[min(k, len(self.scripts) - 1)](r, w, self)
            while True:
                self.packets[k].append(await read_packet(r))
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            w.close()

    @contextlib.asynccontextmanager
    async def serving(self) -> AsyncIterator[Fake]:
        server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = server.sockets[0].getsockname()[1]
        async with server:
            yield self


GOOD_BEFORE = ("t/before", b"before")
GOOD_AFTER = ("t/after", b"after")

MALFORMED = {
    "remaining length of 5 bytes": b"\x30\xff\xff\xff\xff\x01",
    "packet larger than max_packet": b"\x30\xff\xff\x7f",  # 2 MB announced, max_packet 1 MB
    "truncated PUBLISH properties": pkt(0x32, s16(b"t/x") + b"\x00\x07" + b"\x09\x01"),
    "PUBLISH topic shorter than announced": pkt(0x30, b"\x00\x10t/x"),
    "PUBLISH without packet id": pkt(0x32, s16(b"t/x")),
    "PUBLISH with QoS 2": publish_frame("t/x", b"p", qos=2),
    "PUBLISH with QoS 3": pkt(0x36, s16(b"t/x") + b"\x00\x01\x00p"),
    "empty topic (topic alias)": publish_frame("", b"p", props=b"\x23\x00\x01"),
    "topic not UTF-8": pkt(0x30, s16(b"t/\xff\xfe") + b"\x00p"),
    "unexpected packet type (SUBSCRIBE)": pkt(0x82, b"\x00\x01\x00" + s16(b"a") + b"\x01"),
    "reserved flags in PUBACK": pkt(0x41, b"\x00\x01"),
    "PINGRESP with a body": pkt(0xD0, b"\x00"),
    "a second CONNACK": connack(),
    "unknown CONNACK-like property in PUBACK": pkt(0x40, b"\x00\x01\x00\x02\x7f\x00"),
}


@pytest.mark.parametrize("frame", list(MALFORMED.values()), ids=list(MALFORMED))
def test_malformed_frames_are_counted_logged_and_reconnected(
        frame: bytes, caplog: pytest.LogCaptureFixture) -> None:
    async def bad(r: asyncio.StreamReader, w: asyncio.StreamWriter, f: Fake) -> None:
        await f.handshake(r, w)
        w.write(publish_frame(*GOOD_BEFORE) + frame + publish_frame("t/never", b"x"))

    async def good(r: asyncio.StreamReader, w: asyncio.StreamWriter, f: Fake) -> None:
        await f.handshake(r, w)
        w.write(publish_frame(*GOOD_AFTER, qos=1, mid=9))

    async def go() -> None:
        sink = Sink()
        async with Fake([bad, good]).serving() as fake:
            ing = lean(fake.port, sink, "m", subs=[("t/#", 1)], reconnect_min_s=0.01)
            async with running(ing, connected=False):
                await until(lambda: GOOD_AFTER in sink.msgs, what="the good connection")
                await until(lambda: len(fake.packets) == 2 and (0x40, b"\x00\x09")
                            in fake.packets[1], what="the PUBACK")
            assert sink.msgs == [GOOD_BEFORE, GOOD_AFTER]
            assert ing.stats["malformed"] == 1 and ing.stats["reconnects"] == 1
            assert fake.packets[0][:1] == [(0xE0, b"\x81")]  # DISCONNECT: malformed packet

    with caplog.at_level(logging.WARNING):
        arun(go(), 10)
    assert "malformed frame" in caplog.text


def test_connection_closed_mid_packet_reconnects_and_discards_the_piece() -> None:
    async def cut(r: asyncio.StreamReader, w: asyncio.StreamWriter, f: Fake) -> None:
        await f.handshake(r, w)
        w.write(publish_frame(*GOOD_BEFORE) + publish_frame("t/cut", b"y" * 100)[:20])
        await w.drain()
        w.close()

    async def good(r: asyncio.StreamReader, w: asyncio.StreamWriter, f: Fake) -> None:
        await f.handshake(r, w)
        w.write(publish_frame(*GOOD_AFTER))

    async def go() -> None:
        sink = Sink()
        async with Fake([cut, good]).serving() as fake:
            ing = lean(fake.port, sink, "cut", subs=[("t/#", 0)], reconnect_min_s=0.01)
            async with running(ing, connected=False):
                await until(lambda: GOOD_AFTER in sink.msgs)
            assert sink.msgs == [GOOD_BEFORE, GOOD_AFTER]
            assert ing.stats["malformed"] == 0 and ing.stats["reconnects"] == 1

    arun(go(), 10)


def test_silent_server_is_detected_by_the_keepalive() -> None:
    """A server that stops answering (no PINGRESP): no byte for 1.5 x keepalive -> abort and
    reconnect."""
    async def silent(r: asyncio.StreamReader, w: asyncio.StreamWriter, f: Fake) -> None:
        await f.handshake(r, w)

    async def go() -> None:
        async with Fake([silent]).serving() as fake:
            ing = lean(fake.port, Sink(), "silent", subs=[("t/#", 1)], keepalive=1,
                       reconnect_min_s=0.01)
            async with running(ing):
                await until(lambda: fake.connections >= 2, timeout=5)
            assert ing.stats["dead_connections"] >= 1 and ing.stats["pings"] >= 1
            assert (0xC0, b"") in fake.packets[0]  # it did ask

    arun(go(), 10)


@pytest.mark.parametrize("v5,code,name", [(True, 0x87, "not authorized"),
                                          (False, 0x80, "unknown")])
def test_suback_refusal_raises_ingest_error(v5: bool, code: int, name: str) -> None:
    async def refuse(r: asyncio.StreamReader, w: asyncio.StreamWriter, f: Fake) -> None:
        await f.handshake(r, w, codes=bytes((1, code)))

    async def go() -> None:
        async with Fake([refuse], v5=v5).serving() as fake:
            ing = lean(fake.port, Sink(), "sub", subs=[("t/ok", 1), ("t/denied", 1)],
                       protocol=5 if v5 else 4)
            with pytest.raises(BulkMqttError, match=rf"'t/denied': 0x{code:02x} \({name}\)"):
                await asyncio.wait_for(ing.run(), 5)
            assert fake.connections == 1 and ing.stats["reconnects"] == 0

    arun(go(), 10)


def test_retryable_connack_refusal_is_retried() -> None:
    async def busy(r: asyncio.StreamReader, w: asyncio.StreamWriter, f: Fake) -> None:
        await read_packet(r)
        w.write(connack(code=0x89))  # server busy

    async def ok(r: asyncio.StreamReader, w: asyncio.StreamWriter, f: Fake) -> None:
        await f.handshake(r, w)

    async def go() -> None:
        async with Fake([busy, ok]).serving() as fake:
            ing = lean(fake.port, Sink(), "busy", subs=[("t/#", 1)], reconnect_min_s=0.01)
            async with running(ing):
                pass
            assert fake.connections == 2 and ing.stats["reconnects"] == 1

    arun(go(), 10)


def test_unacked_publishes_are_resent_with_dup_and_the_same_ids() -> None:
    """Connection 1 never acknowledges and closes; connection 2 acknowledges everything: the
    5 QoS 1 frames come again, DUP set, same packet ids, same order; then flush() returns."""
    async def mute(r: asyncio.StreamReader, w: asyncio.StreamWriter, f: Fake) -> None:
        await f.handshake(r, w)
        for _ in range(5):
            f.packets[0].append(await read_packet(r))
        w.close()

    async def acking(r: asyncio.StreamReader, w: asyncio.StreamWriter, f: Fake) -> None:
        await f.handshake(r, w)
        for _ in range(5):
            b0, body = await read_packet(r)
            f.packets[1].append((b0, body))
            w.write(pkt(0x40, body[2 + body[1]:4 + body[1]]))  # PUBACK <its packet id>

    async def go() -> None:
        async with Fake([mute, acking]).serving() as fake:
            ing = lean(fake.port, Sink(), "pub", subs=[("t/#", 1)], reconnect_min_s=0.01)
            async with running(ing):
                for i in range(5):
                    ing.publish(f"t/{i}", b"p%d" % i)
                await ing.flush(5)
            first, second = fake.packets[0][:5], fake.packets[1][:5]
            assert [b0 for b0, _ in first] == [0x32] * 5
            assert [b0 for b0, _ in second] == [0x3A] * 5  # QoS 1 + DUP
            assert [body for _, body in first] == [body for _, body in second]
            assert ing.stats["resent"] == 5 and ing.stats["puback_received"] == 5

    arun(go(), 10)


def test_publish_window_follows_receive_maximum_and_counts_refused_pubacks() -> None:
    """The broker's CONNACK says Receive Maximum 2: never a third unacknowledged PUBLISH; a
    PUBACK with reason 0x87 (not authorised) is counted as an error, not re-sent."""
    async def rm2(r: asyncio.StreamReader, w: asyncio.StreamWriter, f: Fake) -> None:
        await read_packet(r)
        w.write(pkt(0x20, b"\x00\x00" + b"\x03\x21\x00\x02"))  # Receive Maximum 2
        _, body = await read_packet(r)
        w.write(pkt(0x90, body[:2] + b"\x00\x01"))
        for k in range(3):
            pubs = [await read_packet(r), await read_packet(r)]
            f.packets[0] += pubs
            with contextlib.suppress(TimeoutError):  # a third must not come before our acks
                f.packets[0].append(await asyncio.wait_for(read_packet(r), 0.2))
            for _, body in pubs:
                mid = body[2 + body[1]:4 + body[1]]
                w.write(pkt(0x40, mid + (b"\x87\x00" if k == 0 else b"\x00\x00")))

    async def go() -> None:
        async with Fake([rm2]).serving() as fake:
            ing = lean(fake.port, Sink(), "rm", subs=[("t/#", 1)])
            async with running(ing):
                for i in range(6):
                    ing.publish(f"t/{i}", b"p")
                await ing.flush(5)
            pubs, rest = fake.packets[0][:6], fake.packets[0][6:]
            assert [b0 for b0, _ in pubs] == [0x32] * 6 and rest == [(0xE0, b"")]
            assert [body[2:5] for _, body in pubs] == [b"t/%d" % i for i in range(6)]
            assert ing.stats["puback_received"] == 6 and ing.stats["puback_errors"] == 2
            assert ing.stats["resent"] == 0

    arun(go(), 10)


# ------------------------------------------------------------------ the parser, any split


class _Transport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.out: list[bytes] = []
        self.closing = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        assert not self.closing
        self.out.append(bytes(data))

    def is_closing(self) -> bool:
        return self.closing

    def can_write_eof(self) -> bool:
        return False

    def close(self) -> None:
        self.closing = True

    def abort(self) -> None:
        self.closing = True


frames = st.lists(st.tuples(st.text(alphabet="ab/é", min_size=1, max_size=20),
                            st.one_of(st.binary(max_size=300),
                                      st.integers(0, 200_000).map(lambda n: b"z" * n)),
                            st.sampled_from([0, 1]), st.booleans()), min_size=1, max_size=25)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(frames, st.data(), st.booleans())
def test_any_split_of_the_stream_gives_the_same_messages_and_acks(
        msgs: list[tuple[str, bytes, int, bool]], data: st.DataObject, v5: bool) -> None:
    stream = b""
    want_acks = b""
    for k, (topic, payload, qos, props) in enumerate(msgs):
        p = b"\x02\x00\x00\x00\x3c\x26" + s16(b"k") + s16(b"v") if props and v5 else b""
        stream += publish_frame(topic, payload, qos, mid=k + 1, v5=v5, props=p)
        if qos:
            want_acks += b"\x40\x02" + struct.pack("!H", k + 1)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=40)))
    got: list[Message] = []
    loop = asyncio.new_event_loop()
    try:
        ing = BulkClient("h", 1, "c", None, None, [("#", 1)], got.extend,
                         protocol=5 if v5 else 4)
        conn = _Conn(ing, loop)
        tr = _Transport()
        conn.connection_made(tr)
        for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True):
            if b > a:
                conn.data_received(stream[a:b])
    finally:
        loop.close()
    assert got == [(t, p) for t, p, _, _ in msgs]
    assert b"".join(tr.out) == want_acks
    assert ing.stats["malformed"] == 0 and conn.buf == b"" and not conn.need


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200), st.booleans())
def test_garbage_from_the_broker_never_raises(noise: bytes, v5: bool) -> None:
    """Any bytes: parsed, left waiting for more, or counted malformed and the connection
    closed; never an exception out of data_received."""
    loop = asyncio.new_event_loop()
    try:
        ing = BulkClient("h", 1, "c", None, None, [("#", 1)], lambda b: None,
                         protocol=5 if v5 else 4, max_packet=1000)
        conn = _Conn(ing, loop)
        tr = _Transport()
        conn.connection_made(tr)
        conn.connack.set_result((0, 0, {}))  # past the handshake
        conn.data_received(publish_frame("t", b"ok", v5=v5) + noise)
        assert ing.stats["received"] >= 1
        if ing.stats["malformed"]:  # DISCONNECT sent, waiting for the broker to close
            assert conn.draining and tr.out[-1][0] == 0xE0
    finally:
        loop.close()
