# The resident's page: a tiny HTTP server on the device (asyncio, MicroPython and CPython).
#
#   GET  /             the day's planned vs adjusted (and, with a meter, metered) load per frame
#                      as an SVG bar chart (clock times, a Wh scale), the adjustment in words,
#                      the relay's state, and the override buttons; it reloads every REFRESH_S
#                      (drawn by hemsfw/webpage.py, loaded per request)
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
# The control loop runs as one asyncio task (Runner.turn, then asyncio.sleep for the rest of the
# turn); each request is served between two turns.  Requests are bounded (5 s to arrive, 1 KB of
# headers, 256 bytes of body) and answered in small chunks drawn one at a time from generators,
# so a page never needs more than a few hundred bytes of buffer: as a list of its ~200 strings
# the 96-frame page held ~30 KB of heap at once (bench/firmware_mem.py, whole firmware).
# LAN only: there is no TLS on the page.  MicroPython subset only.

import json

from hemsfw import unload
from hemsfw.clock import ticks_diff

try:
    import asyncio
except ImportError:   # very old ports
    import uasyncio as asyncio  # type: ignore[import-not-found, no-redef]

REQ_S = 5
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


async def _send(w: "asyncio.StreamWriter", status: str, ctype: str, chunks: "Iterable[str]",
                extra: str = "") -> None:
    w.write(("HTTP/1.0 %s\r\nContent-Type: %s\r\nCache-Control: no-store\r\n%s"
             "X-Frame-Options: DENY\r\nConnection: close\r\n\r\n" % (status, ctype, extra)
             ).encode())
    n = 0
    for c in chunks:
        w.write(c.encode())
        n += len(c)
        if n > 512:
            await w.drain()
            n = 0
    await w.drain()


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
    """The page, drawn by a module loaded for this request only (hemsfw/webpage.py)."""
    from hemsfw.webpage import page

    return page(r)


def _state(r: "Runner") -> "Json":
    from hemsfw.webpage import state

    return state(r)


def _gate(r: "Runner", a: "Auth", msg: str = "") -> "Iterator[str]":
    from hemsfw.auth import gate

    return gate("Special circuit of " + r.id, a, msg)


async def _serve(r: "Runner", st: "dict[str, Any]", rd: "asyncio.StreamReader",
                 w: "asyncio.StreamWriter") -> None:
    # The request is answered in a coroutine of its own (_answer), whose frame (the session's
    # Auth, the page's generator: their modules' code) is freed as soon as it returns: asyncio
    # may keep a finished request's coroutine referenced until the next request (a stale slot
    # of its server loop), and this frame then holds only the streams.
    try:
        await _answer(r, st, rd, w)
    except Exception as e:   # a bad request must never reach the control loop
        r.log("web:", type(e).__name__, e)
    finally:
        unload("auth", "webpage")   # (their code leaves the heap with the request)
        try:
            w.close()
            await w.wait_closed()
        except Exception:
            pass


async def _answer(r: "Runner", st: "dict[str, Any]", rd: "asyncio.StreamReader",
                  w: "asyncio.StreamWriter") -> None:
    line = await asyncio.wait_for(rd.readline(), REQ_S)
    parts = line.decode().split()
    clen = 0
    total = 0
    tok = None
    while True:   # headers
        h = await asyncio.wait_for(rd.readline(), REQ_S)
        total += len(h)
        if h in (b"\r\n", b"\n", b"") or total > 1024:
            break
        lo = h.lower()
        if lo.startswith(b"content-length:"):
            clen = int(h.split(b":")[1])
        elif lo.startswith(b"cookie:"):
            tok = _cookie(h)
    if len(parts) < 2:
        return
    method, path = parts[0], parts[1].split("?")[0]
    exp = st["sessions"].get(tok) if tok else None     # (auth.valid, without loading it)
    authed = exp is not None and ticks_diff(exp, r.ticks()) > 0
    a = None if authed and path in ("/", "/state.json", "/override") else _auth(r, st)
    f: dict[str, str] = {}
    if method == "POST":
        if not 0 <= clen <= 256:
            await _send(w, "413 Payload Too Large", "text/plain", ["too large\n"])
            return
        body = await asyncio.wait_for(rd.read(clen), REQ_S) if clen else b""
        f = form_fields(body.decode())
    if method == "GET" and path == "/":
        await _send(w, "200 OK", HTML, _page(r) if a is None else _gate(r, a))
    elif a is not None and method == "POST" and path == "/login":
        if a.locked():
            await _send(w, "429 Too Many Requests", HTML,
                        _gate(r, a, "Too many wrong passwords: wait a little."))
            return
        new = a.login(f.get("password", ""))
        if new is None:
            await _send(w, "403 Forbidden", HTML, _gate(r, a, "Wrong password."))
        else:
            await _send(w, "303 See Other", "text/plain", ["ok\n"], _set_cookie(new))
    elif a is not None and method == "POST" and path == "/password":
        if not (authed or a.setup_open()):
            await _send(w, "401 Unauthorized", HTML, _gate(r, a, "Log in first."))
            return
        why = a.set_password(f.get("new", ""))
        if why is not None:
            await _send(w, "400 Bad Request", HTML,
                        _page(r) if authed else _gate(r, a, why))
        else:
            await _send(w, "303 See Other", "text/plain", ["ok\n"],
                        _set_cookie(a.new_session()))
    elif a is not None and method == "POST" and path == "/logout":
        a.logout(tok)
        await _send(w, "303 See Other", "text/plain", ["ok\n"],
                    "Set-Cookie: %s=; Max-Age=0; Path=/\r\n%s" % (COOKIE, SEE_HOME))
    elif path in ("/state.json", "/override") and not authed:
        await _send(w, "401 Unauthorized", "text/plain", ["log in first\n"])
    elif method == "GET" and path == "/state.json":
        await _send(w, "200 OK", "application/json", [json.dumps(_state(r))])
    elif method == "POST" and path == "/override":
        if f.get("state") not in ("on", "off", "auto"):
            await _send(w, "400 Bad Request", "text/plain", ["state must be on|off|auto\n"])
        else:
            r.override(f["state"], "day" if f.get("until") == "day" else "frame")
            await _send(w, "303 See Other", "text/plain", ["ok\n"], "Location: /\r\n")
    else:
        await _send(w, "404 Not Found", "text/plain", ["not found\n"])


async def _main(r: "Runner", hcfg: "Json") -> int:
    from hemsfw import auth

    st = auth.new_state(r.ticks)
    if r.store.read(auth.FILE) is None:
        r.log("web page: no password set; set one on the page within 10 minutes")
    del auth
    unload("auth")
    srv = await asyncio.start_server(lambda rd, w: _serve(r, st, rd, w), hcfg["bind"],
                                     hcfg["port"])
    r.log("web page on port", hcfg["port"])
    r.start()
    while True:
        rest = r.turn()
        if rest < 0:
            srv.close()
            return 0
        await asyncio.sleep(rest / 1000)


def run(r: "Runner") -> int:
    """Run the control loop and the page (the config's "http") together; returns the loop's
    exit status."""
    return asyncio.run(_main(r, r.cfg["http"]))
