# The firmware's shared types, for mypy only: a stub without a module.  The firmware names them
# in string annotations and imports them under `if False:` (docs/firmware.md, "Types"), so
# nothing of this file exists on a board or at run time.
#
# The adapters the sans-I/O core is handed (DESIGN.md decision 6) are described by what the core
# uses of them (Protocol); HomeView, ResidentView and RunnerView are what hemsfw/adjust.py and
# hemsfw/ha.py use of the Home and the Runner that load them: they cannot import those modules
# back (tests/test_import_cycles.py).  Nothing here imports from hemsfw.

from collections.abc import Callable
from typing import Any, Protocol, TypedDict

#: A decoded JSON object: a message, a stored file (a round's slot), the config or a section.
Json = dict[str, Any]
#: log(*args): print-like, one line per call
Log = Callable[..., None]
#: os.urandom
Urandom = Callable[[int], bytes]
#: time.ticks_ms (milliseconds, wrapping on boards: compare with ticks_diff)
Ticks = Callable[[], int]
#: on_msg(topic, payload) from inside an MQTT client's check_msg
OnMsg = Callable[[bytes | str, bytes], None]
#: a page request for the password's code (hemsfw/webreq.py's answer -> hemsfw/auth.py's step):
#: (path, session token, form fields, logged in)
Password = tuple[str, str | None, dict[str, str], bool]


class Slot(TypedDict):
    """A round as the home keeps it: round.json / prev.json (hemsfw/home.py)."""

    day: str
    round: int
    start: int
    frame_s: int
    frames: int
    quantum_wh: int
    deadline: int
    source: str                 # where the plan came from (hemsfw/resident.py)
    status: str                 # reported | late | no_key
    report_id: str | None
    plan: list[int]             # quanta per frame
    outbox: list[list[str]]     # [topic, payload text] of the report's messages
    acked: list[int]            # per message: 0 not yet, 1 PUBACK, 2 the service replied
    sent: bool
    adjustment: Json | None     # {"group", "moves", "curtail", "expires"}
    adjusted: list[int] | None


class Override(TypedDict):
    """The resident's override (resident.json; hemsfw/resident.py): on until epoch `until`
    (None: until the time is known)."""

    on: bool
    until: float | None


class Clock(Protocol):
    """hemsfw.clock.SystemClock / LabClock: now() is the frame clock, None while unknown."""

    @property
    def topic(self) -> str | None: ...
    def now(self) -> float | None: ...
    def update(self, obj: Json) -> None: ...


class MqttClient(Protocol):
    """umqtt.simple.MQTTClient's interface (hemsfw/net_umqtt.py, hemsfw/net_paho.py)."""

    def set_callback(self, f: Callable[[bytes, bytes], None]) -> None: ...
    def set_last_will(self, topic: str, msg: bytes, retain: bool = ..., qos: int = ...) -> None: ...
    def connect(self, clean_session: bool = ...) -> int: ...
    def subscribe(self, topic: str, qos: int = ...) -> None: ...
    def publish(self, topic: str, msg: bytes, retain: bool = ..., qos: int = ...) -> None: ...
    def check_msg(self) -> object: ...
    def ping(self) -> None: ...
    def disconnect(self) -> None: ...


class Watchdog(Protocol):
    def feed(self) -> None: ...


class RelayDriver(Protocol):
    """hemsfw.relay.Relay and its board drivers."""

    on: bool | None
    def set(self, on: bool, frame: int | None) -> bool: ...


class PulseSource(Protocol):
    """A pulse (S0) meter's counter (hemsfw/meter.py): pulses counted since the last take()."""

    def take(self) -> int: ...


class SimCircuit(PulseSource, Protocol):
    """hemsfw.simload.SimLoad as hemsfw/meter.py and the runner use it (the lab)."""

    t: float | None
    def step(self, m: Any, now: float, frame_end: float | None) -> float: ...


class Board(Protocol):
    """A board module's Board (hemsfw/boards/__init__.py)."""

    relay: RelayDriver
    @property
    def clock(self) -> Clock: ...
    def make_client(self, mcfg: Json, client_id: str) -> MqttClient: ...
    def net_up(self) -> bool: ...
    def service(self, runner: object) -> None: ...
    def button(self) -> str | None: ...
    def show(self, on: bool | None, online: bool, override: bool) -> None: ...
    def watchdog(self, ms: int) -> Watchdog | None: ...


class Storage(Protocol):
    """hemsfw.store.Store: JSON files written atomically."""

    def write(self, name: str, obj: Any) -> None: ...
    def read(self, name: str, default: Any = ...) -> Any: ...
    def rename(self, old: str, new: str) -> None: ...
    def remove(self, name: str) -> None: ...


class HomeView(Protocol):
    """What hemsfw/adjust.py and hemsfw/ha.py use of hemsfw.home.Home: its two round slots."""

    new: Slot | None
    prev: Slot | None
    store: Storage
    def slot_at(self, now: float | None) -> Slot | None: ...


class ResidentView(Protocol):
    """What hemsfw/ha.py uses of hemsfw.resident.Resident."""

    ovr: Override | None
    def on_plan_command(self, obj: Any) -> str | None: ...


class MeterView(Protocol):
    """What hemsfw/ha.py and web.py show of hemsfw.meter.Meter."""

    @property
    def day(self) -> str | None: ...
    def today_wh(self) -> list[int]: ...


class BudgetView(Protocol):
    @property
    def state(self) -> str: ...


class MeteringView(Protocol):
    """What hemsfw/ha.py and web.py show of hemsfw.meter.Metering."""

    @property
    def meter(self) -> MeterView: ...
    @property
    def budget(self) -> BudgetView: ...
    @property
    def wh_now(self) -> int: ...


class RunnerView(Protocol):
    """What hemsfw/ha.py uses of hemsfw.runner.Runner (which loads it)."""

    id: str
    cfg: Json
    urandom: Urandom
    ticks: Ticks
    log: Log
    clock: Clock
    state: tuple[bool | None, int | None]
    board: Board | None
    @property
    def meter(self) -> MeteringView | None: ...
    @property
    def home(self) -> HomeView: ...
    @property
    def resident(self) -> ResidentView: ...
    def on_msg(self, topic: bytes | str, msg: bytes) -> None: ...
    def override(self, state: str, until: str = ...) -> None: ...
