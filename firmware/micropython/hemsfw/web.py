# The resident's page: a tiny HTTP server on the device (asyncio, MicroPython and CPython).
#
#   GET  /             the day's planned vs adjusted (and, with a meter, metered) load per frame
#                      as an SVG bar chart, the relay's state, and the override buttons
#   GET  /state.json   the same as JSON
#   POST /override     form fields state=on|off|auto, until=frame|day (and token=... when the
#                      config sets http.token): the resident's override (hemsfw/resident.py)
#
# The control loop runs as one asyncio task (Runner.turn, then asyncio.sleep for the rest of the
# turn); each request is served between two turns.  Requests are bounded (5 s to arrive, 1 KB of
# headers, 256 bytes of body) and answered in small chunks drawn one at a time from generators,
# so a page never needs more than a few hundred bytes of buffer: as a list of its ~200 strings
# the 96-frame page held ~30 KB of heap at once (bench/firmware_mem.py, whole firmware).
# LAN only: there is no TLS on the page.  MicroPython subset only.

import json

try:
    import asyncio
except ImportError:   # very old ports
    import uasyncio as asyncio  # type: ignore[import-not-found, no-redef]

W = 720          # chart width (px)
H = 160          # chart height (px)
REQ_S = 5

if False:  # types for mypy only (docs/firmware.md, "Types")
    from collections.abc import Iterable, Iterator

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
        m = r.meter   # the special circuit's meter (hemsfw/meter.py), if it has one
        if m is not None and m.meter.day == st["day"]:
            out["metered_wh"] = m.meter.today_wh()
            out["meter"] = m.budget.state
    return out


def svg(planned: list[int], adjusted: list[int], frame: int | None,
        metered: list[int] | None = None) -> "Iterator[str]":
    """The bar chart, as small strings yielded one at a time: per frame a grey outline bar
    (planned), a filled bar (adjusted, class "a", with data-k / data-wh) and, with a meter, a
    thin dark bar (metered, class "m"), the current frame marked."""
    n = len(planned)
    top = max(max(planned), max(adjusted), max(metered) if metered else 0, 1)
    bw = W / n
    yield ('<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" '
           'viewBox="0 0 %d %d" role="img" aria-label="planned vs adjusted load">'
           % (W, H + 20, W, H + 20))
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
    yield '<text x="0" y="%d" font-size="12">frame 0</text>' % (H + 15)
    yield ('<text x="%d" y="%d" font-size="12" text-anchor="end">frame %d</text>'
           % (W, H + 15, n - 1))
    yield "</svg>"


def _button(token: str | None, state: str, until: str, label: str) -> str:
    t = '<input type="hidden" name="token" value="%s">' % token if token else ""
    return ('<form method="post" action="/override" style="display:inline">%s'
            '<input type="hidden" name="state" value="%s"><input type="hidden" name="until" '
            'value="%s"><button>%s</button></form> ' % (t, state, until, label))


def page(r: "Runner", token: str | None = None) -> "Iterator[str]":
    """The page as small strings yielded one at a time (the state is taken once, first)."""
    s = state(r)
    yield ('<!doctype html><html><head><meta charset="utf-8"><title>HEMS %s</title><meta '
           'name="viewport" content="width=device-width"></head><body style="font-family:'
           'sans-serif"><h1>Special circuit of %s</h1><p>Relay: <b id="relay">%s</b>'
           % (r.id, r.id, s["relay"].upper()))
    if s["override"]:
        yield " (your override, until %s)" % s["override"]["until"]
    yield " &middot; broker link: %s</p>" % ("up" if s["online"] else "down")
    if s["day"]:
        yield ("<p>Day %s, round %d, frame %s. Grey outline: your plan; green: the plan after "
               "the grid's adjustment (Wh per frame)" % (s["day"], s["round"], s["frame"]))
        mw = s.get("metered_wh")
        if mw is not None:
            yield ("; dark: metered today, <b id=\"metered\">%d</b> Wh of %d Wh. Meter: <b "
                   "id=\"meter\">%s</b>" % (sum(mw), sum(s["adjusted_wh"]), s["meter"]))
            if s["meter"] == "stuck":
                yield " (no pulses: the relay runs on time at rated power)"
        yield ".</p>"
        yield from svg(s["planned_wh"], s["adjusted_wh"], s["frame"], mw)
    else:
        yield "<p>No plan yet.</p>"
    yield ("<h2>Override</h2><p>Your right: keep the relay on or off whatever the plan says."
           "</p><p>")
    for st, until, label in (("on", "frame", "On until the next frame"),
                             ("off", "frame", "Off until the next frame"),
                             ("on", "day", "On for the day"), ("off", "day", "Off for the day"),
                             ("auto", "frame", "Back to the plan")):
        yield _button(token, st, until, label)
    yield "</p></body></html>"


def _form(body: str) -> dict[str, str]:
    out = {}
    for part in body.split("&"):
        if "=" in part:
            k, v = part.split("=", 1)
            out[k] = v
    return out


async def _send(w: "asyncio.StreamWriter", status: str, ctype: str, chunks: "Iterable[str]",
                extra: str = "") -> None:
    w.write(("HTTP/1.0 %s\r\nContent-Type: %s\r\nCache-Control: no-store\r\n%s"
             "Connection: close\r\n\r\n" % (status, ctype, extra)).encode())
    n = 0
    for c in chunks:
        w.write(c.encode())
        n += len(c)
        if n > 512:
            await w.drain()
            n = 0
    await w.drain()


async def _serve(r: "Runner", hcfg: "Json", rd: "asyncio.StreamReader",
                 w: "asyncio.StreamWriter") -> None:
    try:
        line = await asyncio.wait_for(rd.readline(), REQ_S)
        parts = line.decode().split()
        clen = 0
        total = 0
        while True:   # headers
            h = await asyncio.wait_for(rd.readline(), REQ_S)
            total += len(h)
            if h in (b"\r\n", b"\n", b"") or total > 1024:
                break
            if h.lower().startswith(b"content-length:"):
                clen = int(h.split(b":")[1])
        if len(parts) < 2:
            return
        method, path = parts[0], parts[1].split("?")[0]
        token = hcfg.get("token")
        if method == "GET" and path == "/":
            await _send(w, "200 OK", "text/html; charset=utf-8", page(r, token))
        elif method == "GET" and path == "/state.json":
            await _send(w, "200 OK", "application/json", [json.dumps(state(r))])
        elif method == "POST" and path == "/override" and 0 <= clen <= 256:
            body = await asyncio.wait_for(rd.read(clen), REQ_S) if clen else b""
            f = _form(body.decode())
            if token and f.get("token") != token:
                await _send(w, "403 Forbidden", "text/plain", ["bad token\n"])
            elif f.get("state") not in ("on", "off", "auto"):
                await _send(w, "400 Bad Request", "text/plain", ["state must be on|off|auto\n"])
            else:
                r.override(f["state"], "day" if f.get("until") == "day" else "frame")
                await _send(w, "303 See Other", "text/plain", ["ok\n"], "Location: /\r\n")
        else:
            await _send(w, "404 Not Found", "text/plain", ["not found\n"])
    except Exception as e:   # a bad request must never reach the control loop
        r.log("web:", type(e).__name__, e)
    finally:
        try:
            w.close()
            await w.wait_closed()
        except Exception:
            pass


async def _main(r: "Runner", hcfg: "Json") -> int:
    srv = await asyncio.start_server(lambda rd, w: _serve(r, hcfg, rd, w), hcfg["bind"],
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
