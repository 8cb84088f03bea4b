"""openleadr's real VTN on a free loopback port, for the lab and the tests (the utility's side).

    vtn = start_vtn(day, capacity_wh, start, frame_s, ven_name="hems-lab")
    argv, env = ven_command(vtn.url, "hems-lab", mqtt_port, grid_password, state_dir)
    ...                                  # run argv (the VEN) with env, e.g. procs.Procs.start
    published_capacity(state_dir, day)   # what the VEN published for the day (None: not yet)
    vtn.update(new_capacity_wh)          # a new modification of the event
    vtn.cancel()                         # cancel it
    vtn.reports                          # what the VEN reported: [{"r_id", "values": [(t, Wh)]}]
    vtn.opts                             # the VEN's opts: [(event id, mod, "optIn"|"optOut")]
    vtn.stop()

The VTN runs in a thread of the caller's process with its own event loop (openleadr's server is
asyncio); every method above is safe to call from any thread and returns once the VTN has done
it.  The event is one LOAD_DISPATCH / setpoint signal in energyReal Wh, one interval per frame
with the frame's capacity (docs/grid-feed.md), for the VEN named `ven_name` (its venID is that
name).  The VTN asks for a poll every `poll_s` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
import os
import sys
import threading
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any, TypeVar

from openleadr import OpenADRServer, objects

from backend.common.broker import free_port

T = TypeVar("T")
UTC = dt.UTC
PATH = "/OpenADR2/Simple/2.0b"


def capacity_event(event_id: str, ven_id: str, start: int, frame_s: int,
                   capacity_wh: Sequence[int], mod: int = 0) -> objects.Event:
    """An OpenADR event limiting the aggregate to capacity_wh[k] Wh in frame k."""
    t0 = dt.datetime.fromtimestamp(start, UTC)
    step = dt.timedelta(seconds=frame_s)
    signal = objects.EventSignal(
        signal_name="LOAD_DISPATCH", signal_type="setpoint", signal_id=f"{event_id}-s1",
        measurement=objects.Measurement(name="energyReal", description="RealEnergy",
                                        unit="Wh", scale="none"),
        intervals=[objects.Interval(dtstart=t0 + k * step, duration=step,
                                    signal_payload=float(v), uid=k)
                   for k, v in enumerate(capacity_wh)])
    return objects.Event(
        event_descriptor=objects.EventDescriptor(
            event_id=event_id, modification_number=mod, market_context="http://hems.lab/dr",
            event_status="far", created_date_time=dt.datetime.now(UTC)),
        event_signals=[signal], targets=[{"ven_id": ven_id}])


class LabVtn:
    """A running VTN; made by start_vtn."""

    def __init__(self, ven_id: str, poll_s: float, port: int) -> None:
        self.ven_id, self.port = ven_id, port
        self.url = f"http://127.0.0.1:{port}{PATH}"
        self.reports: list[dict[str, Any]] = []
        self.opts: list[tuple[str, int, str]] = []
        self.registered = threading.Event()
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._poll_s = poll_s
        self._mods: dict[str, int] = {}  # event id -> its latest modification number
        self._server: OpenADRServer | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, name="lab-vtn",
                                        daemon=True)
        self._thread.start()

    # ------------------------------------------------------------ control (any thread)

    def _call(self, make: Callable[[], Coroutine[Any, Any, T]], timeout: float = 30) -> T:
        return asyncio.run_coroutine_threadsafe(make(), self._loop).result(timeout)

    def add(self, event: objects.Event) -> None:
        """Queue any event (the tests' malformed ones too) for the VEN."""
        async def add() -> None:
            assert self._server is not None
            eid = event.event_descriptor.event_id
            self._mods[eid] = event.event_descriptor.modification_number
            self._server.add_raw_event(self.ven_id, event, callback=self._answer(eid))
        self._call(add)

    def update(self, event_id: str, start: int, frame_s: int,
               capacity_wh: Sequence[int]) -> int:
        """Replace the event's limits (its next modification number, which is returned)."""
        async def update() -> int:
            assert self._server is not None
            events = self._server.events.get(self.ven_id, [])
            old = next(e for e in events if e.event_descriptor.event_id == event_id)
            mod: int = old.event_descriptor.modification_number + 1
            new = capacity_event(event_id, self.ven_id, start, frame_s, capacity_wh, mod)
            events[events.index(old)] = new
            self._mods[event_id] = mod
            self._server.event_callbacks[event_id] = (new, self._answer(event_id))
            self._server.events_updated[self.ven_id] = True
            return mod
        return self._call(update)

    def cancel(self, event_id: str) -> None:
        async def cancel() -> None:
            assert self._server is not None
            self._server.cancel_event(self.ven_id, event_id)
            ev = next(e for e in self._server.events.get(self.ven_id, [])
                      if e.event_descriptor.event_id == event_id)
            self._mods[event_id] = ev.event_descriptor.modification_number
            self._server.event_callbacks[event_id] = (ev, self._answer(event_id))
        self._call(cancel)

    def stop(self) -> None:
        if self._loop.is_closed():
            return
        with contextlib.suppress(Exception):
            self._call(self._stop, timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    def report_values(self, r_id: str) -> list[tuple[int, float]]:
        """The latest report's (epoch, Wh) points for `r_id` (empty: none received)."""
        with self._lock:
            for rep in reversed(self.reports):
                if rep["r_id"] == r_id:
                    return list(rep["values"])
        return []

    # ------------------------------------------------------------ the VTN (its own loop)

    async def _start(self) -> None:
        s = OpenADRServer(vtn_id="HEMS-LAB-VTN", http_host="127.0.0.1", http_port=self.port,
                          requested_poll_freq=dt.timedelta(seconds=self._poll_s),
                          show_fingerprint=False)
        s.add_handler("on_create_party_registration", self._register)
        s.add_handler("on_register_report", self._register_report)
        # openleadr prints a "VTN Server is now running" banner on stdout: that is where
        # `hems lab --json` writes its result, so the banner goes to stderr instead.
        with contextlib.redirect_stdout(sys.stderr):
            await s.run()
        self._server = s

    async def _stop(self) -> None:
        if self._server is not None:
            await self._server.stop()

    def _register(self, payload: dict[str, Any]) -> tuple[str, str] | bool:
        if payload.get("ven_name") != self.ven_id:
            return False
        self.registered.set()
        return self.ven_id, f"reg-{self.ven_id}"

    def _register_report(self, ven_id: str, resource_id: str, measurement: str, unit: str,
                         scale: str, min_sampling_interval: dt.timedelta,
                         max_sampling_interval: dt.timedelta) -> tuple[Any, ...]:
        def received(values: list[tuple[dt.datetime, float]]) -> None:
            r_id = resource_id.removeprefix("hems-").replace("-", "_")
            with self._lock:
                self.reports.append({"r_id": r_id, "resource_id": resource_id,
                                     "values": [(int(t.timestamp()), v) for t, v in values]})
        return received, min_sampling_interval

    def _answer(self, event_id: str) -> Callable[..., None]:
        def answer(ven_id: str, event_id: str, opt_type: str) -> None:
            assert self._server is not None
            with self._lock:
                ev = next((e for e in self._server.events.get(ven_id, [])
                           if e.event_descriptor.event_id == event_id), None)
                # openleadr's VEN answers a re-sent event again: keep changes only.
                answer_ = (event_id, self._mods.get(event_id, -1), opt_type)
                last = [a for a in self.opts if a[0] == event_id][-1:]
                if last != [answer_]:
                    self.opts.append(answer_)
                # openleadr calls back once per event; keep listening for later opt changes.
                if ev is not None:
                    self._server.event_callbacks[event_id] = (ev, answer)
        return answer


def start_vtn(day: str, capacity_wh: Sequence[int], start: int, frame_s: int,
              ven_name: str = "hems", event_id: str | None = None,
              poll_s: float = 1.0, port: int | None = None) -> LabVtn:
    """openleadr's VTN on 127.0.0.1:`port` (default: a free one) with one capacity event for
    `day` (frame k of the day starts at start + k*frame_s; no event if `capacity_wh` is empty).
    The event id defaults to "hems-<day>"."""
    logging.getLogger("openleadr").setLevel(logging.WARNING)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)  # one line per VEN poll
    vtn = LabVtn(ven_name, poll_s, port or free_port())
    try:
        vtn._call(vtn._start)
        if capacity_wh:
            vtn.add(capacity_event(event_id or f"hems-{day}", ven_name, start, frame_s,
                                   capacity_wh))
    except BaseException:
        vtn.stop()
        raise
    return vtn


def ven_command(vtn_url: str, ven_name: str, mqtt_port: int, password: str,
                state_dir: Path, *, host: str = "127.0.0.1", frames: int = 96,
                frame_s: int = 900, tz: str = "UTC", cafile: Path | None = None,
                extra: Sequence[str] = ()) -> tuple[list[str], dict[str, str]]:
    """The VEN's command line and environment (`hems grid-feed openadr` as identity grid)."""
    argv = [sys.executable, "-m", "backend.grid_feed", "openadr", "--vtn-url", vtn_url,
            "--ven-name", ven_name, "--state-dir", str(state_dir), "--tz", tz,
            "--frames", str(frames), "--frame-s", str(frame_s), "--host", host,
            "--port", str(mqtt_port), "--user", "grid",
            *(["--cafile", str(cafile)] if cafile is not None else []), *extra]
    return argv, {**os.environ, "HEMS_MQTT_PASSWORD": password}


def published_capacity(state_dir: Path, day: str) -> list[int] | None:
    """The capacity the VEN (running with `state_dir`) last published for `day`, else None."""
    try:
        status = json.loads((state_dir / "status.json").read_text())
        cap = status["days"][day]["capacity_wh"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return [int(x) for x in cap]
