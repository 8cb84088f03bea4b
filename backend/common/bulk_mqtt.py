"""The bulk MQTT client: a lean asyncio client for the bulk topics (docs/scaling.md).

The two bulk topic families (masked plans at the coordinator, sealed masks at each mask broker)
arrive at up to the broker's pace (~75-90k msg/s here); general-purpose Python clients take 4-28k
msg/s off mosquitto because of their per-message machinery.  ``BulkClient`` does the minimum:

* MQTT 5 by default (``protocol=5``: needed for ``$share/<group>/...`` shared subscriptions and
  session expiry), MQTT 3.1.1 with ``protocol=4``.  Username/password, optional TLS.
* CONNECT, SUBSCRIBE (QoS 0/1), PUBLISH in (QoS 0/1), PUBACK out, PUBLISH out (QoS 0/1,
  pre-encoded, windowed, PUBACKs counted), PINGREQ, DISCONNECT.  No QoS 2, no topic aliases
  (none are granted: the CONNECT sends no Topic Alias Maximum), no AUTH exchange, no will.
* Every complete PUBLISH of one ``read`` is parsed in one pass into ``(topic, payload)`` tuples
  and handed to ``on_batch`` in arrival order; only **after** ``on_batch`` returned are the QoS 1
  messages of that batch acknowledged, with one write for the whole batch (plus whatever the
  handler published meanwhile).  So a service that persists in ``on_batch`` acknowledges only
  what it stored.
* If ``on_batch`` raises, the error is logged and counted (``stats["handler_errors"]``) and the
  batch **is** acknowledged: a handler that chokes on bad input must not get the same input
  redelivered forever.  A handler that wants a batch redelivered (its storage failed) calls
  ``drop_connection()``: the connection is aborted before any acknowledgement of that batch is
  written, and the broker redelivers (DUP) everything unacknowledged after the reconnect.
* Redeliveries (DUP) go to ``on_batch`` like any message (``stats["dup_received"]`` counts them):
  the services dedupe by report id.
* Frames from the broker are checked: a remaining length longer than 4 bytes, a packet larger
  than ``max_packet``, a truncated topic / packet id / property block, a QoS 2 or 3 PUBLISH, an
  empty topic, a non-UTF-8 topic, reserved flag bits, an unexpected packet type: the reason is
  logged, ``stats["malformed"]`` counted, the connection closed (MQTT 5: DISCONNECT 0x81 first)
  and re-established.  PUBLISHes before the bad frame in the same read are delivered and acked.
* Keepalive: PINGREQ when nothing was sent (or nothing heard) for ``keepalive / 2`` seconds; no
  byte from the broker for 1.5 x ``keepalive`` means a dead connection: abort and reconnect.
* Reconnects on any connection loss, with jittered exponential backoff
  (``reconnect_min_s`` .. ``reconnect_max_s``), resubscribing each time (MQTT 5: Retain Handling 1,
  so an existing subscription does not get the retained messages again).  A refusal that
  retrying cannot fix (bad credentials, not authorised, bad client id, unsupported protocol,
  banned; any SUBACK failure) makes ``run()`` raise ``BulkMqttError``; "server unavailable / busy /
  quota" refusals are retried.
* Persistent sessions: ``clean_start=False`` (and, MQTT 5, ``session_expiry`` seconds) keeps the
  subscription and the QoS 1 messages that arrive while the client is away; they are delivered
  on reconnect.
* Publishing (``publish``): QoS 1 frames are numbered and written when the window has room
  (``max_inflight``, capped by the broker's Receive Maximum), in batches; PUBACKs are counted;
  frames not acknowledged when the connection drops are re-sent with DUP after the reconnect
  (whatever the Session Present flag: at least once), in their original order.

Measured (bench/ingest.py, 100k real plan reports through mosquitto, same runs): the library
takes ~87k msg/s counting only (1.04 x ``mosquitto_sub``), 58-67k msg/s with the coordinator's
PlanSink + orjson (0.69-0.84), 53k msg/s with a QoS 1 reply per report; the frame parser itself
costs ~1.2 us per 645-byte message.

Caveats (each is tested or measured, see tests/test_bulk_mqtt.py):

* mosquitto 2.0's ``acl_file`` grants every SUBACK and filters deliveries silently, so a
  subscription the ACL denies is *not* reported as refused by mosquitto: nothing arrives.  The
  SUBACK check catches brokers (and plugins) that do refuse.
* ``max_packet`` is sent to the broker as Maximum Packet Size (MQTT 5), which then drops larger
  messages instead of sending them.  With ``protocol=4`` a larger QoS 1 message is a malformed
  frame: disconnect, and the broker redelivers it after every reconnect (size ``max_packet`` to
  the largest legitimate message).
* ``on_batch`` runs on the event loop: a handler that blocks longer than 1.5 x ``keepalive``
  gets the connection dropped by the broker (and its batch redelivered).
* ``stop()`` / DISCONNECT waits (up to 2 s) for the broker to close the connection: closing
  first with unread input sends a TCP RST and the broker loses the last PUBACKs.
* ``stats["reconnects"]`` counts reconnect attempts (failed ones too), ``connects`` accepted
  CONNACKs.  A stopped client does not run again; make a new one.

Not thread-safe: use it from the event loop that runs ``run()``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import ssl
from collections import deque
from collections.abc import Callable

Message = tuple[str, bytes]  # (topic, payload)

__all__ = ["BulkClient", "BulkMqttError", "Message", "mqtt_string", "varlen"]

_LOG = logging.getLogger(__name__)

# MQTT 5 property identifiers -> value kind ("b" byte, "h" 2-byte, "i" 4-byte, "v" varint,
# "s" UTF-8 string, "d" binary data, "p" string pair).
_PROPS: dict[int, str] = {
    0x01: "b", 0x02: "i", 0x03: "s", 0x08: "s", 0x09: "d", 0x0B: "v", 0x11: "i", 0x12: "s",
    0x13: "h", 0x15: "s", 0x16: "d", 0x17: "b", 0x18: "i", 0x19: "b", 0x1A: "s", 0x1C: "s",
    0x1F: "s", 0x21: "h", 0x22: "h", 0x23: "h", 0x24: "b", 0x25: "b", 0x26: "p", 0x27: "i",
    0x28: "b", 0x29: "b", 0x2A: "b",
}
_P_SESSION_EXPIRY = 0x11
_P_ASSIGNED_ID = 0x12
_P_SERVER_KEEPALIVE = 0x13
_P_REASON = 0x1F
_P_RECEIVE_MAX = 0x21
_P_MAX_PACKET = 0x27

#: CONNACK return codes worth retrying (3.1.1: 3 server unavailable; 5: unspecified, server
#: unavailable, busy, quota exceeded, use another server, server moved, rate exceeded).
_RETRY_V4 = {3}
_RETRY_V5 = {0x80, 0x88, 0x89, 0x97, 0x9C, 0x9D, 0x9F}
_CONNACK_V4 = {1: "unacceptable protocol version", 2: "identifier rejected",
               3: "server unavailable", 4: "bad user name or password", 5: "not authorized"}
_REASONS_V5 = {
    0x80: "unspecified error", 0x81: "malformed packet", 0x82: "protocol error",
    0x83: "implementation specific error", 0x84: "unsupported protocol version",
    0x85: "client identifier not valid", 0x86: "bad user name or password",
    0x87: "not authorized", 0x88: "server unavailable", 0x89: "server busy", 0x8A: "banned",
    0x8B: "server shutting down", 0x8C: "bad authentication method",
    0x8D: "keep alive timeout", 0x8E: "session taken over", 0x8F: "topic filter invalid",
    0x90: "topic name invalid", 0x93: "receive maximum exceeded", 0x95: "packet too large",
    0x97: "quota exceeded", 0x99: "payload format invalid", 0x9A: "retain not supported",
    0x9B: "QoS not supported", 0x9C: "use another server", 0x9D: "server moved",
    0x9E: "shared subscriptions not supported", 0x9F: "connection rate exceeded",
    0xA1: "subscription identifiers not supported",
    0xA2: "wildcard subscriptions not supported",
}

_PINGREQ = b"\xc0\x00"
_DISCONNECT = b"\xe0\x00"
_DISCONNECT_MALFORMED_V5 = b"\xe0\x01\x81"
#: After our DISCONNECT, how long to wait for the broker to close the connection.  Closing
#: first with unread bytes in our receive buffer would send a TCP RST, and the broker would
#: drop what it had not read yet: the last PUBACKs (measured: redeliveries after stop()).
_CLOSE_WAIT_S = 2.0
_PUBACK = b"\x40\x02"


class BulkMqttError(Exception):
    """A refusal retrying cannot fix (CONNACK: bad credentials, not authorised, ...; any
    SUBACK failure), or misuse of the client."""


class _Malformed(Exception):
    """A frame from the broker that breaks the protocol: close and reconnect."""


class _ServerDisconnect(Exception):
    """The broker sent DISCONNECT (MQTT 5)."""


class _Refused(Exception):
    """A retryable CONNACK refusal."""


def varlen(n: int) -> bytes:
    """MQTT variable byte integer (remaining length, property length)."""
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def mqtt_string(b: bytes) -> bytes:
    """MQTT UTF-8 string / binary data: two length bytes, then the bytes."""
    if len(b) > 0xFFFF:
        raise ValueError("MQTT string longer than 65535 bytes")
    return len(b).to_bytes(2, "big") + b


def _reason(code: int, v5: bool) -> str:
    name = _REASONS_V5.get(code) if v5 else _CONNACK_V4.get(code)
    return f"0x{code:02x} ({name or 'unknown'})"


def _text(v: int | str | bytes) -> str:
    return v.decode(errors="replace") if isinstance(v, bytes) else str(v)


def _read_varint(buf: bytes, i: int, end: int) -> tuple[int, int]:
    """A variable byte integer at buf[i:end] -> (value, index after it)."""
    val = shift = 0
    while True:
        if i >= end:
            raise _Malformed("truncated variable byte integer")
        d = buf[i]
        i += 1
        val |= (d & 0x7F) << shift
        if d < 0x80:
            return val, i
        shift += 7
        if shift > 21:
            raise _Malformed("variable byte integer longer than 4 bytes")


def _parse_props(buf: bytes, i: int, end: int) -> tuple[dict[int, int | str | bytes], int]:
    """An MQTT 5 property block at buf[i:end] -> ({id: value} (last wins; user properties
    dropped), index after the block).  Truncated or unknown properties are malformed."""
    plen, i = _read_varint(buf, i, end)
    stop = i + plen
    if stop > end:
        raise _Malformed(f"property length {plen} exceeds the packet")
    out: dict[int, int | str | bytes] = {}
    while i < stop:
        pid, i = _read_varint(buf, i, stop)
        kind = _PROPS.get(pid)
        if kind is None:
            raise _Malformed(f"unknown property 0x{pid:02x}")
        val: int | str | bytes
        if kind == "b":
            if i + 1 > stop:
                raise _Malformed("truncated property")
            val, i = buf[i], i + 1
        elif kind == "h":
            if i + 2 > stop:
                raise _Malformed("truncated property")
            val, i = int.from_bytes(buf[i:i + 2], "big"), i + 2
        elif kind == "i":
            if i + 4 > stop:
                raise _Malformed("truncated property")
            val, i = int.from_bytes(buf[i:i + 4], "big"), i + 4
        elif kind == "v":
            val, i = _read_varint(buf, i, stop)
        else:
            val = b""
            for _ in range(2 if kind == "p" else 1):
                if i + 2 > stop:
                    raise _Malformed("truncated property")
                n = (buf[i] << 8) | buf[i + 1]
                if i + 2 + n > stop:
                    raise _Malformed("truncated property")
                val, i = buf[i + 2:i + 2 + n], i + 2 + n
            if kind == "s":
                try:
                    val = val.decode()
                except UnicodeDecodeError as e:
                    raise _Malformed("property string is not UTF-8") from e
            if kind == "p":
                continue
        out[pid] = val
    return out, stop


class _Conn(asyncio.Protocol):
    """One TCP (or TLS) connection: its receive buffer, its handshake futures."""

    def __init__(self, owner: BulkClient, loop: asyncio.AbstractEventLoop) -> None:
        self.o = owner
        self.loop = loop
        self.tr: asyncio.Transport | None = None
        self.buf = b""
        self.parts: list[bytes] = []  # pieces of one large packet still arriving
        self.have = 0
        self.need = 0
        self.closed: asyncio.Future[None] = loop.create_future()
        self.connack: asyncio.Future[tuple[int, int, dict[int, int | str | bytes]]] = (
            loop.create_future())
        self.suback: asyncio.Future[list[int]] | None = None
        self.sub_mid = 0
        now = loop.time()
        self.last_recv = now
        self.last_sent = now
        self.last_ping = now
        self.ready = False  # subscribed: publishes may flow
        self.handling = False  # inside on_batch
        self.stop_after = False  # stop() was called from on_batch: after this batch's acks
        self.draining = False  # DISCONNECT sent: ignore input, wait for the broker to close
        self.why = ""  # why this connection ended (logged once)

    # ---------------------------------------------------------------- transport callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.tr = transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.ready = False
        err = ConnectionError(self.why or f"connection lost: {exc or 'closed by the broker'}")
        for fut in (self.connack, self.suback):
            if fut is not None and not fut.done():
                fut.set_exception(err)
        if not self.closed.done():
            self.closed.set_result(None)
        self.o._lost(self)

    def eof_received(self) -> bool | None:
        if not self.why:
            self.why = "the broker closed the connection"
        return None

    def write(self, data: bytes) -> bool:
        tr = self.tr
        if tr is None or self.draining or tr.is_closing():
            return False
        tr.write(data)
        self.last_sent = self.loop.time()
        return True

    def finish(self, why: str, packet: bytes = _DISCONNECT) -> None:
        """DISCONNECT gracefully: send ``packet``, half-close where the transport can (plain
        TCP), read and discard until the broker closes, abort after ``_CLOSE_WAIT_S``."""
        tr = self.tr
        if self.draining or tr is None or tr.is_closing():
            return
        if not self.why:
            self.why = why
        self.write(packet)
        self.draining = True
        self.ready = False
        if tr.can_write_eof():
            tr.write_eof()
        self.loop.call_later(_CLOSE_WAIT_S, self.close, why, True)

    def close(self, why: str, abort: bool = False) -> None:
        if not self.why:
            self.why = why
        tr = self.tr
        if tr is not None and not tr.is_closing():
            if abort:
                tr.abort()
            else:
                tr.close()

    # ---------------------------------------------------------------- the hot path

    def data_received(self, data: bytes) -> None:
        self.last_recv = self.loop.time()
        if self.draining:
            return
        o = self.o
        st = o.stats
        st["bytes_received"] += len(data)
        if self.need:
            self.parts.append(data)
            self.have += len(data)
            if self.have < self.need:
                return
            buf = b"".join(self.parts)
            self.parts = []
            self.need = self.have = 0
        elif self.buf:
            buf = self.buf + data
        else:
            buf = data
        n = len(buf)
        pos = 0
        v5 = o._v5
        maxp = o._max_packet
        msgs: list[Message] = []
        acks: list[bytes] = []
        dups = 0
        err: str | None = None
        server_gone: str | None = None
        try:
            while n - pos >= 2:
                b0 = buf[pos]
                i = pos + 1
                d = buf[i]
                i += 1
                if d < 0x80:
                    rl = d
                else:
                    rl = d & 0x7F
                    shift = 7
                    while True:
                        if i >= n:
                            rl = -1
                            break
                        d = buf[i]
                        i += 1
                        rl |= (d & 0x7F) << shift
                        if d < 0x80:
                            break
                        shift += 7
                        if shift > 21:
                            raise _Malformed("remaining length longer than 4 bytes")
                    if rl < 0:
                        break  # the fixed header itself is incomplete
                end = i + rl
                if end - pos > maxp:
                    raise _Malformed(f"packet of {end - pos} bytes exceeds max_packet {maxp}")
                if end > n:
                    if end - pos > 65536:  # a large packet: collect its pieces, join once
                        self.parts = [buf[pos:]]
                        self.have = n - pos
                        self.need = end - pos
                        pos = n
                    break
                if b0 & 0xF0 == 0x30:  # PUBLISH
                    qos = (b0 >> 1) & 3
                    if i + 2 > end:
                        raise _Malformed("PUBLISH truncated before the topic length")
                    j = i + 2 + ((buf[i] << 8) | buf[i + 1])
                    if j == i + 2:
                        raise _Malformed("PUBLISH with an empty topic (topic aliases are "
                                         "not supported)")
                    if j > end:
                        raise _Malformed("PUBLISH topic longer than the packet")
                    topic = buf[i + 2:j].decode()
                    if qos:
                        if qos != 1:
                            raise _Malformed(f"PUBLISH with QoS {qos} (subscribed at <= 1)")
                        if j + 2 > end:
                            raise _Malformed("PUBLISH truncated in the packet id")
                        mid = buf[j:j + 2]
                        j += 2
                    if v5:
                        if j >= end:
                            raise _Malformed("PUBLISH truncated before its properties")
                        d = buf[j]
                        if d < 0x80:
                            j += 1 + d
                        else:
                            plen, j = _read_varint(buf, j, end)
                            j += plen
                    if j > end:
                        raise _Malformed("PUBLISH truncated in the topic or properties")
                    msgs.append((topic, buf[j:end]))
                    if qos:
                        acks.append(mid)
                    if b0 & 0x08:
                        dups += 1
                else:
                    self._control(b0, buf, i, end)
                pos = end
        except _Malformed as e:
            err = str(e)
        except UnicodeDecodeError:
            err = "PUBLISH topic is not UTF-8"
        except _ServerDisconnect as e:
            server_gone = str(e)
        if err is None and server_gone is None and pos < n:
            self.buf = buf[pos:] if pos else buf
        else:
            self.buf = b""
        tr = self.tr
        if msgs:
            st["received"] += len(msgs)
            st["batches"] += 1
            if dups:
                st["dup_received"] += dups
            self.handling = True
            try:
                o._on_batch(msgs)
            except Exception:
                st["handler_errors"] += 1
                o._log.exception("ingest: on_batch raised on a batch of %d (acknowledged "
                                 "anyway)", len(msgs))
            finally:
                self.handling = False
            if tr is not self.tr or tr is None or tr.is_closing():
                return  # drop_connection() in the handler: acknowledge nothing of this batch
        out: list[bytes] = []
        if acks:
            out.append(_PUBACK + _PUBACK.join(acks))
            st["acked"] += len(acks)
        if self.ready and o._out:
            o._take(out)
        if out:
            self.write(b"".join(out) if len(out) > 1 else out[0])
        if self.stop_after:
            self.finish("stopped")
        elif err is not None:
            st["malformed"] += 1
            o._log.warning("ingest: malformed frame from %s:%d: %s; reconnecting",
                           o._host, o._port, err)
            self.finish(f"malformed frame: {err}", _DISCONNECT_MALFORMED_V5 if v5
                        else _DISCONNECT)
        elif server_gone is not None:
            st["server_disconnects"] += 1
            o._log.warning("ingest: %s", server_gone)
            self.close(server_gone)

    # ---------------------------------------------------------------- control packets

    def _control(self, b0: int, buf: bytes, i: int, end: int) -> None:
        o = self.o
        v5 = o._v5
        kind = b0 >> 4
        if b0 & 0x0F:
            raise _Malformed(f"reserved flags set in packet type {kind} (0x{b0:02x})")
        rl = end - i
        if kind == 4:  # PUBACK for one of our publishes
            if rl < 2 or (not v5 and rl != 2):
                raise _Malformed(f"PUBACK with remaining length {rl}")
            mid = (buf[i] << 8) | buf[i + 1]
            code = buf[i + 2] if rl > 2 else 0
            if rl > 3:
                _parse_props(buf, i + 3, end)
            o._puback(mid, code)
        elif kind == 13:  # PINGRESP
            if rl:
                raise _Malformed("PINGRESP with a body")
        elif kind == 9:  # SUBACK
            if rl < 3:
                raise _Malformed("SUBACK too short")
            mid = (buf[i] << 8) | buf[i + 1]
            j = _parse_props(buf, i + 2, end)[1] if v5 else i + 2
            codes = list(buf[j:end])
            fut = self.suback
            if fut is None or fut.done() or mid != self.sub_mid:
                raise _Malformed(f"unexpected SUBACK (packet id {mid})")
            if len(codes) != len(o._subs):
                raise _Malformed(f"SUBACK with {len(codes)} codes for {len(o._subs)} filters")
            fut.set_result(codes)
        elif kind == 2:  # CONNACK
            if self.connack.done():
                raise _Malformed("a second CONNACK")
            if rl < 2 or (not v5 and rl != 2):
                raise _Malformed(f"CONNACK with remaining length {rl}")
            flags, code = buf[i], buf[i + 1]
            if flags & 0xFE:
                raise _Malformed(f"CONNACK flags 0x{flags:02x}")
            props = _parse_props(buf, i + 2, end)[0] if v5 and rl > 2 else {}
            self.connack.set_result((flags, code, props))
        elif kind == 14:  # DISCONNECT (MQTT 5)
            if not v5:
                raise _Malformed("DISCONNECT from the broker (MQTT 3.1.1)")
            code = buf[i] if rl else 0
            reason = ""
            if rl > 1:
                props = _parse_props(buf, i + 1, end)[0]
                reason = f": {_text(props[_P_REASON])}" if _P_REASON in props else ""
            raise _ServerDisconnect(f"the broker sent DISCONNECT {_reason(code, True)}{reason}")
        elif kind == 11:  # UNSUBACK: we never unsubscribe; harmless
            pass
        else:
            raise _Malformed(f"unexpected packet type {kind} (0x{b0:02x})")


class BulkClient:
    """asyncio MQTT 5 (default) or 3.1.1 client for bulk ingest of QoS 0/1 PUBLISHes (module
    docstring: semantics).  ``stats`` counts: received, batches, acked, dup_received,
    handler_errors, published, resent, puback_received, puback_errors, puback_unknown,
    connects, reconnects, malformed, dead_connections, server_disconnects, pings,
    bytes_received."""

    def __init__(
        self,
        host: str,
        port: int,
        client_id: str,
        username: str | None,
        password: str | None,
        subscriptions: list[tuple[str, int]],
        on_batch: Callable[[list[Message]], None],
        *,
        keepalive: int = 30,
        clean_start: bool = False,
        session_expiry: int = 3600,
        tls: ssl.SSLContext | None = None,
        max_packet: int = 1 << 20,
        reconnect_min_s: float = 0.5,
        reconnect_max_s: float = 10.0,
        log: logging.Logger | None = None,
        protocol: int = 5,
        max_inflight: int = 1000,
        connect_timeout: float = 10.0,
        receive_maximum: int = 0,
    ) -> None:
        """``protocol`` 5 or 4 (3.1.1); ``max_inflight`` bounds our unacknowledged QoS 1
        publishes (also capped by the broker's Receive Maximum); ``connect_timeout`` bounds
        the TCP connect + CONNACK + SUBACK; ``receive_maximum`` (MQTT 5, 0 = not sent, i.e.
        65535) bounds the broker's unacknowledged QoS 1 messages to us."""
        if protocol not in (4, 5):
            raise ValueError("protocol must be 4 (MQTT 3.1.1) or 5")
        for flt, qos in subscriptions:
            if qos not in (0, 1):
                raise ValueError(f"subscription {flt!r}: QoS must be 0 or 1")
            if not flt:
                raise ValueError("empty topic filter")
            if flt.startswith("$share/") and protocol != 5:
                raise ValueError(f"{flt!r}: shared subscriptions need protocol=5")
        if password is not None and username is None and protocol == 4:
            raise ValueError("MQTT 3.1.1 needs a username with a password")
        if not 1 <= max_inflight <= 65535:
            raise ValueError("max_inflight must be 1..65535")
        if not 0 <= keepalive <= 65535:
            raise ValueError("keepalive must be 0..65535 seconds")
        if not 64 <= max_packet <= 268_435_460:
            raise ValueError("max_packet must be 64 .. 268435460 bytes")
        if not 0 <= receive_maximum <= 65535:
            raise ValueError("receive_maximum must be 0..65535")
        if not 0 <= session_expiry <= 0xFFFFFFFF:
            raise ValueError("session_expiry must be 0..4294967295 seconds")
        self._host = host
        self._port = port
        self._client_id = client_id
        self._username = username
        self._password = password
        self._subs = list(subscriptions)
        self._on_batch = on_batch
        self._keepalive = keepalive
        self._clean_start = clean_start
        self._session_expiry = session_expiry
        self._tls = tls
        self._max_packet = max_packet
        self._rmin = reconnect_min_s
        self._rmax = max(reconnect_max_s, reconnect_min_s)
        self._log = log or _LOG
        self._v5 = protocol == 5
        self._props = b"\x00" if self._v5 else b""  # an outgoing PUBLISH's (empty) properties
        self._max_inflight = max_inflight
        self._window = max_inflight
        self._connect_timeout = connect_timeout
        self._receive_maximum = receive_maximum
        self._conn: _Conn | None = None
        self._stopping = False
        self._running = False
        self._stop_ev = asyncio.Event()
        self._connected = asyncio.Event()
        self._drained = asyncio.Event()
        self._drained.set()
        self._out: deque[tuple[int, bytes, bytes]] = deque()  # (qos, head, tail)
        self._inflight: dict[int, tuple[bytes, bytes]] = {}  # mid -> (head, tail), in order
        self._mid = 0
        self._pump_scheduled = False
        self._server_max_packet = 0
        self.session_present = False
        self.stats: dict[str, int] = dict.fromkeys(
            ("received", "batches", "acked", "dup_received", "handler_errors", "published",
             "resent", "puback_received", "puback_errors", "puback_unknown", "connects",
             "reconnects", "malformed", "dead_connections", "server_disconnects", "pings",
             "bytes_received"), 0)

    # ---------------------------------------------------------------- public API

    async def run(self) -> None:
        """Connect, subscribe and read until ``stop()``; reconnect with jittered backoff on
        any connection loss.  Raises ``BulkMqttError`` on a refusal retrying cannot fix."""
        if self._running:
            raise BulkMqttError("run() is already running")
        self._running = True
        loop = asyncio.get_running_loop()
        attempt = 0
        try:
            while not self._stopping:
                subscribed = False
                try:
                    subscribed = await self._session(loop)
                except BulkMqttError:
                    raise
                except (OSError, TimeoutError, _Refused) as e:
                    if not self._stopping:
                        self._log.warning("ingest: %s:%d as %r: %s", self._host, self._port,
                                          self._client_id, e or type(e).__name__)
                if self._stopping:
                    break
                if subscribed:
                    attempt = 0
                delay = min(self._rmax, self._rmin * (2 ** min(attempt, 30)))
                delay *= random.uniform(0.5, 1.0)
                attempt += 1
                self.stats["reconnects"] += 1
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop_ev.wait(), delay)
        finally:
            self._running = False
            self._connected.clear()
            conn = self._conn
            if conn is not None and not conn.draining:
                conn.close("stopped", abort=not self._stopping)
            self._conn = None

    async def wait_connected(self, timeout: float) -> None:
        """Return once the current connection is subscribed (every SUBACK code granted);
        ``TimeoutError`` after ``timeout`` seconds."""
        await asyncio.wait_for(self._connected.wait(), timeout)

    @property
    def connected(self) -> bool:
        """The current connection is up and subscribed."""
        return self._connected.is_set()

    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> None:
        """Queue one PUBLISH (encoded now; written in batches once connected and subscribed,
        QoS 1 within the in-flight window).  Unacknowledged QoS 1 frames are re-sent with DUP
        after a reconnect."""
        if qos not in (0, 1):
            raise ValueError("qos must be 0 or 1")
        tb = topic.encode()
        lt = len(tb)
        if not lt or "+" in topic or "#" in topic:
            raise ValueError(f"invalid topic name {topic!r}")
        if lt > 0xFFFF:
            raise ValueError("MQTT string longer than 65535 bytes")
        props = self._props
        b0 = 0x30 | (qos << 1) | (1 if retain else 0)
        size = 2 + lt + 2 * qos + len(props) + len(payload)
        # fixed header, remaining length, topic: one bytes() for the common sizes (< 16 KB)
        if size < 0x80:
            head = bytes((b0, size, lt >> 8, lt & 0xFF)) + tb
        elif size < 0x4000:
            head = bytes((b0, size & 0x7F | 0x80, size >> 7, lt >> 8, lt & 0xFF)) + tb
        else:
            head = bytes((b0,)) + varlen(size) + mqtt_string(tb)
        if len(head) - 2 - lt + size > (self._server_max_packet or 268_435_460):
            raise ValueError("PUBLISH larger than the broker's maximum packet size")
        self._out.append((qos, head, props + payload))
        self._drained.clear()
        conn = self._conn
        if conn is not None and conn.ready and not self._pump_scheduled:
            self._pump_scheduled = True
            conn.loop.call_soon(self._pump)

    async def flush(self, timeout: float) -> None:
        """Wait until every queued publish is written and (QoS 1) acknowledged;
        ``TimeoutError`` after ``timeout`` seconds."""
        if self._out or self._inflight:
            await asyncio.wait_for(self._drained.wait(), timeout)

    def stop(self) -> None:
        """DISCONNECT (the session is kept for ``session_expiry``) and make ``run()`` return.
        Called from ``on_batch``, the batch is acknowledged first.  A stopped client does not
        run again (make a new one)."""
        self._stopping = True
        self._stop_ev.set()
        conn = self._conn
        if conn is not None:
            if conn.handling:  # from on_batch: acknowledge this batch first
                conn.stop_after = True
                return
            conn.finish("stopped")

    def drop_connection(self) -> None:
        """Abort the current connection now, without DISCONNECT and without acknowledging the
        batch being handled (call it from ``on_batch`` when the batch could not be stored):
        the broker redelivers every unacknowledged message (DUP) after the reconnect."""
        conn = self._conn
        if conn is not None:
            conn.close("dropped by the application", abort=True)

    # ---------------------------------------------------------------- one connection

    def _connect_packet(self) -> bytes:
        flags = 0x02 if self._clean_start else 0
        payload = mqtt_string(self._client_id.encode())
        if self._username is not None:
            flags |= 0x80
            payload += mqtt_string(self._username.encode())
        if self._password is not None:
            flags |= 0x40
            payload += mqtt_string(self._password.encode())
        var = mqtt_string(b"MQTT") + bytes((5 if self._v5 else 4, flags)) + (
            self._keepalive.to_bytes(2, "big"))
        if self._v5:
            props = b""
            if self._session_expiry:
                props += bytes((_P_SESSION_EXPIRY,)) + self._session_expiry.to_bytes(4, "big")
            if self._receive_maximum:
                props += bytes((_P_RECEIVE_MAX,)) + self._receive_maximum.to_bytes(2, "big")
            props += bytes((_P_MAX_PACKET,)) + self._max_packet.to_bytes(4, "big")
            var += varlen(len(props)) + props
        body = var + payload
        return b"\x10" + varlen(len(body)) + body

    def _subscribe_packet(self, mid: int) -> bytes:
        body = mid.to_bytes(2, "big") + (b"\x00" if self._v5 else b"")
        for flt, qos in self._subs:
            # MQTT 5: Retain Handling 1 (retained messages only for a new subscription)
            opts = qos | (0x10 if self._v5 and not flt.startswith("$share/") else 0)
            body += mqtt_string(flt.encode()) + bytes((opts,))
        return b"\x82" + varlen(len(body)) + body

    async def _session(self, loop: asyncio.AbstractEventLoop) -> bool:
        """One connection from TCP connect to its loss; True if it got subscribed."""
        conn = _Conn(self, loop)
        self._conn = conn
        ka_task: asyncio.Task[None] | None = None
        try:
            await asyncio.wait_for(
                loop.create_connection(lambda: conn, self._host, self._port, ssl=self._tls,
                                       server_hostname=self._host if self._tls else None),
                self._connect_timeout)
            if self._stopping:
                return False
            conn.write(self._connect_packet())
            flags, code, props = await asyncio.wait_for(conn.connack, self._connect_timeout)
            if code:
                retry = code in (_RETRY_V5 if self._v5 else _RETRY_V4)
                why = (f"broker {self._host}:{self._port} refused the connection as "
                       f"{self._username!r} (client id {self._client_id!r}): CONNACK "
                       f"{_reason(code, self._v5)}")
                if _P_REASON in props:
                    why += f": {_text(props[_P_REASON])}"
                conn.close(why)
                if retry:
                    raise _Refused(why)
                raise BulkMqttError(why)
            self.stats["connects"] += 1
            self.session_present = bool(flags & 1)
            self._apply_connack(props)
            if self._keepalive:
                ka_task = loop.create_task(self._keepalive_loop(conn))
            if self._subs:
                self._mid = self._mid % 65535 + 1
                while self._mid in self._inflight:
                    self._mid = self._mid % 65535 + 1
                conn.sub_mid = self._mid
                conn.suback = loop.create_future()
                conn.write(self._subscribe_packet(conn.sub_mid))
                codes = await asyncio.wait_for(conn.suback, self._connect_timeout)
                bad = [(f, c) for (f, _), c in zip(self._subs, codes, strict=True) if c >= 0x80]
                if bad:
                    why = "; ".join(f"{f!r}: {_reason(c, self._v5)}" for f, c in bad)
                    conn.finish("subscription refused")
                    raise BulkMqttError(f"broker {self._host}:{self._port} refused the "
                                      f"subscription(s) of {self._username!r}: {why}")
            if conn.tr is None or conn.tr.is_closing() or conn.draining or self._stopping:
                await conn.closed
                return False
            conn.ready = True
            self._connected.set()
            out: list[bytes] = []
            for mid, (head, tail) in self._inflight.items():
                out += (bytes((head[0] | 0x08,)), head[1:], mid.to_bytes(2, "big"), tail)
                self.stats["resent"] += 1
            self._take(out)
            if out:
                conn.write(b"".join(out))
            await conn.closed
            if conn.why and not self._stopping:
                self._log.warning("ingest: connection to %s:%d ended: %s", self._host,
                                  self._port, conn.why)
            return True
        except BaseException:
            if not conn.draining:  # cancelled after stop(): let the DISCONNECT finish
                conn.close("session ended", abort=True)
            raise
        finally:
            if ka_task is not None:
                ka_task.cancel()
            self._connected.clear()

    def _apply_connack(self, props: dict[int, int | str | bytes]) -> None:
        rm = props.get(_P_RECEIVE_MAX)
        self._window = min(self._max_inflight, rm) if isinstance(rm, int) and rm else (
            self._max_inflight)
        ska = props.get(_P_SERVER_KEEPALIVE)
        if isinstance(ska, int):
            self._keepalive = ska
        mp = props.get(_P_MAX_PACKET)
        self._server_max_packet = mp if isinstance(mp, int) and mp else 0
        aid = props.get(_P_ASSIGNED_ID)
        if isinstance(aid, str) and not self._client_id:
            self._client_id = aid

    def _max_packet_out(self) -> int:
        return self._server_max_packet or 268_435_460

    async def _keepalive_loop(self, conn: _Conn) -> None:
        ka = float(self._keepalive)
        half = ka / 2
        tick = max(0.05, ka / 4)
        loop = conn.loop
        while not conn.closed.done():
            await asyncio.sleep(tick)
            now = loop.time()
            if now - conn.last_recv > 1.5 * ka:
                self.stats["dead_connections"] += 1
                conn.close(f"nothing from the broker for {now - conn.last_recv:.1f} s "
                           f"(keepalive {ka:g} s): dead connection", abort=True)
                return
            if (now - conn.last_sent >= half or (
                    now - conn.last_recv >= half and now - conn.last_ping >= half)
                    ) and conn.write(_PINGREQ):
                conn.last_ping = now
                self.stats["pings"] += 1

    def _lost(self, conn: _Conn) -> None:
        if conn is self._conn:
            self._connected.clear()

    # ---------------------------------------------------------------- publishing

    def _take(self, out: list[bytes]) -> None:
        """Move queued publishes into ``out`` while the window has room."""
        q = self._out
        inflight = self._inflight
        window = self._window
        n = 0
        while q and len(inflight) < window:
            qos, head, tail = q.popleft()
            if qos:
                mid = self._mid % 65535 + 1
                while mid in inflight:
                    mid = mid % 65535 + 1
                self._mid = mid
                inflight[mid] = (head, tail)
                out += (head, mid.to_bytes(2, "big"), tail)
            else:
                out += (head, tail)
            n += 1
        self.stats["published"] += n
        if not q and not inflight:
            self._drained.set()

    def _pump(self) -> None:
        self._pump_scheduled = False
        conn = self._conn
        if conn is None or not conn.ready or not self._out:
            return
        out: list[bytes] = []
        self._take(out)
        if out:
            conn.write(b"".join(out))

    def _puback(self, mid: int, code: int) -> None:
        if self._inflight.pop(mid, None) is None:
            self.stats["puback_unknown"] += 1
            return
        self.stats["puback_received"] += 1
        if code >= 0x80:
            self.stats["puback_errors"] += 1
            self._log.warning("ingest: the broker refused a publish: PUBACK %s",
                              _reason(code, True))
        if self._out:
            conn = self._conn
            if conn is not None and conn.ready and not self._pump_scheduled:
                self._pump_scheduled = True
                conn.loop.call_soon(self._pump)
        elif not self._inflight:
            self._drained.set()
