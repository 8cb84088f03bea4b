"""`hems grid-feed openadr`: an OpenADR 2.0b VEN (openleadr's client) bridged to MQTT.

Three tasks in one TaskGroup, over one `Feed` (feed.py, the rules):

* ``openadr``: registers with the VTN (oadrQueryRegistration, oadrCreatePartyRegistration,
  oadrRegisterReport), then openleadr polls it; events come to `Ven._on_event`.  Opt changes
  after an outcome go out as oadrCreatedEvent, outcome reports as oadrUpdateReport.  A VTN that
  does not answer (at start or later) is retried with backoff; meanwhile nothing is published,
  so the day profiles already retained on MQTT (the last known capacity) stay in force, and the
  log and the status file say so.
* ``mqtt``: subscribes to the round announcement, the default capacity and the outcomes;
  retains each day profile the feed decides on (QoS 1), and all of them again after a reconnect.
* ``status``: rewrites the status file when something changed.

State dir (``--state-dir``): ``feed.json`` (the feed, restored at start), ``status.json`` (the
link state and what is in force; rewritten atomically) and ``changes.jsonl`` (one line per
change, with its epoch time: capacity published, event rejected, opt sent, report queued and
acknowledged, link state).  SIGTERM, SIGINT and SIGHUP stop it cleanly.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
import signal
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiomqtt
from openleadr import OpenADRClient, objects

from backend.common.backoff import Backoff
from backend.common.files import write_atomic
from backend.common.mqtt import MqttSettings
from hemsfw import protocol, protocol_svc

from .feed import REPORT_POINTS, Action, Feed, Opt, Publish, Report

log = logging.getLogger("hems.grid_feed")

#: The VEN's report (one METADATA_TELEMETRY_USAGE report, REPORT_POINTS as its data points).
REPORT_SPECIFIER = "hems-aggregate"

#: The link to the VTN is a named state; these are the moves it may make.
TRANSITIONS: dict[str, set[str]] = {
    "starting": {"registering", "stopped"},
    "registering": {"online", "vtn_unreachable", "stopped"},
    "online": {"vtn_unreachable", "registering", "stopped"},
    "vtn_unreachable": {"registering", "online", "stopped"},
    "stopped": set(),
}
#: No answer from the VTN for this many poll periods (at least MIN_SILENCE_S) = unreachable.
SILENT_POLLS = 3
MIN_SILENCE_S = 10.0
TICK_S = 0.2


@dataclass(frozen=True)
class VenOptions:
    vtn_url: str
    ven_name: str
    ven_id: str | None = None
    state_dir: Path | None = None
    cert: str | None = None
    key: str | None = None
    ca_file: str | None = None
    vtn_fingerprint: str | None = None


class Ven:
    def __init__(self, opts: VenOptions, settings: MqttSettings, feed: Feed,
                 clock: Callable[[], float] = time.time) -> None:
        self.opts, self.settings, self.feed, self.clock = opts, settings, feed, clock
        self.state, self.since, self.note = "starting", clock(), ""
        self.last_contact: float | None = None
        self.ven_id: str | None = opts.ven_id
        self.mqtt_connected = False
        self.counts = {"events": 0, "rejected": 0, "published": 0, "opts_sent": 0,
                       "reports_queued": 0, "reports_acked": 0, "mqtt_rejected": 0}
        self.last_report: dict[str, Any] | None = None
        self._dirty_days: set[str] = set()
        self._wake_mqtt = asyncio.Event()
        self._opts_out: dict[str, Opt] = {}          # event id -> opt change not yet sent
        self._reports_out: dict[str, Report] = {}    # day -> outcome report not yet queued
        self._reported: dict[str, Report] = {}       # day -> latest outcome report
        self._reports_queued: list[dict[str, Any]] = []  # queued, awaiting oadrUpdatedReport
        self._status_dirty = True
        self._stop = asyncio.Event()
        sd = opts.state_dir
        self._feed_file = sd / "feed.json" if sd else None
        self._status_file = sd / "status.json" if sd else None
        self._changes_file = sd / "changes.jsonl" if sd else None
        if sd is not None:
            sd.mkdir(parents=True, exist_ok=True)
            if self._feed_file and self._feed_file.exists():
                self.feed.restore(json.loads(self._feed_file.read_text()))
                log.info("state restored from %s: %d event(s), %d day profile(s)", sd,
                         len(feed.events), len(feed.published))

    # ------------------------------------------------------------ lifecycle

    async def run(self) -> None:
        """Serve until SIGTERM, SIGINT or SIGHUP."""
        loop = asyncio.get_running_loop()
        sigs = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
        for sig in sigs:
            loop.add_signal_handler(sig, self._stop.set)
        try:
            async with asyncio.TaskGroup() as tg:
                tasks = [tg.create_task(self._openadr(), name="openadr"),
                         tg.create_task(self._mqtt(), name="mqtt"),
                         tg.create_task(self._status_loop(), name="status")]
                await self._stop.wait()
                log.info("stopping")
                for t in tasks:
                    t.cancel()
        finally:
            for sig in sigs:
                loop.remove_signal_handler(sig)
            self._set_state("stopped", "")
            self._save()
            self.write_status()

    def stop(self) -> None:
        self._stop.set()

    def _set_state(self, state: str, note: str) -> None:
        if state == self.state:
            if note != self.note:
                self.note, self._status_dirty = note, True
            return
        if state not in TRANSITIONS[self.state]:
            raise RuntimeError(f"VEN link: no move from {self.state} to {state}")
        self.state, self.since, self.note = state, self.clock(), note
        self._status_dirty = True
        self._change({"kind": "vtn", "state": state, "note": note})
        (log.warning if state == "vtn_unreachable" else log.info)(
            "VTN link %s%s", state, f": {note}" if note else "")

    # ------------------------------------------------------------ OpenADR side

    def _client(self) -> OpenADRClient:
        o = self.opts
        c = OpenADRClient(ven_name=o.ven_name, vtn_url=o.vtn_url, ven_id=self.ven_id,
                          cert=o.cert, key=o.key, ca_file=o.ca_file,
                          vtn_fingerprint=o.vtn_fingerprint, show_fingerprint=False)
        c.add_handler("on_event", self._on_event)
        c.add_handler("on_update_event", self._on_event)
        c.add_hook("after_parse_xml", self._on_answer)
        for r_id, what in REPORT_POINTS.items():
            c.add_report(callback=self._report_window(r_id),
                         resource_id=f"hems-{r_id.replace('_', '-')}",
                         measurement="energy_real", unit="Wh", data_collection_mode="full",
                         report_name="TELEMETRY_USAGE", reading_type="Projected",
                         report_type="baseline" if r_id == "baseline_load" else "usage",
                         report_specifier_id=REPORT_SPECIFIER, r_id=r_id,
                         sampling_rate=dt.timedelta(seconds=self.feed.frame_s),
                         report_duration=dt.timedelta(days=1))
            log.debug("report point %s: %s", r_id, what)
        return c

    async def _openadr(self) -> None:
        backoff = Backoff(base=1.0, cap=30.0)
        while True:
            client = self._client()
            self._set_state("registering", "")
            try:
                await client.run()
            except Exception as e:  # openleadr logs and returns on most failures; not all
                log.warning("VTN registration failed: %s: %s", type(e).__name__, e)
            if client.registration_id is None:
                await _close(client)
                self._set_state("vtn_unreachable", self._keeping(
                    f"no registration with {self.opts.vtn_url}"))
                await asyncio.sleep(backoff.next())
                continue
            backoff.reset()
            self.ven_id = client.ven_id
            self._set_state("online", f"registered as {client.ven_id}")
            try:
                await self._online(client)
            finally:
                await _close(client)

    def _keeping(self, why: str) -> str:
        days = sorted(self.feed.published)
        return (f"{why}; keeping the last known capacity "
                f"({', '.join(days) if days else 'no day profile yet: the default applies'})")

    async def _online(self, client: OpenADRClient) -> None:
        """While registered: send what is pending, watch that the VTN still answers."""
        while True:
            self._own_report_schedule(client)
            poll = client.poll_frequency.total_seconds() if client.poll_frequency else 10.0
            silent = self.clock() - (self.last_contact or self.since)
            if silent > max(SILENT_POLLS * poll, MIN_SILENCE_S):
                self._set_state("vtn_unreachable",
                                self._keeping(f"no answer from the VTN for {silent:.0f}s"))
            elif self.state == "vtn_unreachable":
                self._set_state("online", f"the VTN answers again ({client.ven_id})")
            if self.state == "online":
                try:
                    await self._send_opts(client)
                    self._queue_reports(client)
                except Exception:  # openleadr's own failures: log, keep serving, retry
                    log.exception("sending to the VTN failed; retrying")
            await asyncio.sleep(TICK_S)

    def _own_report_schedule(self, client: OpenADRClient) -> None:
        """The outcome changes once a round, so it is reported when a round ends (not on the
        VTN's sampling clock, which would send empty reports in between): drop the periodic
        jobs openleadr scheduled for this report."""
        for rr in client.report_requests or []:
            if rr.get("report_specifier_id") == REPORT_SPECIFIER and rr.get("job") is not None:
                with contextlib.suppress(Exception):  # already gone
                    rr["job"].remove()
                rr["job"] = None

    def _report_window(self, r_id: str) -> Callable[..., list[tuple[dt.datetime, int]]]:
        def window(date_from: dt.datetime, date_to: dt.datetime,
                   sampling_interval: dt.timedelta) -> list[tuple[dt.datetime, int]]:
            a, b = date_from.timestamp(), date_to.timestamp()
            out = []
            for rep in self._reported.values():
                for t, v in rep.rows.get(r_id, []):
                    if a <= t < b:
                        out.append((dt.datetime.fromtimestamp(t, dt.UTC), v))
            return out
        return window

    async def _on_event(self, event: Mapping[str, Any]) -> str:
        now = self.clock()
        self.counts["events"] += 1
        opt, acts = self.feed.event(event, now)
        eid = str(event.get("event_descriptor", {}).get("event_id"))
        rej = self.feed.rejected.get(eid)
        if rej is not None:
            self.counts["rejected"] += 1
            log.warning("event %s (mod %s) rejected: %s: %s", eid, rej["mod"], rej["reason"],
                        rej["detail"])
            self._change({"kind": "rejected", "event": eid, **rej})
        o = self.feed.opts.get(eid, {})
        self._change({"kind": "opt", "event": eid, "mod": o.get("mod"), "opt": opt,
                      "reason": o.get("reason"), "sent": "oadrCreatedEvent (answer)"})
        self._apply(acts)
        return opt

    def _on_answer(self, message_type: str, payload: Mapping[str, Any]) -> None:
        self.last_contact = self.clock()
        if message_type == "oadrUpdatedReport" and self._reports_queued:
            rep = self._reports_queued.pop(0)
            self.counts["reports_acked"] += 1
            self.last_report = {**rep, "acked": int(self.last_contact)}
            self._status_dirty = True
            log.info("VTN acknowledged the report of %s round %s", rep["day"], rep["round"])
            self._change({"kind": "report_acked", "day": rep["day"], "round": rep["round"]})

    async def _send_opts(self, client: OpenADRClient) -> None:
        for eid, o in list(self._opts_out.items()):
            t = self.clock()
            await client.created_event(request_id=uuid.uuid4().hex, event_id=o.event_id,
                                       opt_type=o.opt, modification_number=o.mod)
            if self.last_contact is None or self.last_contact < t:
                return  # no answer: try again on the next tick
            if self._opts_out.get(eid) is o:
                del self._opts_out[eid]
            self.counts["opts_sent"] += 1
            self._change({"kind": "opt", "event": eid, "mod": o.mod, "opt": o.opt,
                          "reason": o.reason, "sent": "oadrCreatedEvent"})
            log.info("opt %s for event %s (mod %d): %s", o.opt, eid, o.mod, o.reason)

    def _queue_reports(self, client: OpenADRClient) -> None:
        if not self._reports_out:
            return
        reqs = [r for r in client.report_requests or []
                if r.get("report_specifier_id") == REPORT_SPECIFIER]
        if not reqs:
            self._set_state("online", "the VTN requested no report: outcomes are kept until "
                            "it does")
            return
        for day, rep in sorted(self._reports_out.items()):
            for rr in reqs:
                client.pending_reports.put_nowait(_report(rr, rep))
                self._reports_queued.append({"day": day, "round": rep.round,
                                             "queued": int(self.clock())})
            self.counts["reports_queued"] += 1
            self._change({"kind": "report_queued", "day": day, "round": rep.round,
                          "points": sorted(rep.rows)})
            log.info("report of %s round %d queued for the VTN", day, rep.round)
        self._reports_out.clear()

    # ------------------------------------------------------------ MQTT side

    async def _mqtt(self) -> None:
        backoff = Backoff()
        topics = (protocol.t_round(), protocol_svc.t_capacity(), protocol_svc.t_outcome("+"))
        while True:
            try:
                async with self.settings.client() as client:
                    for t in topics:
                        await client.subscribe(t, qos=1)
                    self.mqtt_connected, self._status_dirty = True, True
                    backoff.reset()
                    log.info("MQTT connected to %s:%d as %s", self.settings.host,
                             self.settings.port, self.settings.username)
                    self._dirty_days |= set(self.feed.published)  # retained: re-send is harmless
                    self._wake_mqtt.set()
                    # The publisher lives exactly as long as this connection.
                    pub = asyncio.create_task(self._publisher(client), name="publish")
                    try:
                        async for m in client.messages:
                            self._on_mqtt(m.topic.value, m.payload)
                    finally:
                        pub.cancel()
                        with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
                            await pub
            except aiomqtt.MqttError as e:
                log.warning("MQTT: %s", e)
            finally:
                self.mqtt_connected, self._status_dirty = False, True
            await asyncio.sleep(backoff.next())

    async def _publisher(self, client: aiomqtt.Client) -> None:
        while True:
            await self._wake_mqtt.wait()
            self._wake_mqtt.clear()
            for day in sorted(self._dirty_days):
                payload = self.feed.published.get(day)
                if payload is not None:
                    await client.publish(protocol_svc.t_day_capacity(day), protocol.encode(payload),
                                         qos=1, retain=True)
                self._dirty_days.discard(day)

    def _on_mqtt(self, topic: str, raw: Any) -> None:
        payload = bytes(raw) if isinstance(raw, bytes | bytearray) else b""
        now = self.clock()
        try:
            obj = protocol.decode(payload)
            if topic == protocol.t_round():
                acts = self.feed.round(protocol.parse_round(obj), now)
            elif topic == protocol_svc.t_capacity():
                acts = self.feed.set_default(protocol_svc.parse_capacity(obj)[1], now)
            else:
                tail = protocol.topic_tail(topic, "outcome")
                if tail is None or len(tail) != 1:
                    raise ValueError("bad_topic")
                out = protocol_svc.parse_outcome(obj, tail[0])
                log.info("outcome of %s round %d: overload after %d Wh, curtailed %d Wh",
                         out["day"], out["round"], out["overload_after_wh"], out["curtailed_wh"])
                self._change({"kind": "outcome", "day": out["day"], "round": out["round"]})
                acts = self.feed.outcome(out, now)
        except ValueError as e:
            self.counts["mqtt_rejected"] += 1
            self._status_dirty = True
            log.warning("ignored a message on %s: %s", topic, e)
            return
        self._apply(acts)

    # ------------------------------------------------------------ actions, files

    def _apply(self, acts: list[Action]) -> None:
        for a in acts:
            if isinstance(a, Publish):
                self.counts["published"] += 1
                self._dirty_days.add(a.day)
                self._wake_mqtt.set()
                p = a.payload
                entry: dict[str, Any] = {"kind": "capacity", "day": a.day, "reason": a.reason,
                                         "events": p["events"], "capacity_wh": p["capacity_wh"]}
                rd = self.feed.deadline(a.day)
                if rd is not None:
                    entry.update(round=rd[0], deadline=rd[1],
                                 before_deadline=p["at"] <= rd[1])
                self._change(entry)
                log.info("capacity of %s: %s (%s; min %d Wh, max %d Wh)", a.day, a.reason,
                         ", ".join(f"{e['id']}#{e['mod']}" for e in p["events"]) or "no event",
                         min(p["capacity_wh"]), max(p["capacity_wh"]))
            elif isinstance(a, Opt):
                self._opts_out[a.event_id] = a
            else:
                self._reports_out[a.day] = self._reported[a.day] = a
        self.feed.prune(self.clock())
        self._save()
        self._status_dirty = True

    def _save(self) -> None:
        if self._feed_file is not None:
            write_atomic(self._feed_file, json.dumps(self.feed.dump()))

    def _change(self, entry: dict[str, Any]) -> None:
        if self._changes_file is not None:
            with self._changes_file.open("a") as f:
                f.write(json.dumps({"at": round(self.clock(), 3), **entry}) + "\n")

    def status(self) -> dict[str, Any]:
        return {"state": self.state, "since": int(self.since), "note": self.note,
                "vtn_url": self.opts.vtn_url, "ven_name": self.opts.ven_name,
                "ven_id": self.ven_id, "last_contact": self.last_contact,
                "mqtt_connected": self.mqtt_connected, "counts": self.counts,
                "last_report": self.last_report,
                "opts_pending": sorted(self._opts_out), "reports_pending": sorted(
                    self._reports_out), **self.feed.status()}

    def write_status(self) -> None:
        self._status_dirty = False
        if self._status_file is not None:
            write_atomic(self._status_file, json.dumps(self.status(), indent=1) + "\n")

    async def _status_loop(self) -> None:
        while True:
            if self._status_dirty:
                self.write_status()
            await asyncio.sleep(TICK_S)


def _report(rr: Mapping[str, Any], rep: Report) -> objects.Report:
    """One outcome as an oadrReport for the VTN's report request `rr`."""
    step = dt.timedelta(seconds=rep.frame_s)
    intervals = [objects.ReportInterval(dtstart=dt.datetime.fromtimestamp(t, dt.UTC),
                                        duration=step,
                                        report_payload=objects.ReportPayload(r_id=r_id, value=v))
                 for r_id in rr.get("r_ids", []) for t, v in rep.rows.get(r_id, [])]
    first = min((i.dtstart for i in intervals), default=None)
    return objects.Report(report_request_id=rr["report_request_id"],
                          report_specifier_id=REPORT_SPECIFIER, report_name="TELEMETRY_USAGE",
                          intervals=intervals, dtstart=first,
                          duration=step * len(next(iter(rep.rows.values()), [])))


async def _close(client: OpenADRClient) -> None:
    with contextlib.suppress(Exception):  # a half-started client: nothing left to close
        if client.scheduler.running:
            client.scheduler.shutdown(wait=False)
        if client.report_queue_task is not None:
            client.report_queue_task.cancel()
        if client.client_session is not None:
            await client.client_session.close()
