# The resident's page's chart (hemsfw/web.py's page draws the page): planned vs adjusted (and
# metered) load per frame as an SVG bar chart, as small strings yielded one at a time.  Loaded
# for the chart only, between the page's text before and after it (hemsfw/webpage.py, not in
# the heap meanwhile), and dropped after it (docs/benchmarks.md, Firmware memory).
# MicroPython subset only.

from hemsfw.clock import hhmm

W = 720          # chart width (px)
H = 160          # chart height (px)

if False:  # types for mypy only (docs/firmware.md, "Types")
    from collections.abc import Iterator


def svg(planned: list[int], adjusted: list[int], frame: int | None,
        frame_s: int = 900, metered: list[int] | None = None, q: int = 1) -> "Iterator[str]":
    """The bar chart, as small strings yielded one at a time: per frame a grey outline bar
    (planned), a filled bar (adjusted, class "a", with data-k / data-wh) and, with a meter, a
    thin dark bar (metered, class "m"), the current frame marked, clock times every 6 hours
    below, the Wh scale on the top line.  planned, adjusted: in quanta of q Wh (the stored
    round's own lists, not scaled copies); metered: in Wh."""
    n = len(planned)
    top = max(q * max(planned), q * max(adjusted), max(metered) if metered else 0, 1)
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
        p = q * planned[k]
        a = q * adjusted[k]
        hp = H * p / top
        ha = H * a / top
        yield ('<rect class="p" data-k="%d" data-wh="%d" x="%.1f" y="%.1f" width="%.1f" '
               'height="%.1f" fill="none" stroke="#999"/>' % (k, p, x, H - hp, bw, hp))
        yield ('<rect class="a" data-k="%d" data-wh="%d" x="%.1f" y="%.1f" width="%.1f" '
               'height="%.1f" fill="#2a7"/>' % (k, a, x + bw / 4, H - ha, bw / 2, ha))
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
