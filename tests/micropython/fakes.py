# Test doubles for the firmware's adapters (MicroPython subset; shared by the test_*.py here).

import json


class MemStore:
    """hemsfw.store.Store in memory; values go through JSON like the real one."""

    def __init__(self):
        self.files = {}
        self.lines = {}

    def write(self, name, obj):
        self.files[name] = json.dumps(obj)

    def read(self, name, default=None):
        s = self.files.get(name)
        return default if s is None else json.loads(s)

    def rename(self, old, new):
        self.files[new] = self.files.pop(old)

    def remove(self, name):
        self.files.pop(name, None)

    def append_line(self, name, obj):
        self.lines.setdefault(name, []).append(json.loads(json.dumps(obj)))


class CountingRandom:
    """Deterministic stand-in for os.urandom (distinct bytes on every call)."""

    def __init__(self, start=1):
        self.n = start

    def __call__(self, k):
        out = bytearray(k)
        for i in range(k):
            out[i] = (self.n * 31 + i * 7) & 0xFF
        self.n += 1
        return bytes(out)


class FakeClock:
    def __init__(self, now=None, topic=None, wall=None):
        self.t = now
        self.w = wall       # the wall clock (round deadlines); None = unknown
        self.topic = topic
        self.updates = []

    def now(self):
        return self.t

    def wall(self):
        return self.w

    def update(self, obj):
        if "virtual" not in obj:
            raise ValueError("bad_clock")
        self.updates.append(obj)
        self.t = obj["virtual"]


class FakeRelay:
    def __init__(self):
        self.calls = []
        self.on = None
        self.stuck = False

    def set(self, on, frame):
        self.calls.append((on, frame))
        self.on = on

    def ok(self):
        return not self.stuck


class FakeClient:
    """umqtt.simple.MQTTClient interface; `fail` names the next operation that raises OSError."""

    def __init__(self):
        self.cb = None
        self.will = None
        self.connected = False
        self.connects = 0
        self.published = []
        self.subscribed = []
        self.pending = []
        self.fail = {}
        self.pings = 0
        self.closed = 0

    def _maybe_fail(self, op):
        n = self.fail.get(op)
        if n:
            self.fail[op] = n - 1
            self.connected = False
            raise OSError("fake " + op)

    def set_callback(self, f):
        self.cb = f

    def set_last_will(self, topic, msg, retain=False, qos=0):
        self.will = (topic, msg, retain, qos)

    def connect(self, clean_session=True):
        self._maybe_fail("connect")
        self.connected = True
        self.connects += 1
        self.clean = clean_session
        return 0

    def publish(self, topic, msg, retain=False, qos=0):
        if not self.connected:
            raise OSError("not connected")
        self._maybe_fail("publish")
        self.published.append((topic, bytes(msg), retain, qos))

    def subscribe(self, topic, qos=0):
        self._maybe_fail("subscribe")
        self.subscribed.append((topic, qos))

    def check_msg(self):
        if not self.connected:
            raise OSError("not connected")
        self._maybe_fail("check_msg")
        if self.pending:
            t, m = self.pending.pop(0)
            self.cb(t.encode(), m)

    def ping(self):
        self.pings += 1

    def disconnect(self):
        self.connected = False

    def close(self):
        self.closed += 1
        self.connected = False

    def inject(self, topic, payload):
        self.pending.append((topic, payload))


class Ticks:
    """A manual millisecond counter for the runner's backoff and keepalive."""

    def __init__(self):
        self.ms = 0

    def __call__(self):
        return self.ms


def tmpdir():
    """A fresh directory under /tmp (MicroPython has no tempfile)."""
    import os

    try:
        import tempfile

        return tempfile.mkdtemp()
    except ImportError:
        pass
    n = 0
    while True:
        d = "/tmp/hems-test-%d-%d" % (int(_rand() % 1000000), n)
        try:
            os.mkdir(d)
            return d
        except OSError:
            n += 1


def _rand():
    import os

    b = os.urandom(4)
    return b[0] | (b[1] << 8) | (b[2] << 16)


class FakePulses:
    """A pulse meter's counter (hemsfw/meter.py source): `pulse(n)` as the IRQ would."""

    def __init__(self):
        self.n = 0

    def pulse(self, n=1):
        self.n += n

    def take(self):
        n = self.n
        self.n = 0
        return n
