"""One home attacks the grid with its own credentials; the range proofs stop it (docs/integrity.md).

    python bench/integrity.py [--json] [--homes 9] [--frames 8] [--verify-homes 200]

Real services over a real mosquitto (generated passwd and ACL): the coordinator (one round,
``--verify-proofs``, ``--homes`` rating every home's circuit), one mask broker (its registry
with the same ratings) and the homes,
each publishing with its own credentials what the firmware's own code (hemsfw: masking, seal,
flp, protocol) builds.  One home of the round attacks; the others are honest.  Attacks (issue
14): ``plus_2_31`` (+2^31 in the evening frame, a proof made for its honest plan over the
masked plan it sends), ``wrapped_negative`` (-3000 Wh mod 2^32 in the evening frames),
``above_cap`` (cap + 1 in one frame, a "bit" worth 2 in the proof), ``malformed_proof`` (a
truncated share), ``mismatched_report_ids`` (the mask sealed under another report id).  Per
attack:

* offender_excluded               the attacker is in the result's ``excluded`` (with its reason)
* honest_members_served_fraction  honest homes that got an adjustment / honest homes
* true_overload_after_wh          sum over frames of max(0, honest adjusted plans + every
                                  excluded home at its cap - capacity): the grid's real load
                                  if the excluded homes draw their contracted cap
* honest_lost_wh                  energy the honest homes lose (curtailed, or excluded)

and ``control_without_proofs``: ``plus_2_31`` against a coordinator without ``--verify-proofs``
(the landed behaviour), where the metric must fail (offender not excluded, ~2^31 Wh of
overload in the coordinator's view, honest load curtailed).  ``verify_us_per_home``: CPython,
both verifiers' work per home (coordinator share decoded and queried, broker share expanded
and queried, decision), 96 frames, cap 7 quanta, mean over --verify-homes.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from backend.common import flp_batch  # noqa: E402
from backend.common.broker import Mosquitto  # noqa: E402
from hemsfw import flp, masking, plan, protocol, protocol_svc, seal  # noqa: E402

ATTACKS = ("plus_2_31", "wrapped_negative", "above_cap", "malformed_proof",
           "mismatched_report_ids")
B = "mb1"
K = 3
RATED_W = 200         # every home's circuit rating: 600 Wh per 3-hour frame (8 frames a day)
CAP_WH = 600          # its cap per frame (quantum 1 Wh: full range)
ATTACKER = "h0"


def day_plans(homes: list[str], frames: int, seed: int = 7) -> dict[str, list[int]]:
    """Evening-heavy plans in [0, CAP_WH] (the last quarter of the day is the evening)."""
    rng = __import__("random").Random(seed)
    out = {}
    for h in homes:
        out[h] = [rng.randint(250, CAP_WH) if k >= 3 * frames // 4 else rng.randint(0, 200)
                  for k in range(frames)]
    return out


def home_messages(home: str, day: str, frames: int, p: list[int], key: bytes,
                  attack: str | None) -> list[tuple[str, bytes]]:
    """The plan report (with its proof) and the mask report of one home, attacked or not."""
    rid = secrets.token_hex(16)
    seed = os.urandom(protocol.SEED_LEN)
    mask = masking.expand_seed(seed, frames)
    c = flp.Circuit(frames, CAP_WH, 1)
    honest = masking.add_plan(mask, p)
    sent = bytearray(honest)
    meas = c.encode(p, flp.wraps(p, honest, [mask]))
    evening = range(3 * frames // 4, frames)
    if attack == "plus_2_31":
        masking.add_words(sent, masking.from_words(
            [1 << 31 if k == frames - 1 else 0 for k in range(frames)]))
    elif attack == "wrapped_negative":
        masking.add_words(sent, masking.from_words(
            [-3000 % (1 << 32) if k in evening else 0 for k in range(frames)]))
    elif attack == "above_cap":
        real = list(p)
        real[frames - 1] = CAP_WH + 1
        sent = masking.add_plan(mask, real)
        meas = bytearray(c.encode([*real[:-1], CAP_WH], flp.wraps(real, sent, [mask])))
        meas[(frames - 1) * c.per] = 2     # weight 1 counted twice: cap + 1, not a bit
    n = flp.nonce(home, day, 1, rid)
    share, blind, parts = flp.share_measurement(c, list(meas), sent, [seed], n,
                                                os.urandom(64))
    if attack == "malformed_proof":
        share = share[:-flp.ENC]
    proof = {"share": protocol.b64(share), "blind": protocol.b64(blind),
             "parts": [protocol.b64(x) for x in parts]}
    srid = secrets.token_hex(16) if attack == "mismatched_report_ids" else rid
    blob = seal.seal(key, protocol.mask_ad(B, home, day, 1, srid), seed,
                     os.urandom(seal.NONCE_LEN))
    return [(protocol.t_plan(home), protocol.encode(protocol.make_plan_report(
                home, day, 1, rid, 1, sent, proof))),
            (protocol.t_mask(B, home), protocol.encode(protocol.make_mask_report(
                home, day, 1, srid, blob)))]


def _publish(port: int, user: str, pw: str, msgs: list[tuple[str, bytes]]) -> None:
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=user)
    c.username_pw_set(user, pw)
    c.connect("127.0.0.1", port, 30)
    c.loop_start()
    try:
        for t, p in msgs:
            c.publish(t, p, 1).wait_for_publish(10)
    finally:
        c.disconnect()
        c.loop_stop()


def _wait_retained(port: int, user: str, pw: str, topic: str, timeout: float = 30) -> None:
    got: list[bytes] = []
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=user + "-w")
    c.username_pw_set(user, pw)
    c.on_message = lambda _c, _u, m: got.append(bytes(m.payload))
    c.connect("127.0.0.1", port, 30)
    c.subscribe(topic, 1)
    c.loop_start()
    try:
        end = time.monotonic() + timeout
        while not got and time.monotonic() < end:
            time.sleep(0.05)
    finally:
        c.disconnect()
        c.loop_stop()
    if not got:
        raise RuntimeError(f"nothing on {topic} within {timeout}s")


def _wait_round(stats: Path, proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    """Until the mask broker's stats file shows the announced round (it is subscribed)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            if json.loads(stats.read_text()).get("round") is not None:
                return
        except (OSError, ValueError):
            pass
        if proc.poll() is not None:
            raise RuntimeError("the mask broker exited")
        time.sleep(0.05)
    raise RuntimeError("the mask broker never saw the round")


def run_round(work: Path, n_homes: int, frames: int, attack: str | None,
              proofs: bool = True) -> dict[str, Any]:
    """One real round; the result JSON of the coordinator plus the inputs to score it."""
    work.mkdir(parents=True, exist_ok=True)
    day = dt.datetime.now(dt.UTC).date().isoformat()
    homes = [f"h{i}" for i in range(n_homes)]
    keys = {h: os.urandom(32) for h in homes}
    pw = {u: secrets.token_hex(8) for u in ["coordinator", B, *homes]}
    if RATED_W * (86400 // frames) // 3600 != CAP_WH:
        raise ValueError(f"{frames} frames: the rating does not give {CAP_WH} Wh per frame")
    reg = work / "registry.json"           # the mask broker's: keys and ratings
    reg.write_text(json.dumps({"homes": {h: {"key": keys[h].hex(), "rated_w": RATED_W}
                                         for h in homes}}))
    homes_file = work / "homes.json"        # the coordinator's: ratings, never a key
    homes_file.write_text(json.dumps({"homes": {h: {"rated_w": RATED_W} for h in homes}}))
    plans = day_plans(homes, frames)
    honest_total = [sum(plans[h][k] for h in homes if h != ATTACKER) for k in range(frames)]
    # tight in the evening, room in the morning: the solver has to move load
    capacity = [int(0.8 * max(honest_total))] * frames
    cap_file = work / "capacity.json"
    cap_file.write_text(json.dumps(protocol_svc.make_capacity(frames, capacity)))
    broker = Mosquitto(work / "mosquitto", pw, [B]).start()
    procs: list[subprocess.Popen[bytes]] = []
    try:
        env = dict(os.environ)
        mb_log = open(work / "mask_broker.log", "wb")  # noqa: SIM115 (closed with the process)
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "backend.mask_broker", "--broker-id", B, "--registry",
             str(reg), "--k", str(K), "--port", str(broker.port), "--stats-file",
             str(work / "mb1-stats.json"), "--stats-interval", "0.1"],
            cwd=ROOT, env={**env, "HEMS_MQTT_PASSWORD": pw[B]}, stdout=mb_log, stderr=mb_log))
        result = work / "result.json"
        start = int(time.time()) // 86400 * 86400
        argv = [sys.executable, "-m", "backend.coordinator", "--day", day, "--round", "1",
                "--frames", str(frames), "--frame-s", str(86400 // frames), "--quantum-wh", "1",
                "--start", str(start), "--brokers", B, "--k", str(K), "--port",
                str(broker.port), "--result", str(result), "--capacity-file", str(cap_file),
                "--expected-homes", str(n_homes), "--collect-s", "60",
                "--answer-timeout-s", "20", "--missing-grace-s", "0.5"]
        argv += ["--homes", str(homes_file)]
        if proofs:
            argv += ["--verify-proofs"]
        c_log = open(work / "coordinator.log", "wb")  # noqa: SIM115
        coord = subprocess.Popen(argv, cwd=ROOT, env={**env, "HEMS_MQTT_PASSWORD":
                                                      pw["coordinator"]},
                                 stdout=c_log, stderr=c_log)
        procs.append(coord)
        _wait_retained(broker.port, ATTACKER, pw[ATTACKER], protocol.t_round())
        _wait_round(work / "mb1-stats.json", procs[0])  # the mask broker is subscribed
        for h in homes:
            _publish(broker.port, h, pw[h], home_messages(
                h, day, frames, plans[h], keys[h], attack if h == ATTACKER else None))
        try:
            coord.wait(120)
        except subprocess.TimeoutExpired:
            raise RuntimeError("coordinator did not finish:\n"
                               + (work / "coordinator.log").read_text()[-3000:]) from None
        if not result.exists():
            raise RuntimeError("no result:\n" + (work / "coordinator.log").read_text()[-3000:])
        res = json.loads(result.read_text())
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
                p.wait(10)
        broker.stop()
    return {"result": res, "plans": plans, "capacity": capacity, "homes": homes}


def score(name: str, run: dict[str, Any]) -> dict[str, Any]:
    res, plans, capacity, homes = run["result"], run["plans"], run["capacity"], run["homes"]
    frames = len(capacity)
    excluded = {e["home"]: e["reason"] for e in res.get("excluded", [])}
    gid = {h: g["id"] for g in res.get("groups", []) for h in g["members"]}
    moves: dict[str, list[tuple[int, int]]] = {}
    curtail: dict[str, list[Any]] = {}
    for g, f, t in res.get("moves", []):
        moves.setdefault(g, []).append((f, t))
    for c in res.get("curtail", []):  # [group, frame, keep] (or [group, frame]: all off)
        curtail.setdefault(c[0], []).append(c[1] if len(c) == 2 else [c[1], c[2]])
    honest = [h for h in homes if h != ATTACKER]
    served = [h for h in honest if h in gid and h not in excluded]
    load = [0] * frames
    lost = 0
    for h in homes:
        if h in excluded:
            adj = [CAP_WH] * frames              # an excluded home may draw its contract
        elif h in gid:
            g = gid[h]
            adj = plan.apply_adjustment(plans[h], moves.get(g, []), curtail.get(g, []))
        else:
            adj = list(plans[h])
        if h == ATTACKER and h not in excluded:
            adj = list(plans[h])                 # its true load (what it lied about)
        elif h != ATTACKER:
            lost += sum(plans[h]) - sum(adj) if h not in excluded else sum(plans[h])
        for k in range(frames):
            load[k] += adj[k]
    return {
        "name": name,
        "status": res.get("status"),
        "error": res.get("error"),
        "offender_excluded": ATTACKER in excluded,
        "offender_reason": excluded.get(ATTACKER),
        "honest_excluded": sorted(h for h in honest if h in excluded),
        "honest_members_served_fraction": round(len(served) / len(honest), 4),
        "true_overload_after_wh": sum(max(0, load[k] - capacity[k]) for k in range(frames)),
        "honest_lost_wh": lost,
        "coordinator_overload_before_wh": res.get("overload_before_wh"),
        "coordinator_overload_after_wh": res.get("overload_after_wh"),
        "curtailed_wh": res.get("curtailed_wh"),
    }


def verify_cost(n: int, frames: int = 96, cap: int = 7) -> float:
    """µs per home of both verifiers' work (CPython), 96 frames, one mask broker."""
    c = flp.Circuit(frames, cap, 1)
    items = []
    for i in range(n):
        p = [(i + 3 * k) % (cap + 1) for k in range(frames)]
        seed = os.urandom(32)
        mask = masking.expand_seed(seed, frames)
        masked = masking.add_plan(mask, p)
        nonce = flp.nonce(f"h{i}", "2026-12-05", 1, "00" * 16)
        share, blind, parts = flp.prove_report(c, p, masked, [seed], [mask], nonce,
                                               os.urandom(64))
        items.append((flp_batch.LeaderInput(f"h{i}", nonce, c, bytes(masked), bytes(share),
                                            blind, tuple(parts)),
                      flp_batch.HelperInput(f"h{i}", nonce, c, 1, seed, bytes(mask))))
    q = os.urandom(32)
    t0 = time.perf_counter()
    mine = flp_batch.leader_verify([x for x, _ in items], q)
    parts_of = {x.home: flp_batch.leader_parts(x) for x, _ in items}
    theirs = flp_batch.helper_verify([y for _, y in items], parts_of, q)
    ok = all(flp_batch.decide(c, [mine[x.home], theirs[x.home]]) is None for x, _ in items)
    us = (time.perf_counter() - t0) * 1e6 / n
    if not ok:
        raise RuntimeError("an honest proof failed")
    return us


def measure(n_homes: int, frames: int, verify_homes: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="hems-integrity-") as tmp:
        attacks = [score(a, run_round(Path(tmp) / a, n_homes, frames, a)) for a in ATTACKS]
        control = score("plus_2_31", run_round(Path(tmp) / "control", n_homes, frames,
                                               "plus_2_31", proofs=False))
    return {"homes": n_homes, "frames": frames, "cap_wh": CAP_WH, "k": K, "attacks": attacks,
            "control_without_proofs": control,
            "verify_us_per_home": round(verify_cost(verify_homes), 1),
            "ok": all(a["offender_excluded"] and a["honest_members_served_fraction"] == 1.0
                      and a["true_overload_after_wh"] == 0 for a in attacks)}


def table(r: dict[str, Any]) -> str:
    head = (f"one home attacks, {r['homes']} homes, {r['frames']} frames, cap {r['cap_wh']} Wh, "
            "real coordinator + mask broker over mosquitto")
    lines = [head, "-" * len(head),
             "attack | offender excluded (reason) | honest served | true overload after (Wh) | "
             "honest lost (Wh) | coordinator's overload before (Wh)"]
    for a in [*r["attacks"], {**r["control_without_proofs"], "name": "control: plus_2_31, "
                              "no proofs"}]:
        lines.append(f"{a['name']} | {'yes' if a['offender_excluded'] else 'NO'} "
                     f"({a['offender_reason']}) | {a['honest_members_served_fraction']:.0%} | "
                     f"{a['true_overload_after_wh']} | {a['honest_lost_wh']} | "
                     f"{a['coordinator_overload_before_wh']}")
    lines.append(f"verification, both verifiers, per home (96 frames, cap 7): "
                 f"{r['verify_us_per_home']} us")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--json", action="store_true", help="one JSON object on stdout")
    p.add_argument("--homes", type=int, default=9)
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--verify-homes", type=int, default=200)
    a = p.parse_args(argv)
    if not 2 * K + 1 <= a.homes <= 200 or not 4 <= a.frames <= 96 or \
            not 1 <= a.verify_homes <= 100_000:
        p.error(f"--homes must be {2 * K + 1}..200, --frames 4..96, --verify-homes 1..100000")
    r = measure(a.homes, a.frames, a.verify_homes)
    print(json.dumps(r) if a.json else table(r))
    return 0 if r["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
