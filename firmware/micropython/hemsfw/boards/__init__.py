# Boards: one module each (esp32, picow, rpi, unix), the only code that touches hardware.
#
# A board module defines `Board(cfg, store, log)` with:
#   relay            the special-power relay driver, already in the configured safe state (the
#                    constructor creates it first, before any network or clock)
#   clock            hemsfw.clock.SystemClock (NTP / host) or LabClock (config clock "lab")
#   make_client(mqtt_cfg, client_id)   an MQTT client with umqtt.simple's interface
#   net_up()         the network link (Wi-Fi) is up: MQTT connect attempts only then
#   service(runner)  per-turn housekeeping: Wi-Fi supervision with backoff, NTP sync
#   button()         None, or "short" / "long" once per press of the override button
#   show(on, online, override)   the status LED
#   watchdog(ms)     a hardware watchdog with feed(), or None where the board has none
# Only esp32 / picow (hemsfw/boards/mcu.py) import `machine` and `network`.  MicroPython subset.

if False:  # types for mypy only (docs/firmware.md, "Types")
    from collections.abc import Callable

    from hemsfw.interfaces import Board, Json, Log
    from hemsfw.store import Store


def load(name: str) -> "Callable[[Json, Store, Log], Board]":
    """The Board class of board `name` (imported on demand: a board never loads another's)."""
    mod = __import__("hemsfw.boards." + name, None, None, ("Board",))
    return mod.Board  # type: ignore[no-any-return]  # (a dynamic import)
