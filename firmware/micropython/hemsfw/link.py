# One supervised MQTT connection (the utility's broker, or the resident's local broker for Home
# Assistant): connect with last will, keepalive pings, jittered exponential backoff, bounded work.
#
# The client has umqtt.simple.MQTTClient's interface (hemsfw/net_umqtt.py, hemsfw/net_paho.py):
# connect(clean_session) / set_callback / set_last_will / subscribe / publish / check_msg / ping /
# disconnect, optionally close() (drop the socket without DISCONNECT, so the will fires) and
# set_budget(ms) (one deadline for all the socket work that follows).  Any exception from the
# client means the link is lost (net_umqtt raises OSError, also on protocol surprises).
#
# Never blocking: a reconnect is only *scheduled* (retry_at); each turn does at most one bounded
# connect attempt or one poll, both under the budget `timeout_s`.  Availability: the will is
# `offline` (retained, QoS 1) and `online` (retained) is published once subscribed.
# Failover: given several brokers (`servers`, the nodes of a cluster: config mqtt.hosts), a lost
# link or a failed connect moves the client to the next one for the next attempt (the protocol
# is the same on every node; the persistent session follows the home where the broker keeps it:
# RabbitMQ's quorum queues, docs/scaling.md).
# MicroPython subset only.

from hemsfw.clock import ticks_add, ticks_diff

if False:  # types for mypy only (docs/firmware.md, "Types")
    from collections.abc import Callable
    from typing import Any

    from hemsfw.interfaces import Log, MqttClient, OnMsg, Ticks, Urandom

POLL_MAX = 8              # messages taken per turn while they keep arriving
BACKOFF_MIN_MS = 1000
BACKOFF_MAX_MS = 60000
STABLE_MS = 30000         # a link up this long resets the backoff (a kick-loop keeps growing it)


class Link:
    def __init__(self, name: str, client: "MqttClient", status_topic: str,
                 subs: list[tuple[str, int]], on_msg: "OnMsg", urandom: "Urandom",
                 ticks: "Ticks", log: "Log", keepalive_s: int = 30, budget_ms: int = 5000,
                 on_up: "Callable[[Link], None] | None" = None, clean: bool = False,
                 backoff_max_ms: int = BACKOFF_MAX_MS,
                 servers: "list[list[Any]] | None" = None) -> None:
        self.name = name
        self.client = client
        self.status = status_topic
        self.subs = subs               # [(topic, qos)]
        self.on_msg = on_msg           # on_msg(topic bytes, payload bytes), from inside check_msg
        self.urandom = urandom
        self.ticks = ticks
        self.log = log
        self.keepalive_ms = 1000 * keepalive_s
        self.budget_ms = budget_ms
        self.on_up = on_up             # called after every successful (re)connect
        self.clean = clean
        self.online = False
        self.up_since = 0
        self.last_ping = 0
        self.connects = 0
        self.backoff = BACKOFF_MIN_MS
        self.backoff_max = max(backoff_max_ms, BACKOFF_MIN_MS)
        self.retry_at = ticks()        # connect on the first turn
        self.rx = 0
        self.servers = servers or []   # [[host, port], ...]: the client starts on the first
        self.server = 0
        self._budget: Callable[[int], None] | None = getattr(client, "set_budget", None)

    def _arm(self) -> None:
        if self._budget is not None:
            self._budget(self.budget_ms)

    def _got(self, topic: bytes, msg: bytes) -> None:
        self.rx += 1
        self.on_msg(topic, msg)

    def connect(self) -> bool:
        c = self.client
        self._arm()
        try:
            c.set_callback(self._got)
            c.set_last_will(self.status, b"offline", True, 1)
            c.connect(self.clean)      # persistent session unless clean: QoS 1 queued offline
            for t, q in self.subs:
                c.subscribe(t, q)      # (re)subscribing also redelivers the retained messages
            # `online` last: it tells the services this home can receive now (the coordinator
            # re-sends its adjustment on it, in case a restarted broker lost the queued one)
            c.publish(self.status, b"online", True, 1)
        except Exception as e:
            self.lost(e)
            return False
        self.online = True
        self.connects += 1
        self.up_since = self.last_ping = self.ticks()
        self.log(self.name, "connected")
        if self.on_up is not None:
            self.on_up(self)
        return True

    def lost(self, e: Exception) -> None:
        now = self.ticks()
        if self.online and ticks_diff(now, self.up_since) >= STABLE_MS:
            self.backoff = BACKOFF_MIN_MS
        # jitter: wait uniformly in [backoff/2, backoff] so a fleet does not reconnect in step
        half = self.backoff // 2
        wait = half + half * self.urandom(1)[0] // 255
        self.log(self.name, "link down (" + type(e).__name__ + ": " + str(e) + "), retry in",
                 wait, "ms")
        self.online = False
        self.retry_at = ticks_add(now, wait)
        self.backoff = min(2 * self.backoff, self.backoff_max)
        close = getattr(self.client, "close", None)
        if close is not None:
            try:
                close()
            except Exception as e2:
                self.log(self.name, "close:", e2)
        if len(self.servers) > 1:
            self.server = (self.server + 1) % len(self.servers)
            c: Any = self.client
            c.server, c.port = self.servers[self.server]
            c.addr = None          # net_umqtt resolves the new host on the next connect
            self.log(self.name, "next broker:", c.server, c.port)

    def turn(self, net_up: bool = True) -> bool:
        """One loop turn: poll (online) or, when due and the network is up, one connect attempt.
        Returns True when the link is up after the turn."""
        if self.online and not net_up:
            # the network went away (Wi-Fi lost): the session is gone with it, whatever the
            # socket says yet; reconnect once it is back
            self.lost(OSError("network down"))
        elif self.online:
            self._arm()
            c = self.client
            try:
                for _ in range(POLL_MAX):
                    n = self.rx
                    c.check_msg()
                    if self.rx == n:
                        break
                if self.keepalive_ms and \
                        ticks_diff(self.ticks(), self.last_ping) >= self.keepalive_ms // 2:
                    self.last_ping = self.ticks()
                    c.ping()
            except Exception as e:
                self.lost(e)
        elif net_up and ticks_diff(self.ticks(), self.retry_at) >= 0:
            self.connect()
        return self.online

    def publish(self, topic: str, payload: bytes, retain: bool = False, qos: int = 1) -> bool:
        """Publish (QoS 1: returns once the broker acknowledged); False = link lost (not sent)."""
        if not self.online:
            return False
        self._arm()
        try:
            self.client.publish(topic, payload, retain, qos)
        except Exception as e:
            self.lost(e)
            return False
        return True

    def close(self) -> None:
        """Graceful stop: `offline` (retained), then DISCONNECT (the broker drops the will)."""
        if not self.online:
            return
        self._arm()
        try:
            self.client.publish(self.status, b"offline", True, 1)
            self.client.disconnect()
        except Exception as e:
            self.log(self.name, "shutdown:", e)
        self.online = False
