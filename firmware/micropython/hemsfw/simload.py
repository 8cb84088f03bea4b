# The lab's simulated special circuit: appliances behind the relay and their pulse meter.
#
# Load model (docs/firmware.md, "The lab's simulated meter"): each appliance is a daily job
#   [kind, start_s, need_wh, power_w, on_s, off_s]
# that becomes ready at start_s seconds after UTC midnight and then draws power_w whenever the
# relay is closed, until it has drawn need_wh that day (it does not start again before the next
# midnight, and an unfinished job is abandoned at midnight).  A job with on_s > 0 cycles as a
# thermostat does: power_w for on_s, nothing for off_s, counted from start_s (a heat-pump water
# heater).  The lab (backend/lab/scenario.py) draws the jobs from its seed: an EV (3.7 kW) that
# needs less than its plan (it finishes early), a heat-pump water heater that cycles, wet
# appliances.  The meter emits one pulse per 1000/ppkwh Wh drawn.
#
# advance(until, closed, maxp) plays the circuit from its time to `until` with the relay as given,
# stopping early after maxp pulses (the pulse at which the controller's decision may change), and
# returns the time reached; take() returns the pulses emitted since the previous take(), like the
# boards' counters.  Float arithmetic: the unix port and CPython only.  MicroPython subset.

DAY = 86400
EPS = 1e-6

if False:  # types for mypy only (docs/firmware.md, "Types")
    from hemsfw.meter import Metering


class SimLoad:
    def __init__(self, loads: list[list[object]], ppkwh: int) -> None:
        self.jobs = loads
        self.pulse_j = 3600000.0 / ppkwh      # energy of one pulse (J)
        self.t: float | None = None
        self.day = -1
        self.drawn = [0.0] * len(loads)       # J drawn by each job today
        self.acc = 0.0                        # J drawn since the last pulse
        self.n = 0                            # pulses not taken yet

    def take(self) -> int:
        n = self.n
        self.n = 0
        return n

    def now(self) -> float | None:
        """The circuit's time (the lab relay logs its switches at it)."""
        return self.t

    def _power(self, t: float) -> tuple[float, float, list[int]]:
        """(power W at t, next time the power may change, the jobs drawing)."""
        d = int(t // DAY)
        if d != self.day:
            self.day = d
            self.drawn = [0.0] * len(self.jobs)
        base = float(d * DAY)
        tod = t - base
        nxt = base + DAY
        p = 0.0
        on = []
        for i in range(len(self.jobs)):
            j = self.jobs[i]
            s, need, w, on_s, off_s = j[1], j[2], j[3], j[4], j[5]
            assert isinstance(s, int) and isinstance(need, int) and isinstance(w, int)
            assert isinstance(on_s, int) and isinstance(off_s, int)
            if tod < s:
                nxt = min(nxt, base + s)
                continue
            if self.drawn[i] >= need * 3600.0 - EPS:
                continue
            if on_s > 0:
                ph = (tod - s) % (on_s + off_s)
                if ph >= on_s:
                    nxt = min(nxt, t + (on_s + off_s - ph))
                    continue
                nxt = min(nxt, t + (on_s - ph))
            p += w
            on.append(i)
            # the job finishes when its need is met
            nxt = min(nxt, t + (need * 3600.0 - self.drawn[i]) / w)
        return p, nxt, on

    def advance(self, until: float, closed: bool, maxp: int | None = None) -> float:
        t = self.t
        if t is None or until - t <= EPS:
            # (a step shorter than EPS snaps to `until`: a time computed a rounding error
            # before a frame's end must not leave the circuit stuck there)
            if t is None or until > t:
                self.t = until
                return until
            return t
        got = 0
        while t < until - EPS:
            if not closed:
                self._power(until)     # (only rolls the day over)
                t = until
                break
            p, nxt, on = self._power(t)
            end = min(until, nxt)
            if p > 0:
                end = min(end, t + (self.pulse_j - self.acc) / p)
            if end <= t:
                end = t + EPS
            dt = end - t
            for i in on:
                self.drawn[i] += self.jobs[i][3] * dt   # type: ignore[operator]
            self.acc += p * dt
            t = end
            if self.acc >= self.pulse_j - EPS:
                self.acc -= self.pulse_j
                if self.acc < 0:
                    self.acc = 0.0
                self.n += 1
                got += 1
                if maxp is not None and got >= maxp:
                    break
        if until - t <= EPS:
            t = until
        self.t = t
        return t

    def step(self, m: "Metering", now: float, frame_end: float | None) -> float:
        """Advance the circuit from its time towards `now`, stopping at the next moment the
        relay decision of `m` (hemsfw/meter.py) can change: a frame end, the pulse that reaches
        the budget, the end of the fallback's on-time or the moment the meter would count as
        stuck; returns the time reached.  The runner drives the relay there, so an accelerated
        clock decides as often as a real loop would (docs/firmware.md)."""
        b = m.budget
        t = self.t if self.t is not None else now
        limit = now
        if frame_end is not None and frame_end < limit:
            limit = frame_end
        maxp = None
        if b.closed:
            if b.state == "stuck":
                h = t + max(0, m.wh_now * 3600 / b.rated_w - b.on_s)
                maxp = 1
            else:
                h = t + max(0, b.stuck_s - b.quiet_s)
                # the pulses still allowed (ceil): the relay opens at the one that makes it 0
                maxp = max(0, -(-m.wh_now * m.ppkwh // 1000) - m.meter.cur) \
                    if m.wh_now > 0 else 1
            if h < limit:
                limit = h
        return self.advance(limit, b.closed, maxp)
