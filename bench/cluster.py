"""Cluster: a whole round on an N-node RabbitMQ cluster, with a node killed mid-round.

    .venv/bin/python bench/cluster.py --nodes 3 --homes 2000 --kill-node --json
    .venv/bin/python bench/cluster.py --nodes 3 --homes 2000 --kill-node --kill-phase adjust

One cluster (backend/common/rabbitmq.py: N nodes on loopback, users and topic permissions from
the hems ACL plus the TEST-ONLY fleet identity), two rounds of the same fleet on it, each with
fresh services and state:

1. the reference: nothing disturbed;
2. the same round (same fleet, same report ids and seeds) with one node (``--victim``, default
   node N) killed (SIGKILL) once a third of the plan reports are journaled (``--kill-phase
   collect``) or once collection closed (``--kill-phase adjust``: while the group sums are asked
   for and the adjustments go out).  The services' intake queues are declared through the
   victim first, so it leads them, and both services' intake connections start on it: the kill
   takes down the queues' leader and the consumers at once.

Where things connect: the coordinator's MQTT link to node 1 and the mask brokers' to node 2
(both fail over to the other nodes: ``--mqtt-ports``), so ``--victim 1`` also takes the
coordinator's control link down; the fleet (bench/fleet.py, the raw MQTT 3.1.1 publisher; each
home's real firmware-core report) publishes half the homes through each of the first two nodes
that are not the victim (it does not fail over; real homes do), and the services' bulk intake
is AMQP (backend/common/amqp_intake.py) on every node, failing over between them.  Two
``mosquitto_sub -q 1`` (MQTT 3.1.1) watch from outside, on those two nodes: the plans as the
coordinator's recorder identity (the baseline: a plain subscriber on the same cluster in the
same run) and the adjustments as the fleet.

``--sessions N`` measures instead what the homes cost the cluster: N home identities, each
holding the firmware's session (MQTT 3.1.1, clean session off, a QoS 1 subscription to its
adjustment topic: one quorum queue per home with ``mqtt.durable_queue_type = quorum``), spread
over the nodes; it reports the nodes' resident memory before and after (VmRSS of each node's
Erlang VM, 5 s after the last session was set up) and the set-up rate.

Figures (JSON on stdout; a table on stderr):

``lost_reports``
    homes - the homes whose report the round counted (the result file's ``homes``: after the
    merge of the ``--workers``), in the run with the kill.
``duplicate_reports``
    reports counted twice: the journal's accepted plan records minus the distinct homes among
    them (a redelivered report must be recognised by its report id and not counted again).
``lost_adjustments``
    homes whose adjustment the outside subscriber never received.
``identical_to_reference``
    the result file (groups, sums, overload before and after, adjusted homes; left out: this
    run's timings, phase times, deadline (the start time + --collect-s), state directory, the
    solver's status, bounds and gaps (under a time limit the exact stage's dual bound depends
    on how far it got in that time, not on the round; the plan itself must match),
    intake and control-link connection counters and rejection counts: redelivered copies the
    coordinator recognised and dropped are ``plan:replay`` there, reported as
    ``redelivered_copies_dropped``; and the refused group requests, reported as
    ``refusal_reasons``: on a loaded machine a request's answer can be lost or late in the
    failover, or ask before a member's mask arrived, and the group is asked again) and
    every home's adjustment payload are byte-for-byte those of the reference run.
``refusal_reasons``
    the reasons of every group request a mask broker refused in either run (normally none);
    only ``no_answer`` and ``missing_members`` (``TRANSIENT_REFUSALS``) can come from a node's
    death, any other is a failure.
``announcement_retained_on_every_node``
    a client connecting to each node after the announcement gets it (retained; RabbitMQ keeps
    retained messages per node, backend/common/retained.py copies them).
``ingest_msgs_per_s`` / ``baseline_msgs_per_s``
    homes / (close of collection - first publish), from the journal, and homes / (the N-th plan
    at the outside subscriber - first publish), in the reference run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from backend.common import rabbitmq  # noqa: E402
from backend.common.broker import free_port  # noqa: E402
from backend.common.bulk_mqtt import mqtt_string, varlen  # noqa: E402
from backend.common.children import Stopped, stop_on_signals  # noqa: E402
from backend.common.fleet_acl import FLEET_USER, fleet_acl_text  # noqa: E402
from bench import fleet as fl  # noqa: E402
from bench.scale import (  # noqa: E402
    PY,
    ScaleError,
    Service,
    journal,
    reap,
    start,
    stop,
    wait_until,
)
from hemsfw import protocol, protocol_svc  # noqa: E402

COORD = "coordinator"
REC = f"{COORD}-rec"


def _declare_queues(cluster: rabbitmq.RabbitCluster, node: int, users: dict[str, str],
                    brokers: tuple[str, ...]) -> None:
    """Declare the intake queues through ``node`` (it becomes their leader)."""
    import aio_pika

    async def go() -> None:
        port = cluster.nodes[node - 1].amqp_port
        for q, (svc, flt) in rabbitmq.intake_queues(list(brokers)).items():
            user = f"{svc}-ingest"
            conn = await aio_pika.connect(
                f"amqp://{user}:{users[svc]}@127.0.0.1:{port}/{rabbitmq.VHOST}")
            async with conn:
                ch = await conn.channel()
                qq = await ch.declare_queue(q, durable=True, arguments={
                    "x-queue-type": "quorum",
                    "x-quorum-initial-group-size": len(cluster.nodes)})
                await qq.bind("amq.topic", rabbitmq.routing_key(flt))
                await qq.purge()

    asyncio.run(go())


def _sub(port: int, user: str, pw: str, topic: str, out: Path, fmt: str) -> subprocess.Popen[bytes]:
    with out.open("wb") as f:
        return subprocess.Popen(
            ["mosquitto_sub", "-h", "127.0.0.1", "-p", str(port), "-u", user, "-P", pw,
             "-i", user, "-t", topic, "-q", "1", "-F", fmt],
            stdout=f, stderr=subprocess.DEVNULL)


def _retained_round(port: int, pw: str) -> bool:
    """Does a home connecting to the node on ``port`` now get the round announcement?"""
    r = subprocess.run(["mosquitto_sub", "-h", "127.0.0.1", "-p", str(port), "-u", FLEET_USER,
                        "-P", pw, "-i", FLEET_USER, "-t", protocol.t_round(), "-C", "1",
                        "-W", "10"], capture_output=True, timeout=30)
    return r.returncode == 0 and len(r.stdout) > 1


def _clear_retained(port: int, pw: str) -> None:
    """The previous round's announcement is retained on node 1: clear it between runs."""
    subprocess.run(["mosquitto_pub", "-h", "127.0.0.1", "-p", str(port), "-u", REC, "-P", pw,
                    "-i", REC, "-t", protocol.t_round(), "-r", "-n", "-q", "1"],
                   check=True, timeout=30, capture_output=True)


def run_round(cluster: rabbitmq.RabbitCluster, fleet: fl.Fleet, spec: fl.FleetSpec,
              users: dict[str, str], brokers: tuple[str, ...], k: int, work: Path,
              kill: str | None, window: int, workers: int = 1,
              victim: int = 0) -> dict[str, Any]:
    homes = spec.homes
    n = len(cluster.nodes)
    # the services' intake connects to node N (the one killed) first
    victim = victim or n
    # the services' intake connects to the victim first; the fleet and the outside
    # subscribers use the other nodes (the fleet publisher does not fail over: real homes do)
    order = [victim, *(i for i in range(1, n + 1) if i != victim)]
    ports = ",".join(str(cluster.nodes[i - 1].amqp_port) for i in order)
    mqtt_ports = ",".join(str(x.mqtt_port) for x in cluster.nodes)
    m1, m2 = cluster.nodes[0].mqtt_port, cluster.nodes[1].mqtt_port  # the services' links
    o1, o2 = (cluster.nodes[i - 1].mqtt_port for i in order[1:3])  # fleet, subscribers
    work.mkdir(parents=True)
    _declare_queues(cluster, victim, users, brokers)
    _clear_retained(m1, users[COORD])
    services: list[Service] = []
    subs: list[subprocess.Popen[bytes]] = []
    killed_at: float | None = None
    try:
        regs = fl.write_registry(spec, work)
        for b in brokers:
            port = free_port()
            services.append(start(b, [
                PY, "-m", "backend.mask_broker", "--broker-id", b, "--registry", str(regs[b]),
                "--k", str(k), "--state-dir", str(work / f"state-{b}"),
                "--metrics-port", str(port), "--port", str(m2), "--broker", "rabbitmq",
                "--amqp-ports", ports, "--mqtt-ports", mqtt_ports],
                {"HEMS_MQTT_PASSWORD": users[b]}, work, port))
        wait_until(lambda: all(s.metrics().get("hems_mask_broker_ingest_connected") == 1
                               and s.metrics().get("hems_mask_broker_connected") == 1
                               for s in services), 60, "the mask brokers' connections",
                   services)
        total = fleet.plans.sum(axis=0)
        cap = np.maximum(1, np.ceil(0.8 * total.max())).astype(np.int64)
        cap_file = work / "capacity.json"
        cap_file.write_bytes(protocol.encode(protocol_svc.make_capacity(
            spec.frames, [int(cap)] * spec.frames)))
        port = free_port()
        coord = start(COORD, [
            PY, "-m", "backend.coordinator", "--day", spec.day, "--round", str(spec.round),
            "--frames", str(spec.frames), "--frame-s", str(spec.frame_s),
            "--quantum-wh", str(spec.quantum_wh), "--start", str(spec.start),
            "--collect-s", "3600", "--expected-homes", str(homes),
            "--missing-grace-s", "60", "--brokers", ",".join(brokers), "--k", str(k),
            "--workers", str(workers),
            # the deterministic solver: the comparison with the reference run is of the
            # transport; the portfolio keeps the exact stage's plan only when it got there in
            # its time limit, which depends on the machine's load, not on the round
            "--solver", "heuristic",
            "--capacity-file", str(cap_file), "--result", str(work / "result.json"),
            "--state-dir", str(work / "state-coordinator"), "--metrics-port", str(port),
            "--port", str(m1), "--user", COORD, "--broker", "rabbitmq", "--amqp-ports", ports,
            "--mqtt-ports", mqtt_ports],
            {"HEMS_MQTT_PASSWORD": users[COORD]}, work, port)
        services.append(coord)
        wait_until(lambda: coord.metrics().get("hems_coordinator_ingest_connected") == 1,
                   60, "the coordinator's ingest connection", services)
        wait_until(lambda: all(s.metrics().get("hems_mask_broker_rounds_total", 0) >= 1
                               for s in services[:-1]), 60, "the round announcement", services)
        announced = [_retained_round(x.mqtt_port, users[FLEET_USER]) for x in cluster.nodes]
        base_out, adj_out = work / "sub-plan.txt", work / "sub-adjust.txt"
        subs.append(_sub(o1, REC, users[COORD], protocol.t_plan("+"), base_out, "%U %t"))
        subs.append(_sub(o2, FLEET_USER, users[FLEET_USER], protocol.t_adjust("+"), adj_out,
                         "%t %x"))
        time.sleep(1.0)  # the subscriptions are in place
        msgs = fleet.messages
        per_home = 1 + len(brokers)
        half = (homes // 2) * per_home
        parts = [(msgs[:half], o1), (msgs[half:], o2)]
        stats: list[fl.PublishStats | BaseException] = [ValueError("not run")] * 2

        def pub(i: int) -> None:
            part, p = parts[i]
            try:
                stats[i] = fl.publish_raw(part, "127.0.0.1", p, FLEET_USER, users[FLEET_USER],
                                          window=window, timeout=900,
                                          client_id=f"fleet-pub-{i}", ordered=False)
            except BaseException as e:  # reported below
                stats[i] = e

        threads = [threading.Thread(target=pub, args=(i,), daemon=True) for i in range(2)]
        for t in threads:
            t.start()
        jpath = work / "state-coordinator" / f"round-{spec.day}-{spec.round}.jsonl"
        if kill == "collect":
            wait_until(lambda: coord.metrics().get(
                "hems_coordinator_reports_accepted_total", 0) >= homes // 3, 600,
                "a third of the reports", services)
        elif kill == "adjust":
            wait_until(lambda: jpath.exists() and b'"closed"' in jpath.read_bytes(), 600,
                       "the close of collection", services)
        if kill is not None:
            killed_at = time.time()
            cluster.stop_node(victim, kill=True)
        for t in threads:
            t.join()
        for st in stats:
            if isinstance(st, BaseException):
                raise ScaleError(f"publisher failed: {st}")
        t0 = min(st.t_first for st in stats if isinstance(st, fl.PublishStats))
        ru = reap(coord, 900)
        if coord.proc.returncode != 0:
            raise ScaleError(f"coordinator failed ({coord.proc.returncode}):\n{coord.tail()}")
        time.sleep(2.0)  # the last adjustments reach the outside subscriber
        result = json.loads((work / "result.json").read_text())
        jr = journal(jpath)
        records = [json.loads(x) for x in jpath.read_bytes().splitlines()]
    finally:
        for p in subs:
            if p.poll() is None:
                p.terminate()
                p.wait(10)
        for s in reversed(services):
            stop(s)
    plan_recs = [r for r in records if r.get("kind") == "report"]
    plan_homes = {r.get("home") for r in plan_recs}
    base = sorted(float(x.split()[0]) for x in base_out.read_text().splitlines() if x)
    adjust: dict[str, str] = {}
    adjust_msgs = 0
    for line in adj_out.read_text().splitlines():
        if line:
            topic, _, hexp = line.partition(" ")
            adjust[topic.rsplit("/", 1)[1]] = hexp
            adjust_msgs += 1
    closed = float(jr["closed"]["at"])
    return {
        "announced_on_nodes": announced,
        "accepted": int(jr["closed"]["accepted"]),
        "counted": int(result["homes"]),
        "plan_records": len(plan_recs),
        "plan_homes": len(plan_homes),
        "adjusted_homes": int(result["adjusted_homes"]),
        "adjustments_received": len(adjust),
        "adjustment_messages": adjust_msgs,
        "adjustments": adjust,
        # what is the same round's outcome, not this run's clock or directories
        "result": {k: v for k, v in result.items()
                   if k not in ("timings", "ingest", "phases", "deadline", "state_dir",
                                "rejections", "mqtt_connects", "refused_groups",
                                *SOLVER_BOUNDS)},
        # a group request whose answer a node's death lost or delayed: refused for the moment
        # ("no_answer", "missing_members") and asked again; the outcome above must not differ
        "refused_groups": result.get("refused_groups", []),
        "mqtt_connects": result.get("mqtt_connects"),
        "rejections": result.get("rejections", {}),
        "ingest": result.get("ingest", {}),
        "ingest_msgs_per_s": homes / (closed - t0),
        "baseline_msgs_per_s": homes / (base[homes - 1] - t0) if len(base) >= homes else None,
        "baseline_received": len(base),
        "killed_after_t0_s": None if killed_at is None else round(killed_at - t0, 3),
        "round_latency_s": round(float(jr["done"]["at"]) - closed, 3),
        "coordinator_cpu_s": round(ru.ru_utime + ru.ru_stime, 2),
    }


#: result keys from the time-limited solver's dual bound: this run's speed, not the round's outcome
SOLVER_BOUNDS = ("mip_gap", "best_bound", "moved_bound", "gaps", "solve_status")
#: refusals a node's death can cause without changing the round's outcome: a mask broker's
#: answer lost in the failover, or a member's mask not yet delivered when the group was asked
TRANSIENT_REFUSALS = ("no_answer", "missing_members")


def run(nodes: int, homes: int, kill: str | None, brokers: tuple[str, ...], k: int,
        window: int, keep: Path | None, workers: int = 1, victim: int = 0) -> dict[str, Any]:
    spec = fl.FleetSpec(homes, brokers)
    fleet = fl.load_or_build(spec, None)
    users = {FLEET_USER: "fleet-pw", COORD: "coord-pw"} | {b: f"{b}-pw" for b in brokers}
    with contextlib.ExitStack() as stack:
        if keep is None:
            work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="hems-cluster-")))
        else:
            keep.mkdir(parents=True, exist_ok=True)
            work = Path(tempfile.mkdtemp(prefix="hems-cluster-", dir=keep))
        t = time.monotonic()
        cluster = rabbitmq.RabbitCluster(work / "rabbit", users, list(brokers), nodes,
                                         recorder=True, extra_acl=fleet_acl_text())
        with cluster:
            start_s = time.monotonic() - t
            ref = run_round(cluster, fleet, spec, users, brokers, k, work / "reference", None,
                            window, workers, victim)
            hit = ref if kill is None else run_round(cluster, fleet, spec, users, brokers, k,
                                                     work / "killed", kill, window, workers,
                                                     victim)
    identical = (hit["result"] == ref["result"] and hit["adjustments"] == ref["adjustments"])
    if not identical:
        diff = sorted(k for k in ref["result"] if ref["result"][k] != hit["result"].get(k))
        print(f"cluster.py: differs from the reference: {diff}", file=sys.stderr)
        for key in diff:
            print(f"  {key}: reference {str(ref['result'].get(key))[:600]}\n"
                  f"  {key}: this run  {str(hit['result'].get(key))[:600]}", file=sys.stderr)
    return {
        "nodes": nodes,
        "homes": homes,
        "brokers": list(brokers),
        "workers": workers,
        "killed_node": (victim or nodes) if kill is not None else None,
        "kill_phase": kill,
        "killed_after_first_publish_s": hit["killed_after_t0_s"],
        "lost_reports": homes - hit["counted"],
        "duplicate_reports": hit["plan_records"] - hit["plan_homes"],
        "lost_adjustments": homes - hit["adjustments_received"],
        "duplicate_adjustment_messages": hit["adjustment_messages"] - hit["adjustments_received"],
        "identical_to_reference": identical,
        "announcement_retained_on_every_node": all(ref["announced_on_nodes"]),
        "redelivered_copies_dropped": hit["rejections"].get("plan:replay", 0),
        "refusal_reasons": sorted({str(r.get("reason")) for x in (ref, hit)
                                   for r in x["refused_groups"]}),
        "intake_redelivered": hit["ingest"].get("dup_received", 0),
        "ingest_msgs_per_s": round(ref["ingest_msgs_per_s"]),
        "baseline_msgs_per_s": (None if ref["baseline_msgs_per_s"] is None
                                else round(ref["baseline_msgs_per_s"])),
        "ingest_msgs_per_s_with_kill": round(hit["ingest_msgs_per_s"]),
        "round_latency_s": ref["round_latency_s"],
        "round_latency_s_with_kill": hit["round_latency_s"],
        "coordinator_ingest_with_kill": hit["ingest"],
        "coordinator_mqtt_connects_with_kill": hit["mqtt_connects"],
        "cluster_start_s": round(start_s, 1),
    }


def _session(port: int, home: str, pw: str) -> socket.socket:
    """One home's MQTT session as the firmware holds it: CONNECT (3.1.1, clean session off,
    client id = home id) and a QoS 1 subscription to its adjustment topic; returns the open
    socket once the SUBACK granted it."""
    s = socket.create_connection(("127.0.0.1", port), timeout=60)
    body = (mqtt_string(b"MQTT") + bytes((4, 0xC0)) + (0).to_bytes(2, "big")
            + mqtt_string(home.encode()) + mqtt_string(home.encode()) + mqtt_string(pw.encode()))
    s.sendall(b"\x10" + varlen(len(body)) + body)
    if _read(s, 4)[3] != 0:
        raise ScaleError(f"{home}: CONNACK refused")
    sub = (1).to_bytes(2, "big") + mqtt_string(protocol.t_adjust(home).encode()) + b"\x01"
    s.sendall(b"\x82" + varlen(len(sub)) + sub)
    if _read(s, 5)[4] != 1:
        raise ScaleError(f"{home}: SUBACK refused")
    return s


def _read(s: socket.socket, n: int) -> bytes:
    out = b""
    while len(out) < n:
        more = s.recv(n - len(out))
        if not more:
            raise ScaleError("connection closed")
        out += more
    return out


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def sessions(nodes: int, n: int, keep: Path | None) -> dict[str, Any]:
    """Memory and set-up time of ``n`` home sessions (module docstring of --sessions), spread
    over the nodes as the lab spreads homes."""
    spec = fl.FleetSpec(n, ("mb1",))
    pws = fl.home_passwords(spec)
    with contextlib.ExitStack() as stack:
        base = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="hems-sessions-",
                                                                    dir=keep)))
        cluster = stack.enter_context(rabbitmq.RabbitCluster(base / "rabbit", pws, ["mb1"],
                                                             nodes))
        time.sleep(5.0)  # the nodes settle after the boot
        pids = [x.proc.pid for x in cluster.nodes if x.proc is not None]
        before = [_rss_kib(p) for p in pids]
        t = time.monotonic()
        socks = [stack.enter_context(_session(cluster.nodes[i % nodes].mqtt_port, h, pw))
                 for i, (h, pw) in enumerate(pws.items())]
        setup_s = time.monotonic() - t
        time.sleep(5.0)
        after = [_rss_kib(p) for p in pids]
        queues = cluster.ctl(cluster.nodes[0], "list_queues", "-p", rabbitmq.VHOST, "-q",
                             "name", "type").stdout.split()
        del socks
    grown = [a - b for a, b in zip(after, before, strict=True)]
    return {
        "nodes": nodes,
        "sessions": n,
        "quorum_queues": queues.count("quorum"),
        "sessions_per_s": round(n / setup_s, 1),
        "rss_before_mib": [round(b / 1024, 1) for b in before],
        "rss_after_mib": [round(a / 1024, 1) for a in after],
        "kib_per_session_cluster": round(sum(grown) / n, 1),
        "kib_per_session_per_node": round(sum(grown) / n / nodes, 1),
    }


def table(r: dict[str, Any]) -> str:
    rows = [(k, r[k]) for k in ("nodes", "homes", "killed_node", "kill_phase",
                                "lost_reports", "duplicate_reports", "lost_adjustments",
                                "identical_to_reference", "ingest_msgs_per_s",
                                "baseline_msgs_per_s", "ingest_msgs_per_s_with_kill",
                                "round_latency_s", "round_latency_s_with_kill")]
    return "\n".join(f"{k:>30}  {v}" for k, v in rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--nodes", type=int, default=3)
    p.add_argument("--homes", type=int, default=2000)
    p.add_argument("--kill-node", action="store_true", help="kill -9 the last node mid-round")
    p.add_argument("--kill-phase", choices=["collect", "adjust"], default="collect")
    p.add_argument("--victim", type=int, default=0, metavar="I",
                   help="the node killed, 1..N (default N); node 1 carries the coordinator's "
                   "MQTT link, node 2 the mask brokers'")
    p.add_argument("--brokers", default="mb1", help="mask broker ids, comma-separated")
    p.add_argument("--k", type=int, default=10, help="minimum group size")
    p.add_argument("--window", type=int, default=1000)
    p.add_argument("--workers", type=int, default=1,
                   help="the coordinator's ingest processes (competing consumers), 1-8")
    p.add_argument("--keep", type=Path, help="keep the work directory (logs, journals) here")
    p.add_argument("--sessions", type=int, default=0, metavar="N",
                   help="instead of a round: hold N home sessions (QoS 1 subscription, clean "
                   "session off: one quorum queue each) spread over the nodes, and report the "
                   "nodes' memory per session")
    p.add_argument("--json", action="store_true")
    a = p.parse_args(argv)
    if not 3 <= a.nodes <= 9:
        p.error("--nodes must be 3..9 (the MQTT plugin needs a quorum of 3)")
    if not 10 <= a.homes <= 1_000_000:
        p.error("--homes must be 10..1000000")
    brokers = tuple(b for b in a.brokers.split(",") if b)
    if not brokers:
        p.error("--brokers needs at least one id")
    if not 0 <= a.victim <= a.nodes:
        p.error("--victim must be 1..--nodes")
    if not 1 <= a.workers <= 8:
        p.error("--workers must be 1..8")
    if not 1 <= a.window <= 65535:
        p.error("--window must be 1..65535")
    if not 0 <= a.sessions <= 100_000:
        p.error("--sessions must be 0..100000")
    why = rabbitmq.why_unavailable()
    if why is not None:
        print(f"cluster.py: {why}", file=sys.stderr)
        return 2
    try:
        with stop_on_signals():  # SIGTERM / SIGHUP / SIGINT: every node and service stopped
            return _main(a, brokers)
    except Stopped as e:
        print(f"cluster.py: stopped by {e}; every process it started was stopped",
              file=sys.stderr)
        return e.exit_status


def _main(a: argparse.Namespace, brokers: tuple[str, ...]) -> int:
    if a.sessions:
        s = sessions(a.nodes, a.sessions, a.keep)
        print("\n".join(f"{k:>26}  {v}" for k, v in s.items()), file=sys.stderr)
        if a.json:
            print(json.dumps(s))
        return 0
    r = run(a.nodes, a.homes, a.kill_phase if a.kill_node else None, brokers, a.k, a.window,
            a.keep, a.workers, a.victim)
    print(table(r), file=sys.stderr)
    if a.json:
        print(json.dumps(r))
    ok = (r["lost_reports"] == 0 and r["duplicate_reports"] == 0 and r["lost_adjustments"] == 0
          and r["identical_to_reference"]
          and set(r["refusal_reasons"]) <= set(TRANSIENT_REFUSALS))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
