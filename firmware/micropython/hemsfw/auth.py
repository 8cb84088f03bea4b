# Who may see the resident's page and switch the relay from it: whoever knows the password the
# resident set (a PIN of 4 digits will do).  hemsfw/web.py loads this module only for a request
# that needs it (log in, set the password, log out, the log-in page: step), while
# hemsfw/webreq.py, which parsed the request and then writes the answer, is out of the heap, and
# drops it after: what lives between requests is the state dict (new_state: sessions, failures,
# the set-up window) that web.py keeps, and the session check (valid), which webreq.py does
# itself.
#
#   auth.json   {"salt": hex, "hash": hex, "iter": n}: PBKDF2-HMAC-SHA256 of the password
#               (RFC 8018; the HMAC is hemsfw.hmacsha's), never the password itself
#
# Setting it: while no password is set, the page offers to set one during the first SETUP_S
# after boot only (power-cycling the controller is the physical proof of being the resident);
# later, only a logged-in resident can change it.  Forgotten: `mpremote rm :state/auth.json`
# (the state_dir), then power-cycle.  A login gives a random session token (a cookie, HttpOnly,
# SameSite=Strict: another site cannot make the browser use it), valid SESSION_S, at most
# MAX_SESSIONS at once, all in RAM (a reboot logs everyone out).  Wrong passwords: from the
# FREE_FAILS-th on, each one locks logins for twice as long as the last, up to LOCK_MAX_S.
# MicroPython subset only.

import binascii

from hemsfw.clock import ticks_add, ticks_diff

if False:  # types for mypy only (docs/firmware.md, "Types")
    from typing import Any

    from hemsfw.interfaces import Log, Storage, Ticks, Urandom
    from hemsfw.runner import Runner

FILE = "auth.json"
ITER = 1000      # ~17 ms on the x86 unix port, well under a second on an RP2040
SETUP_S = 600
SESSION_S = 12 * 3600
MAX_SESSIONS = 4
FREE_FAILS = 3
LOCK_MAX_S = 300
MIN_LEN = 4
MAX_LEN = 64


def pbkdf2(password: bytes, salt: bytes, n: int) -> bytes:
    """PBKDF2-HMAC-SHA256, one 32-byte block (RFC 8018, section 5.2)."""
    from hemsfw import unload
    from hemsfw.hmacsha import hmac_pads, hmac_sha256

    unload("hmacsha")   # (the functions stay referenced here: the module leaves sys.modules)
    pads = hmac_pads(password)
    u = hmac_sha256(password, salt + b"\x00\x00\x00\x01", pads)
    out = bytearray(u)
    for _ in range(n - 1):
        u = hmac_sha256(password, u, pads)
        for i in range(32):
            out[i] ^= u[i]
    return bytes(out)


def _same(a: bytes, b: bytes) -> bool:
    d = len(a) ^ len(b)
    for i in range(min(len(a), len(b))):
        d |= a[i] ^ b[i]
    return d == 0


def new_state(ticks: "Ticks") -> "dict[str, Any]":
    """What lives between requests (web.py keeps it): sessions {token: expiry ticks}, wrong
    passwords, the lock-out, boot time and whether the set-up window is over (latched: ticks
    wrap after ~12 days)."""
    return {"sessions": {}, "fails": 0, "lock_s": 1, "locked_until": None, "boot": ticks(),
            "setup_over": False}


def valid(state: "dict[str, Any]", tok: str | None, now: int) -> bool:
    """tok is a live session (webreq.py has its own copy of these three lines, so that a logged-in
    request does not load this module)."""
    exp = state["sessions"].get(tok) if tok else None
    return exp is not None and ticks_diff(exp, now) > 0


class Auth:
    """The password and sessions over `state` (new_state); cheap to make per request."""

    def __init__(self, store: "Storage", ticks: "Ticks", urandom: "Urandom",
                 log: "Log | None" = None, state: "dict[str, Any] | None" = None) -> None:
        self.store = store
        self.ticks = ticks
        self.urandom = urandom
        self.log = log or (lambda *a: None)
        self.rec = store.read(FILE)
        self.s = state if state is not None else new_state(ticks)
        self.sessions: dict[str, int] = self.s["sessions"]

    def is_set(self) -> bool:
        return bool(self.rec)

    def gate(self) -> str:
        """What the log-in page offers (hemsfw/authgate.py): "login" (a password is set),
        "setup" (none yet, within the set-up window) or "closed" (none, the window is over)."""
        return "login" if self.rec else ("setup" if self.setup_open() else "closed")

    def setup_open(self) -> bool:
        """No password yet and still within SETUP_S of boot."""
        if self.rec or self.s["setup_over"]:
            return False
        d = ticks_diff(self.ticks(), self.s["boot"])
        if not 0 <= d < 1000 * SETUP_S:
            self.s["setup_over"] = True
        return not self.s["setup_over"]

    def set_password(self, pw: str) -> str | None:
        """Store a new password (hashed); None, or why not."""
        if not MIN_LEN <= len(pw) <= MAX_LEN:
            return "the password needs %d to %d characters" % (MIN_LEN, MAX_LEN)
        salt = self.urandom(16)
        h = pbkdf2(pw.encode(), salt, ITER)
        self.rec = {"salt": binascii.hexlify(salt).decode(),
                    "hash": binascii.hexlify(h).decode(), "iter": ITER}
        self.store.write(FILE, self.rec)
        self.sessions.clear()     # a new password logs everyone else out
        self.log("page: password set")
        return None

    def locked(self) -> bool:
        u = self.s["locked_until"]
        return u is not None and ticks_diff(u, self.ticks()) > 0

    def login(self, pw: str) -> str | None:
        """A new session token for the right password; None otherwise (or while locked)."""
        rec = self.rec
        if not rec or self.locked():
            return None
        h = pbkdf2(pw.encode(), binascii.unhexlify(rec["salt"]), rec["iter"])
        s = self.s
        if not _same(h, binascii.unhexlify(rec["hash"])):
            s["fails"] += 1
            if s["fails"] >= FREE_FAILS:
                s["locked_until"] = ticks_add(self.ticks(), 1000 * s["lock_s"])
                s["lock_s"] = min(2 * s["lock_s"], LOCK_MAX_S)
            self.log("page: wrong password (" + str(s["fails"]) + ")")
            return None
        s["fails"] = 0
        s["lock_s"] = 1
        return self.new_session()

    def new_session(self) -> str:
        tok = binascii.hexlify(self.urandom(16)).decode()
        now = self.ticks()
        for t in list(self.sessions):
            if ticks_diff(self.sessions[t], now) <= 0:
                del self.sessions[t]
        while len(self.sessions) >= MAX_SESSIONS:
            oldest = ""
            for t in self.sessions:
                if not oldest or ticks_diff(self.sessions[t], self.sessions[oldest]) < 0:
                    oldest = t
            del self.sessions[oldest]
        self.sessions[tok] = ticks_add(now, 1000 * SESSION_S)
        return tok

    def valid(self, tok: str | None) -> bool:
        return valid(self.s, tok, self.ticks())

    def logout(self, tok: str | None) -> None:
        if tok:
            self.sessions.pop(tok, None)


def step(r: "Runner", st: "dict[str, Any]", path: str, tok: str | None, f: "dict[str, str]",
         authed: bool) -> tuple[str, str, str]:
    """The password's part of a page request (hemsfw/webreq.py's answer hands it over, path
    "/" for the log-in page, else a POST to /login, /password or /logout; f: the form fields;
    authed: the request has a live session).  hemsfw/web.py runs it with webreq.py out of the
    heap (the two were the whole firmware's peak together, PBKDF2 on top: docs/benchmarks.md,
    Firmware memory), then webreq.answer_auth writes the outcome: (HTTP status, what, text),
    what "cookie" (text: the new session token; "" clears it), "page" (the page, with that
    status), else the log-in page's mode (Auth.gate) with text as its message."""
    a = Auth(r.store, r.ticks, r.urandom, r.log, st)
    r.home.phase("auth")   # (test hook: the password code loaded; hemsfw/debug.py)
    if path == "/login":
        if a.locked():
            return "429 Too Many Requests", a.gate(), "Too many wrong passwords: wait a little."
        new = a.login(f.get("password", ""))
        if new is None:
            return "403 Forbidden", a.gate(), "Wrong password."
        return "303 See Other", "cookie", new
    if path == "/password":
        if not (authed or a.setup_open()):
            return "401 Unauthorized", a.gate(), "Log in first."
        why = a.set_password(f.get("new", ""))
        if why is not None:
            return ("400 Bad Request", "page", "") if authed else ("400 Bad Request", a.gate(), why)
        return "303 See Other", "cookie", a.new_session()
    if path == "/logout":
        a.logout(tok)
        return "303 See Other", "cookie", ""
    return "200 OK", a.gate(), ""     # GET / without a session: the log-in page
