"""A valid board config for the host tools' tests (`hems firmware flash` checks what it flashes).

Test infrastructure, not product code."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

KEY_HEX = "c8" * 32


def board_config(**over: Any) -> dict[str, Any]:
    """An ESP32 home's config that `flash` accepts; `over` replaces top-level keys."""
    cfg: dict[str, Any] = {
        "home_id": "h1", "board": "esp32", "clock": "system", "state_dir": "/state",
        "mqtt": {"host": "192.0.2.10", "port": 1883, "user": "h1", "password": "pw",
                 "keepalive": 30, "cafile_der": None, "timeout_s": 5},
        "magnification": 1, "plan_wh": [0] * 19 + [900] + [0] * 4, "keys": {"mb1": KEY_HEX},
        "safe_state": False, "relay": {"pin": 26, "active_low": False},
        "wifi": {"ssid": "home", "password": "secret"},
    }
    cfg.update(over)
    return cfg


def write_board_config(path: Path, **over: Any) -> Path:
    path.write_text(json.dumps(board_config(**over)))
    return path
