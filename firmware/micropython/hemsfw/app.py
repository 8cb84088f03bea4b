# Wiring: config -> board (relay in its safe state first) -> store -> MQTT clients -> runner, then
# the loop (plain, or under asyncio with the resident's web page).  Shared by main.py (boards)
# and run_home.py (unix port, CPython).  MicroPython subset only.

from hemsfw import store
from hemsfw.boards import load as load_board


def build(cfg, log):
    """A ready Runner for a checked config (nothing connected yet; the relay is safe)."""
    st = store.Store(cfg["state_dir"])
    board = load_board(cfg["board"])(cfg, st, log)      # creates the relay at its safe level
    from hemsfw import runner

    client = board.make_client(cfg["mqtt"], cfg["home_id"])
    local = None
    if cfg.get("local"):
        local = board.make_client(cfg["local"], cfg["local"]["client_id"])
    return runner.Runner(cfg, client, board.clock, board.relay, st, log, board=board,
                         local=local)


def run(r):
    """Run the loop (with the watchdog from the board, and the web page if configured)."""
    cfg = r.cfg
    if r.board is not None:
        r.watchdog = r.board.watchdog(cfg.get("watchdog_ms", 30000))
    if cfg.get("http"):
        from hemsfw import web

        return web.run(r, cfg["http"])
    return r.run()


def _load(path, make_log):
    from hemsfw import config
    from hemsfw.home import unload

    try:
        return config.load(path)
    except config.ConfigError as e:
        make_log("hems")(str(e))
        return None
    finally:
        unload("config")   # checked once: its code leaves the heap


def main(path, make_log):
    """Load the config at `path`, build, run.  make_log(name) -> log(*args) (name: the home id).
    Returns the exit status (2: config error)."""
    cfg = _load(path, make_log)
    if cfg is None:
        return 2
    log = make_log(cfg["home_id"])
    r = build(cfg, log)
    try:
        return run(r)
    except KeyboardInterrupt:
        log("interrupted")
        r.shutdown()
        return 130
