# The home controller's main loop: the I/O shell around hemsfw.home.Home (DESIGN.md decision 6).
#
# Adapters are passed in, so the same loop runs on boards (umqtt + machine.Pin + NTP clock), on the
# MicroPython unix port (umqtt + LabRelay + LabClock) and on CPython (paho + ...):
#   client  umqtt.simple.MQTTClient interface: connect(clean_session) / set_callback /
#           set_last_will / subscribe / publish / check_msg / ping / disconnect, and optionally
#           close() (drop the socket without DISCONNECT).  Any exception from it = link lost.
#   clock   now() -> epoch s or None; `topic` (None, or the lab clock topic) and update(obj).
#   relay   set(on, frame).
#   store   hemsfw.store.Store (Home persists its round there).
#   log     log(*args).
#
# One loop turn (~loop_ms): poll MQTT without blocking, handle what arrived, drive the relay from
# the stored plan for the current frame.  The relay is driven on every turn whether or not the
# link is up: a controller that lost its broker keeps following the plan it stored (DESIGN.md
# decisions 8 and 9).  Reconnects use jittered exponential backoff and never sleep: the next attempt
# is only scheduled, so the only blocking is one bounded connect attempt (adapter timeout_s).
#
# Incoming messages are queued by the MQTT callback and handled after check_msg returns, never
# inside it: umqtt delivers messages while it waits for a PUBACK, and handling a round there
# would re-enter publish.
#
# MicroPython subset only.

import os

from hemsfw import protocol
from hemsfw.clock import sleep_ms, ticks_add, ticks_diff, ticks_ms
from hemsfw.home import Home

INBOX_MAX = 16            # messages held between two loop turns (a home gets only a handful)
POLL_MAX = 8              # check_msg calls per turn while messages keep arriving
BACKOFF_MIN_MS = 1000
BACKOFF_MAX_MS = 60000
STABLE_MS = 30000         # a link up this long resets the backoff (a kick-loop keeps growing it)


class Runner:
    def __init__(self, cfg, client, clock, relay, store, log=None, urandom=None, watchdog=None,
                 ticks=None):
        """cfg: checked config (hemsfw.config.check).  watchdog: object with feed(), fed once
        per healthy turn (machine.WDT on boards).  ticks: ms counter (tests)."""
        self.cfg = cfg
        self.id = cfg["home_id"]
        self.client = client
        self.clock = clock
        self.relay = relay
        self.log = log or (lambda *a: None)
        self.urandom = urandom or os.urandom
        self.watchdog = watchdog
        self.ticks = ticks or ticks_ms
        self.home = Home(cfg, store, self.urandom, self.log)
        self.safe = cfg.get("safe_state", False)
        self.loop_ms = cfg.get("loop_ms", 20)
        self.exit_after_day = cfg.get("exit_after_day", False)
        self.keepalive_ms = 1000 * cfg.get("mqtt", {}).get("keepalive", 30)
        self.t_status = protocol.t_status(self.id)
        self.t_round = protocol.t_round()
        self.t_adjust = protocol.t_adjust(self.id)
        # QoS 1 on adjust with a persistent session: the broker queues an adjustment for a home
        # that is offline when it is sent (broker/mosquitto.conf max_queued_messages).
        self.subs = [(self.t_round, 1), (self.t_adjust, 1), (protocol.t_reply("+", self.id), 1)]
        if clock.topic:
            self.subs.append((clock.topic, 1))
        self.inbox = []
        self.rx = 0
        self.online = False
        self.up_since = 0
        self.last_ping = 0
        self.backoff = BACKOFF_MIN_MS
        self.retry_at = self.ticks()   # connect on the first turn
        self.relay_error = None

    # ------------------------------------------------------------------ link

    def _connect(self):
        c = self.client
        try:
            c.set_callback(self._on_msg)
            c.set_last_will(self.t_status, b"offline", True, 1)
            c.connect(False)    # persistent session, client id = home id
            c.publish(self.t_status, b"online", True, 1)
            for t, q in self.subs:
                c.subscribe(t, q)   # a (re)subscribe also redelivers the retained round
        except Exception as e:
            self._lost(e)
            return False
        self.online = True
        self.up_since = self.last_ping = self.ticks()
        self.log("connected")
        return True

    def _lost(self, e):
        now = self.ticks()
        if self.online and ticks_diff(now, self.up_since) >= STABLE_MS:
            self.backoff = BACKOFF_MIN_MS
        # jitter: wait uniformly in [backoff/2, backoff] so a fleet does not reconnect in step
        half = self.backoff // 2
        wait = half + half * self.urandom(1)[0] // 255
        self.log(f"link down ({type(e).__name__}: {e}), retry in {wait} ms")
        self.online = False
        self.retry_at = ticks_add(now, wait)
        self.backoff = min(2 * self.backoff, BACKOFF_MAX_MS)
        close = getattr(self.client, "close", None)
        if close is not None:
            try:
                close()
            except Exception as e2:
                self.log("close:", e2)

    def _on_msg(self, topic, msg):
        self.rx += 1
        if len(self.inbox) >= INBOX_MAX:
            self.log("inbox full, dropped a message on", topic)
            return
        self.inbox.append((topic, msg))

    def _poll(self):
        for _ in range(POLL_MAX):
            n = self.rx
            self.client.check_msg()
            if self.rx == n:
                break
        if self.keepalive_ms and ticks_diff(self.ticks(), self.last_ping) >= self.keepalive_ms // 2:
            self.last_ping = self.ticks()
            self.client.ping()

    # ------------------------------------------------------------------ messages

    def _handle(self, topic, msg):
        """One message; returns a list of (topic, payload) to publish (a round's reports)."""
        if isinstance(topic, bytes):
            topic = topic.decode()
        try:
            obj = protocol.decode(msg)
            if topic == self.t_round:
                ann = protocol.parse_round(obj)
                out = self.home.on_round(ann)
                if out:
                    n = len(out)
                    self.log(f"round {ann['day']}/{ann['round']}: publishing {n} reports")
                return out
            if topic == self.t_adjust:
                why = self.home.on_adjustment(obj)
                if why is None:
                    a = self.home.state["adjustment"]
                    nm, nc = len(a["moves"]), len(a["curtail"])
                    self.log(f"adjustment applied: group {a['group']}, {nm} moves, {nc} curtailed")
                else:
                    self.log("adjustment ignored:", why)
                return None
            if self.clock.topic and topic == self.clock.topic:
                self.clock.update(obj)
                return None
            tail = protocol.topic_tail(topic, "reply")
            if tail is not None:
                st, why = obj.get("status"), obj.get("reason")
                self.log(f"reply from {tail[0]}: {st} {why}")
                return None
            self.log("unexpected topic", topic)
        except ValueError as e:   # malformed message: protocol reason code
            self.log(f"ignored message on {topic}: {e}")
        except Exception as e:    # a bug must not stop the relay loop
            self.log(f"error handling {topic}: {type(e).__name__}: {e}")
        return None

    def _handle_inbox(self):
        while self.inbox:
            topic, msg = self.inbox.pop(0)
            out = self._handle(topic, msg)
            if not out:
                continue
            if not self.online:
                continue  # not sent: the retained round is redelivered after the reconnect
            try:
                for t, payload in out:
                    self.client.publish(t, payload, False, 1)   # reports: QoS 1, never retained
            except Exception as e:
                self._lost(e)
                continue
            self.home.mark_sent()

    # ------------------------------------------------------------------ relay

    def _drive(self):
        now = self.clock.now()
        try:
            on = self.home.relay_on(now, self.safe)
            frame = self.home.frame(now)
        except Exception as e:   # corrupt stored state: fall back to the safe state, say it once
            if self.relay_error is None:
                self.log(f"relay: cannot follow the stored plan ({e}), safe state")
            self.relay_error = e
            on, frame = self.safe, None
        self.relay.set(on, frame)
        return now

    def day_over(self, now):
        """Lab: the stored plan's day has been played out (relay back in the safe state)."""
        st = self.home.state
        if now is None or not st:
            return False
        return now >= st["start"] + st["frames"] * st["frame_s"]

    # ------------------------------------------------------------------ loop

    def step(self):
        """One loop turn; returns True when the loop should stop (exit_after_day)."""
        if self.online:
            try:
                self._poll()
            except Exception as e:
                self._lost(e)
        elif ticks_diff(self.ticks(), self.retry_at) >= 0:
            self._connect()
        self._handle_inbox()
        now = self._drive()
        if self.watchdog is not None:
            self.watchdog.feed()
        return self.exit_after_day and self.day_over(now)

    def shutdown(self):
        """Graceful stop: say offline (retained) and DISCONNECT."""
        if not self.online:
            return
        try:
            self.client.publish(self.t_status, b"offline", True, 1)
            self.client.disconnect()
        except Exception as e:
            self.log("shutdown:", e)
        self.online = False

    def run(self):
        """Loop forever (boards) or until the day is over (lab exit_after_day); returns 0."""
        self.log("starting; relay safe state", "on" if self.safe else "off")
        while True:
            t0 = self.ticks()
            if self.step():
                self.log("day over, exiting")
                self.shutdown()
                return 0
            rest = self.loop_ms - ticks_diff(self.ticks(), t0)
            if rest > 0:
                sleep_ms(rest)
