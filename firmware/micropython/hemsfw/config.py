# The home controller's configuration file (JSON), checked at boot with clear errors.
#
#   {"home_id": "h1",
#    "mqtt": {"host": "127.0.0.1", "port": 1883, "user": "h1", "password": "...",
#             "keepalive": 30, "cafile_der": null, "timeout_s": 5},
#    "magnification": 2, "plan_wh": [...], "keys": {"mb1": "<64 hex>"},
#    "state_dir": "/path", "board": "unix"|"esp32"|"picow"|"rpi", "clock": "lab"|"system",
#    "safe_state": false, "exit_after_day": false, "loop_ms": 20,
#    "relay": {"pin": 5, "active_low": false},           (esp32/picow only)
#    "wifi": {"ssid": "...", "password": "..."}}          (esp32/picow only)
#
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


class ConfigError(ValueError):
    pass


def _need(d, key, kinds, where=""):
    if not isinstance(d, dict) or key not in d:
        raise ConfigError("config: missing key " + where + key)
    v = d[key]
    if not isinstance(v, kinds) or (isinstance(v, bool) and bool not in kinds):
        raise ConfigError("config: wrong type for " + where + key)
    return v


def _int(d, key, lo, hi, default, where=""):
    if key not in d:
        return default
    v = _need(d, key, (int,), where)
    if not lo <= v <= hi:
        raise ConfigError(f"config: {where}{key} must be in {lo}..{hi}")
    return v


def _bool(d, key, default):
    if key not in d:
        return default
    return _need(d, key, (bool,))


def _getenv(name):
    getenv = getattr(os, "getenv", None)  # absent on boards
    return getenv(name) if getenv is not None else None


def check(cfg):
    """Validate `cfg` (a dict) in place, fill defaults, return it; raise ConfigError."""
    if not isinstance(cfg, dict):
        raise ConfigError("config: top level must be a JSON object")
    hid = _need(cfg, "home_id", (str,))
    if not protocol.valid_id(hid):
        raise ConfigError("config: home_id must be 1-32 chars of a-z 0-9 _ -")

    m = _need(cfg, "mqtt", (dict,))
    _need(m, "host", (str,), "mqtt.")
    m["port"] = _int(m, "port", 1, 65535, 1883, "mqtt.")
    if _need(m, "user", (str,), "mqtt.") != hid:
        raise ConfigError("config: mqtt.user must equal home_id (the broker ACL keys on it)")
    if m.get("password") is None:
        m["password"] = _getenv(PASSWORD_ENV)
        if m["password"] is None:
            raise ConfigError("config: missing key mqtt.password (or $" + PASSWORD_ENV + ")")
    _need(m, "password", (str,), "mqtt.")
    m["keepalive"] = _int(m, "keepalive", 0, 65535, 30, "mqtt.")
    m["timeout_s"] = _int(m, "timeout_s", 1, 120, 5, "mqtt.")
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
    cfg["exit_after_day"] = _bool(cfg, "exit_after_day", False)
    cfg["loop_ms"] = _int(cfg, "loop_ms", 1, 1000, 20)

    if board in ("esp32", "picow"):
        r = _need(cfg, "relay", (dict,))
        _need(r, "pin", (int,), "relay.")
        r["active_low"] = _bool(r, "active_low", False)
        w = _need(cfg, "wifi", (dict,))
        _need(w, "ssid", (str,), "wifi.")
        _need(w, "password", (str,), "wifi.")
    return cfg


def load(path):
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
    return check(cfg)
