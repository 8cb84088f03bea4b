# Over-the-air update: a MAC'd bundle fetched over HTTP, written beside the running code, switched
# atomically at the next boot, rolled back if the new code does not come up.  Loaded only when the
# config has "ota".  docs/firmware.md, "Over-the-air update".
#
#   <url>manifest.json   {"version": "...", "files": [{"path": "hemsfw/x.mpy", "size": n,
#                         "sha256": hex}, ...]}            (`hems firmware publish` writes it)
#   <url>manifest.mac    hex HMAC-SHA256(ota.key, the manifest's bytes exactly as served)
#   <url><path>          each file; its SHA-256 must be the manifest's
#
# Slots: the flashed code is in the root ("" on sys.path); updates go to /s1 and /s2, always to
# the one not running.  Three small files in the root (hemsfw.store, atomic rename) decide
# which slot main.py puts first on sys.path:
#   ota_pending  {"slot", "version"}  staged, MAC and hashes checked: boot it next
#   ota_trial    main.py renames pending to trial and boots its slot once; a boot that finds
#                ota_trial still there means the trial never came up: it is removed (rollback)
#   ota_active   the confirmed slot: the app renames trial to active once its broker link is
#                up (confirm(), hooked in app.py)
# MicroPython subset only; the unix port runs it in the tests against a local HTTP server.

import binascii
import hashlib
import json
import os
import socket

from hemsfw.store import Store

PENDING = "ota_pending"
TRIAL = "ota_trial"
ACTIVE = "ota_active"
SLOTS = ("s1", "s2")
CHUNK = 512
MAX_MANIFEST = 8192
FIRST_MS = 60000

if False:  # types for mypy only (docs/firmware.md, "Types")
    from collections.abc import Callable
    from typing import Any

    from hemsfw.interfaces import Board, Json, Log
    from hemsfw.link import Link
    from hemsfw.runner import Runner


def _split(url: str) -> tuple[str, int, str]:
    if not url.startswith("http://"):
        raise ValueError("ota: only http:// URLs")
    rest = url[7:]
    hostport, _, path = rest.partition("/")
    host, _, port = hostport.partition(":")
    return host, int(port) if port else 80, "/" + path


def get(url: str, timeout_s: float, sink: "Callable[[bytes], None]",
        tick: "Callable[[], object] | None" = None) -> int:
    """HTTP/1.0 GET, every socket step bounded by timeout_s; the body goes to sink() in
    chunks (tick() between them: the runner drives the relay and feeds the watchdog).
    Returns the body's length; OSError / ValueError on failure."""
    host, port, path = _split(url)
    s = socket.socket()
    try:
        s.settimeout(timeout_s)
        s.connect(socket.getaddrinfo(host, port)[0][-1])
        s.send(("GET %s HTTP/1.0\r\nHost: %s\r\n\r\n" % (path, host)).encode())
        head = b""
        while b"\r\n\r\n" not in head:
            b = s.recv(CHUNK)
            if not b or len(head) > 2048:
                raise ValueError("ota: bad HTTP answer")
            head += b
        head, _, body = head.partition(b"\r\n\r\n")
        status = head.split(b"\r\n")[0].split()
        if len(status) < 2 or status[1] != b"200":
            raise ValueError("ota: HTTP " + (status[1].decode() if len(status) > 1 else "?")
                             + " for " + path)
        n = 0
        while True:   # (the head may have come alone: an empty rest is not the end)
            if body:
                sink(body)
                n += len(body)
                if tick is not None:
                    tick()
            body = s.recv(CHUNK)
            if not body:
                return n
    finally:
        s.close()


def _mkdirs(path: str) -> None:
    p = ""
    for part in path.split("/")[:-1]:
        p = p + part if not p else p + "/" + part
        try:
            os.mkdir(p)
        except OSError:
            pass


def _rmtree(path: str) -> None:
    try:
        names = os.listdir(path)
    except OSError:
        return
    for n in names:
        p = path + "/" + n
        try:
            os.remove(p)
        except OSError:
            _rmtree(p)
    try:
        os.rmdir(path)
    except OSError:
        pass


class Updater:
    def __init__(self, ocfg: "Json", version: str, root: str = ".",
                 log: "Log | None" = None) -> None:
        self.url: str = ocfg["url"] if ocfg["url"].endswith("/") else ocfg["url"] + "/"
        self.key = binascii.unhexlify(ocfg["key"])
        self.version = version
        self.root = root
        self.store = Store(root)
        self.log = log or (lambda *a: None)
        self.timeout_s: int = ocfg.get("timeout_s", 3)
        self.every_s: int = ocfg.get("every_s", 21600)
        self.due = 0

    def turn(self, net: bool, now_ms: int, tick: "Callable[[], object] | None" = None) -> None:
        """From the loop (app.py): stage an update when one is due (every_s, and first
        FIRST_MS after boot) and the network is up.  Failures are logged, never raised."""
        from hemsfw.clock import ticks_add, ticks_diff

        if not net or ticks_diff(now_ms, self.due) < 0:
            return
        self.due = ticks_add(now_ms, 1000 * self.every_s)
        try:
            self.stage(tick)
        except Exception as e:
            self.log("ota: no update:", type(e).__name__, e)

    def running_slot(self) -> str:
        for name in (TRIAL, ACTIVE):
            st = self.store.read(name)
            if st:
                return str(st["slot"])
        return ""

    def stage(self, tick: "Callable[[], object] | None" = None) -> str | None:
        """Fetch and check the published bundle; when it is another version than the running
        one, write it to the slot not running and mark it pending.  Returns the staged
        version or None (nothing new); ValueError / OSError when the bundle is refused
        (bad MAC, a hash or size that does not match) or unreachable: nothing is marked."""
        from hemsfw.hmacsha import hmac_sha256

        buf = bytearray()

        def keep(b: bytes) -> None:
            if len(buf) + len(b) > MAX_MANIFEST:
                raise ValueError("ota: manifest too large")
            buf.extend(b)

        get(self.url + "manifest.json", self.timeout_s, keep, tick)
        manifest = bytes(buf)
        buf = bytearray()
        get(self.url + "manifest.mac", self.timeout_s, keep, tick)
        want = hmac_sha256(self.key, manifest)
        got = binascii.unhexlify(bytes(buf).strip())
        d = len(want) ^ len(got)
        for i in range(min(len(want), len(got))):
            d |= want[i] ^ got[i]
        if d:
            raise ValueError("ota: the manifest's MAC does not match (not ours)")
        m = json.loads(manifest)
        version = m["version"]
        if version == self.version:
            return None
        run = self.running_slot()
        slot = SLOTS[1] if run == SLOTS[0] else SLOTS[0]
        base = self.root + "/" + slot
        self.store.remove(PENDING)
        _rmtree(base)
        for f in m["files"]:
            path = f["path"]
            if path.startswith("/") or ".." in path:
                raise ValueError("ota: bad path " + path)
            dst = base + "/" + path
            _mkdirs(dst)
            h = hashlib.sha256()
            with open(dst, "wb") as out:

                def write(b: bytes, h: "Any" = h, out: "Any" = out) -> None:
                    h.update(b)
                    out.write(b)

                n = get(self.url + path, self.timeout_s, write, tick)
            if n != f["size"] or binascii.hexlify(h.digest()).decode() != f["sha256"]:
                _rmtree(base)
                raise ValueError("ota: " + path + " does not match the manifest")
        self.store.write(PENDING, {"slot": slot, "version": version})
        self.log("ota: version", version, "staged in", slot, "- active at the next boot")
        return str(version)


def confirm(root: str = ".", log: "Log | None" = None) -> bool:
    """The code running on trial came up (its broker link is up): make it the active slot."""
    st = Store(root)
    t = st.read(TRIAL)
    if not t:
        return False
    st.rename(TRIAL, ACTIVE)
    if log is not None:
        log("ota: version", t.get("version"), "confirmed")
    return True


def boot_slot(root: str = ".", log: "Log | None" = None) -> str:
    """At boot, before any hemsfw module but this one is imported (main.py): the slot to run.
    A trial still there = the last update never came up: rolled back.  A pending update:
    its trial starts now."""
    st = Store(root)
    if st.read(TRIAL) is not None:
        st.remove(TRIAL)
        if log is not None:
            log("ota: the update did not come up: rolled back")
    elif st.read(PENDING) is not None:
        st.rename(PENDING, TRIAL)
    for name in (TRIAL, ACTIVE):
        s = st.read(name)
        if s:
            return str(s["slot"])
    return ""


def hook(ocfg: "Json", r: "Runner", board: "Board", log: "Log") -> None:
    """Hooks the updater into a built controller (hemsfw/app.py): the code on trial is confirmed
    once the broker link is up; the board's per-turn housekeeping also checks for a published
    update."""
    from hemsfw import VERSION
    from hemsfw.clock import ticks_add

    up = r.main.on_up

    def confirmed(link: "Link") -> None:
        confirm(".", log)
        r.main.on_up = up
        if up is not None:
            up(link)

    r.main.on_up = confirmed
    u = Updater(ocfg, VERSION, ".", log)
    u.due = ticks_add(r.ticks(), FIRST_MS)
    service = board.service
    wd = r.watchdog

    def feed() -> None:   # between download chunks: the watchdog, if the loop is healthy
        if wd is not None and r.healthy():
            wd.feed()

    def housekeeping(runner: object) -> None:
        service(runner)
        u.turn(board.net_up(), r.ticks(), feed)

    board.service = housekeeping  # type: ignore[method-assign]  # (an instance attribute)
