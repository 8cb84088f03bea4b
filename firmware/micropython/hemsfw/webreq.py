# One request to the resident's page, parsed and answered (MicroPython and CPython).
# hemsfw/web.py loads this module while a connection is open and drops it once none is: the
# server's code between requests is only its loop (web.run); what follows lives in the heap
# for the few ms a request takes (docs/benchmarks.md, Firmware memory).  The paths, the
# sessions and the answer in chunks: hemsfw/web.py.  Never imports web.py (no cycle).
# MicroPython subset only.

import json

from hemsfw.clock import ticks_add, ticks_diff, ticks_ms

ANSWER_S = 5       # an answer is written within this (web.REQ_S: the request's own limit)
HEAD_MAX = 1024
BODY_MAX = 256
COOKIE = "hems"

if False:  # types for mypy only (docs/firmware.md, "Types")
    from collections.abc import Iterable
    from typing import Any

    from hemsfw.interfaces import Json, Password
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


def send(w: "Any", status: str, ctype: str, chunks: "Iterable[str]", extra: str = "") -> None:
    end = ticks_add(ticks_ms(), 1000 * ANSWER_S)
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


def state(r: "Runner", wh: bool = False) -> "Json":
    from hemsfw import unload
    from hemsfw.pagestate import state

    s = state(r, wh)
    unload("pagestate")
    return s


def _head(w: "Any", status: str, r: "Runner") -> "Json":
    """The page's state, taken before its head is written (so a failure sends nothing)."""
    s = state(r)
    send(w, status, HTML, [])
    return s


def request(data: bytes) -> "tuple[str, str, str | None, bytes] | int | None":
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


def answer(r: "Runner", st: "dict[str, Any]", w: "Any", method: str, path: str,
           tok: str | None, body: bytes) -> "Json | Password | None":
    """Answer the request, or, for the page, write its head and return its state: the caller
    (web.py) draws the page once this module has left the heap (web.page).  A request for the
    password's code (the log-in page, log in, set the password, log out) is not answered here:
    its (path, session token, form fields, logged in) are returned, for auth.step to run once
    this module has left the heap, and answer_auth to write its outcome."""
    exp = st["sessions"].get(tok) if tok else None     # (auth.valid, without loading it)
    authed = exp is not None and ticks_diff(exp, r.ticks()) > 0
    if (method == "GET" and path == "/" and not authed) or (
            method == "POST" and path in ("/login", "/password", "/logout")):
        return path, tok, form_fields(body.decode()) if method == "POST" else {}, authed
    if method == "GET" and path == "/":
        return _head(w, "200 OK", r)
    if path in ("/state.json", "/override") and not authed:
        send(w, "401 Unauthorized", "text/plain", ["log in first\n"])
    elif method == "GET" and path == "/state.json":
        send(w, "200 OK", "application/json", [json.dumps(state(r, True))])
    elif method == "POST" and path == "/override":
        f = form_fields(body.decode())
        if f.get("state") not in ("on", "off", "auto"):
            send(w, "400 Bad Request", "text/plain", ["state must be on|off|auto\n"])
        else:
            r.override(f["state"], "day" if f.get("until") == "day" else "frame")
            send(w, "303 See Other", "text/plain", ["ok\n"], "Location: /\r\n")
    else:
        send(w, "404 Not Found", "text/plain", ["not found\n"])
    return None


def answer_auth(r: "Runner", w: "Any", status: str, what: str, text: str) -> "Json | None":
    """Write the outcome of the password's step (auth.step): a session cookie ("cookie"; text:
    the token, "" to clear it), the page ("page": its head written, its state returned, as
    answer does), else the log-in page (hemsfw/authgate.py) in mode `what` with message
    `text`."""
    if what == "page":
        return _head(w, status, r)
    if what == "cookie":
        send(w, status, "text/plain", ["ok\n"], _set_cookie(text) if text else
             "Set-Cookie: %s=; Max-Age=0; Path=/\r\n%s" % (COOKIE, SEE_HOME))
        return None
    from hemsfw.authgate import gate

    send(w, status, HTML, gate("Special circuit of " + r.id, what, text))
    return None


STATUS = {400: "400 Bad Request", 413: "413 Payload Too Large",
          431: "431 Request Header Fields Too Large"}
