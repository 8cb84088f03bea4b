# The resident's page's text (hemsfw/web.py's page draws it) from its state
# (hemsfw/pagestate.py): what comes before the chart (top) and after it (bottom), each as small
# strings yielded one at a time.  web.page loads this module for each of the two, once the
# state is taken and webreq.py unloaded, and unloads it in between, while the chart
# (hemsfw/webchart.py) is drawn, and after: the page's code is never in the heap all at once,
# nor between requests (docs/benchmarks.md, Firmware memory).  MicroPython subset only.

from hemsfw.clock import hhmm

REFRESH_S = 60

if False:  # types for mypy only (docs/firmware.md, "Types")
    from collections.abc import Iterator

    from hemsfw.interfaces import Json
    from hemsfw.runner import Runner


def _button(state: str, until: str, label: str) -> str:
    return ('<form method="post" action="/override" style="display:inline">'
            '<input type="hidden" name="state" value="%s"><input type="hidden" name="until" '
            'value="%s"><button>%s</button></form> ' % (state, until, label))


def _head(title: str, refresh: bool = False) -> str:
    return ('<!doctype html><html><head><meta charset="utf-8"><title>%s</title><meta '
            'name="viewport" content="width=device-width">%s</head><body style="font-family:'
            'sans-serif">' % (title, '<meta http-equiv="refresh" content="%d">' % REFRESH_S
                              if refresh else ""))


def top(r: "Runner", s: "Json") -> "Iterator[str]":
    """The page up to its chart, from its state `s` (hemsfw/pagestate.py)."""
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
                   "id=\"meter\">%s</b>" % (sum(mw), s["quantum_wh"] * sum(s["adjusted"]),
                                                s["meter"]))
            if s["meter"] == "stuck":
                yield " (no pulses: the relay runs on time at rated power)"
        yield ".</p>"
    else:
        yield "<p>No plan yet.</p>"


def bottom(s: "Json") -> "Iterator[str]":
    """The page after its chart: the adjustment in words, the override and the account."""
    if s["day"]:
        yield '<ul id="adjustment">'
        for line in s["adjustment"]:
            yield "<li>%s</li>" % line
        yield "</ul>"
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
