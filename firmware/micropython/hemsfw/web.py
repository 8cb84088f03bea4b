# The resident's page: a tiny HTTP server on the device (MicroPython and CPython).
#
#   GET  /             the day's planned vs adjusted (and, with a meter, metered) load per frame
#                      as an SVG bar chart (clock times, a Wh scale), the adjustment in words,
#                      the relay's state, and the override buttons; it reloads every REFRESH_S
#                      (hemsfw/pagestate.py, then hemsfw/webpage.py and webchart.py draw
#                      it: each loaded per request, one at a time; hemsfw/webreq.py)
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
# ~3 KB smaller (its objects and the coroutines; docs/benchmarks.md).  Only this module's loop
# and the page's drawing (page) stay in the heap: a request is parsed and answered by
# hemsfw/webreq.py, loaded while a connection is open and dropped once none is (~4 KB less
# resident on a 32-bit port), before the page is drawn (~4 KB less at the page), and while the
# password's code (hemsfw/auth.py: the log-in page, log in, set the password, PBKDF2) runs,
# loaded again to write its answer: the two are never in the heap together.
# LAN only: there is no TLS on the page.  MicroPython subset only.

import gc

from hemsfw import unload
from hemsfw.clock import ticks_add, ticks_diff, ticks_ms

try:
    import select
except ImportError:   # very old ports
    import uselect as select  # type: ignore[import-not-found, no-redef]
import socket

REQ_S = 5
MAX_CONN = 4

if False:  # types for mypy only (docs/firmware.md, "Types")
    from collections.abc import Iterator
    from typing import Any

    from hemsfw.interfaces import Json, Password
    from hemsfw.runner import Runner


def _take(r: "Runner", st: "dict[str, Any]", w: "Any", c: "list[Any]") -> bool:
    """Read what arrived on connection `w` (c: [bytes so far, deadline]); once the request is
    complete, answer it.  True when the connection is done with (then closed by the caller).
    Never raises: a request that fails anywhere (MemoryError loading its code, parsing it,
    drawing the page) is logged and its code leaves the heap; the connection is then closed
    and the heap collected (_drop), and the control loop goes on."""
    try:
        d = w.recv(128)    # (small reads: no large block needed)
    except OSError:   # nothing yet (EAGAIN)
        return False
    try:
        c[0] += d
        # the request's code (hemsfw/webreq.py): in the heap while a connection is open
        from hemsfw import webreq

        req = webreq.request(c[0])
        if req is None:
            return not d            # the client closed before its request was complete
        if isinstance(req, int):
            webreq.send(w, webreq.STATUS[req], "text/plain", ["bad request\n"])
            return True
        s = webreq.answer(r, st, w, *req)
        if s is None:
            return True
        # the page, or the password's step: once the request's code has left the heap
        del webreq
        unload("webreq")
        gc.collect()   # (its blocks freed before the next code loads into the gaps)
        if isinstance(s, tuple):
            s = _password(r, st, w, s)
            if s is None:
                return True
            unload("webreq")   # (the page, after a refused new password)
            gc.collect()
        end = ticks_add(ticks_ms(), 1000 * REQ_S)
        for chunk in page(r, s):   # each as it is drawn (no buffer: the heap has small gaps)
            left = ticks_diff(end, ticks_ms())
            if left <= 0:
                raise OSError("answer too slow")
            w.settimeout(left / 1000)
            w.sendall(chunk.encode())
    except Exception as e:   # a bad or failed request must never reach the control loop
        c[0] = b""
        r.log("web:", type(e).__name__, e)
        unload("webreq")   # (the page's modules: below)
        return True   # (the heap is collected once the connection is dropped: _drop)
    finally:
        unload("auth", "authgate", "pagestate", "webpage", "webchart")   # (with it)
    return True


def _password(r: "Runner", st: "dict[str, Any]", w: "Any", q: "Password") -> "Json | None":
    """The password's step of a request (auth.step: the log-in page, log in, set the password,
    log out) run while hemsfw/webreq.py is out of the heap, then its outcome written by webreq.py
    loaded again (webreq.answer_auth: the page's state, for a page, else None).  The two
    modules together, PBKDF2 on top, were the whole firmware's peak (docs/benchmarks.md,
    Firmware memory).  A function of its own: no slot of _take's frame keeps either module."""
    from hemsfw import auth

    out = auth.step(r, st, *q)
    del auth
    unload("auth")
    gc.collect()
    from hemsfw import webreq

    return webreq.answer_auth(r, w, *out)


def page(r: "Runner", s: "Json | None" = None) -> "Iterator[str]":
    """The page, one small string at a time, from its state `s` (None: taken here, by
    hemsfw/webreq.py), drawn by modules loaded for it only, never in the heap together nor
    with webreq.py: its text before the chart (hemsfw/webpage.py), the chart
    (hemsfw/webchart.py) and the text after it (webpage.py again), each dropped before the
    next loads."""
    if s is None:
        from hemsfw import webreq

        s = webreq.state(r)
        del webreq
        unload("webreq")
    from hemsfw import webpage

    r.home.phase("page")   # (test hook: the page's state and text loaded; hemsfw/debug.py)
    yield from webpage.top(r, s)
    del webpage
    unload("webpage")
    gc.collect()   # (its blocks freed before the chart's code and generator take the gaps)
    if s["day"]:
        from hemsfw import webchart

        r.home.phase("chart")
        yield from webchart.svg(s["plan"], s["adjusted"], s["frame"], s["frame_s"],
                                s.get("metered_wh"), s["quantum_wh"])
        del webchart
        unload("webchart")
        gc.collect()
    from hemsfw import webpage

    yield from webpage.bottom(s)


def _drop(p: "Any", conns: "dict[Any, list[Any]]", w: "Any") -> None:
    """Close connection `w`; the last one open takes the request's code out of the heap (and
    collects it, so that a request's garbage, a failed one's too, is gone before the next
    turn)."""
    p.unregister(w)
    del conns[w]
    w.close()
    if not conns:
        unload("webreq")
        gc.collect()


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
                        _drop(p, conns, w)
                if ticks_diff(end, ticks_ms()) <= 0:
                    break
    finally:
        for w in conns:
            w.close()
        srv.close()
