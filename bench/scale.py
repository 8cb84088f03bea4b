"""Scale: whole rounds with N homes on one machine, real mosquitto and the real services.

    .venv/bin/python bench/scale.py --homes 100000 --cache /tmp/hems-fleet --json
    .venv/bin/python bench/scale.py --homes 1000,10000,100000 --cache /tmp/hems-fleet

One run per N, each on a fresh broker and fresh services:

* mosquitto: ``FleetMosquitto`` (the shipped broker/mosquitto.conf, persistence as shipped:
  ``persistence true``, autosave every 60 s, plus the TEST-ONLY ``fleet`` identity) with one
  bench setting, ``max_inflight_messages`` (``--max-inflight``, default 1000; mosquitto's
  default, 20, also what the shipped config leaves it at, caps every QoS 1 stream to and from
  a client at 20 unacknowledged messages: docs/scaling.md);
* one mask broker per ``--brokers`` id (``python -m backend.mask_broker``, ``--state-dir``,
  ``--metrics-port``) and the coordinator (``python -m backend.coordinator``,
  ``--expected-homes N``, ``--state-dir``, ``--capacity-file``, ``--metrics-port``), started as
  the lab starts them;
* two ``mosquitto_sub -q 1`` (the C client): one on ``hems/v1/plan/+`` as the coordinator's
  user (the baseline: the same N plan messages, same run, same machine), one on
  ``hems/v1/adjust/+`` (an outside check that every adjustment reaches a subscriber);
* the fleet (bench/fleet.py): every home's real firmware-core report, its plan and its sealed
  mask per broker, published by the raw QoS 1 publisher on one connection (``--cache``: the
  payloads of a 100k fleet take a while to build).  ``--order homes`` (default) sends them in
  home order, each home's plan then its masks, as a fleet reacting to one announcement would;
  ``--order plans-first`` sends every plan, then every mask, which measures the coordinator's
  ingest without the mask brokers competing for the same cores.

Figures (JSON on stdout, one object per N; a table on stderr).  Times are wall clock
(``time.time``) of processes on this machine; ``t0`` is the publisher's first send.

``ingest_msgs_per_s``
    N / (closed - t0), ``closed`` being the ``at`` of the coordinator journal's ``closed``
    record: written when the N-th plan report had been validated, stored and journaled (the
    coordinator closes collection at ``--expected-homes``).  The count comes from the same
    record (``accepted``) and is checked against N: read from the service's journal, not
    self-reported by the bench.
``baseline_msgs_per_s``
    N / (the N-th plan at mosquitto_sub - t0).  ``ingest_ratio`` = ingest / baseline.
``mask_ingest_msgs_per_s``
    N / (time the mask broker's metrics first showed N masks this round - t0), per broker
    (metrics polled every 50 ms: +-50 ms).
``round_latency_s``
    ``done.at - closed.at`` from the coordinator's journal: from the close of collection to
    the moment mosquitto had acknowledged (PUBACK) the last of the N adjustments.  It covers
    arranging the rows and grouping, every group-sum request to the mask brokers and their
    answers (with refinements when the capacity is exceeded), the solves, and publishing N
    adjustments.  ``adjust_delivered_s`` (outside check) is from ``closed.at`` to the N-th
    adjustment received by mosquitto_sub.
``peak_rss_mb``
    peak resident set per process: the coordinator's from ``wait4`` (ru_maxrss, it exits at
    the end of the round), the mask brokers' and mosquitto's from ``/proc/<pid>/status``
    VmHWM just before they are stopped.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from backend.common.broker import free_port  # noqa: E402
from backend.common.fleet_acl import FLEET_USER, FleetMosquitto  # noqa: E402
from bench import fleet as fl  # noqa: E402
from hemsfw import protocol, protocol_svc  # noqa: E402

PY = sys.executable
COORD = "coordinator"
#: --missing-grace-s for the coordinator: with ``--order plans-first`` collection closes while
#: the masks are still arriving, and the first group requests find members missing; the
#: coordinator re-asks once a second for this long instead of excluding them (1 s by default)
MISSING_GRACE_S = 60.0


class ScaleError(Exception):
    """A run could not complete (the message says which part failed)."""


@dataclass
class Service:
    name: str
    proc: subprocess.Popen[bytes]
    log: Path
    metrics_port: int

    def metrics(self) -> dict[str, float]:
        """name{labels} -> value of the service's Prometheus text."""
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=2) as r:
            text = r.read().decode()
        out = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                key, _, val = line.rpartition(" ")
                out[key] = float(val)
        return out

    def tail(self, n: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-n:] if self.log.exists() else ""


def vm_hwm_mb(pid: int) -> float:
    """Peak resident set (VmHWM) of a running process, MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a running process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_until(cond: Callable[[], bool], timeout: float, what: str,
               procs: Sequence[Service] = (), step: float = 0.05) -> float:
    """Poll ``cond`` until true (returns the time.time() it was seen), ScaleError on timeout
    or when one of ``procs`` died."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            if cond():
                return time.time()
        except OSError:
            pass  # a metrics endpoint not up yet
        for s in procs:
            if s.proc.poll() is not None:
                raise ScaleError(f"{s.name} exited ({s.proc.returncode}) while waiting for "
                                 f"{what}:\n{s.tail()}")
        time.sleep(step)
    raise ScaleError(f"timed out after {timeout}s waiting for {what}")


def _has_masks(s: Service, n: int) -> Callable[[], bool]:
    return lambda: s.metrics().get("hems_mask_broker_masks_this_round") == n


def start(name: str, argv: list[str], env: dict[str, str], work: Path, port: int) -> Service:
    log = work / f"{name}.log"
    with log.open("wb") as f:
        proc = subprocess.Popen(argv, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT,
                                env={**os.environ, **env})
    return Service(name, proc, log, port)


def reap(s: Service, timeout: float) -> resource.struct_rusage:
    """Wait for ``s`` to exit; its rusage (ru_maxrss: its peak RSS in KB)."""
    end = time.monotonic() + timeout
    while True:
        pid, status, ru = os.wait4(s.proc.pid, os.WNOHANG)
        if pid:
            s.proc.returncode = os.waitstatus_to_exitcode(status)
            return ru
        if time.monotonic() > end:
            raise ScaleError(f"{s.name} did not finish within {timeout}s:\n{s.tail()}")
        time.sleep(0.05)


def stop(s: Service) -> None:
    if s.proc.poll() is None:
        s.proc.send_signal(signal.SIGTERM)
        try:
            s.proc.wait(10)
        except subprocess.TimeoutExpired:
            s.proc.kill()
            s.proc.wait()


def sub_times(path: Path) -> list[float]:
    return [float(x) for x in path.read_text().split()]


def journal(path: Path) -> dict[str, dict[str, Any]]:
    """A coordinator journal's last record of each kind."""
    out: dict[str, dict[str, Any]] = {}
    for line in path.read_bytes().splitlines():
        rec = json.loads(line)
        out[rec["kind"]] = rec
    return out


def run_once(homes: int, brokers: tuple[str, ...], k: int, capacity_factor: float,
             cache: Path | None, window: int, keep: Path | None, order: str,
             max_inflight: int, workers: int = 1) -> dict[str, Any]:
    spec = fl.FleetSpec(homes, brokers)
    t = time.monotonic()
    fleet = fl.load_or_build(spec, None if cache is None else cache / f"fleet-{homes}.pkl")
    build_s = time.monotonic() - t
    with tempfile.TemporaryDirectory(prefix="hems-scale-", dir=keep) as tmp:
        work = Path(tmp)
        users = {FLEET_USER: "fleet-pw", COORD: "coord-pw"} | {b: f"{b}-pw" for b in brokers}
        services: list[Service] = []
        subs: list[subprocess.Popen[bytes]] = []
        mq = FleetMosquitto(work / "mq", users, list(brokers),
                            extra_conf=f"max_inflight_messages {max_inflight}")
        mq.start()
        try:
            regs = fl.write_registry(spec, work)
            for b in brokers:
                port = free_port()
                services.append(start(b, [
                    PY, "-m", "backend.mask_broker", "--broker-id", b,
                    "--registry", str(regs[b]), "--k", str(k),
                    "--state-dir", str(work / f"state-{b}"), "--metrics-port", str(port),
                    "--port", str(mq.port)], {"HEMS_MQTT_PASSWORD": users[b]}, work, port))
            wait_until(lambda: all(s.metrics().get("hems_mask_broker_ingest_connected") == 1
                                   and s.metrics().get("hems_mask_broker_connected") == 1
                                   for s in services), 30, "the mask brokers' connections",
                       services)
            total = fleet.plans.sum(axis=0)
            cap = np.maximum(1, np.ceil(capacity_factor * total.max())).astype(np.int64)
            cap_file = work / "capacity.json"
            cap_file.write_bytes(protocol.encode(protocol_svc.make_capacity(
                spec.frames, [int(cap)] * spec.frames)))
            port = free_port()
            coord = start(COORD, [
                PY, "-m", "backend.coordinator", "--day", spec.day, "--round", str(spec.round),
                "--frames", str(spec.frames), "--frame-s", str(spec.frame_s),
                "--quantum-wh", str(spec.quantum_wh), "--start", str(spec.start),
                "--collect-s", "3600", "--expected-homes", str(homes),
                "--missing-grace-s", str(MISSING_GRACE_S), "--workers", str(workers),
                "--brokers", ",".join(brokers), "--k", str(k),
                "--capacity-file", str(cap_file), "--result", str(work / "result.json"),
                "--state-dir", str(work / "state-coordinator"), "--metrics-port", str(port),
                "--port", str(mq.port), "--user", COORD],
                {"HEMS_MQTT_PASSWORD": users[COORD]}, work, port)
            services.append(coord)
            wait_until(lambda: coord.metrics().get("hems_coordinator_ingest_connected") == 1,
                       30, "the coordinator's ingest connection", services)
            wait_until(lambda: all(s.metrics().get("hems_mask_broker_rounds_total", 0) >= 1
                                   for s in services[:-1]), 30, "the round announcement",
                       services)
            base_out, adj_out = work / "sub-plan.txt", work / "sub-adjust.txt"
            for user, topic, out in ((COORD, protocol.t_plan("+"), base_out),
                                     (FLEET_USER, protocol.t_adjust("+"), adj_out)):
                with out.open("wb") as f:
                    subs.append(subprocess.Popen(
                        ["mosquitto_sub", "-h", "127.0.0.1", "-p", str(mq.port), "-u", user,
                         "-P", users[user], "-t", topic, "-q", "1", "-C", str(homes),
                         "-W", "900", "-F", "%U"], stdout=f, stderr=subprocess.DEVNULL))
            time.sleep(0.5)  # the subscriptions are in place
            messages = fleet.messages
            if order == "plans-first":
                messages = fleet.topics("plan") + [m for m in messages
                                                   if not m[0].startswith(protocol.t_plan(""))]
            pub = fl.publish_raw(messages, "127.0.0.1", mq.port, FLEET_USER,
                                 users[FLEET_USER], window=window, timeout=900)
            t0 = pub.t_first
            mask_seen = {}
            for s in services[:-1]:
                mask_seen[s.name] = wait_until(
                    _has_masks(s, homes), 600, f"{s.name}'s {homes} masks", services)
            ru = reap(coord, 900)
            mb_rss = {s.name: vm_hwm_mb(s.proc.pid) for s in services[:-1]}
            mb_cpu = {s.name: cpu_s(s.proc.pid) for s in services[:-1]}
            mq_rss = vm_hwm_mb(mq.proc.pid) if mq.proc is not None else 0.0
            mq_cpu = cpu_s(mq.proc.pid) if mq.proc is not None else 0.0
            if coord.proc.returncode != 0:
                raise ScaleError(f"coordinator failed ({coord.proc.returncode}):\n{coord.tail()}")
            for p in subs:
                try:
                    p.wait(120)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
            base, adj = sub_times(base_out), sub_times(adj_out)
            result = json.loads((work / "result.json").read_text())
            jdir = work / "state-coordinator"
            jr = journal(jdir / f"round-{spec.day}-{spec.round}.jsonl")
            per_worker = [journal(jdir / f"round-{spec.day}-{spec.round}.w{i}.jsonl")
                          ["closed"]["accepted"] for i in range(1, workers)]
        finally:
            for p in subs:
                if p.poll() is None:
                    p.kill()
                    p.wait()
            for s in reversed(services):
                stop(s)
            mq.stop()
    closed, done = float(jr["closed"]["at"]), float(jr["done"]["at"])
    if jr["closed"]["accepted"] != homes or result["adjusted_homes"] != homes:
        raise ScaleError(f"accepted {jr['closed']['accepted']}, adjusted "
                         f"{result['adjusted_homes']} of {homes} homes")
    if len(base) != homes or len(adj) != homes:
        raise ScaleError(f"mosquitto_sub saw {len(base)} plans, {len(adj)} adjustments of "
                         f"{homes}")
    ingest = homes / (closed - t0)
    baseline = homes / (base[-1] - t0)
    return {
        "homes": homes,
        "brokers": list(brokers),
        "order": order,
        "workers": workers,
        "max_inflight_messages": max_inflight,
        "messages_published": pub.messages,
        "publish_msgs_per_s": round(pub.msgs_per_s),
        "ingest_msgs_per_s": round(ingest),
        "baseline_msgs_per_s": round(baseline),
        "ingest_ratio": round(ingest / baseline, 3),
        "mask_ingest_msgs_per_s": {b: round(homes / (t - t0)) for b, t in mask_seen.items()},
        "round_latency_s": round(done - closed, 3),
        "adjust_delivered_s": round(adj[-1] - closed, 3),
        "coordinator_timings_s": result["timings"],
        "coordinator_ingest": {k: result["ingest"][k] for k in
                               ("received", "batches", "published", "connects")},
        "worker_reports": [homes - sum(per_worker), *per_worker] if workers > 1 else None,
        "groups": len(result["groups"]),
        "regroup_rounds": result["regroup_rounds"],
        "overload_before_wh": result["overload_before_wh"],
        "overload_after_wh": result["overload_after_wh"],
        "peak_rss_mb": {COORD: round(ru.ru_maxrss / 1024, 1),
                        **{b: round(v, 1) for b, v in mb_rss.items()},
                        "mosquitto": round(mq_rss, 1)},
        "cpu_s": {COORD: round(ru.ru_utime + ru.ru_stime, 2),
                  **{b: round(v, 2) for b, v in mb_cpu.items()}, "mosquitto": round(mq_cpu, 2)},
        "collect_wall_s": round(closed - t0, 3),
        "fleet_build_s": round(build_s, 2),
    }


def table(rows: list[dict[str, Any]]) -> str:
    head = (f"{'homes':>8} {'ingest/s':>9} {'baseline/s':>10} {'ratio':>6} {'masks/s':>8} "
            f"{'round s':>8} {'adj. s':>7} {'coord MB':>9} {'mb MB':>7} {'mosq MB':>8}")
    lines = [head, "-" * len(head)]
    for r in rows:
        rss = r["peak_rss_mb"]
        mb = max(v for k, v in rss.items() if k not in (COORD, "mosquitto"))
        masks = min(r["mask_ingest_msgs_per_s"].values())
        lines.append(
            f"{r['homes']:>8} {r['ingest_msgs_per_s']:>9} {r['baseline_msgs_per_s']:>10} "
            f"{r['ingest_ratio']:>6.2f} {masks:>8} {r['round_latency_s']:>8.2f} "
            f"{r['adjust_delivered_s']:>7.2f} {rss[COORD]:>9.0f} {mb:>7.0f} "
            f"{rss['mosquitto']:>8.0f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench/scale.py", description=__doc__.split("\n")[0])
    p.add_argument("--homes", default="1000",
                   help="homes per run, comma-separated for several runs (default 1000)")
    p.add_argument("--brokers", default="mb1", help="comma-separated mask broker ids")
    p.add_argument("--k", type=int, default=10, help="smallest group (default 10)")
    p.add_argument("--capacity-factor", type=float, default=0.95,
                   help="flat capacity = factor x the fleet's peak total (default 0.95: "
                   "overload, so the round moves and refines)")
    p.add_argument("--cache", type=Path, help="directory for the fleets' payloads")
    p.add_argument("--window", type=int, default=fl.DEFAULT_WINDOW)
    p.add_argument("--order", choices=("homes", "plans-first"), default="homes",
                   help="publish order (default homes: each home's plan, then its masks)")
    p.add_argument("--workers", type=int, default=1,
                   help="coordinator --workers: plan ingest processes on $share (default 1)")
    p.add_argument("--max-inflight", type=int, default=1000,
                   help="mosquitto max_inflight_messages (default 1000; mosquitto's is 20)")
    p.add_argument("--keep", type=Path, help="put the run directories (logs, journals) here")
    p.add_argument("--json", action="store_true", help="one JSON object per run on stdout")
    a = p.parse_args(argv)
    if a.cache is not None:
        a.cache.mkdir(parents=True, exist_ok=True)
    if a.keep is not None:
        a.keep.mkdir(parents=True, exist_ok=True)
    rows = []
    for n in (int(x) for x in a.homes.split(",")):
        try:
            row = run_once(n, tuple(a.brokers.split(",")), a.k, a.capacity_factor, a.cache,
                           a.window, a.keep, a.order, a.max_inflight, a.workers)
        except (ScaleError, fl.FleetError) as e:
            print(f"scale: {n} homes: {e}", file=sys.stderr)
            return 1
        rows.append(row)
        if a.json:
            print(json.dumps(row), flush=True)
        print(table(rows), file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
