# Test and benchmark hooks, loaded only when the config asks for them (never on a device):
#   debug_pause_at  "phase" (stop dead there, so a test can SIGKILL exactly there) or
#                   "phase:ms" (stall there once, e.g. while a test stops the broker)
#   debug_memtrace  path: live heap (gc.mem_alloc after gc.collect) at every loop turn and
#                   phase, written as JSON when the loop ends (bench/firmware_mem.py)
# Phases: boot, sealed (the seeds sealed, seal.py still loaded: the round's code peak), drawn
# (report built, not persisted), reported (persisted, nothing published),
# acked (one message acknowledged and persisted), sent (all acknowledged), adjusted, frame
# (the first frame change after frame 0); the page's requests (hemsfw/webreq.py): auth (the
# password code loaded), page (its state and text), chart.  MicroPython subset only.

import gc
import json

from hemsfw.clock import sleep_ms

if False:  # types for mypy only (docs/firmware.md, "Types")
    from hemsfw.interfaces import Json, Log


class Debug:
    def __init__(self, cfg: "Json", log: "Log") -> None:
        self.log = log
        p = cfg.get("debug_pause_at")
        self.pause_at: str | None = p
        self.pause_ms: int | None = None
        if p and ":" in p:
            self.pause_at, ms = p.split(":")
            self.pause_ms = int(ms)
        self.trace: Json | None = None
        if cfg.get("debug_memtrace"):
            self.trace = {"path": cfg["debug_memtrace"], "peak": 0, "peak_at": None,
                          "baseline": None, "turns": 0, "samples": {}}

    def mem(self, tag: str, online: bool = False) -> None:
        m = self.trace
        if m is None:
            return
        gc.collect()
        live = gc.mem_alloc()   # type: ignore[attr-defined]  # (MicroPython's gc)
        if tag == "idle" and m["baseline"] is None and online:
            m["baseline"] = live
        if live > m["peak"]:
            m["peak"], m["peak_at"] = live, tag
        if tag != "idle":
            m["samples"][tag] = live

    def dump(self, turns: int) -> None:
        m = self.trace
        if m is None:
            return
        m["turns"] = turns
        m["free_at_exit"] = gc.mem_free()   # type: ignore[attr-defined]
        with open(m["path"], "w") as f:
            json.dump(m, f)

    def phase(self, name: str) -> None:
        self.mem(name)
        if name != self.pause_at:
            return
        if self.pause_ms is not None:
            self.log("STALLED at", name, self.pause_ms, "ms")
            self.pause_at = None
            sleep_ms(self.pause_ms)
            return
        self.log("PAUSED at", name)
        while True:
            sleep_ms(1000)
