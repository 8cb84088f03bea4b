# The resident's page: a tiny HTTP server on the device (MicroPython and CPython).
#
#   GET  /             the day's planned vs adjusted (and, with a meter, metered) load per frame
#                      as an SVG bar chart (clock times, a Wh scale), the adjustment in words,
#                      the relay's state, and the override buttons; it reloads every REFRESH_S
#                      (hemsfw/pagestate.py, then hemsfw/webpage.py draws it: each loaded
#                      per request, never both at once)
#   GET  /state.json   the same as JSON
#   POST /override     form fields state=on|off|auto, until=frame|day: the resident's override
#                      (hemsfw/resident.py)
#   POST /login        password=...: a session cookie;  POST /logout
#   POST /password     new=...: set the password (logged in, or the set-up window after boot)
#
# Everything but the login (or set-up) page needs a session: the password the resident set
# (hemsfw/auth.py).  No secret is ever part of a page; an unauthenticated client sees neither
# the plan nor the relay (401 on /state.json and /override).
#
# The server needs no asyncio: its listening socket and the connections being read are
# non-blocking, and the control loop waits out the rest of each turn (Runner.turn) in
# select.poll on them, so a request wakes it at once.  A connection's bytes are gathered over
# as many turns as they take to arrive (at most REQ_S; 1 KB of headers, 256 bytes of body,
# MAX_CONN connections at once: a browser opens spare ones), then the request is answered in
# one go, in small chunks drawn one at a time from generators, within REQ_S in all (the loop
# waits for it; on a LAN a few ms).  A page never needs more than a few hundred bytes of buffer:
# as a list of its ~200 strings the 96-frame page held ~30 KB of heap at once
# (bench/firmware_mem.py, whole firmware).  Without asyncio the whole firmware's heap is
# ~3 KB smaller (its objects and the coroutines; docs/benchmarks.md).
# LAN only: there is no TLS on the page.  MicroPython subset only.

import json

from hemsfw import unload
from hemsfw.clock import ticks_add, ticks_diff, ticks_ms

try:
    import select
except ImportError:   # very old ports
    import uselect as select  # type: ignore[import-not-found, no-redef]
import socket

REQ_S = 5
HEAD_MAX = 1024
BODY_MAX = 256
MAX_CONN = 4
COOKIE = "hems"

if False:  # types for mypy only (docs/firmware.md, "Types")
    from collections.abc import Iterable, Iterator
    from typing import Any

    from hemsfw.auth import Auth
    from hemsfw.interfaces import Json
    from hemsfw.runner import Runner


def unquote(s: str) -> str:
    """application/x-www-form-urlencoded value -> text ("+" and %XX, UTF-8)."""
    b = s.replace("+", " ").encode()
    out = bytearray()
    i = 0
    while i < len(b):
        c = b[i]
        if c == 37 and i + 2 < len(b):   # "%XX"
            try:
                out.append(int(b[i + 1:i + 3], 16))
                i += 3
                continue
            except ValueError:
                pass
        out.append(c)
        i += 1
    return out.decode()


def form_fields(body: str) -> dict[str, str]:
    out = {}
    for part in body.split("&"):
        if "=" in part:
            k, v = part.split("=", 1)
            out[k] = unquote(v)
    return out


def _cookie(h: bytes) -> str | None:
    """The session token from a Cookie: header line, or None."""
    for part in h.decode().split(":", 1)[1].split(";"):
        kv = part.strip().split("=", 1)
        if len(kv) == 2 and kv[0] == COOKIE:
            return kv[1]
    return None


def _out(w: "Any", b: bytes, end: int) -> None:
    """Write all of `b`, within the answer's deadline `end` (ticks_ms)."""
    left = ticks_diff(end, ticks_ms())
    if left <= 0:
        raise OSError("answer too slow")
    w.settimeout(left / 1000)
    w.sendall(b)


def _send(w: "Any", status: str, ctype: str, chunks: "Iterable[str]", extra: str = "") -> None:
    end = ticks_add(ticks_ms(), 1000 * REQ_S)
    _out(w, ("HTTP/1.0 %s\r\nContent-Type: %s\r\nCache-Control: no-store\r\n%s"
             "X-Frame-Options: DENY\r\nConnection: close\r\n\r\n" % (status, ctype, extra)
             ).encode(), end)
    for c in chunks:   # each as it is drawn (no buffer: a heap late in the day has small gaps)
        _out(w, c.encode(), end)


HTML = "text/html; charset=utf-8"
SEE_HOME = "Location: /\r\n"


def _set_cookie(tok: str) -> str:
    return ("Set-Cookie: %s=%s; HttpOnly; SameSite=Strict; Path=/\r\n%s"
            % (COOKIE, tok, SEE_HOME))


def _auth(r: "Runner", st: "dict[str, Any]") -> "Auth":
    """The password logic, loaded for this request only (hemsfw/auth.py; unload after)."""
    from hemsfw.auth import Auth

    return Auth(r.store, r.ticks, r.urandom, r.log, st)


def _page(r: "Runner") -> "Iterator[str]":
    """The page, drawn by a module loaded for this request only (hemsfw/webpage.py), from
    its state, taken first by another (hemsfw/pagestate.py, unloaded before webpage loads)."""
    s = _state(r)
    from hemsfw.webpage import page

    return page(r, s)


def _state(r: "Runner") -> "Json":
    from hemsfw.pagestate import state

    s = state(r)
    unload("pagestate")
    return s


def _gate(r: "Runner", a: "Auth", msg: str = "") -> "Iterator[str]":
    from hemsfw.auth import gate

    return gate("Special circuit of " + r.id, a, msg)


def _request(data: bytes) -> "tuple[str, str, str | None, bytes] | int | None":
    """(method, path, session token, body) of a complete request; None: more to come; an
    HTTP status (400, 413, 431) for a request that cannot be served."""
    e = data.find(b"\r\n\r\n")
    if e < 0:
        e = data.find(b"\n\n")
        if e < 0:
            return 431 if len(data) > HEAD_MAX else None
        e += 2
    else:
        e += 4
    if e > HEAD_MAX + 4:
        return 431
    lines = data[:e].split(b"\n")
    parts = lines[0].decode().split()
    if len(parts) < 2:
        return 400
    clen = 0
    tok = None
    for h in lines[1:]:
        lo = h.lower()
        if lo.startswith(b"content-length:"):
            clen = int(h.split(b":")[1])
        elif lo.startswith(b"cookie:"):
            tok = _cookie(h.strip())
    if parts[0] != "POST":
        clen = 0
    elif not 0 <= clen <= BODY_MAX:
        return 413
    if len(data) < e + clen:
        return None
    return parts[0], parts[1].split("?")[0], tok, data[e:e + clen]


def _answer(r: "Runner", st: "dict[str, Any]", w: "Any", method: str, path: str,
            tok: str | None, body: bytes) -> None:
    exp = st["sessions"].get(tok) if tok else None     # (auth.valid, without loading it)
    authed = exp is not None and ticks_diff(exp, r.ticks()) > 0
    a = None if authed and path in ("/", "/state.json", "/override") else _auth(r, st)
    f = form_fields(body.decode()) if method == "POST" else {}
    if method == "GET" and path == "/":
        _send(w, "200 OK", HTML, _page(r) if a is None else _gate(r, a))
    elif a is not None and method == "POST" and path == "/login":
        if a.locked():
            _send(w, "429 Too Many Requests", HTML,
                  _gate(r, a, "Too many wrong passwords: wait a little."))
            return
        new = a.login(f.get("password", ""))
        if new is None:
            _send(w, "403 Forbidden", HTML, _gate(r, a, "Wrong password."))
        else:
            _send(w, "303 See Other", "text/plain", ["ok\n"], _set_cookie(new))
    elif a is not None and method == "POST" and path == "/password":
        if not (authed or a.setup_open()):
            _send(w, "401 Unauthorized", HTML, _gate(r, a, "Log in first."))
            return
        why = a.set_password(f.get("new", ""))
        if why is not None:
            _send(w, "400 Bad Request", HTML, _page(r) if authed else _gate(r, a, why))
        else:
            _send(w, "303 See Other", "text/plain", ["ok\n"], _set_cookie(a.new_session()))
    elif a is not None and method == "POST" and path == "/logout":
        a.logout(tok)
        _send(w, "303 See Other", "text/plain", ["ok\n"],
              "Set-Cookie: %s=; Max-Age=0; Path=/\r\n%s" % (COOKIE, SEE_HOME))
    elif path in ("/state.json", "/override") and not authed:
        _send(w, "401 Unauthorized", "text/plain", ["log in first\n"])
    elif method == "GET" and path == "/state.json":
        _send(w, "200 OK", "application/json", [json.dumps(_state(r))])
    elif method == "POST" and path == "/override":
        if f.get("state") not in ("on", "off", "auto"):
            _send(w, "400 Bad Request", "text/plain", ["state must be on|off|auto\n"])
        else:
            r.override(f["state"], "day" if f.get("until") == "day" else "frame")
            _send(w, "303 See Other", "text/plain", ["ok\n"], "Location: /\r\n")
    else:
        _send(w, "404 Not Found", "text/plain", ["not found\n"])


STATUS = {400: "400 Bad Request", 413: "413 Payload Too Large",
          431: "431 Request Header Fields Too Large"}


def _take(r: "Runner", st: "dict[str, Any]", w: "Any", c: "list[Any]") -> bool:
    """Read what arrived on connection `w` (c: [bytes so far, deadline]); once the request is
    complete, answer it.  True when the connection is done with (then closed by the caller)."""
    try:
        d = w.recv(128)    # (small reads: no large block needed)
    except OSError:   # nothing yet (EAGAIN)
        return False
    c[0] += d
    req = _request(c[0])
    if req is None:
        return not d            # the client closed before its request was complete
    try:
        if isinstance(req, int):
            _send(w, STATUS[req], "text/plain", ["bad request\n"])
        else:
            _answer(r, st, w, *req)
    except Exception as e:   # a bad request must never reach the control loop
        r.log("web:", type(e).__name__, e)
    finally:
        unload("auth", "pagestate", "webpage")   # (their code leaves the heap with the request)
    return True


def run(r: "Runner") -> int:
    """Run the control loop and the page (the config's "http") together; returns the loop's
    exit status."""
    hcfg = r.cfg["http"]
    from hemsfw import auth

    st = auth.new_state(r.ticks)
    if r.store.read(auth.FILE) is None:
        r.log("web page: no password set; set one on the page within 10 minutes")
    del auth
    unload("auth")
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(socket.getaddrinfo(hcfg["bind"], hcfg["port"])[0][-1])
    srv.listen(MAX_CONN)
    srv.setblocking(False)
    p = select.poll()
    p.register(srv, select.POLLIN)
    conns: dict[Any, list[Any]] = {}   # connection -> [bytes so far, deadline (ticks_ms)]
    r.log("web page on port", hcfg["port"])
    r.start()
    try:
        while True:
            rest = r.turn()
            if rest < 0:
                return 0
            end = ticks_add(ticks_ms(), rest)
            while True:
                p.poll(max(0, ticks_diff(end, ticks_ms())))   # wakes early on a request
                if len(conns) < MAX_CONN:
                    try:
                        w = srv.accept()[0]
                        w.setblocking(False)
                        p.register(w, select.POLLIN)
                        conns[w] = [b"", ticks_add(ticks_ms(), 1000 * REQ_S)]
                    except OSError:   # none waiting
                        pass
                for w in list(conns):
                    if _take(r, st, w, conns[w]) or ticks_diff(ticks_ms(), conns[w][1]) > 0:
                        p.unregister(w)
                        del conns[w]
                        w.close()
                if ticks_diff(end, ticks_ms()) <= 0:
                    break
    finally:
        for w in conns:
            w.close()
        srv.close()
