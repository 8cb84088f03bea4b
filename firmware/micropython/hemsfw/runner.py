# The home controller's main loop: the I/O shell around hemsfw.home.Home (DESIGN.md decision 6).
#
# Adapters are passed in, so the same loop runs on boards (MQTT + machine.Pin + NTP clock), on the
# MicroPython unix port (MQTT + LabRelay + LabClock) and on CPython (paho + gpiod ...):
#   client  umqtt.simple.MQTTClient interface (hemsfw/link.py); any exception = link lost
#   clock   now() -> frame-clock epoch s or None; wall() -> wall-clock epoch s or None (the
#           round deadline); `topic` (None, or the lab clock topic) and update(obj)
#   relay   set(on, frame); optionally ok() -> the output really is where it was driven
#   store   hemsfw.store.Store (Home and Resident persist there)
#   board   optional (hemsfw/boards): net_up(), service(runner), button() -> None|"short"|
#           "long", show(relay_on, online, override) for a status LED
#   pulses  optional pulse source of the special circuit's meter, take() -> new pulses (else
#           the board's `pulses`); with config "meter" the relay then delivers each frame's
#           energy budget (hemsfw/meter.py, hemsfw/budget.py)
#   local   optional second MQTT client: the resident's own broker (Home Assistant, local
#           commands; hemsfw/ha.py).  Never the utility's broker: the plan would leak there.
#
# One loop turn (loop_ms): drive the relay from the stored plan for the current frame, board
# housekeeping, at most one bounded network step per link (a poll, or one connect attempt when the
# backoff allows), handle what arrived, publish at most one unacknowledged report message, drive
# the relay again, then feed the watchdog if the loop is healthy.  The relay is driven on every
# turn whether or not a link is up: a controller that lost its broker keeps following the plan it
# stored (DESIGN.md decisions 8 and 9).  Worst case a turn blocks for one network budget
# (timeout_s, default 5 s) plus DNS: docs/firmware.md.
#
# Incoming messages are queued by the MQTT callback and handled after the poll, never inside it:
# the client delivers messages while it waits for a PUBACK, and handling a round there would
# re-enter publish.  MicroPython subset only.

import os

from hemsfw import protocol
from hemsfw.clock import sleep_ms, ticks_add, ticks_diff, ticks_ms
from hemsfw.home import Home
from hemsfw.link import Link
from hemsfw.resident import Resident

if False:  # types for mypy only (docs/firmware.md, "Types")
    from collections.abc import Callable

    from hemsfw import debug, ha
    from hemsfw.interfaces import (
        Board,
        Clock,
        Json,
        Log,
        MqttClient,
        PulseSource,
        RelayDriver,
        Storage,
        Ticks,
        Urandom,
        Watchdog,
    )
    from hemsfw.meter import Metering

INBOX_MAX = 16            # messages held between two loop turns (a home gets only a handful)
MAX_ERRORS = 20           # consecutive failed turns before the watchdog is starved
HEAP_FLOOR = 4096         # bytes free below which the loop counts as unhealthy (boards)
# Re-sending a report the broker acknowledged but whose service has not replied (home.py): after
# a (re)connect, once the replies queued in the persistent session had time to arrive; and after
# a silence, doubling so that a fleet facing a service that is down does not flood the broker.
REPLY_GRACE_MS = 1000
REPLY_WAIT_MS = 5000
REPLY_WAIT_MAX_MS = 900000
SIM_STEPS_MAX = 10000     # the lab's simulated load: decisions per turn at most (meter.py)


def _mem_free() -> int | None:
    try:
        import gc

        return gc.mem_free()   # type: ignore[attr-defined, no-any-return]  # (MicroPython's gc)
    except (ImportError, AttributeError):
        return None   # CPython


class Runner:
    def __init__(self, cfg: "Json", client: "MqttClient", clock: "Clock", relay: "RelayDriver",
                 store: "Storage", log: "Log | None" = None, urandom: "Urandom | None" = None,
                 watchdog: "Watchdog | None" = None, ticks: "Ticks | None" = None,
                 board: "Board | None" = None, local: "MqttClient | None" = None,
                 pulses: "PulseSource | None" = None) -> None:
        """cfg: checked config (hemsfw.config.check).  watchdog: object with feed(), fed once
        per healthy turn (machine.WDT on boards).  ticks: ms counter (tests)."""
        self.cfg = cfg
        self.id: str = cfg["home_id"]
        self.clock = clock
        self.relay = relay
        self.store = store
        self.log = log or (lambda *a: None)
        self.urandom = urandom or os.urandom
        self.watchdog = watchdog
        self.ticks = ticks or ticks_ms
        self.board = board
        self.resident = Resident(cfg, store, self.log)
        self.home = Home(cfg, store, self.urandom, self.log, self.resident)
        self.home.phase = self._phase
        # The special circuit's meter (issue 15): pulses from the board (or `pulses`, tests).
        self.meter: "Metering | None" = None
        src = pulses if pulses is not None else getattr(board, "pulses", None)
        if cfg.get("meter") and src is not None:
            from hemsfw import meter

            self.meter = meter.Metering(cfg["meter"], store, src, self.log)
            self.meter.meter.on_day = self.resident.learn
        self.safe: bool = cfg.get("safe_state", False)
        self.loop_ms: int = cfg.get("loop_ms", 20)
        self.exit_after_day: bool = cfg.get("exit_after_day", False)
        self.dbg: debug.Debug | None = None
        if cfg.get("debug_pause_at") or cfg.get("debug_memtrace"):
            from hemsfw.debug import Debug

            self.dbg = Debug(cfg, self.log)
        mq = cfg.get("mqtt", {})
        self.t_round = protocol.t_round()
        self.t_adjust = protocol.t_adjust(self.id)
        # QoS 1 on adjust with a persistent session: the broker queues an adjustment for a home
        # that is offline when it is sent (broker/mosquitto.conf max_queued_messages).
        subs = [(self.t_round, 1), (self.t_adjust, 1), (protocol.t_reply("+", self.id), 1)]
        if clock.topic:
            subs.append((clock.topic, 1))
        self.main = Link("mqtt", client, protocol.t_status(self.id), subs, self.on_msg,
                         self.urandom, self.ticks, self.log, mq.get("keepalive", 30),
                         1000 * mq.get("timeout_s", 5),
                         backoff_max_ms=1000 * mq.get("backoff_max_s", 60), on_up=self._link_up,
                         servers=mq.get("hosts"))
        self.resend_at: int | None = None   # ticks when unconfirmed report messages are re-sent
        self.reply_wait = REPLY_WAIT_MS
        self.resent: list[int] = []     # indices re-sent in the current cycle
        self.ha: ha.HA | None = None
        self.links = [self.main]
        if local is not None:
            from hemsfw.ha import HA

            self.ha = HA(self, local, cfg["local"])
            self.links.append(self.ha.link)
        r = cfg.get("relay") or {}
        self.min_ms = (1000 * r.get("min_off_s", 0), 1000 * r.get("min_on_s", 0))  # off, on
        self.switched = self.ticks()    # boot put the relay in its safe state: a switch
        self.held = False
        self.inbox: list[tuple[bytes | str, bytes]] = []
        self.state: tuple[bool | None, int | None] = (None, None)   # (relay on, frame) driven
        self.errors = 0
        self.relay_error: Exception | None = None
        self.starved: str | None = None
        self.turns = 0
        self.loop: "Callable[[Runner], int] | None" = None   # set by app.build (the page)

    # ------------------------------------------------------------------ helpers

    def _phase(self, name: str) -> None:
        if self.dbg is not None:   # test hooks (hemsfw/debug.py)
            self.dbg.phase(name)

    def _wall(self) -> float | None:
        w = getattr(self.clock, "wall", None)
        return w() if w is not None else self.clock.now()

    def on_msg(self, topic: bytes | str, msg: bytes) -> None:
        """A message from a link (Link.on_msg): queued, handled after the poll."""
        if len(self.inbox) >= INBOX_MAX:
            self.log("inbox full, dropped a message on", topic)
            return
        self.inbox.append((topic, msg))

    # ------------------------------------------------------------------ messages

    def _handle(self, topic: bytes | str, msg: bytes) -> None:
        if isinstance(topic, bytes):
            topic = topic.decode()
        try:
            if self.ha is not None and self.ha.handle(topic, msg):
                return
            obj = protocol.decode(msg)
            if topic == self.t_round:
                ann = protocol.parse_round(obj)
                was = self.home.new
                n = len(self.home.on_round(ann, self._wall(), self.clock.now()))
                if n and self.home.new is not was:   # (a repeat, e.g. the retained round
                    # again with the session's queued copy, says nothing: _flush publishes
                    # each message once either way)
                    self.log("round", ann["day"], ann["round"], ": publishing", n, "reports")
                    self._phase("reported")
                if self.ha is not None:
                    self.ha.plan_changed()
            elif topic == self.t_adjust:
                why = self.home.on_adjustment(obj, self.clock.now())
                if why is None:
                    self.log("adjustment applied: group", obj.get("group"),
                             len(obj["moves"]), "moves", len(obj["curtail"]), "curtailed")
                    self._phase("adjusted")
                    if self.ha is not None:
                        self.ha.plan_changed()
                else:
                    self.log("adjustment ignored:", why)
            elif self.clock.topic and topic == self.clock.topic:
                self.clock.update(obj)
            else:
                tail = protocol.topic_tail(topic, "reply")
                if tail is not None:
                    self.log("reply from", tail[0] + ":", obj.get("status"), obj.get("reason"))
                    if self.home.on_reply(tail[0], obj):
                        self._phase("replied")
                else:
                    self.log("unexpected topic", topic)
        except ValueError as e:   # malformed message: protocol reason code
            self.log("ignored message on", topic + ":", e)
        except Exception as e:    # a bug must not stop the relay loop
            self.log("error handling", topic + ":", type(e).__name__, e)

    def _handle_inbox(self) -> None:
        while self.inbox:
            topic, msg = self.inbox.pop(0)
            self._handle(topic, msg)

    def _link_up(self, _link: Link) -> None:
        self.resend_at = ticks_add(self.ticks(), REPLY_GRACE_MS)
        self.reply_wait = REPLY_WAIT_MS
        self.resent = []

    def _flush(self) -> None:
        """Publish the next report message the broker has not acknowledged (QoS 1, never
        retained) and persist its acknowledgement; or, when a re-send is due, the next one whose
        service has not replied.  One per turn, so the relay is driven between two PUBACK waits."""
        if not self.main.online:
            return
        wall = self._wall()
        out = self.home.pending(wall)
        if not out:
            self._resend(wall)
            return
        i, t, text = out[0]
        if self.main.publish(t, text.encode(), False, 1):
            self.home.ack(i)
            self._phase("acked")
            if self.resend_at is None:
                self.resend_at = ticks_add(self.ticks(), self.reply_wait)
            new = self.home.new
            if new is not None and new.get("sent"):
                self.log("report acknowledged by the broker")
                self._phase("sent")

    def _resend(self, wall: float | None) -> None:
        if self.resend_at is None or ticks_diff(self.ticks(), self.resend_at) < 0:
            return
        out = self.home.pending(wall, True)
        if not out:                     # every service replied (or the deadline passed)
            self.resend_at = None       # the next round's first PUBACK starts a fresh schedule
            self.reply_wait = REPLY_WAIT_MS
            self.resent = []
            return
        for i, t, text in out:
            if i not in self.resent:
                self.resent.append(i)
                self.log("no reply yet: re-sending the report's message to", t)
                self.main.publish(t, text.encode(), False, 1)
                return
        # a cycle done: wait longer before the next one
        self.resent = []
        self.resend_at = ticks_add(self.ticks(), self.reply_wait)
        self.reply_wait = min(2 * self.reply_wait, REPLY_WAIT_MAX_MS)

    # ------------------------------------------------------------------ relay and override

    def override(self, state: str, until: str = "frame") -> None:
        """Resident override: state "on" | "off" | "toggle" | "auto" (back to the plan); until
        "frame" (end of the current frame) or "day" (end of the planned day)."""
        if state == "auto":
            self.resident.set_override(None, None)
            self.log("override cleared")
            self._drive()
            return
        on = (not self.relay.on) if state == "toggle" else state == "on"
        now = self.clock.now()
        u = None
        if now is not None:
            u = self.home.frame_end(now) if until == "frame" else self.home.day_end_at(now)
            if u is None:   # outside any planned day: the quarter-hour, or UTC midnight
                step = 900 if until == "frame" else 86400
                u = now - now % step + step
        self.resident.set_override(on, u)
        self.log("override:", "on" if on else "off", "until", u)
        self._drive()

    def _drive(self) -> float | None:
        now = self.clock.now()
        m = self.meter
        if m is not None and m.sim is not None and now is not None:
            # The lab's simulated load: decided at every moment the decision can change up to
            # now (a frame end, the budget's last pulse), as a real loop would (meter.py).
            for _ in range(SIM_STEPS_MAX):
                sim_t = m.sim.t
                t = m.sim.step(m, now, self.home.frame_end(sim_t))
                if t >= now or (sim_t is not None and t <= sim_t):
                    break
                self._drive_at(t)
        self._drive_at(now)
        if self.ha is not None:
            self.ha.poll()
        return now

    def _drive_at(self, now: float | None) -> None:
        try:
            on, frame = self.home.relay_at(now, self.safe)
            if self.meter is not None:
                on = self.meter.gate(now, self.home, on)   # the frame's energy budget
        except Exception as e:   # corrupt stored state: fall back to the safe state, say it once
            if self.relay_error is None:
                self.log("relay: cannot follow the stored plan (" + str(e) + "), safe state")
            self.relay_error = e
            on, frame = self.safe, None
        ov = self.resident.override(now) if self.resident.ovr is not None else None
        if ov is not None:
            on = ov
        on = self._min_time(on)
        self.relay.set(on, frame)
        if self.meter is not None:
            self.meter.driven(self.relay.on)
        st = (on, frame)
        if st != self.state:
            self.state = st
            if frame and self.dbg is not None:
                self._phase("frame")
            if self.ha is not None:
                self.ha.relay_changed()

    def _min_time(self, on: bool) -> bool:
        """Minimum on / off times (relay.min_on_s, min_off_s), whoever asks for the switch
        (plan, adjustment, override): the relay keeps its state until it has held it that
        long since its last switch (or since boot: a reset may have cut a compressor)."""
        cur = self.relay.on
        if cur is None or on == cur:
            self.held = False
            return on
        left = self.min_ms[1 if cur else 0] - ticks_diff(self.ticks(), self.switched)
        if left > 0:
            if not self.held:
                self.log("relay: held", "on" if cur else "off", "for", (left + 999) // 1000,
                         "s more (minimum", ("on" if cur else "off") + " time)")
            self.held = True
            return cur
        self.held = False
        self.switched = self.ticks()
        return on

    def day_over(self, now: float | None) -> bool:
        """Lab: the newest round's day has been played out (relay back in the safe state)."""
        return self.home.day_over(now)

    # ------------------------------------------------------------------ health and loop

    def healthy(self) -> bool:
        """Checked before every watchdog feed: the relay output is where it was driven, the
        loop is not failing turn after turn, and the heap is not nearly exhausted."""
        ok = getattr(self.relay, "ok", None)
        why = None
        if ok is not None and not ok():
            why = "relay output does not read back"
        elif self.errors >= MAX_ERRORS:
            why = "loop failing"
        else:
            free = _mem_free()
            if free is not None and free < HEAP_FLOOR:
                import gc

                gc.collect()
                if gc.mem_free() < HEAP_FLOOR:   # type: ignore[attr-defined]
                    why = "heap exhausted"
        if why != self.starved:
            self.starved = why
            if why:
                self.log("unhealthy:", why, "- not feeding the watchdog")
        return why is None

    def step(self) -> bool:
        """One loop turn; returns True when the loop should stop (exit_after_day)."""
        self.turns += 1
        self._drive()
        b = self.board
        net = True
        if b is not None:
            self._feed()
            b.service(self)                # Wi-Fi supervision, NTP (<= 1 s)
            net = b.net_up()
            ev = b.button()
            if ev:
                self.override("toggle" if self.resident.ovr is None else "auto",
                              "day" if ev == "long" else "frame")
            self._tick()
        for lk in self.links:
            lk.turn(net)                   # one poll or one connect attempt (<= its budget)
            self._tick()
        self._handle_inbox()
        self._flush()                      # at most one QoS 1 publish (<= the budget)
        now = self._tick()
        if b is not None:
            b.show(self.state[0], self.main.online, self.resident.ovr is not None)
        if self.dbg is not None:
            self.dbg.mem("idle", self.main.online)
        return self.exit_after_day and self.day_over(now)

    def _tick(self) -> float | None:
        # After every segment that may block: drive the relay (so it is never more than one
        # segment late, whatever the turn does) and feed the watchdog if the loop is healthy
        # (the longest gap between two feeds is one segment: the RP2040's watchdog is 8.3 s).
        now = self._drive()
        self._feed()
        return now

    def _feed(self) -> None:
        if self.watchdog is not None and self.healthy():
            self.watchdog.feed()

    def shutdown(self) -> None:
        """Graceful stop: say offline (retained) and DISCONNECT, on every link."""
        for lk in self.links:
            lk.close()

    def start(self) -> None:
        self.log("starting; relay safe state", "on" if self.safe else "off")
        self._phase("boot")

    def turn(self) -> int:
        """One guarded loop turn: returns -1 to stop (day over), else the ms left to sleep."""
        t0 = self.ticks()
        try:
            if self.step():
                self.log("day over, exiting")
                self.shutdown()
                if self.dbg is not None:
                    self.dbg.dump(self.turns)
                return -1
            self.errors = 0
        except Exception as e:   # a bug: log it, keep the relay loop alive (not the WDT)
            self.errors += 1
            self.log("turn failed:", type(e).__name__, e)
        return max(0, self.loop_ms - ticks_diff(self.ticks(), t0))

    def serve(self) -> int:
        """Run the controller: the plain loop (run), or `loop` (hemsfw/app.py sets web.run when
        the config has the resident's page: the loop with its server); returns the exit status
        (130: interrupted)."""
        try:
            return self.run() if self.loop is None else self.loop(self)
        except KeyboardInterrupt:
            self.log("interrupted")
            self.shutdown()
            return 130

    def run(self) -> int:
        """Loop forever (boards) or until the day is over (lab exit_after_day); returns 0."""
        self.start()
        while True:
            rest = self.turn()
            if rest < 0:
                return 0
            if rest:
                sleep_ms(rest)
