# The frame's energy budget: when the special circuit's relay may be closed (issue 15).
#
# The adjusted plan's value for a frame is an energy budget, not an on-time.  Within a frame the
# relay is closed while the frame's metered energy is below its budget and opened on the loop
# turn that sees the pulse reaching it (a pulse arrives after its energy was drawn: the counted
# energy never exceeds the budget by more than one pulse).  A frame of budget 0 keeps it open.
#
# The meter is trusted only while it counts.  Its state is a named-state table:
#
#   state       relay allowed closed while                  left when
#   "counting"  frame pulses * 1000 < budget_wh * ppkwh      stuck_s of closed relay, no pulse
#   "stuck"     frame on-time * rated_w < budget_wh * 3600    a pulse arrives
#
# "stuck" is the fault fallback: the meter reports nothing although the relay has been closed for
# stuck_s seconds (summed over frames), so the budget is delivered as on-time at the circuit's
# rated power (budget_wh / rated_w hours per frame), as the firmware did before it had a meter.
# Entering and leaving it is logged, and the state is shown on the resident's page and in Home
# Assistant.  An appliance that is simply idle with the relay closed (an EV that finished
# charging) looks the same to a pulse meter: the fallback then costs nothing, since on-time at
# rated power never delivers more than the budget.  MicroPython subset only.

COUNTING = "counting"
STUCK = "stuck"

if False:  # types for mypy only (docs/firmware.md, "Types")
    from hemsfw.interfaces import Log


class Budget:
    def __init__(self, rated_w: int, stuck_s: int, log: "Log | None" = None) -> None:
        self.rated_w = rated_w
        self.stuck_s = stuck_s
        self.log = log or (lambda *a: None)
        self.state = COUNTING
        self.key: object = None      # the frame the on-time belongs to
        self.on_s: float = 0         # relay closed in this frame (s)
        self.quiet_s: float = 0      # relay closed since the last pulse (s)
        self.last_t: float | None = None
        self.closed = False          # the relay as driven at last_t

    def account(self, t: float | None, key: object, pulses: int) -> None:
        """Time since the last call (with the relay as it was driven then) and the pulses seen
        since; key identifies the frame at t (a new key starts a new frame's on-time)."""
        lt = self.last_t
        if self.closed and lt is not None and t is not None and t > lt:
            self.on_s += t - lt
            self.quiet_s += t - lt
        self.last_t = t
        if key != self.key:
            self.key = key
            self.on_s = 0
        if pulses:
            self.quiet_s = 0
            if self.state == STUCK:
                self.state = COUNTING
                self.log("meter: counting again; budgets by metered energy")
        elif self.state == COUNTING and self.quiet_s >= self.stuck_s:
            self.state = STUCK
            self.log("meter: FAULT no pulse for", int(self.quiet_s), "s with the relay closed;"
                     " budgets by on-time at", self.rated_w, "W")

    def allow(self, budget_wh: int, pulses: int, ppkwh: int) -> bool:
        """May the relay be closed in a frame of `budget_wh` with `pulses` counted in it?"""
        if budget_wh <= 0:
            return False
        if self.state == STUCK:
            return self.on_s * self.rated_w < budget_wh * 3600
        return pulses * 1000 < budget_wh * ppkwh
