# paho-mqtt 2.x behind umqtt.simple's MQTTClient interface: the MQTT adapter under CPython
# (Raspberry Pi, and the CPython run of the lab/tests).  The runner (hemsfw/runner.py) sees the same
# small synchronous interface on every platform: connect / set_callback / set_last_will /
# subscribe / publish / check_msg / ping / disconnect (+ close).
#
# paho is driven by hand with loop(timeout=0) from check_msg(): no background thread, so callbacks
# run inside the runner's loop exactly like umqtt's.  Every blocking step (CONNACK, SUBACK, PUBACK)
# waits at most `timeout_s` and then raises OSError, which the runner treats as a lost link
# (DESIGN.md decision 8).  paho sends PINGREQs itself from loop() and drops a link whose PINGRESP
# does not come, so ping() is a no-op here.
#
# CPython only (imported by run_home.py when sys.implementation.name != "micropython").

import ssl
import time

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

if False:  # types for mypy only (docs/firmware.md, "Types")
    from collections.abc import Callable
    from typing import Any

    from hemsfw.interfaces import Json


class MQTTException(Exception):
    pass


class Client:
    def __init__(self, client_id: str, server: str, port: int = 1883, user: str | None = None,
                 password: str | None = None, keepalive: int = 30, timeout_s: int = 5,
                 cadata: bytes | str | None = None) -> None:
        self.client_id = client_id
        self.server = server
        self.port = port
        self.user = user
        self.pswd = password
        self.keepalive = keepalive
        self.timeout_s = timeout_s
        self.cadata = cadata  # DER (or PEM text) of the CA; None = plain MQTT
        self.cb: Callable[[bytes, bytes], None] | None = None
        self.will: tuple[str, bytes, int, bool] | None = None
        self._c: mqtt.Client | None = None
        self._connack: Any = None     # (flags, reason code) once the CONNACK is in
        self._subacks: dict[int | None, Any] = {}
        self._lost = False
        # time.monotonic() by which this turn's network work must be done
        self.deadline: float | None = None

    def set_budget(self, ms: int | None) -> None:
        """Bound the waits from now on to `ms` in total (None: only timeout_s per wait)."""
        self.deadline = None if ms is None else time.monotonic() + ms / 1000

    def _limit(self) -> float:
        t = time.monotonic() + self.timeout_s
        return t if self.deadline is None else min(t, self.deadline)

    # -------------------------------------------------------------- umqtt.simple interface

    def set_callback(self, f: "Callable[[bytes, bytes], None]") -> None:
        self.cb = f

    def set_last_will(self, topic: str, msg: bytes, retain: bool = False, qos: int = 0) -> None:
        self.will = (topic, msg, qos, retain)

    def connect(self, clean_session: bool = True) -> int:
        """A fresh paho client per connection (no paho-internal reconnect state); blocks until
        CONNACK or timeout_s.  Returns the session-present flag like umqtt."""
        self.close()
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=self.client_id,
                        clean_session=clean_session, reconnect_on_failure=False)
        c.connect_timeout = max(0.05, self._limit() - time.monotonic())
        if self.user is not None:
            c.username_pw_set(self.user, self.pswd)
        if self.will is not None:
            t, m, q, r = self.will
            c.will_set(t, m, q, r)
        if self.cadata is not None:
            ctx = ssl.create_default_context(cadata=self.cadata)
            ctx.minimum_version = ssl.TLSVersion.TLSv1_2
            c.tls_set_context(ctx)
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_subscribe = self._on_subscribe
        c.on_message = self._on_message
        self._connack = None
        self._lost = False
        self._subacks = {}
        self._c = c
        c.connect(self.server, self.port, self.keepalive)  # TCP connect bounded by connect_timeout
        self._wait(lambda: self._connack is not None, "CONNACK")
        flags, rc = self._connack
        if rc.is_failure:
            self.close()
            raise MQTTException(rc.value)
        return 1 if flags.session_present else 0

    def subscribe(self, topic: str, qos: int = 0) -> None:
        rc, mid = self._live().subscribe(topic, qos)
        self._check(rc)
        self._wait(lambda: mid in self._subacks, "SUBACK")
        codes = self._subacks.pop(mid)
        if any(x.is_failure for x in codes):
            raise MQTTException(0x80)

    def publish(self, topic: str, msg: bytes, retain: bool = False, qos: int = 0) -> None:
        info = self._live().publish(topic, msg, qos, retain)
        self._check(info.rc)
        if qos:
            self._wait(info.is_published, "PUBACK")

    def check_msg(self) -> None:
        """Process whatever has arrived (non-blocking); OSError when the link is gone."""
        self._check(self._live().loop(timeout=0))
        if self._lost:
            raise OSError("connection lost")

    def ping(self) -> None:
        pass  # paho's loop() keeps the connection alive (PINGREQ / PINGRESP timeout)

    def fileno_sock(self) -> "Any":
        """The socket (for select.poll while idle), or None."""
        return None if self._c is None else self._c.socket()

    def disconnect(self) -> None:
        """Graceful DISCONNECT (the broker then discards the last will)."""
        c = self._c
        if c is not None:
            try:
                c.disconnect()
                c.loop(timeout=0)
            finally:
                self.close()

    def close(self) -> None:
        """Drop the socket without DISCONNECT (keeps the last will armed on a link failure)."""
        c = self._c
        self._c = None
        if c is not None:
            sock = c.socket()
            if sock is not None:
                sock.close()   # closing a socket twice is harmless; this cannot raise

    # -------------------------------------------------------------- internals

    def _live(self) -> mqtt.Client:
        """The connected paho client; OSError without one (the link then counts as lost)."""
        if self._c is None:
            raise OSError("not connected")
        return self._c

    def _check(self, rc: int) -> None:
        if rc != mqtt.MQTT_ERR_SUCCESS:
            raise OSError("mqtt: " + mqtt.error_string(rc))

    def _wait(self, done: "Callable[[], bool]", what: str) -> None:
        deadline = self._limit()
        while not done():
            if self._lost:
                raise OSError("connection lost waiting for " + what)
            if time.monotonic() >= deadline:
                raise OSError("timeout waiting for " + what)
            self._check(self._live().loop(timeout=0.05))

    def _on_connect(self, client: mqtt.Client, userdata: "Any", flags: "Any", reason_code: "Any",
                    properties: "Any") -> None:
        self._connack = (flags, reason_code)

    def _on_disconnect(self, client: mqtt.Client, userdata: "Any", flags: "Any",
                       reason_code: "Any", properties: "Any") -> None:
        self._lost = True

    def _on_subscribe(self, client: mqtt.Client, userdata: "Any", mid: int, reason_codes: "Any",
                      properties: "Any") -> None:
        self._subacks[mid] = reason_codes

    def _on_message(self, client: mqtt.Client, userdata: "Any", msg: mqtt.MQTTMessage) -> None:
        # umqtt passes the topic as bytes: keep the same types on both platforms.
        if self.cb is not None:
            self.cb(msg.topic.encode(), msg.payload)  # type: ignore[arg-type]  # (bytes)


def make_client(mcfg: "Json", client_id: str) -> Client:
    """Client from the config's "mqtt" section (hemsfw.config)."""
    cadata = None
    if mcfg.get("cafile_der"):
        with open(mcfg["cafile_der"], "rb") as f:
            cadata = f.read()
    return Client(client_id, mcfg["host"], mcfg["port"], mcfg["user"], mcfg["password"],
                  mcfg["keepalive"], mcfg["timeout_s"], cadata)
