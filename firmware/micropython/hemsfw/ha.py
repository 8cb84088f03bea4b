# Home Assistant over the resident's own MQTT broker (config "local"): discovery, relay switch,
# plan sensor, and the local command topics.  Never on the utility's broker: the plan sensor shows
# the home's plan in the clear, which is exactly what the masking keeps from everyone else.
#
# Topics (base = local.base, default "hems/<home_id>"; prefix = local.discovery_prefix):
#   <base>/availability      online / offline (retained; the last will)
#   <base>/relay             ON / OFF, the relay's state (retained)
#   <base>/relay/set         command: ON / OFF (override until the end of the frame), append
#                            " day" to hold it until the end of the day; AUTO = back to the plan
#   <base>/plan              the current frame's adjusted plan in Wh (retained)
#   <base>/plan/attributes   {"day", "frame", "planned_wh": [...], "adjusted_wh": [...]} (retained)
#   <base>/metered           with a meter: metered energy today in Wh (retained), attributes on
#                            <base>/metered/attributes {"day", "frame", "metered_wh": [...],
#                            "meter": "counting" | "stuck", "budget_wh": the current frame's}
#                            (retained; planned and adjusted Wh per frame: plan/attributes)
#   <base>/plan/set          command: {"plan_wh": [...], "day": "YYYY-MM-DD" (optional)}
#   <base>/mode              auto / on / off: the plan, or the resident's override (retained)
#   <base>/mode/set          command: auto / on / off (on, off: until the end of the day)
#   <base>/diag              {"rssi": dBm or null, "uptime_s", "reset": cause or null,
#                            "version"} (retained; every DIAG_MS and on connect)
#   <prefix>/switch/hems_<id>/relay/config, <prefix>/sensor/hems_<id>/plan/config,
#   <prefix>/select/hems_<id>/mode/config, <prefix>/sensor/hems_<id>/<diag>/config,
#   <prefix>/sensor/hems_<id>/metered/config (with a meter)   (retained)
#   <prefix>/status          Home Assistant's birth message: "online" -> announce again
# Command topics are never retained (we publish none; HA publishes them without retain).
# MicroPython subset only.

import json

from hemsfw import VERSION, unload
from hemsfw.clock import ticks_diff
from hemsfw.link import Link

DIAG_MS = 60000
MODES = ("auto", "on", "off")

if False:  # types for mypy only (docs/firmware.md, "Types")
    from typing import Any

    from hemsfw.interfaces import Json, MqttClient, RunnerView, Slot


class HA:
    MODES = MODES
    def __init__(self, runner: "RunnerView", client: "MqttClient", lcfg: "Json") -> None:
        self.r = runner
        base: str = lcfg["base"]
        self.pre: str = lcfg["discovery_prefix"]
        self.node = "hems_" + runner.id
        self.t_avail = base + "/availability"
        self.t_relay = base + "/relay"
        self.t_relay_set = base + "/relay/set"
        self.t_plan = base + "/plan"
        self.t_attr = base + "/plan/attributes"
        self.t_plan_set = base + "/plan/set"
        self.t_metered = base + "/metered"
        self.t_birth = self.pre + "/status"
        self.t_mode = base + "/mode"
        self.t_mode_set = base + "/mode/set"
        self.t_diag = base + "/diag"
        subs = [(self.t_relay_set, 0), (self.t_plan_set, 0), (self.t_mode_set, 0),
                (self.t_birth, 0)]
        self.link = Link("local", client, self.t_avail, subs, runner.on_msg, runner.urandom,
                         runner.ticks, runner.log, lcfg["keepalive"], 1000 * lcfg["timeout_s"],
                         on_up=self.up, clean=True)
        self.announced = 0
        self.mode_sent: str | None = None
        self.uptime_ms = 0               # summed tick by tick: ticks wrap after ~12 days
        self.t_last = runner.ticks()
        self.diag_at = -DIAG_MS          # (ms of uptime) due at once

    def pub(self, topic: str, obj: "Any", retain: bool = True) -> bool:
        if not isinstance(obj, (bytes, str)):
            obj = json.dumps(obj)
        if isinstance(obj, str):
            obj = obj.encode()
        return self.link.publish(topic, obj, retain, 0)

    def device(self) -> "Json":
        return {"identifiers": [self.node], "name": "HEMS " + self.r.id,
                "manufacturer": "hems", "model": self.r.cfg.get("board", "unix")}

    def announce(self) -> None:
        """Retained discovery configs (hemsfw/ha_disc.py: loaded for this, dropped after)."""
        from hemsfw import ha_disc

        ha_disc.announce(self)
        unload("ha_disc")
        self.announced += 1

    def up(self, link: Link) -> None:
        self.announce()
        self.relay_changed()
        self.plan_changed()
        self.mode_sent = None
        self.diag_at = self.uptime_ms - DIAG_MS
        self.poll()

    def mode(self) -> str:
        o = self.r.resident.ovr
        return "auto" if o is None else ("on" if o["on"] else "off")

    def diag(self) -> "Json":
        d = getattr(self.r.board, "diag", None)
        out = d() if d is not None else {}
        out["uptime_s"] = self.uptime_ms // 1000
        out["version"] = VERSION
        out.setdefault("rssi", None)
        out.setdefault("reset", None)
        return out

    def poll(self) -> None:
        """Every relay drive (runner.py): the mode when it changed (an override set, expired
        or ended), the diagnostics every DIAG_MS."""
        now = self.r.ticks()
        self.uptime_ms += ticks_diff(now, self.t_last)
        self.t_last = now
        if not self.link.online:
            return
        m = self.mode()
        if m != self.mode_sent and self.pub(self.t_mode, m):
            self.mode_sent = m
        if self.uptime_ms - self.diag_at >= DIAG_MS:
            self.diag_at = self.uptime_ms
            self.pub(self.t_diag, self.diag())

    # ------------------------------------------------------------ state

    def _slot(self) -> "Slot | None":
        h = self.r.home
        return h.slot_at(self.r.clock.now()) or h.new

    def relay_changed(self) -> None:
        if not self.link.online:
            return
        on, frame = self.r.state
        self.pub(self.t_relay, "ON" if on else "OFF")
        st = self._slot()
        if st and frame is not None:
            p = st.get("adjusted") or st["plan"]
            self.pub(self.t_plan, str(p[frame] * st["quantum_wh"]))
        self.metered_changed()

    def metered_changed(self) -> None:
        """Metered energy today against the plan and the adjustment (on every relay change:
        at least each frame, and when a frame's budget is reached)."""
        m = self.r.meter
        st = self._slot()
        if m is None or not st or m.meter.day != st["day"] or not self.link.online:
            return
        mw = m.meter.today_wh()
        self.pub(self.t_metered, str(sum(mw)))
        # (the plan and the adjustment per frame are on <base>/plan/attributes: not repeated)
        self.pub(self.t_metered + "/attributes", {
            "day": st["day"], "frame": self.r.state[1], "metered_wh": mw,
            "meter": m.budget.state, "budget_wh": m.wh_now})

    def plan_changed(self) -> None:
        if not self.link.online:
            return
        st = self._slot()
        if not st:
            return
        q = st["quantum_wh"]
        adj = st.get("adjusted") or st["plan"]
        self.pub(self.t_attr, {"day": st["day"], "frame": self.r.state[1],
                                "planned_wh": [v * q for v in st["plan"]],
                                "adjusted_wh": [v * q for v in adj]})

    def handle(self, topic: str, msg: bytes) -> bool:
        """A message from the local broker; False if the topic is not ours.  The commands are
        rare: their code (hemsfw/ha_cmd.py) is loaded for one and dropped after it."""
        if topic not in (self.t_birth, self.t_relay_set, self.t_mode_set, self.t_plan_set):
            return False
        from hemsfw import ha_cmd

        ha_cmd.handle(self, topic, msg)
        del ha_cmd
        unload("ha_cmd")
        return True
