# umqtt.simple with timeouts and TLS: the MQTT adapter on MicroPython (unix port and boards).
#
# Why a wrapper (DESIGN.md decision 8): umqtt.simple 1.3.4 has no timeouts at all.  Its connect()
# opens a blocking socket (a dead broker hangs the TCP connect), a QoS 1 publish waits for the
# PUBACK forever, and check_msg() sets the socket non-blocking for the first byte and then calls
# setblocking(True), which on MicroPython also clears any timeout, so a half-received packet blocks
# the loop (and the relay) forever.  Its TLS path imports `ussl`, which 1.23+ no longer has.
#
# So: connect() is re-implemented here (same CONNECT packet as umqtt, with a timed TCP connect and
# TLS via `tls.SSLContext`), and the socket handed to umqtt is wrapped so setblocking(True) means
# "blocking with our timeout".  Any stall then surfaces as OSError(ETIMEDOUT) and the runner
# reconnects.  ping() raises OSError when nothing has arrived for 1.5 keepalives (the MQTT rule for
# a dead link), which catches half-open TCP connections a write would not notice.
#
# On top of the per-read timeout, set_budget(ms) gives all the socket operations that follow one
# shared deadline (the runner sets it at the start of each loop turn's network work): a connect
# (TCP + TLS + CONNACK + SUBACKs) or a QoS 1 publish waiting for its PUBACK then blocks the loop
# for at most that budget in total, however the broker trickles its bytes.  Only DNS
# (socket.getaddrinfo) is outside it: MicroPython has no resolver timeout (docs/firmware.md).
#
# MicroPython only (umqtt.simple, socket.read/write streams).

import socket
import struct

from umqtt.simple import MQTTClient, MQTTException

from hemsfw.clock import ticks_add, ticks_diff, ticks_ms

if False:  # types for mypy only (docs/firmware.md, "Types")
    from typing import Any

    from hemsfw.interfaces import Json

ETIMEDOUT = 110


class _TimedSock:
    """The stream umqtt reads and writes, with setblocking(True) mapped to a bounded timeout."""

    def __init__(self, raw: "Any", stream: "Any", owner: "Client") -> None:
        self.raw = raw          # the TCP socket (owns the timeout)
        self.stream = stream    # raw itself, or the TLS socket wrapping it
        self.owner = owner      # the Client: timeout_s and the shared deadline
        self.blocking = True
        self.last_rx = ticks_ms()
        self._arm()

    def _arm(self) -> None:
        """Blocking mode: the next operation waits at most min(timeout_s, budget left)."""
        t: float = self.owner.timeout_s
        d = self.owner.deadline
        if d is not None:
            left = ticks_diff(d, ticks_ms())
            if left <= 0:
                raise OSError(ETIMEDOUT)
            if left < 1000 * t:
                t = left / 1000
        self.raw.settimeout(t)

    def read(self, n: int) -> bytes | None:
        if self.blocking:
            self._arm()
        b: bytes | None = self.stream.read(n)
        if b:
            self.last_rx = ticks_ms()
        return b

    def write(self, buf: bytes, n: int | None = None) -> "Any":
        self._arm()
        try:
            if n is None:
                return self.stream.write(buf)
            return self.stream.write(buf, n)
        finally:
            if not self.blocking:
                self.raw.settimeout(0)

    def setblocking(self, flag: bool) -> None:
        self.blocking = flag
        if flag:
            self._arm()
        else:
            self.raw.settimeout(0)

    def close(self) -> None:
        try:
            self.stream.close()
        finally:
            if self.stream is not self.raw:
                self.raw.close()


def _str(s: bytes | str) -> bytes:
    if isinstance(s, str):
        s = s.encode()
    return struct.pack("!H", len(s)) + s


class Client(MQTTClient):
    """umqtt.simple.MQTTClient with bounded waits, reconnectable with connect(), optional TLS."""

    def __init__(self, client_id: str, server: str, port: int = 1883, user: str | None = None,
                 password: str | None = None, keepalive: int = 30, timeout_s: int = 5,
                 cadata: bytes | None = None) -> None:
        MQTTClient.__init__(self, client_id, server, port, user, password, keepalive)
        self.timeout_s = timeout_s
        self.cadata = cadata  # DER bytes of the CA that signed the broker's certificate, or None
        # ticks_ms by which the current turn's network work must be done
        self.deadline: int | None = None
        self.addr: Any = None      # resolved once (DNS has no timeout), again after a failure

    def set_budget(self, ms: int | None) -> None:
        """Bound every socket operation from now on to `ms` in total (None: no budget)."""
        self.deadline = None if ms is None else ticks_add(ticks_ms(), ms)

    def _open(self) -> _TimedSock:
        if self.addr is None:
            self.addr = socket.getaddrinfo(self.server, self.port, 0, socket.SOCK_STREAM)[0][-1]
        addr = self.addr
        raw = socket.socket()
        try:
            t: float = self.timeout_s
            if self.deadline is not None:
                t = min(t, max(ticks_diff(self.deadline, ticks_ms()), 1) / 1000)
            raw.settimeout(t)
            raw.connect(addr)
            stream = raw
            if self.cadata is not None:
                import tls  # MicroPython 1.23+: the C module under `ssl`

                ctx = tls.SSLContext(tls.PROTOCOL_TLS_CLIENT)
                ctx.verify_mode = tls.CERT_REQUIRED
                ctx.load_verify_locations(self.cadata)  # the C method: DER bytes, positional
                stream = ctx.wrap_socket(raw, server_hostname=self.server)
        except BaseException:
            raw.close()
            self.addr = None   # resolve again next time (the broker may have moved)
            raise
        return _TimedSock(raw, stream, self)

    def connect(self, clean_session: bool = True) -> int:
        """CONNECT and wait for CONNACK (bounded); returns the session-present flag."""
        self.close()
        self.sock = self._open()
        flags = (clean_session and 0x02) or 0
        payload = _str(self.client_id)
        if self.lw_topic:
            flags |= 0x04 | (self.lw_qos << 3) | ((self.lw_retain and 0x20) or 0)
            payload += _str(self.lw_topic) + _str(self.lw_msg)  # type: ignore[arg-type]  # (set)
        if self.user is not None:
            flags |= 0xC0
            payload += _str(self.user) + _str(self.pswd)  # type: ignore[arg-type]  # (with user)
        var = b"\x00\x04MQTT\x04" + bytes((flags, self.keepalive >> 8, self.keepalive & 0xFF))
        body = var + payload
        n = len(body)
        head = bytearray(b"\x10")
        while True:  # remaining length, MQTT variable-length encoding
            b = n & 0x7F
            n >>= 7
            head.append(b | 0x80 if n else b)
            if not n:
                break
        self.sock.write(bytes(head) + body)
        resp: bytes | None = self.sock.read(4)
        if not resp or len(resp) != 4 or resp[0] != 0x20 or resp[1] != 0x02:
            raise OSError("bad CONNACK")
        if resp[3] != 0:
            raise MQTTException(resp[3])  # 4 = bad user/password, 5 = not authorised
        self.pid = 0
        return resp[2] & 1

    def ping(self) -> None:
        """PINGREQ; OSError if the broker has been silent for 1.5 keepalives (dead link)."""
        if self.keepalive and ticks_diff(ticks_ms(), self.sock.last_rx) > 1500 * self.keepalive:
            raise OSError("keepalive timeout")
        MQTTClient.ping(self)

    def close(self) -> OSError | None:
        """Drop the socket without DISCONNECT (keeps the last will armed on a link failure)."""
        s = self.sock
        self.sock = None
        if s is not None:
            try:
                s.close()
            except OSError as e:   # TLS close_notify on a dead link: nothing left to do
                return e
        return None

    def disconnect(self) -> None:
        """Graceful DISCONNECT (the broker then discards the last will), then close."""
        try:
            self.sock.write(b"\xe0\x00")
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
