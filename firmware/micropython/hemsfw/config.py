# The home controller's configuration file (JSON), checked at boot with clear errors.
#
#   {"home_id": "h1",
#    "mqtt": {"host": "127.0.0.1", "port": 1883, "user": "h1", "password": "...",
#             "keepalive": 30, "cafile_der": null, "timeout_s": 5,
#             "backoff_max_s": 60, "hosts": ["10.0.0.1:1883", "10.0.0.2"]},
#                  (hosts: the cluster's nodes, in order; the link fails over between them.
#                   Default [host:port]; a host without :port gets mqtt.port)
#    "magnification": 2, "plan_wh": [...], "keys": {"mb1": "<64 hex>"},
#    "rated_w": 3000,      (the controlled circuit's rated power, W, as in the registry: the
#                           plan report then carries a range proof, docs/integrity.md; null: none)
#    "mask_brokers": ["mb1"], "min_mask_brokers": 1,   (default: the brokers of `keys`, all)
#    "days_ahead": 1, "max_rounds_per_day": 8,
#    "state_dir": "/path", "board": "unix"|"esp32"|"picow"|"rpi", "clock": "lab"|"system",
#    "safe_state": false, "exit_after_day": false, "loop_ms": 20, "watchdog_ms": 30000,
#    "relay": {"pin": 5, "active_low": false, "button": 0, "button_active_low": true,
#              "led": 2, "led_active_low": false},       (required on esp32/picow; rpi: optional,
#                                                          plus "driver": "gpiod"|"sysfs", "chip")
#    "wifi": {"ssid": "...", "password": "...", "hostname": "...", "country": "JP"},
#    "ntp": {"host": "pool.ntp.org", "every_s": 3600},   (esp32/picow)
#    "planner": {"mode": "config"|"history", "alpha_pct": 25, "min_days": 1},
#    "meter": {"kind": "pulse"|"sim", "pin": 4, "pull": "up", "edge": "falling",
#              "pulses_per_kwh": 1000, "debounce_ms": 30, "rated_w": 3000, "stuck_s": 900,
#              "frame_log": false, "loads": [...] (sim)},     (optional: energy budgets)
#    "http": {"port": 80, "bind": "0.0.0.0"},   (the resident's page; password: hemsfw/auth.py)
#    "local": {"host": ..., "port": 1883, "user": ..., "password": ..., "client_id": ...,
#              "discovery_prefix": "homeassistant", "base": "hems/<home_id>"},  (Home Assistant)
#    "unix": {"wifi_file": null}, "debug_pause_at": null}                   (tests only)
#
# docs/firmware.md describes every key.
# The MQTT user must be the home id: the broker's ACL grants a home its own topics by %u
# (backend/common/broker.py acl_text).  A null/absent mqtt.password is taken from the environment
# variable HEMS_MQTT_PASSWORD where the port has one (unix port, CPython), so a lab or a Pi need not
# keep it in the file.  MicroPython subset only.

import json
import os

from hemsfw import protocol

BOARDS = ("unix", "esp32", "picow", "rpi")
CLOCKS = ("lab", "system")
PASSWORD_ENV = "HEMS_MQTT_PASSWORD"

if False:  # types for mypy only (docs/firmware.md, "Types")
    from typing import Any

    from hemsfw.interfaces import Json


class ConfigError(ValueError):
    pass


# Every key the firmware reads, per section: any other key is refused with its name, so a typo
# ("safe_stat") is an error at boot, not a silently ignored setting.
KEYS = {
    "": ("home_id", "mqtt", "magnification", "plan_wh", "keys", "rated_w", "mask_brokers",
         "min_mask_brokers", "days_ahead", "max_rounds_per_day", "state_dir", "board", "clock",
         "safe_state", "utc_offset_min", "exit_after_day", "loop_ms", "watchdog_ms", "relay",
         "wifi", "ntp", "planner", "http", "local", "unix", "ota", "meter", "debug_pause_at",
         "debug_memtrace"),
    "mqtt": ("host", "port", "user", "password", "keepalive", "cafile_der", "timeout_s",
             "backoff_max_s", "hosts"),
    "relay": ("pin", "active_low", "button", "button_active_low", "led", "led_active_low",
              "driver", "chip", "sysfs_root", "min_on_s", "min_off_s"),
    "wifi": ("ssid", "password", "hostname", "country", "ap_password"),
    "ntp": ("host", "every_s"),
    "planner": ("mode", "alpha_pct", "min_days"),
    "http": ("port", "bind"),
    "local": ("host", "port", "user", "password", "keepalive", "timeout_s", "cafile_der",
              "client_id", "discovery_prefix", "base"),
    "unix": ("wifi_file",),
    "ota": ("url", "key", "every_s", "timeout_s"),
    "meter": ("kind", "pin", "pull", "edge", "pulses_per_kwh", "debounce_ms", "rated_w",
              "stuck_s", "frame_log", "loads"),
}


# ESP32 (the classic chip) pins: wired to the SPI flash (never usable), input-only (no output,
# no internal pull resistors), strapping (sampled at reset, pulled by the chip: an output there
# may glitch at every boot), the REPL's UART0.  docs/firmware.md, "Wiring".
ESP32_FLASH = (6, 7, 8, 9, 10, 11)
ESP32_INPUT_ONLY = (34, 35, 36, 37, 38, 39)
ESP32_STRAPPING = (0, 2, 5, 12, 15)
ESP32_UART0 = (1, 3)


def pin_problem(board: str, role: str, pin: object) -> "tuple[bool, str] | None":
    """(fatal, why) when `pin` is unusable (fatal) or risky for `role` ("pin": the relay,
    "button", "led") on `board`; None when it is fine.  Only ESP32 has such pins here (all
    RP2040 GPIOs come out of reset as inputs with pull-downs)."""
    if board != "esp32" or not isinstance(pin, int):
        return None
    if pin in ESP32_FLASH:
        return True, "GPIO%d is wired to the ESP32's flash chip" % pin
    if pin in ESP32_INPUT_ONLY:
        if role == "button":
            return False, ("GPIO%d has no internal pull resistor: fit an external 10k pull-up "
                           "(or pull-down)" % pin)
        return True, "GPIO%d is input-only on the ESP32" % pin
    if role == "pin" and pin in ESP32_STRAPPING:
        return False, ("GPIO%d is an ESP32 strapping pin: its level at reset is set by the chip, "
                       "so the relay may switch at every boot; use GPIO 16-33 (e.g. 26) or fit "
                       "a pull resistor that holds it off" % pin)
    if pin in ESP32_UART0:
        return False, "GPIO%d is the serial console (UART0): the REPL and flashing use it" % pin
    return None


def _known(cfg: "Json") -> None:
    """Refuse any key the firmware does not read (top level and every section)."""
    for sec, names in KEYS.items():
        d = cfg.get(sec) if sec else cfg
        if d is None:
            continue
        if not isinstance(d, dict):
            raise ConfigError("config: " + sec + " must be a JSON object")
        where = sec + "." if sec else ""
        for k in d:
            if k not in names:
                hint = " (gone: the page asks for the password the resident sets)" \
                    if where + str(k) == "http.token" else ""
                raise ConfigError("config: unknown key " + where + str(k) + hint)


def _need(d: object, key: str, kinds: "tuple[type, ...]", where: str = "") -> "Any":
    if not isinstance(d, dict) or key not in d:
        raise ConfigError("config: missing key " + where + key)
    v = d[key]
    if not isinstance(v, kinds) or (isinstance(v, bool) and bool not in kinds):
        raise ConfigError("config: wrong type for " + where + key)
    return v


def _int(d: "Json", key: str, lo: int, hi: int, default: int, where: str = "") -> int:
    if key not in d:
        return default
    v: int = _need(d, key, (int,), where)
    if not lo <= v <= hi:
        raise ConfigError(f"config: {where}{key} must be in {lo}..{hi}")
    return v


def _hosts(v: object, port: int) -> "list[list[Any]]":
    """mqtt.hosts: ["host", "host:port", ...] -> [[host, port], ...] (at least one; a checked
    config checks again unchanged)."""
    if not isinstance(v, list) or not v:
        raise ConfigError("config: mqtt.hosts must be a non-empty list of \"host[:port]\"")
    out = []
    for h in v:
        if isinstance(h, list) and len(h) == 2:
            h = str(h[0]) + ":" + str(h[1])
        if not isinstance(h, str) or not h or h.count(":") > 1:
            raise ConfigError("config: bad entry in mqtt.hosts: " + repr(h))
        name, _, p = h.partition(":")
        try:
            n = int(p) if p else port
        except ValueError:
            n = 0
        if not name or not 1 <= n <= 65535:
            raise ConfigError("config: bad entry in mqtt.hosts: " + repr(h))
        out.append([name, n])
    return out


def _bool(d: "Json", key: str, default: bool) -> bool:
    if key not in d:
        return default
    v: bool = _need(d, key, (bool,))
    return v


def _getenv(name: str) -> str | None:
    getenv = getattr(os, "getenv", None)  # absent on boards
    return getenv(name) if getenv is not None else None


def check(cfg: object) -> "Json":
    """Validate `cfg` (a dict) in place, fill defaults, return it; raise ConfigError."""
    if not isinstance(cfg, dict):
        raise ConfigError("config: top level must be a JSON object")
    _known(cfg)
    hid = _need(cfg, "home_id", (str,))
    if not protocol.valid_id(hid):
        raise ConfigError("config: home_id must be 1-32 chars of a-z 0-9 _ -")

    m = _need(cfg, "mqtt", (dict,))
    m["port"] = _int(m, "port", 1, 65535, 1883, "mqtt.")
    if m.get("hosts") is not None:
        m["hosts"] = _hosts(m["hosts"], m["port"])
        m["host"], m["port"] = m.get("host", m["hosts"][0][0]), m["hosts"][0][1]
    _need(m, "host", (str,), "mqtt.")
    if m.get("hosts") is None:
        m["hosts"] = [[m["host"], m["port"]]]
    if _need(m, "user", (str,), "mqtt.") != hid:
        raise ConfigError("config: mqtt.user must equal home_id (the broker ACL keys on it)")
    if m.get("password") is None:
        m["password"] = _getenv(PASSWORD_ENV)
        if m["password"] is None:
            raise ConfigError("config: missing key mqtt.password (or $" + PASSWORD_ENV + ")")
    _need(m, "password", (str,), "mqtt.")
    m["keepalive"] = _int(m, "keepalive", 0, 65535, 30, "mqtt.")
    m["timeout_s"] = _int(m, "timeout_s", 1, 120, 5, "mqtt.")
    m["backoff_max_s"] = _int(m, "backoff_max_s", 1, 3600, 60, "mqtt.")
    if m.get("cafile_der") is not None:
        _need(m, "cafile_der", (str,), "mqtt.")
    else:
        m["cafile_der"] = None

    cfg["magnification"] = _int(cfg, "magnification", 1, protocol.MAX_MAG, 1)
    p = _need(cfg, "plan_wh", (list,))
    if not p:
        raise ConfigError("config: plan_wh must not be empty")
    for v in p:
        if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v <= protocol.MAX_WH:
            raise ConfigError(f"config: plan_wh must hold integers 0..{protocol.MAX_WH}")

    if cfg.get("rated_w") is not None:
        cfg["rated_w"] = _int(cfg, "rated_w", 0, 1000000, 0)

    keys = _need(cfg, "keys", (dict,))
    if not keys:
        raise ConfigError("config: keys must name at least one mask broker")
    for b, k in keys.items():
        if not protocol.valid_id(b):
            raise ConfigError("config: bad mask broker id in keys: " + repr(b))
        if not isinstance(k, str) or len(k) != 64:
            raise ConfigError("config: keys." + b + " must be 64 hex digits")
        for c in k:
            if c not in "0123456789abcdefABCDEF":
                raise ConfigError("config: keys." + b + " must be 64 hex digits")

    # The mask brokers this home must use are provisioned, not announced: an announcement
    # naming fewer or others is refused (docs/privacy.md, "The broker set is the home's").
    mb = cfg.get("mask_brokers")
    if mb is None:
        mb = sorted(keys)
    if not isinstance(mb, list) or not mb:
        raise ConfigError("config: mask_brokers must be a non-empty list of broker ids")
    for b in mb:
        if b not in keys:
            raise ConfigError("config: mask_brokers." + str(b) + " has no key in keys")
    cfg["mask_brokers"] = mb
    cfg["min_mask_brokers"] = _int(cfg, "min_mask_brokers", 1, len(mb), len(mb))
    cfg["days_ahead"] = _int(cfg, "days_ahead", 0, 7, 1)
    cfg["max_rounds_per_day"] = _int(cfg, "max_rounds_per_day", 1, 96, 8)

    _need(cfg, "state_dir", (str,))
    board = cfg.get("board", "unix")
    if board not in BOARDS:
        raise ConfigError("config: board must be one of " + ", ".join(BOARDS))
    cfg["board"] = board
    ck = cfg.get("clock", "system")
    if ck not in CLOCKS:
        raise ConfigError("config: clock must be one of " + ", ".join(CLOCKS))
    cfg["clock"] = ck
    cfg["safe_state"] = _bool(cfg, "safe_state", False)
    cfg["utc_offset_min"] = _int(cfg, "utc_offset_min", -720, 840, 0)
    cfg["exit_after_day"] = _bool(cfg, "exit_after_day", False)
    cfg["loop_ms"] = _int(cfg, "loop_ms", 1, 1000, 20)

    wmax = 8000 if board == "picow" else 120000
    cfg["watchdog_ms"] = _int(cfg, "watchdog_ms", 1000, wmax, min(30000, wmax))
    if board == "picow" and m["timeout_s"] > 6:
        raise ConfigError("config: mqtt.timeout_s must be <= 6 on picow (8.3 s watchdog)")
    mcu = board in ("esp32", "picow")
    if mcu or "relay" in cfg:
        r = _need(cfg, "relay", (dict,))
        if board != "unix" or "pin" in r:   # unix: the lab relay, only the minimum times
            _need(r, "pin", (int, str) if mcu else (int,), "relay.")
        # minimum on / off times (compressor loads): a switch waits until the relay has
        # been in its state this long (runner.py)
        r["min_on_s"] = _int(r, "min_on_s", 0, 3600, 0, "relay.")
        r["min_off_s"] = _int(r, "min_off_s", 0, 3600, 0, "relay.")
        for k in ("active_low", "button_active_low", "led_active_low"):
            if k in r:
                _need(r, k, (bool,), "relay.")
        r["active_low"] = _bool(r, "active_low", False)
        for role in ("pin", "button", "led"):
            bad = pin_problem(board, role, r.get(role))
            if bad is not None and bad[0]:
                raise ConfigError("config: relay." + role + ": " + bad[1])
        if r.get("driver", "gpiod") not in ("gpiod", "sysfs"):
            raise ConfigError("config: relay.driver must be gpiod or sysfs")
    if mcu:
        w = _need(cfg, "wifi", (dict,))
        _need(w, "ssid", (str,), "wifi.")
        _need(w, "password", (str,), "wifi.")
    if cfg.get("meter"):
        _meter(cfg["meter"], board)
    pl = cfg.get("planner") or {}
    if pl.get("mode", "config") not in ("config", "history"):
        raise ConfigError("config: planner.mode must be config or history")
    if pl:
        _int(pl, "alpha_pct", 1, 100, 25, "planner.")
        _int(pl, "min_days", 1, 1000, 1, "planner.")
    h = cfg.get("http")
    if h:
        h["port"] = _int(h, "port", 1, 65535, 80, "http.")
        h["bind"] = h.get("bind") or "0.0.0.0"
    o = cfg.get("ota")
    if o:
        if not _need(o, "url", (str,), "ota.").startswith("http://"):
            raise ConfigError("config: ota.url must be an http:// URL")
        k = _need(o, "key", (str,), "ota.")
        if len(k) != 64 or [c for c in k if c not in "0123456789abcdefABCDEF"]:
            raise ConfigError("config: ota.key must be 64 hex digits")
        o["every_s"] = _int(o, "every_s", 60, 604800, 21600, "ota.")
        o["timeout_s"] = _int(o, "timeout_s", 1, 6 if board == "picow" else 30, 3, "ota.")
    lo = cfg.get("local")
    if lo:
        _need(lo, "host", (str,), "local.")
        lo["port"] = _int(lo, "port", 1, 65535, 1883, "local.")
        lo["keepalive"] = _int(lo, "keepalive", 0, 65535, 30, "local.")
        lo["timeout_s"] = _int(lo, "timeout_s", 1, 6 if board == "picow" else 120, 3, "local.")
        for k in ("user", "password", "cafile_der"):
            lo[k] = lo.get(k)
        lo["client_id"] = lo.get("client_id") or "hems-" + hid + "-local"
        lo["discovery_prefix"] = lo.get("discovery_prefix") or "homeassistant"
        lo["base"] = lo.get("base") or "hems/" + hid
    return cfg


METERS = ("pulse", "sim")


def _meter(mt: object, board: str) -> None:
    """The special circuit's meter (issue 15, docs/firmware.md "Metering"): checked in place."""
    if not isinstance(mt, dict):
        raise ConfigError("config: meter must be an object")
    kind = mt.get("kind", "pulse")
    if kind not in METERS:
        raise ConfigError("config: meter.kind must be one of " + ", ".join(METERS))
    mt["kind"] = kind
    if kind == "sim" and board != "unix":
        raise ConfigError("config: meter.kind sim (the lab's simulated load) needs board unix")
    if kind == "pulse":
        if board == "unix":
            raise ConfigError("config: meter.kind pulse needs a board with GPIO (esp32, picow, "
                              "rpi)")
        _need(mt, "pin", (int, str) if board != "rpi" else (int,), "meter.")
    mt["pulses_per_kwh"] = _int(mt, "pulses_per_kwh", 1, 100000, 1000, "meter.")
    mt["debounce_ms"] = _int(mt, "debounce_ms", 0, 1000, 30, "meter.")
    mt["rated_w"] = _int(mt, "rated_w", 1, 100000, 3000, "meter.")
    mt["stuck_s"] = _int(mt, "stuck_s", 60, 86400, 900, "meter.")
    if mt.get("pull", "up") not in ("up", "down", "none"):
        raise ConfigError("config: meter.pull must be up, down or none")
    if mt.get("edge", "falling") not in ("falling", "rising"):
        raise ConfigError("config: meter.edge must be falling or rising")
    mt["frame_log"] = _bool(mt, "frame_log", False)
    loads = mt.get("loads", [])
    if not isinstance(loads, list):
        raise ConfigError("config: meter.loads must be a list")
    for j in loads:
        if not isinstance(j, list) or len(j) != 6 or not isinstance(j[0], str):
            raise ConfigError("config: meter.loads: [kind, start_s, need_wh, power_w, on_s, "
                              "off_s] each")
        for v in j[1:]:
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise ConfigError("config: meter.loads: numbers must be integers >= 0")
        if j[3] <= 0 or j[1] >= 86400:
            raise ConfigError("config: meter.loads: power_w > 0 and start_s < 86400")


def load(path: str) -> "Json":
    """Read and check a config file; ConfigError (a ValueError) on any problem."""
    try:
        with open(path) as f:
            text = f.read()
    except OSError as e:
        raise ConfigError(f"config: cannot read {path}: {e}") from None
    try:
        cfg = json.loads(text)
    except ValueError:
        raise ConfigError(f"config: {path} is not valid JSON") from None
    cfg = check(cfg)
    for sec in ("mqtt", "local"):   # files the config names, on this device
        ca = (cfg.get(sec) or {}).get("cafile_der")
        if ca:
            try:
                os.stat(ca)
            except OSError:
                raise ConfigError("config: " + sec + ".cafile_der: no file " + ca + " (copy the"
                                  " broker's CA there: hems firmware flash copies the one "
                                  "beside config.json)") from None
    return cfg
