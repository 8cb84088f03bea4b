# Wiring: config -> board (relay in its safe state first) -> store -> MQTT clients -> runner.
# Shared by main.py (boards) and run_home.py (unix port, CPython), which then drop this module
# (hemsfw.unload) and start the loop (Runner.serve): this code runs once, and its bytecode
# leaves the heap before the loop starts.  One function on purpose: every function is an object
# and its bytecode in a MicroPython heap.  MicroPython subset only.

import gc

from hemsfw import store

if False:  # types for mypy only (docs/firmware.md, "Types")
    from collections.abc import Callable

    from hemsfw.interfaces import Log
    from hemsfw.runner import Runner

# Collect after every GC_BOOT bytes allocated while the firmware loads, not only when the heap
# is full: the loader's garbage is then freed while it is still packed together and the code
# fills the holes near the bottom of the heap instead of being strewn over all of it, so the
# heap keeps free blocks large enough for the daily round (a 96-frame plan list is one 0.8 KB
# block on a 64-bit port).  On the unix port this is what lets a round complete in a 64 KB heap:
# the smallest heap that completes it fell from 82 KB to 65 KB with this alone
# (docs/benchmarks.md, Firmware memory).
# The loop then keeps a laxer GC_LOOP, so that what lives long (a round's state) still lands
# low in the heap: an idle turn allocates ~0.4 KB, a collection of the ~60 KB heap is ~15 us on
# the unix port; measured cost ~0.3 % of a core per home at loop_ms 10 (-1: MicroPython's
# default, collect only when the heap is full).
GC_BOOT = 1024
GC_LOOP = 4096


def build(path: str, make_log: "Callable[[str], Log]") -> "Runner | int":
    """Load the config at `path` and build the home controller: its Runner, ready to start
    (Runner.serve), or an exit status (2: config error; the set-up access point's).
    make_log(name) -> log(*args) (name: the home id)."""
    threshold = getattr(gc, "threshold", None)   # MicroPython only
    if threshold is not None:
        threshold(GC_BOOT)
    from hemsfw import config, drop_init, unload

    try:
        cfg = config.load(path)
    except config.ConfigError as e:
        make_log("hems")(str(e))
        return 2
    finally:
        config = None  # type: ignore[assignment]  # (drops the module: unload below)
        unload("config")   # checked once: its code leaves the heap (before the rest loads)
        gc.collect()
    log = make_log(cfg["home_id"])
    from hemsfw.boards import load as load_board

    # A ready Runner (nothing connected yet; the relay is safe).
    st = store.Store(cfg["state_dir"])
    # An old all-weekdays history.json is split into per-weekday files here, once, while the
    # heap is nearly empty (it holds ~6 KB of lists: too much for the round's heap).
    from hemsfw import history

    history.migrate(st)
    del history
    unload("history")
    board = load_board(cfg["board"])(cfg, st, log)   # creates the relay at its safe level
    del load_board
    unload("boards")   # the package's loader is needed once (its board module stays)
    if cfg["board"] in ("esp32", "picow") and not cfg["wifi"]["ssid"]:
        # no Wi-Fi yet: the set-up access point and page (the relay stays safe), then reset
        import machine

        from hemsfw import setup_ap

        return setup_ap.run(cfg, path, log, machine.reset)
    from hemsfw import runner

    client = board.make_client(cfg["mqtt"], cfg["home_id"])
    local = None
    if cfg.get("local"):
        local = board.make_client(cfg["local"], cfg["local"]["client_id"])
    r = runner.Runner(cfg, client, board.clock, board.relay, st, log, board=board, local=local)
    # The loop, with the watchdog from the board, and the web page if configured.
    r.watchdog = board.watchdog(cfg.get("watchdog_ms", 30000))
    if cfg.get("http"):   # the loop with the resident's page (its server polled between turns)
        from hemsfw import web

        r.loop = web.run
    if cfg.get("ota"):
        from hemsfw import ota

        ota.hook(cfg["ota"], r, board, log)
    # Each built once, above: their constructors leave the heap (run once, like this module),
    # and so do the config's sections that only they read (~0.9 KB on a 32-bit port)
    m = r.meter
    drop_init(r, r.home, r.resident, r.main, r.ha, m, m and m.meter, m and m.budget, board,
              board.relay, board.clock, getattr(board, "pulses", None), client, local)
    for k in ("mqtt", "local", "meter", "keys"):
        cfg.pop(k, None)
    gc.collect()
    if threshold is not None:
        threshold(GC_LOOP)
    return r
