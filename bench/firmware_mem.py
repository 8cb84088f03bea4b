"""Memory and CPU of the home firmware on the MicroPython unix port, one real round.

    python bench/firmware_mem.py [--json] [--frames 96] [--runs 5] [--micropython PATH] [--tls]

Runs the real firmware (the `hems firmware build` bundle of .mpy files, and the .py sources)
under the `micropython` binary against a real mosquitto on loopback, playing the coordinator,
the mask broker and the lab clock with paho: a 96-frame round is announced, reported (masked
plan + sealed seed), adjusted, and the day is played out on an accelerated clock.  Measures:

* heap_64k_ok            the whole round completes under `micropython -X heapsize=64K`
                         (bundle and sources; the firmware as deployed, no memtrace)
* peak_heap_bytes        peak heap in use during the round: the largest live heap
                         (gc.mem_alloc() right after gc.collect()) sampled at every loop turn
                         and at every phase of the round (seeds sealed, report drawn,
                         persisted, each PUBACK, adjustment applied; whole firmware: also
                         inside the page's requests), firmware code included
                         (bundle; a run without heap limit, the memtrace's own hemsfw/debug.py
                         counted too); source_peak_heap_bytes the same for the .py sources
* round_heap_bytes       peak_heap_bytes minus the idle heap after boot (baseline_heap_bytes):
                         what the round itself holds at its peak
* min_heapsize_bytes     the smallest -X heapsize (1 KB steps) in which the round still
                         completes (no memtrace): the peak *including* transient garbage and
                         fragmentation; *_week_history: the same for a home that has recorded
                         a week of plans (all seven per-weekday history files present; a round
                         reads and rewrites its own weekday's), with heap_64k_ok_week_history
* romfs                  the same figures with the code in ROMFS, as on a board with a ROMFS
                         partition (`hems firmware flash --romfs`): the bundle's romfs.img in
                         read-only memory outside the MicroPython heap, as memory-mapped flash
                         is, imported in place (firmware/romfs.py)
* whole_firmware         the same with the whole firmware: the resident's page (fetched once the
                         round is adjusted, its SVG checked) and Home Assistant on a second,
                         local mosquitto; code from files and from ROMFS
* cpu_ms_per_round       CPU time of one round's work (plan, masks, seal, persist, three
                         acknowledgements, adjustment) in-process on the unix port, mean of
                         --runs rounds; alloc_bytes_per_round: bytes allocated by it (gc off)
* proof_cpu_ms           CPU time of the plan's range proof (hemsfw/flp.py: prove_report and
                         its JSON field, 96 frames, cap PROOF_CAP quanta, one mask broker), mean
                         of --runs, verified by the services' verifier (bench/integrity_cost.py);
                         proof.round: a real round whose report carries the proof (the home
                         provisioned with rated_w, the round's quantum 1/7 of its cap per
                         frame): heap_64k_ok,
                         peak_heap_bytes, min_heapsize_bytes (files, ROMFS)
* idle_cpu_pct           CPU of an idle connected firmware process (loop_ms 10 as in the lab,
                         and the default 20)

Figures are for the venv's 64-bit unix port unless --micropython names another binary (e.g. a
32-bit build of the unix port, which lays objects out as an ESP32 / RP2040 does: half the
pointer and header sizes).  The measured table: docs/benchmarks.md (Firmware memory).
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import secrets
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from backend.common.broker import Mosquitto, free_port, start_resident_broker  # noqa: E402
from backend.common.tls import make_pki  # noqa: E402
from bench.integrity_cost import prove_cost  # noqa: E402
from firmware.host import ROMFS_IMAGE, build  # noqa: E402
from firmware.romfs import IN_HEAP_LINE  # noqa: E402
from hemsfw import protocol, protocol_svc  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
FW = REPO / "firmware" / "micropython"
MICROPYTHON = Path(sys.prefix) / "bin" / "micropython"
HOME = "h1"
PROOF_CAP = 7       # quanta per frame: 3 bits, the board representation of docs/integrity.md
PROOF_QUANTUM_WH = 107  # the bench's plan peaks at 750 Wh per frame: 7 quanta of 107 Wh
PROOF_RATED_W = 2996    # x 900 s = 749 Wh per frame = 7 quanta
DAY = "2026-11-28"
START = 1795824000
#: a round whose day has not ended this long after its (accelerated) day is a failed round
ROUND_SLACK_S = 60



def resident_views_page(port: int) -> bool:
    """POST /password (the set-up window after boot: hemsfw/auth.py), then GET / with the
    session cookie it sets; True when the whole page with its chart came back (a page whose
    drawing ran out of memory halfway ends early: its head and chart may have gone out)."""
    base = f"http://127.0.0.1:{port}"

    class Keep(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *a: Any, **k: Any) -> None:
            return None

    opener = urllib.request.build_opener(Keep)
    try:
        req = urllib.request.Request(base + "/password", data=b"new=bench-pw")
        try:
            opener.open(req, timeout=10)
            return False
        except urllib.error.HTTPError as e:     # 303 See Other, not followed
            cookie = (e.headers.get("Set-Cookie") or "").split(";")[0]
            if e.code != 303 or not cookie:
                return False
        req = urllib.request.Request(base + "/", headers={"Cookie": cookie})
        with opener.open(req, timeout=10) as r:
            page = r.read()
            return r.status == 200 and b"<svg" in page and page.endswith(b"</html>")
    except OSError:
        return False

class Peer:
    def __init__(self, port: int, user: str, pw: str, subs: list[str]) -> None:
        self.q: queue.Queue[tuple[str, bytes]] = queue.Queue()
        ready: queue.Queue[int] = queue.Queue()
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-" + user)
        c.username_pw_set(user, pw)
        c.on_message = lambda _c, _u, m: self.q.put((m.topic, bytes(m.payload)))
        c.on_subscribe = lambda _c, _u, mid, _rc, _p: ready.put(mid)
        c.connect("127.0.0.1", port, 30)
        c.loop_start()
        for t in subs:
            c.subscribe(t, 1)
            ready.get(timeout=10)
        self.c = c

    def publish(self, topic: str, payload: bytes, retain: bool = False) -> None:
        self.c.publish(topic, payload, 1, retain).wait_for_publish(10)

    def get(self, topic: str, timeout: float = 20.0) -> bytes:
        deadline = time.monotonic() + timeout
        while True:
            t, p = self.q.get(timeout=max(0.01, deadline - time.monotonic()))
            if t == topic:
                return p

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


def plan_wh(frames: int) -> list[int]:
    """An evening-heavy special circuit: EV night charge, heat pump morning, cooking."""
    out = [0] * frames
    for k in range(frames):
        h = 24 * k // frames
        out[k] = (750 if h < 4 else 0) + (400 if 6 <= h < 9 else 0) + (600 if 18 <= h < 20 else 0)
    return out


class Bench:
    def __init__(self, work: Path, frames: int, micropython: Path = MICROPYTHON,
                 tls: bool = False) -> None:
        self.work = work
        self.frames = frames
        self.mp = micropython
        # another binary (--micropython) runs the ROMFS image from its heap (firmware/romfs.py
        # run_in_heap): its size, learnt from the first such run, is added to every heap size
        self.external = micropython != MICROPYTHON
        self.rom_extra = 0
        self.pw = {u: secrets.token_hex(8) for u in (HOME, "coordinator", "mb1", "lab")}
        self.key = secrets.token_hex(32)
        # tls: the home talks to mosquitto's TLS listener (the services' peers stay on the
        # plain one), verifying a private CA as a deployed home does (backend/common/tls.py)
        self.tls = tls
        self.broker = Mosquitto(work / "broker", self.pw, ["mb1"],
                                tls=make_pki(work / "pki") if tls else None).start()
        self.n = 0
        #: the round's quantum and the home's rated_w (None: no range proof in the report)
        self.quantum = 1
        self.rated_w: int | None = None
        self.local: subprocess.Popen[bytes] | None = None
        self.local_port = 0

    def close(self) -> None:
        self.broker.stop()
        if self.local is not None:
            self.local.terminate()
            self.local.wait(10)

    def full_config(self) -> dict[str, Any]:
        """The whole firmware: the resident's page and Home Assistant on the resident's own
        broker (a second, anonymous mosquitto on loopback, started on first use)."""
        if self.local is None:
            self.local, self.local_port = start_resident_broker(self.work / "local")
        return {"http": {"port": free_port(), "bind": "127.0.0.1"},
                "local": {"host": "127.0.0.1", "port": self.local_port},
                # the special circuit's meter and budget (the lab's simulated load: its code
                # is larger than a board's IRQ counter, so this bounds a board's from above)
                "meter": {"kind": "sim", "pulses_per_kwh": 1000, "rated_w": 5700,
                          "loads": [["ev", 0, 20000, 3700, 0, 0],
                                    ["hpwh", 21600, 3000, 2000, 1200, 600]]}}

    def config(self, state: Path, **extra: Any) -> Path:
        cfg = {"home_id": HOME, "board": "unix", "clock": "lab", "state_dir": str(state),
               "mqtt": {"host": "127.0.0.1", "port": self.broker.port, "user": HOME,
                        "password": self.pw[HOME], "keepalive": 30, "timeout_s": 5},
               "magnification": 2, "plan_wh": plan_wh(self.frames),
               "keys": {"mb1": self.key}, "safe_state": False, "exit_after_day": True,
               "loop_ms": 10,
               # every measured round is a new round of the same day (self.n): allow them all
               "max_rounds_per_day": 96}
        if self.tls:
            mq = cfg["mqtt"]
            assert isinstance(mq, dict)
            mq["port"] = self.broker.tls_port
            mq["cafile_der"] = str(self.work / "pki" / "ca.der")
        if self.rated_w is not None:
            cfg["rated_w"] = self.rated_w
        cfg.update(extra)
        path = state.parent / (state.name + ".json")
        path.write_text(json.dumps(cfg))
        return path

    def start(self, src: Path, cfg: Path, heap: int | None, log: Path,
              romfs: bool = False) -> subprocess.Popen[bytes]:
        """The firmware in `src` (a bundle or the sources) as a process; romfs: the bundle's
        ROMFS image in read-only memory outside the heap, as a board's flash (firmware/romfs.py)"""
        # As a board imports it: from the working directory (sys.path ''), so each module's
        # __file__ (interned) is "hemsfw/x.mpy" as on a board, not the bundle's long temporary
        # path; `-m run_home` keeps the script's directory out of sys.path.
        env = dict(os.environ, MICROPYPATH="")
        cwd = src
        if romfs:
            cmd = [sys.executable, "-m", "firmware.romfs", "run", str(src / ROMFS_IMAGE), str(cfg)]
            if self.external:
                cmd += ["--micropython", str(self.mp)]
            if heap:
                cmd += ["--heapsize", str(heap + self.rom_extra)]
            env = dict(os.environ, MICROPYPATH="")
            cwd = REPO
        else:
            cmd = [str(self.mp)]
            if heap:
                cmd += ["-X", f"heapsize={heap}"]
            cmd += ["-m", "run_home", str(cfg)]
        with open(log, "wb") as f:
            # a session of its own: a failed round kills the whole group, so a ROMFS round's
            # micropython (a child of firmware/romfs.py) never outlives it as an orphan that
            # keeps the home's MQTT client id connected to the broker
            return subprocess.Popen(cmd, env=env, stdout=f, stderr=subprocess.STDOUT, cwd=cwd,
                                    start_new_session=True)

    def round(self, src: Path, heap: int | None, day_real_s: float = 2.0,
              memtrace: bool = True, week: bool = False, romfs: bool = False,
              full: bool = False) -> dict[str, Any]:
        """One full round in a fresh firmware process; ok=False if it failed (e.g. memory).
        memtrace: sample the live heap (loads hemsfw/debug.py, which a device never does: the
        runs that only ask whether a heap size suffices go without it).  week: the home has
        already recorded a week of plans (hemsfw/history.py: history0..6.json, one per weekday;
        a round reads and rewrites its own weekday's).  full: the whole firmware (page and Home
        Assistant configured, the page fetched once the round is adjusted)."""
        self.n += 1
        state = self.work / f"state{self.n}"
        if week:
            state.mkdir()
            h = [16 * v for v in plan_wh(self.frames)]        # history.SCALE
            for w in range(7):                                  # 2026-11-16 is a Monday
                (state / f"history{w}.json").write_text(json.dumps(
                    {"n": 1, "h": h, "last": f"2026-11-{16 + w:02d}"}))
        trace = self.work / f"mem{self.n}.json"
        log = self.work / f"home{self.n}.log"
        extra: dict[str, Any] = {"debug_memtrace": str(trace)} if memtrace else {}
        if full:
            extra.update(self.full_config())
        cfg = self.config(state, **extra)
        coord = Peer(self.broker.port, "coordinator", self.pw["coordinator"],
                     [protocol.t_plan(HOME), protocol.t_status(HOME)])
        mb1 = Peer(self.broker.port, "mb1", self.pw["mb1"], [protocol.t_mask("mb1", HOME)])
        clock = Peer(self.broker.port, "lab", self.pw["lab"], [])
        # a fresh round and clock for every run: clear what the last run left retained
        for p, t in ((coord, protocol.t_round()), (clock, protocol.t_clock())):
            p.publish(t, b"", retain=True)
        proc = self.start(src, cfg, heap, log, romfs)
        ok = False
        rusage = None
        try:
            coord.get(protocol.t_status(HOME))
            # each run has a fresh state dir; the round number stays within the firmware's
            # max_rounds_per_day (8 by default: a home refuses higher ones)
            rnd = 1 + (self.n - 1) % 8
            ann = protocol_svc.make_round(DAY, rnd, self.frames, 86400 // self.frames,
                                          self.quantum, START, int(time.time()) + 3600, ["mb1"])
            coord.publish(protocol.t_round(), protocol.encode(ann), retain=True)
            coord.get(protocol.t_plan(HOME))
            mb1.get(protocol.t_mask("mb1", HOME))
            moves = [[k, k + 1] for k in range(0, self.frames - 1, 12)]
            adj = protocol_svc.make_adjustment(DAY, rnd, "g1", moves, [self.frames - 1],
                                           START + 86400)
            coord.publish(protocol.t_adjust(HOME), protocol.encode(adj))
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                try:
                    if json.loads((state / "round.json").read_text()).get("adjusted"):
                        break
                except (OSError, ValueError):
                    pass
                time.sleep(0.02)
            page_ok = True
            if full:     # the resident sets the page's password (the set-up window after
                # boot) and looks at the page: its SVG drawn from the adjusted plan
                page_ok = resident_views_page(extra["http"]["port"])
            speed = 86400 / day_real_s
            clock.publish(protocol.t_clock(), json.dumps(
                {"v": 1, "anchor": time.time(), "virtual": START - 60, "speed": speed}).encode(),
                retain=True)
            # A heap that lets the firmware boot but fails every turn (MemoryError) never ends
            # the day: such a round fails after a bounded wait instead of hanging the bench.
            limit = time.monotonic() + day_real_s + ROUND_SLACK_S
            while True:
                pid, status, ru = os.wait4(proc.pid, os.WNOHANG)
                if pid:
                    rusage = ru
                    break
                if time.monotonic() > limit:
                    raise TimeoutError("the day did not end")
                time.sleep(0.02)
            proc.returncode = os.waitstatus_to_exitcode(status)
            ok = proc.returncode == 0 and page_ok
        except (queue.Empty, TimeoutError):
            ok = False
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
            for p in (coord, mb1, clock):
                p.close()
        text = log.read_text(errors="replace")
        out: dict[str, Any] = {"ok": ok, "log": text[-400:]}
        if ok and trace.exists():
            out["trace"] = json.loads(trace.read_text())
        for line in text.splitlines():
            if line.startswith(IN_HEAP_LINE):       # the image's own heap block, counted out
                out["image_heap"] = int(line.split()[-2])
                if "trace" in out:
                    t = out["trace"]
                    t["peak"] -= out["image_heap"]
                    t["baseline"] -= out["image_heap"]
                    t["samples"] = {k: v - out["image_heap"] for k, v in t["samples"].items()}
        if rusage is not None:
            out["cpu_s"] = rusage.ru_utime + rusage.ru_stime
        return out

    def idle_cpu(self, src: Path, loop_ms: int, seconds: float = 3.0) -> float:
        self.n += 1
        state = self.work / f"state{self.n}"
        cfg = self.config(state, loop_ms=loop_ms, exit_after_day=False)
        coord = Peer(self.broker.port, "coordinator", self.pw["coordinator"],
                     [protocol.t_status(HOME)])
        proc = self.start(src, cfg, None, self.work / f"home{self.n}.log")
        try:
            coord.get(protocol.t_status(HOME))
            time.sleep(0.5)
            t0, c0 = time.monotonic(), _cpu(proc.pid)
            time.sleep(seconds)
            t1, c1 = time.monotonic(), _cpu(proc.pid)
        finally:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
            coord.close()
        return 100.0 * (c1 - c0) / (t1 - t0)


def _cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


INPROC = r"""
import gc, json, sys, time, os
from hemsfw import home, protocol, store
FR = %(frames)d
RUNS = %(runs)d
d = %(dir)r
plan_wh = %(plan)r
cfg = {"home_id": "h1", "magnification": 2, "plan_wh": plan_wh, "keys": {"mb1": "c8" * 32}}
st = store.Store(d)
def one(n):
    h = home.Home(cfg, st, os.urandom)
    ann = protocol.parse_round({"v": 1, "day": "2026-11-28", "round": n, "frames": FR,
                                "frame_s": 86400 // FR, "quantum_wh": 1, "start": 1795824000,
                                "deadline": 1795800000, "brokers": ["mb1"]})
    out = h.on_round(ann)
    for i, t, p in h.pending():
        h.ack(i)
    adj = {"v": 1, "day": "2026-11-28", "round": n, "group": "g1",
           "moves": [[0, 1], [40, 44]], "curtail": [95 %% FR], "expires": 1795910400}
    assert h.on_adjustment(adj) is None
    return len(out)
one(1)                      # warm up: imports masking/seal once
gc.collect()
gc.disable()
a0 = gc.mem_alloc()
one(2)
alloc = gc.mem_alloc() - a0
gc.enable()
gc.collect()
t0 = time.ticks_us()
for n in range(RUNS):
    one(3 + n)
us = time.ticks_diff(time.ticks_us(), t0) / RUNS
print(json.dumps({"alloc_bytes_per_round": alloc, "us_per_round": us}))
"""


def inproc(mp: Path, src: Path, frames: int, runs: int, work: Path) -> dict[str, Any]:
    d = work / "inproc"
    d.mkdir(exist_ok=True)
    code = INPROC % {"frames": frames, "runs": runs, "dir": str(d), "plan": plan_wh(frames)}
    p = subprocess.run([str(mp), "-c", code], env=dict(os.environ,
                       MICROPYPATH=str(src)), capture_output=True, text=True,
                       timeout=300)
    if p.returncode != 0:
        raise RuntimeError(p.stdout + p.stderr)
    return json.loads(p.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def min_heapsize(b: Bench, src: Path, lo: int, hi: int, week: bool = False,
                 romfs: bool = False, full: bool = False) -> int:
    """Smallest heap (1 KB steps) in [lo, hi] in which a round completes (hi assumed ok)."""
    lo_k, hi_k = lo // 1024, hi // 1024
    while hi_k - lo_k > 1:
        mid = (lo_k + hi_k) // 2
        if b.round(src, mid * 1024, memtrace=False, week=week, romfs=romfs, full=full)["ok"]:
            hi_k = mid
        else:
            lo_k = mid
    return hi_k * 1024


def interpreter(mp: Path) -> str:
    """e.g. 'micropython 1.29.0 (64-bit), unix port' of the binary that runs the firmware"""
    p = subprocess.run([str(mp), "-c", "import sys; print(sys.maxsize > 2**32, "
                        "'%d.%d.%d' % sys.implementation.version[:3])"],
                       capture_output=True, text=True, timeout=60, check=True)
    wide, ver = p.stdout.split()
    return f"micropython {ver} unix port ({'64' if wide == 'True' else '32'}-bit), .mpy bundle"


def measure(frames: int, runs: int, mp: Path = MICROPYTHON, tls: bool = False) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="hems-fwmem-") as tmp:
        work = Path(tmp)
        bundle = work / "bundle"
        manifest = build(bundle)
        b = Bench(work, frames, mp, tls)
        try:
            r_bundle = b.round(bundle, 64 * 1024, memtrace=False)
            r_src = b.round(FW, 64 * 1024, memtrace=False)
            big = b.round(bundle, None)
            if not big["ok"]:
                raise RuntimeError("the round failed:\n" + big["log"])
            tr = big["trace"]
            src_big = b.round(FW, None)
            minheap = min_heapsize(b, bundle, 16 * 1024, 64 * 1024 if r_bundle["ok"] else
                                   256 * 1024)
            r_week = b.round(bundle, 64 * 1024, memtrace=False, week=True)
            minheap_week = min_heapsize(b, bundle, 16 * 1024, 64 * 1024 if r_week["ok"] else
                                        256 * 1024, week=True)
            rom = b.round(bundle, None, romfs=True)
            if not rom["ok"]:
                raise RuntimeError("the ROMFS round failed:\n" + rom["log"])
            b.rom_extra = rom.get("image_heap", 0)
            rom_min = min_heapsize(b, bundle, 16 * 1024, 64 * 1024, romfs=True)
            rom_min_week = min_heapsize(b, bundle, 16 * 1024, 64 * 1024, week=True, romfs=True)
            # the whole firmware: the resident's page (fetched once) and Home Assistant
            whole = {}
            for key, rf in (("files", False), ("romfs", True)):
                w = b.round(bundle, None, romfs=rf, full=True)
                if not w["ok"]:
                    raise RuntimeError("the whole-firmware round failed:\n" + w["log"])
                whole[key] = {"peak_heap_bytes": w["trace"]["peak"],
                              "peak_at": w["trace"]["peak_at"],
                              "baseline_heap_bytes": w["trace"]["baseline"],
                              "min_heapsize_bytes": min_heapsize(b, bundle, 16 * 1024,
                                                                 160 * 1024, romfs=rf,
                                                                 full=True)}
                whole[key]["heap_64k_ok"] = whole[key]["min_heapsize_bytes"] <= 64 * 1024
            ip = inproc(mp, bundle, frames, runs, work)
            # the same round with the plan's range proof (docs/integrity.md): the board
            # representation, PROOF_CAP quanta of the circuit's rating per frame
            b.quantum, b.rated_w = PROOF_QUANTUM_WH, PROOF_RATED_W
            pr = b.round(bundle, None)
            if not pr["ok"]:
                raise RuntimeError("the round with a proof failed:\n" + pr["log"])
            proof_round = {
                "rated_w": b.rated_w, "quantum_wh": b.quantum,
                "heap_64k_ok": b.round(bundle, 64 * 1024, memtrace=False)["ok"],
                "peak_heap_bytes": pr["trace"]["peak"], "peak_at": pr["trace"]["peak_at"],
                "min_heapsize_bytes": min_heapsize(b, bundle, 16 * 1024, 256 * 1024),
                "romfs_min_heapsize_bytes": min_heapsize(b, bundle, 16 * 1024, 256 * 1024,
                                                         romfs=True)}
            b.quantum, b.rated_w = 1, None
            proof = prove_cost(mp, bundle, frames, PROOF_CAP, runs, heap=False)
            idle10 = b.idle_cpu(bundle, 10)
            idle20 = b.idle_cpu(bundle, 20)
        finally:
            b.close()
    return {
        "frames": frames,
        "interpreter": interpreter(mp),
        "tls": tls,
        "bundle_bytes": manifest["total_bytes"],
        "heap_64k_ok": {"bundle": r_bundle["ok"], "source": r_src["ok"]},
        "peak_heap_bytes": tr["peak"],
        "peak_at": tr["peak_at"],
        "baseline_heap_bytes": tr["baseline"],
        "round_heap_bytes": tr["peak"] - tr["baseline"],
        "phase_heap_bytes": tr["samples"],
        "min_heapsize_bytes": minheap,
        "heap_64k_ok_week_history": r_week["ok"],
        "min_heapsize_week_history_bytes": minheap_week,
        "source_peak_heap_bytes": src_big.get("trace", {}).get("peak"),
        "romfs": {"image_bytes": manifest["romfs"]["bytes"],
                  "peak_heap_bytes": rom["trace"]["peak"],
                  "peak_at": rom["trace"]["peak_at"],
                  "baseline_heap_bytes": rom["trace"]["baseline"],
                  "round_heap_bytes": rom["trace"]["peak"] - rom["trace"]["baseline"],
                  "min_heapsize_bytes": rom_min,
                  "min_heapsize_week_history_bytes": rom_min_week,
                  "emulation": ("image read into the heap first, its block counted out "
                                f"({b.rom_extra} bytes)" if b.external else
                                "image mapped read-only outside the heap")},
        "whole_firmware": whole,
        "cpu_ms_per_round": round(ip["us_per_round"] / 1000, 2),
        "alloc_bytes_per_round": ip["alloc_bytes_per_round"],
        "proof_cpu_ms": proof["prove_ms"],
        "proof": {"cap_quanta": PROOF_CAP, "flp_field_bytes": proof["flp_field_bytes"],
                  "verified": proof["verified"], "round": proof_round},
        "process_cpu_s_per_day": round(big.get("cpu_s", 0.0), 3),
        "idle_cpu_pct": {"loop_ms_10": round(idle10, 2), "loop_ms_20": round(idle20, 2)},
    }


def table(r: dict[str, Any]) -> str:
    rows = [
        ("round under -X heapsize=64K (bundle / sources)",
         f"{'yes' if r['heap_64k_ok']['bundle'] else 'NO'} / "
         f"{'yes' if r['heap_64k_ok']['source'] else 'NO'}"),
        ("peak heap in use during a round (live, code incl.)",
         f"{r['peak_heap_bytes'] / 1024:.1f} KB (at {r['peak_at']})"),
        ("  idle heap after boot (code + state)", f"{r['baseline_heap_bytes'] / 1024:.1f} KB"),
        ("  the round's own peak above idle", f"{r['round_heap_bytes'] / 1024:.1f} KB"),
        ("smallest -X heapsize that completes a round", f"{r['min_heapsize_bytes'] // 1024} KB"),
        ("  the same after a week of recorded plans (history0..6.json)",
         f"{r['min_heapsize_week_history_bytes'] // 1024} KB (64K: "
         f"{'yes' if r['heap_64k_ok_week_history'] else 'NO'})"),
        ("peak heap, .py sources (compiled at import)",
         f"{r['source_peak_heap_bytes'] / 1024:.1f} KB" if r["source_peak_heap_bytes"]
         else "n/a"),
        (f"code in ROMFS (image {r['romfs']['image_bytes'] / 1024:.1f} KB; "
         f"{r['romfs']['emulation']}):", ""),
        ("  peak heap in use during a round",
         f"{r['romfs']['peak_heap_bytes'] / 1024:.1f} KB (at {r['romfs']['peak_at']})"),
        ("  idle heap after boot", f"{r['romfs']['baseline_heap_bytes'] / 1024:.1f} KB"),
        ("  smallest -X heapsize that completes a round (week of history)",
         f"{r['romfs']['min_heapsize_bytes'] // 1024} KB "
         f"({r['romfs']['min_heapsize_week_history_bytes'] // 1024} KB)"),
        ("whole firmware (page fetched, Home Assistant), code from files / ROMFS:", ""),
        ("  peak heap in use during a round",
         f"{r['whole_firmware']['files']['peak_heap_bytes'] / 1024:.1f} KB / "
         f"{r['whole_firmware']['romfs']['peak_heap_bytes'] / 1024:.1f} KB"),
        ("  smallest -X heapsize that completes a round",
         f"{r['whole_firmware']['files']['min_heapsize_bytes'] // 1024} KB / "
         f"{r['whole_firmware']['romfs']['min_heapsize_bytes'] // 1024} KB"),
        ("CPU per round (plan, masks, seal, persist, acks, adjust)",
         f"{r['cpu_ms_per_round']} ms"),
        ("bytes allocated per round", f"{r['alloc_bytes_per_round'] / 1024:.1f} KB"),
        (f"CPU of the plan's range proof (cap {r['proof']['cap_quanta']} quanta, "
         "docs/integrity.md)", f"{r['proof_cpu_ms']} ms"),
        ("round with the proof: peak heap / smallest -X heapsize (files / ROMFS)",
         f"{r['proof']['round']['peak_heap_bytes'] / 1024:.1f} KB / "
         f"{r['proof']['round']['min_heapsize_bytes'] // 1024} KB / "
         f"{r['proof']['round']['romfs_min_heapsize_bytes'] // 1024} KB (64K: "
         f"{'yes' if r['proof']['round']['heap_64k_ok'] else 'NO'})"),
        ("process CPU for boot + round + played-out day", f"{r['process_cpu_s_per_day']} s"),
        ("idle CPU (loop_ms 10 / 20)",
         f"{r['idle_cpu_pct']['loop_ms_10']} % / {r['idle_cpu_pct']['loop_ms_20']} %"),
        (".mpy bundle size", f"{r['bundle_bytes'] / 1024:.1f} KB"),
    ]
    w = max(len(a) for a, _ in rows)
    head = (f"firmware memory and CPU, {r['frames']} frames, {r['interpreter']}"
            + (", TLS to the broker" if r["tls"] else ""))
    return "\n".join([head, "-" * len(head)] + [f"{a:<{w}}  {b}" for a, b in rows])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--json", action="store_true", help="one JSON object on stdout")
    p.add_argument("--frames", type=int, default=96)
    p.add_argument("--runs", type=int, default=5, help="in-process rounds to average")
    p.add_argument("--micropython", type=Path, default=MICROPYTHON,
                   help="the micropython binary (default: the venv's 64-bit unix port; e.g. a "
                        "32-bit build of the unix port, docs/benchmarks.md)")
    p.add_argument("--tls", action="store_true",
                   help="the home's broker link over TLS (a private CA), as deployed")
    a = p.parse_args(argv)
    r = measure(a.frames, a.runs, a.micropython, a.tls)
    if a.json:
        print(json.dumps(r))
        print(table(r), file=sys.stderr)
    else:
        print(table(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
