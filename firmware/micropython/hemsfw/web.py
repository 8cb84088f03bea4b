# The resident's page: a tiny HTTP server on the device (asyncio, MicroPython and CPython).
#
#   GET  /             the day's planned vs adjusted (and, with a meter, metered) load per frame
#                      as an SVG bar chart (clock times, a Wh scale), the adjustment in words,
#                      the relay's state, and the override buttons; it reloads every REFRESH_S
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

from hemsfw.clock import ticks_diff
from hemsfw.home import unload

try:
    import asyncio
except ImportError:   # very old ports
    import uasyncio as asyncio  # type: ignore[import-not-found, no-redef]

W = 720          # chart width (px)
H = 160          # chart height (px)
REQ_S = 5
REFRESH_S = 60
COOKIE = "hems"

if False:  # types for mypy only (docs/firmware.md, "Types")
    from collections.abc import Iterable, Iterator
    from typing import Any

    from hemsfw.auth import Auth
    from hemsfw.interfaces import Json, Slot
    from hemsfw.runner import Runner


def _slot(r: "Runner") -> "Slot | None":
    h = r.home
    return h.slot_at(r.clock.now()) or h.new


def state(r: "Runner") -> "Json":
    """What the page shows, as a dict (also GET /state.json)."""
    st = _slot(r)
    on, frame = r.state
    out: Json = {"home": r.id, "relay": "on" if on else "off", "frame": frame,
                 "online": r.main.online, "override": r.resident.ovr, "day": None}
    if st:
        q = st["quantum_wh"]
        adj = st.get("adjusted") or st["plan"]
        out["day"] = st["day"]
        out["round"] = st["round"]
        out["status"] = st.get("status")
        out["planned_wh"] = [v * q for v in st["plan"]]
        out["adjusted_wh"] = [v * q for v in adj]
        out["frame_s"] = st["frame_s"]
        out["start"] = st["start"]
        out["adjustment"] = explain(st.get("adjustment"), st["frame_s"], r.clock.now())
        m = r.meter   # the special circuit's meter (hemsfw/meter.py), if it has one
        if m is not None and m.meter.day == st["day"]:
            out["metered_wh"] = m.meter.today_wh()
            out["meter"] = m.budget.state
    return out


def hhmm(s: int) -> str:
    """Seconds since the day's (local) midnight -> "HH:MM"."""
    return "%02d:%02d" % (s // 3600, s // 60 % 60)


def _runs(frames: "list[int]") -> "list[tuple[int, int]]":
    """Sorted frame indices -> [(first, count)] of consecutive runs."""
    out: list[tuple[int, int]] = []
    for k in frames:
        if out and out[-1][0] + out[-1][1] == k:
            out[-1] = (out[-1][0], out[-1][1] + 1)
        else:
            out.append((k, 1))
    return out


def explain(adj: "Json | None", frame_s: int, now: float | None = None) -> "list[str]":
    """The grid's adjustment in words, one sentence per run of frames moved by the same
    shift ("The grid moved 19:00-19:45 to 20:30-21:15.") and per run cut."""
    if not adj:
        return ["No adjustment from the grid: the relay follows your plan."]
    out = []
    if now is not None and now >= adj["expires"]:
        out.append("The grid's adjustment has expired: the relay follows your plan.")
    mv = sorted([(m[0], m[1]) for m in adj["moves"]])
    i = 0
    while i < len(mv):
        j = i
        while j + 1 < len(mv) and mv[j + 1][0] == mv[j][0] + 1 and \
                mv[j + 1][1] == mv[j][1] + 1:
            j += 1
        n = j - i + 1
        f, t = mv[i]
        out.append("The grid moved %s-%s to %s-%s." % (
            hhmm(f * frame_s), hhmm((f + n) * frame_s), hhmm(t * frame_s),
            hhmm((t + n) * frame_s)))
        i = j + 1
    for f, n in _runs(sorted(adj["curtail"])):
        out.append("The grid cut %s-%s: the circuit gets no power then." % (
            hhmm(f * frame_s), hhmm((f + n) * frame_s)))
    return out


def svg(planned: list[int], adjusted: list[int], frame: int | None,
        frame_s: int = 900, metered: list[int] | None = None) -> "Iterator[str]":
    """The bar chart, as small strings yielded one at a time: per frame a grey outline bar
    (planned), a filled bar (adjusted, class "a", with data-k / data-wh) and, with a meter, a
    thin dark bar (metered, class "m"), the current frame marked, clock times every 6 hours
    below, the Wh scale on the top line."""
    n = len(planned)
    top = max(max(planned), max(adjusted), max(metered) if metered else 0, 1)
    bw = W / n
    yield ('<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" '
           'viewBox="0 0 %d %d" role="img" aria-label="planned vs adjusted load">'
           % (W, H + 20, W, H + 20))
    yield ('<line x1="0" y1="0.5" x2="%d" y2="0.5" stroke="#ccc"/><text class="scale" x="2" '
           'y="12" font-size="12">%d Wh</text>' % (W, top))
    if frame is not None:
        yield ('<rect class="now" x="%.1f" y="0" width="%.1f" height="%d" fill="#ffe9a8"/>'
               % (frame * bw, bw, H))
    for k in range(n):
        x = k * bw
        hp = H * planned[k] / top
        ha = H * adjusted[k] / top
        yield ('<rect class="p" data-k="%d" data-wh="%d" x="%.1f" y="%.1f" width="%.1f" '
               'height="%.1f" fill="none" stroke="#999"/>' % (k, planned[k], x, H - hp, bw, hp))
        yield ('<rect class="a" data-k="%d" data-wh="%d" x="%.1f" y="%.1f" width="%.1f" '
               'height="%.1f" fill="#2a7"/>' % (k, adjusted[k], x + bw / 4, H - ha, bw / 2, ha))
        if metered:
            hm = H * metered[k] / top
            yield ('<rect class="m" data-k="%d" data-wh="%d" x="%.1f" y="%.1f" width="%.1f" '
                   'height="%.1f" fill="#124"/>' % (k, metered[k], x + 3 * bw / 8, H - hm,
                                                    bw / 4, hm))
    step = max(1, 6 * 3600 // frame_s)
    for k in range(0, n + 1, step):
        anchor = "start" if k == 0 else ("end" if k >= n else "middle")
        yield ('<text class="t" x="%.1f" y="%d" font-size="12" text-anchor="%s">%s</text>'
               % (k * bw, H + 15, anchor, hhmm(k * frame_s)))
    yield "</svg>"


def _button(state: str, until: str, label: str) -> str:
    return ('<form method="post" action="/override" style="display:inline">'
            '<input type="hidden" name="state" value="%s"><input type="hidden" name="until" '
            'value="%s"><button>%s</button></form> ' % (state, until, label))


def _head(title: str, refresh: bool = False) -> str:
    return ('<!doctype html><html><head><meta charset="utf-8"><title>%s</title><meta '
            'name="viewport" content="width=device-width">%s</head><body style="font-family:'
            'sans-serif">' % (title, '<meta http-equiv="refresh" content="%d">' % REFRESH_S
                              if refresh else ""))


def page(r: "Runner") -> "Iterator[str]":
    """The page as small strings yielded one at a time (the state is taken once, first)."""
    s = state(r)
    yield _head("HEMS " + r.id, True)
    yield ('<h1>Special circuit of %s</h1><p>Relay: <b id="relay">%s</b>'
           % (r.id, s["relay"].upper()))
    ov = s["override"]
    if ov:
        u = ov["until"]
        if u is not None and s["day"]:
            u = hhmm(int(u - s["start"]) % 86400)
        yield " (your override, until %s)" % (u if u is not None else "the time is known")
    yield " &middot; broker link: %s</p>" % ("up" if s["online"] else "down")
    if s["day"]:
        fs = s["frame_s"]
        k = s["frame"]
        now = "" if k is None else ", now %s-%s" % (hhmm(k * fs), hhmm((k + 1) * fs))
        yield ("<p>%s (round %d)%s. Grey outline: your plan; green: the plan after the grid's "
               "adjustment, in Wh per %d minutes" % (s["day"], s["round"], now, fs // 60))
        mw = s.get("metered_wh")
        if mw is not None:
            yield ("; dark: metered today, <b id=\"metered\">%d</b> Wh of %d Wh. Meter: <b "
                   "id=\"meter\">%s</b>" % (sum(mw), sum(s["adjusted_wh"]), s["meter"]))
            if s["meter"] == "stuck":
                yield " (no pulses: the relay runs on time at rated power)"
        yield ".</p>"
        yield from svg(s["planned_wh"], s["adjusted_wh"], k, fs, mw)
        yield '<ul id="adjustment">'
        for line in s["adjustment"]:
            yield "<li>%s</li>" % line
        yield "</ul>"
    else:
        yield "<p>No plan yet.</p>"
    yield ("<h2>Override</h2><p>Your right: keep the relay on or off whatever the plan says."
           "</p><p>")
    for st, until, label in (("on", "frame", "On until the next frame"),
                             ("off", "frame", "Off until the next frame"),
                             ("on", "day", "On for the day"), ("off", "day", "Off for the day"),
                             ("auto", "frame", "Back to the plan")):
        yield _button(st, until, label)
    yield ('</p><form method="post" action="/password">New password: <input type="password" '
           'name="new" minlength="4" autocomplete="new-password"> <button>Change</button>'
           '</form><form method="post" action="/logout"><button>Log out</button></form>'
           '</body></html>')


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


def _gate(r: "Runner", a: "Auth", msg: str = "") -> "Iterator[str]":
    from hemsfw.auth import gate

    return gate("Special circuit of " + r.id, a, msg)


async def _serve(r: "Runner", st: "dict[str, Any]", rd: "asyncio.StreamReader",
                 w: "asyncio.StreamWriter") -> None:
    try:
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
            await _send(w, "200 OK", HTML, page(r) if a is None else _gate(r, a))
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
                            page(r) if authed else _gate(r, a, why))
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
            await _send(w, "200 OK", "application/json", [json.dumps(state(r))])
        elif method == "POST" and path == "/override":
            if f.get("state") not in ("on", "off", "auto"):
                await _send(w, "400 Bad Request", "text/plain", ["state must be on|off|auto\n"])
            else:
                r.override(f["state"], "day" if f.get("until") == "day" else "frame")
                await _send(w, "303 See Other", "text/plain", ["ok\n"], "Location: /\r\n")
        else:
            await _send(w, "404 Not Found", "text/plain", ["not found\n"])
    except Exception as e:   # a bad request must never reach the control loop
        r.log("web:", type(e).__name__, e)
    finally:
        unload("auth")   # (its code leaves the heap with the request)
        try:
            w.close()
            await w.wait_closed()
        except Exception:
            pass


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


def run(r: "Runner", hcfg: "Json") -> int:
    """Run the control loop and the page together; returns the loop's exit status."""
    return asyncio.run(_main(r, hcfg))
