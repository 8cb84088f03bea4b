# Code a MicroPython board needs rarely is loaded for its use and dropped right after, so that it
# is not in the heap between uses (hemsfw.unload; docs/benchmarks.md, Firmware memory).  On
# CPython unload() keeps every module: there these tests check only that the use works.

import sys

from fakes import CountingRandom, FakeClient, FakeClock, FakeRelay, MemStore, Ticks

from hemsfw import config, protocol, protocol_svc, runner

KEY = "c8" * 32
START = 1795824000
DAY = "2026-11-28"
MP = sys.implementation.name == "micropython"


def _runner():
    cfg = config.check({"home_id": "h1", "mqtt": {"host": "h", "user": "h1", "password": "p"},
                        "plan_wh": [0, 300, 0, 500], "keys": {"mb1": KEY}, "state_dir": "/x",
                        "clock": "lab", "local": {"host": "127.0.0.1"}})
    cl, lc = FakeClient(), FakeClient()
    ck = FakeClock(topic=protocol.t_clock())
    r = runner.Runner(cfg, cl, ck, FakeRelay(), MemStore(), lambda *a: None, CountingRandom(),
                      ticks=Ticks(), local=lc)
    ck.t = START - 100
    r.step()
    return r, cl, lc


def test_a_round_announcement_is_taken_by_code_dropped_after_it():
    r, cl, _ = _runner()
    cl.inject("hems/v1/round", protocol.encode(protocol_svc.make_round(
        DAY, 1, 4, 900, 100, START, START + 3600, ["mb1"])))
    r.step()
    assert r.home.new is not None and r.home.new["status"] == "reported"
    if MP:
        assert "hemsfw.report" not in sys.modules


def test_a_home_assistant_command_is_handled_by_code_dropped_after_it():
    r, _, lc = _runner()
    lc.inject("hems/h1/mode/set", b"on")
    r.step()
    assert r.resident.ovr is not None and r.resident.ovr["on"] is True
    if MP:
        assert "hemsfw.ha_cmd" not in sys.modules


class _Conn:
    """A page connection whose request has arrived whole (what web.run's poll hands _take)."""

    def __init__(self, data):
        self.data = data
        self.out = b""
        self.closed = False

    def recv(self, n):
        d, self.data = self.data[:n], self.data[n:]
        return d

    def settimeout(self, s):
        pass

    def sendall(self, b):
        self.out += b

    def close(self):
        self.closed = True


class _Poll:
    def __init__(self):
        self.gone = []

    def unregister(self, w):
        self.gone.append(w)


def test_a_page_request_is_answered_by_code_dropped_with_its_connection():
    from hemsfw import auth, web

    r, _, _ = _runner()
    st = auth.new_state(r.ticks)
    w = _Conn(b"GET /state.json HTTP/1.0\r\n\r\n")
    conns = {w: [b"", 0]}
    done = False
    while not done:      # 128 bytes a read, as web.run reads them
        done = web._take(r, st, w, conns[w])
    web._drop(_Poll(), conns, w)
    assert w.out.startswith(b"HTTP/1.0 401") and w.closed and not conns
    if MP:
        assert "hemsfw.webreq" not in sys.modules and "hemsfw.auth" not in sys.modules


def test_the_page_text_and_its_chart_are_never_in_the_heap_together():
    from hemsfw import web

    r, cl, _ = _runner()
    cl.inject("hems/v1/round", protocol.encode(protocol_svc.make_round(
        DAY, 1, 4, 900, 100, START, START + 3600, ["mb1"])))
    r.step()
    chart = 0
    for c in web.page(r):
        if MP and c.startswith("<rect"):     # the chart being drawn
            chart += 1
            assert "hemsfw.webchart" in sys.modules and "hemsfw.webpage" not in sys.modules
            assert "hemsfw.pagestate" not in sys.modules and "hemsfw.webreq" not in sys.modules
    assert chart or not MP


def test_the_password_is_set_with_the_request_code_out_of_the_heap():
    """POST /password in the set-up window: PBKDF2 runs (hemsfw/auth.py's step) while
    hemsfw/webreq.py, which parsed the request and then writes the answer, is not loaded."""
    from hemsfw import auth, web

    r, _, _ = _runner()
    st = auth.new_state(r.ticks)
    seen = []
    r.home.phase = lambda name: seen.append((name, "hemsfw.webreq" in sys.modules,
                                             "hemsfw.auth" in sys.modules))
    w = _Conn(b"POST /password HTTP/1.0\r\nContent-Length: 12\r\n\r\nnew=pin-1234")
    conns = {w: [b"", 0]}
    done = False
    while not done:
        done = web._take(r, st, w, conns[w])
    web._drop(_Poll(), conns, w)
    assert w.out.startswith(b"HTTP/1.0 303") and b"Set-Cookie: hems=" in w.out
    assert r.store.read(auth.FILE) is not None and len(st["sessions"]) == 1
    assert [n for n, _, _ in seen] == ["auth"]
    if MP:
        assert seen == [("auth", False, True)]
        assert "hemsfw.webreq" not in sys.modules and "hemsfw.auth" not in sys.modules


class _NoMemory:
    """hemsfw.webreq as it is when the heap cannot hold the request's code or its parsing."""

    @staticmethod
    def request(data):
        raise MemoryError("memory allocation failed, allocating 136 bytes")


def test_a_page_request_that_runs_out_of_memory_costs_the_loop_nothing():
    """A request that fails (MemoryError in the request's code) is logged, its code leaves
    the heap, its connection is closed, and the loop goes on: the next announcement is still
    taken and the relay still driven."""
    import hemsfw
    from hemsfw import auth, web, webreq

    r, cl, _ = _runner()
    logged = []
    r.log = lambda *a: logged.append(" ".join(str(x) for x in a))
    st = auth.new_state(r.ticks)
    w = _Conn(b"GET / HTTP/1.0\r\n\r\n")
    conns = {w: [b"", 0]}
    hemsfw.webreq = _NoMemory
    try:
        assert web._take(r, st, w, conns[w]) is True   # done with: never raised to the loop
    finally:
        if MP:
            hemsfw.unload("webreq")
        else:
            hemsfw.webreq = webreq
    web._drop(_Poll(), conns, w)
    assert w.closed and not conns and w.out == b""
    assert [x for x in logged if x.startswith("web: MemoryError")]
    if MP:
        assert "hemsfw.webreq" not in sys.modules and "hemsfw.auth" not in sys.modules
    driven = len(r.relay.calls)
    cl.inject("hems/v1/round", protocol.encode(protocol_svc.make_round(
        DAY, 1, 4, 900, 100, START, START + 3600, ["mb1"])))
    r.step()
    assert r.home.new is not None and r.home.new["status"] == "reported"
    assert len(r.relay.calls) > driven   # the relay still driven every turn


# A class built once, compiled from source as a module is loaded: the class keeps the only
# reference to its constructor's bytecode.
_ONCE = """
class Once:
    def __init__(self, n):
        self.a = [n, n + 1, n + 2, n + 3]
        self.b = {"n": n, "twice": 2 * n, "thrice": 3 * n, "text": "%d items" % n}
        self.c = (n, str(n), float(n), [n] * 3, -n, n * n, n // 2, n % 3)
        self.d = self.a + list(self.c) + list(self.b.values())

    def total(self):
        return len(self.d)
"""


def test_a_constructor_run_once_leaves_the_heap_with_drop_init():
    import gc

    from hemsfw import drop_init

    g = {}
    exec(_ONCE, g)
    cls = g["Once"]
    o = cls(5)
    del g
    gc.collect()
    before = gc.mem_alloc() if MP else 0   # type: ignore[attr-defined]
    drop_init(o, None)
    gc.collect()
    assert o.total() == 16     # the object itself is untouched
    if not MP:    # CPython keeps every constructor
        assert cls(6).total() == 16
        return
    assert before - gc.mem_alloc() >= 128, before - gc.mem_alloc()
