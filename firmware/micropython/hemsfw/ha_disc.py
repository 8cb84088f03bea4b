# Home Assistant discovery configs (hemsfw/ha.py announce): needed on connect and when Home
# Assistant restarts, so loaded for that and dropped right after (its strings would otherwise
# stay in the heap).  MicroPython subset only.

if False:  # types for mypy only (docs/firmware.md, "Types")
    from typing import Any

    from hemsfw.interfaces import Json

# diagnostic sensors: (key in <base>/diag, name, unit, device class)
DIAG = (("rssi", "Wi-Fi signal", "dBm", "signal_strength"),
        ("uptime_s", "Uptime", "s", "duration"),
        ("reset", "Last reset cause", None, None),
        ("version", "Firmware version", None, None))


def announce(h: "Any") -> None:
    """The relay switch, the plan sensor, the metered sensor (with a meter), the mode selector
    and the diagnostic sensors, for h, a hemsfw.ha.HA (not imported: ha loads this module)."""
    dev = h.device()
    pre, node = h.pre, h.node
    h.pub(pre + "/switch/" + node + "/relay/config", {
        "name": "Special circuit relay", "unique_id": node + "_relay",
        "command_topic": h.t_relay_set, "state_topic": h.t_relay,
        "payload_on": "ON", "payload_off": "OFF", "availability_topic": h.t_avail,
        "icon": "mdi:transmission-tower", "device": dev})
    h.pub(pre + "/sensor/" + node + "/plan/config", {
        "name": "Special circuit plan", "unique_id": node + "_plan",
        "state_topic": h.t_plan, "unit_of_measurement": "Wh",
        "json_attributes_topic": h.t_attr, "availability_topic": h.t_avail,
        "icon": "mdi:chart-bar", "device": dev})
    h.pub(pre + "/select/" + node + "/mode/config", {
        "name": "Special circuit mode", "unique_id": node + "_mode",
        "command_topic": h.t_mode_set, "state_topic": h.t_mode,
        "options": list(h.MODES), "availability_topic": h.t_avail,
        "icon": "mdi:toggle-switch-variant", "device": dev})
    if h.r.meter is not None:
        h.pub(pre + "/sensor/" + node + "/metered/config", {
            "name": "Special circuit metered today", "unique_id": node + "_metered",
            "state_topic": h.t_metered, "unit_of_measurement": "Wh",
            "device_class": "energy", "state_class": "total",
            "json_attributes_topic": h.t_metered + "/attributes",
            "availability_topic": h.t_avail, "icon": "mdi:meter-electric", "device": dev})
    for key, name, unit, cls in DIAG:
        c: Json = {"name": name, "unique_id": node + "_" + key,
                   "state_topic": h.t_diag, "value_template": "{{ value_json." + key + " }}",
                   "entity_category": "diagnostic", "availability_topic": h.t_avail,
                   "device": dev}
        if unit:
            c["unit_of_measurement"] = unit
            c["device_class"] = cls
        h.pub(pre + "/sensor/" + node + "/" + key + "/config", c)
