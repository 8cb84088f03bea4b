# The resident's page drawn (hemsfw/web.py serves it) from its state (hemsfw/pagestate.py): the
# SVG chart and the HTML, each as small strings yielded one at a time.  webreq.py loads this module
# for a request that shows the page, once the state is taken and pagestate.py unloaded, and
# unloads it after, so that its code is not in the heap between requests (docs/benchmarks.md,
# Firmware memory).  MicroPython subset only.

from hemsfw.clock import hhmm

W = 720          # chart width (px)
H = 160          # chart height (px)
REFRESH_S = 60

if False:  # types for mypy only (docs/firmware.md, "Types")
    from collections.abc import Iterator

    from hemsfw.interfaces import Json
    from hemsfw.runner import Runner


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


def page(r: "Runner", s: "Json | None" = None) -> "Iterator[str]":
    """The page as small strings yielded one at a time, from its state `s` (taken here from
    hemsfw/pagestate.py if not given; webreq.py gives it)."""
    if s is None:
        from hemsfw.pagestate import state

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
