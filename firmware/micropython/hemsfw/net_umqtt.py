# The firmware's own MQTT 3.1.1 client, with timeouts and TLS: the MQTT adapter on MicroPython
# (unix port and boards).  It has umqtt.simple's interface (hemsfw/link.py uses it; net_paho.py
# is the same on CPython) but no longer builds on it: umqtt.simple (1.3.4) has no timeouts at all
# (a dead broker hangs its connect, a QoS 1 publish waits for the PUBACK forever, check_msg()
# blocks on a half-received packet), its TLS path imports `ussl`, which 1.23+ no longer has, and
# a stock ESP32 image freezes its own copy, which would shadow the one on the filesystem.  One
# class of its own costs about half the heap of umqtt.simple plus a wrapper around it
# (docs/benchmarks.md, "Towards 64 KB, third pass"), and nothing frozen can shadow it.
#
# What it speaks (all the firmware needs): CONNECT with last will, user/password and a clean or
# persistent session; SUBSCRIBE (waits for the SUBACK); PUBLISH at QoS 0 or 1 (QoS 1 waits for
# its PUBACK); incoming PUBLISH at QoS 0 or 1 (acknowledged), handed to the callback as
# (topic bytes, payload bytes) from inside check_msg, subscribe or publish; PINGREQ; DISCONNECT.
# Anything else from the broker (QoS 2, a malformed packet) raises: the link is then lost and the
# runner reconnects (hemsfw/link.py).
#
# Every socket operation waits at most timeout_s, and set_budget(ms) gives all the operations
# that follow one shared deadline (the runner sets it at the start of each loop turn's network
# work): a connect (TCP + TLS + CONNACK + SUBACKs) or a QoS 1 publish waiting for its PUBACK then
# blocks the loop for at most that budget in total, however the broker trickles its bytes.  Only
# DNS (socket.getaddrinfo) is outside it: MicroPython has no resolver timeout (docs/firmware.md).
# ping() raises OSError when nothing has arrived for 1.5 keepalives (the MQTT rule for a dead
# link), which catches half-open TCP connections a write would not notice.
#
# MicroPython only (socket read/write streams).

import socket

from hemsfw.clock import ticks_add, ticks_diff, ticks_ms

if False:  # types for mypy only (docs/firmware.md, "Types")
    from collections.abc import Callable
    from typing import Any

    from hemsfw.interfaces import Json

    OnMsg = Callable[[bytes, bytes], None]

ETIMEDOUT = 110


def _str(s: bytes | str) -> bytes:
    """An MQTT string: 2-byte length, then the bytes."""
    if isinstance(s, str):
        s = s.encode()
    return bytes((len(s) >> 8, len(s) & 0xFF)) + s


def _head(op: int, n: int) -> bytearray:
    """A fixed header: the packet type byte, then the remaining length `n` (variable length)."""
    head = bytearray((op,))
    while True:
        b = n & 0x7F
        n >>= 7
        head.append(b | 0x80 if n else b)
        if not n:
            return head


class Client:
    """An MQTT client with bounded waits, reconnectable with connect(), optional TLS."""

    def __init__(self, client_id: str, server: str, port: int = 1883, user: str | None = None,
                 password: str | None = None, keepalive: int = 30, timeout_s: int = 5,
                 cadata: bytes | None = None) -> None:
        self.client_id = client_id
        self.server = server
        self.port = port
        self.user = user
        self.pswd = password
        self.keepalive = keepalive
        self.timeout_s = timeout_s
        self.cadata = cadata  # DER bytes of the CA that signed the broker's certificate, or None
        self.raw: Any = None       # the TCP socket (owns the timeout)
        self.sock: Any = None      # raw itself, or the TLS socket wrapping it
        self.cb: OnMsg | None = None
        self.lw: tuple[str, bytes, bool, int] | None = None
        self.pid = 0
        # ticks_ms by which the current turn's network work must be done
        self.deadline: int | None = None
        self.addr: Any = None      # resolved once (DNS has no timeout), again after a failure
        self.last_rx = 0

    def set_callback(self, f: "OnMsg") -> None:
        self.cb = f

    def set_last_will(self, topic: str, msg: bytes, retain: bool = False, qos: int = 0) -> None:
        self.lw = (topic, msg, retain, qos)

    def set_budget(self, ms: int | None) -> None:
        """Bound every socket operation from now on to `ms` in total (None: no budget)."""
        self.deadline = None if ms is None else ticks_add(ticks_ms(), ms)

    def _arm(self) -> None:
        """The next socket operation waits at most min(timeout_s, budget left)."""
        t: float = self.timeout_s
        d = self.deadline
        if d is not None:
            left = ticks_diff(d, ticks_ms())
            if left <= 0:
                raise OSError(ETIMEDOUT)
            if left < 1000 * t:
                t = left / 1000
        self.raw.settimeout(t)

    def _read(self, n: int) -> bytes:
        if not n:
            return b""
        self._arm()
        b: bytes | None = self.sock.read(n)
        if not b or len(b) != n:
            raise OSError("connection closed")
        self.last_rx = ticks_ms()
        return b

    def _write(self, buf: "bytes | bytearray") -> None:
        self._arm()
        self.sock.write(buf)

    def _wait(self, op: int = 0) -> tuple[int, bytes]:
        """One packet from the broker (`op`: its first byte, if already read).  A PUBLISH goes
        to the callback (acknowledged if QoS 1) and comes back as (op, b""); any other packet
        as (op, its remaining bytes)."""
        if not op:
            op = self._read(1)[0]
        n = sh = 0
        while True:
            b = self._read(1)[0]
            n |= (b & 0x7F) << sh
            if not b & 0x80:
                break
            sh += 7
        if op & 0xF0 != 0x30:
            if n > 4:   # CONNACK, PUBACK, SUBACK, PINGRESP: never longer
                raise OSError("bad packet")
            return op, self._read(n)
        t = self._read(2)
        topic = self._read(t[0] << 8 | t[1])
        n -= 2 + len(topic)
        pid = b""
        if op & 6:
            if op & 6 != 2:
                raise OSError("QoS 2")    # never subscribed at QoS 2
            pid = self._read(2)
            n -= 2
        msg = self._read(n)
        if self.cb is not None:
            self.cb(topic, msg)
        if pid:
            self._write(b"\x40\x02" + pid)   # PUBACK
        return op, b""

    def _next_pid(self) -> bytes:
        self.pid = self.pid % 0xFFFF + 1    # 1..65535 (0 is no packet id)
        return bytes((self.pid >> 8, self.pid & 0xFF))

    def connect(self, clean_session: bool = True) -> int:
        """CONNECT and wait for CONNACK (bounded); returns the session-present flag."""
        self.close()
        if self.addr is None:
            self.addr = socket.getaddrinfo(self.server, self.port, 0, socket.SOCK_STREAM)[0][-1]
        raw = self.raw = socket.socket()
        try:
            t: float = self.timeout_s
            if self.deadline is not None:
                t = min(t, max(ticks_diff(self.deadline, ticks_ms()), 1) / 1000)
            raw.settimeout(t)
            raw.connect(self.addr)
            self.sock = raw
            if self.cadata is not None:
                import tls  # MicroPython 1.23+: the C module under `ssl`

                ctx = tls.SSLContext(tls.PROTOCOL_TLS_CLIENT)
                ctx.verify_mode = tls.CERT_REQUIRED
                ctx.load_verify_locations(self.cadata)  # the C method: DER bytes, positional
                self.sock = ctx.wrap_socket(raw, server_hostname=self.server)
        except BaseException:
            self.sock = self.raw = None
            raw.close()
            self.addr = None   # resolve again next time (the broker may have moved)
            raise
        flags = (clean_session and 0x02) or 0
        payload = _str(self.client_id)
        if self.lw is not None:
            topic, msg, retain, qos = self.lw
            flags |= 0x04 | (qos << 3) | ((retain and 0x20) or 0)
            payload += _str(topic) + _str(msg)
        if self.user is not None:
            flags |= 0xC0
            payload += _str(self.user) + _str(self.pswd or "")
        body = b"\x00\x04MQTT\x04" + bytes((flags, self.keepalive >> 8, self.keepalive & 0xFF))
        self._write(_head(0x10, len(body) + len(payload)) + body + payload)
        op, resp = self._wait()
        if op != 0x20 or len(resp) != 2:
            raise OSError("bad CONNACK")
        if resp[1] != 0:
            raise OSError("connection refused: %d" % resp[1])  # 4: bad user/password, 5: not
        self.pid = 0                                             # authorised
        return resp[0] & 1

    def subscribe(self, topic: str, qos: int = 0) -> None:
        """SUBSCRIBE and wait for its SUBACK (messages arriving meanwhile go to the callback)."""
        t = _str(topic)
        pid = self._next_pid()
        self._write(_head(0x82, len(t) + 3) + pid + t + bytes((qos,)))
        while True:
            op, b = self._wait()
            if op == 0x90 and b[:2] == pid:
                if b[2:] == b"\x80":
                    raise OSError("subscription refused: " + topic)
                return

    def publish(self, topic: str, msg: bytes, retain: bool = False, qos: int = 0) -> None:
        """PUBLISH; at QoS 1 returns once the broker acknowledged it (PUBACK)."""
        t = _str(topic)
        pid = self._next_pid() if qos else b""
        self._write(_head(0x30 | qos << 1 | retain, len(t) + len(pid) + len(msg)) + t + pid)
        self._write(msg)   # (the payload as it is: no copy of a large report)
        while pid:
            op, b = self._wait()
            if op == 0x40 and b == pid:
                return

    def check_msg(self) -> int | None:
        """Handle one packet if one has begun to arrive (never waits for the first byte)."""
        self.raw.settimeout(0)
        b: bytes | None = self.sock.read(1)
        if b is None:
            return None
        if b == b"":
            raise OSError("connection closed")
        return self._wait(b[0])[0]

    def ping(self) -> None:
        """PINGREQ; OSError if the broker has been silent for 1.5 keepalives (dead link)."""
        if self.keepalive and ticks_diff(ticks_ms(), self.last_rx) > 1500 * self.keepalive:
            raise OSError("keepalive timeout")
        self._write(b"\xc0\x00")

    def close(self) -> OSError | None:
        """Drop the socket without DISCONNECT (keeps the last will armed on a link failure)."""
        s, raw = self.sock, self.raw
        self.sock = self.raw = None
        if s is None:
            return None
        try:
            s.close()
        except OSError as e:   # TLS close_notify on a dead link: nothing left to do
            return e
        finally:
            if s is not raw:
                raw.close()
        return None

    def disconnect(self) -> None:
        """Graceful DISCONNECT (the broker then discards the last will), then close."""
        try:
            self._write(b"\xe0\x00")
        finally:
            self.close()


def make_client(mcfg: "Json", client_id: str) -> Client:
    """Client from the config's "mqtt" section (hemsfw.config)."""
    cadata = None
    if mcfg.get("cafile_der"):
        # a DER CA certificate (MicroPython's load_verify_locations(cadata=) wants DER)
        with open(mcfg["cafile_der"], "rb") as f:
            cadata = f.read()
    return Client(client_id, mcfg["host"], mcfg["port"], mcfg["user"], mcfg["password"],
                  mcfg["keepalive"], mcfg["timeout_s"], cadata)
