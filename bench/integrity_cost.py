"""The home's cost of the plan range proof (hemsfw/flp.py) on the MicroPython unix port.

    python bench/integrity_cost.py [--json] [--frames 96] [--runs 3] [--micropython PATH]

For each representation of a frame's value (cap = 1 .. 65535 quanta: 1 .. 16 bits per value, plus
one wrap bit per frame and mask broker count 1), runs the real prover (`flp.prove_report` and the
plan report's `flp` field as JSON) under the `micropython` binary and measures:

* prove_ms            CPU time of one proof (mean of --runs, after a warm-up), ticks_us
* min_heapsize_bytes  the smallest -X heapsize (1 KB steps) in which the interpreter imports
                      the modules, builds the inputs and completes one proof and its JSON field:
                      the peak including transient garbage (the firmware's own idle heap comes
                      on top: bench/firmware_mem.py)
* heap_64k_ok         min_heapsize_bytes <= 64 KB
* share_bytes, flp_field_bytes  the coordinator's share (16 bytes per element) and the JSON
                      `flp` field added to the plan report (base64)

Scored against an oracle and a bound: every proof made under micropython is verified by the
services' verifier in CPython (backend/common/flp_batch.py, `verified`), and share_bytes must
equal 16 * (frames * bits_per_frame + 2 * chunk + 2P - 1) (`size_ok`).  Figures are for the
venv's 64-bit unix port unless --micropython names another binary.  docs/integrity.md has the
measured table.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "firmware" / "micropython"))

from backend.common import flp_batch  # noqa: E402
from firmware.host import build  # noqa: E402
from hemsfw import flp, masking  # noqa: E402

MICROPYTHON = Path(sys.prefix) / "bin" / "micropython"
CAPS = (1, 3, 7, 15, 255, 4095, 65535)
RID = "0123456789abcdef0123456789abcdef"

CODE = r"""
import gc, json, time
from hemsfw import flp, masking, protocol
FR = %(frames)d
CAP = %(cap)d
RUNS = %(runs)d
seed = bytes(range(1, 33))
plan = [(k * 5 + 3) %% (CAP + 1) for k in range(FR)]
mask = masking.expand_seed(seed, FR)
masked = masking.add_plan(mask, plan)
c = flp.Circuit(FR, CAP, 1)
n = flp.nonce("h1", "2026-12-05", 1, %(rid)r)
def one(i):
    share, blind, parts = flp.prove_report(c, plan, masked, [seed], [mask], n,
                                           bytes((i + j) & 255 for j in range(64)))
    f = json.dumps({"share": protocol.b64(share), "blind": protocol.b64(blind),
                    "parts": [protocol.b64(p) for p in parts]})
    return share, f
share, field = one(0)
if RUNS:
    t0 = time.ticks_us()
    for i in range(RUNS):
        one(i)
    us = time.ticks_diff(time.ticks_us(), t0) / RUNS
    print(json.dumps({"us": us, "field": field, "plan": plan}))
else:
    print("ok")
"""


def _run(mp: Path, src: Path, frames: int, cap: int, runs: int, heap: int | None) -> str | None:
    code = CODE % {"frames": frames, "cap": cap, "runs": runs, "rid": RID}
    cmd = [str(mp)] + (["-X", f"heapsize={heap}"] if heap else []) + ["-c", code]
    p = subprocess.run(cmd, env=dict(os.environ, MICROPYPATH=str(src)),
                       capture_output=True, text=True, timeout=600)
    if p.returncode != 0:
        if heap:
            return None
        raise RuntimeError(p.stdout + p.stderr)
    return p.stdout.strip().splitlines()[-1]


def min_heapsize(mp: Path, src: Path, frames: int, cap: int, lo: int = 4096,
                 hi: int = 1 << 20) -> int:
    lo_k, hi_k = lo // 1024, hi // 1024
    while hi_k - lo_k > 1:
        mid = (lo_k + hi_k) // 2
        if _run(mp, src, frames, cap, 0, mid * 1024) == "ok":
            hi_k = mid
        else:
            lo_k = mid
    return hi_k * 1024


def _verified(frames: int, cap: int, plan: list[int], field: dict[str, Any]) -> bool:
    """The CPython services' verifier (coordinator + one mask broker) accepts the proof."""
    seed = bytes(range(1, 33))
    c = flp.Circuit(frames, cap, 1)
    mask = bytes(masking.expand_seed(seed, frames))
    masked = bytes(masking.add_plan(mask, plan))
    n = flp.nonce("h1", "2026-12-05", 1, RID)
    leader = flp_batch.LeaderInput("h1", n, c, masked, base64.b64decode(field["share"]),
                                   base64.b64decode(field["blind"]),
                                   tuple(base64.b64decode(p) for p in field["parts"]))
    helper = flp_batch.HelperInput("h1", n, c, 1, seed, mask)
    q = bytes(32)
    lv = flp_batch.leader_verify([leader], q)["h1"]
    hv = flp_batch.helper_verify([helper], {"h1": flp_batch.leader_parts(leader)}, q)["h1"]
    return flp_batch.decide(c, [lv, hv]) is None


def prove_cost(mp: Path, src: Path, frames: int, cap: int, runs: int, heap: bool = True
               ) -> dict[str, Any]:
    """One representation's figures, the firmware's code from `src` (a `hems firmware build`
    bundle of .mpy files, as deployed: bench/firmware_mem.py reuses it for proof_cpu_ms)."""
    out = json.loads(_run(mp, src, frames, cap, runs, None) or "{}")
    field = json.loads(out["field"])
    c = flp.Circuit(frames, cap, 1)
    share = len(base64.b64decode(field["share"]))
    r: dict[str, Any] = {
        "cap_quanta": cap, "bits_per_value": len(c.vw), "elements_per_frame": c.per,
        "meas_len": c.meas_len, "chunk": c.chunk, "gadget_calls": c.calls, "p": c.p,
        "proof_len": c.proof_len, "prove_ms": round(out["us"] / 1000, 2),
        "share_bytes": share, "flp_field_bytes": len(out["field"]),
        "size_ok": share == flp.ENC * (frames * c.per + 2 * c.chunk + 2 * c.p - 1),
        "verified": _verified(frames, cap, out["plan"], field),
    }
    if heap:
        r["min_heapsize_bytes"] = min_heapsize(mp, src, frames, cap)
        r["heap_64k_ok"] = r["min_heapsize_bytes"] <= 64 * 1024
    return r


def interpreter(mp: Path) -> str:
    p = subprocess.run([str(mp), "-c", "import sys; print(sys.maxsize > 2**32)"],
                       capture_output=True, text=True, timeout=60, check=True)
    return f"micropython unix port ({'64' if p.stdout.strip() == 'True' else '32'}-bit)"


def measure(frames: int, runs: int, mp: Path) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="hems-flpcost-") as tmp:
        bundle = Path(tmp) / "bundle"
        build(bundle)
        rows = [prove_cost(mp, bundle, frames, cap, runs) for cap in CAPS]
    return {"frames": frames, "brokers": 1, "interpreter": interpreter(mp),
            "field": "Field128", "representations": rows,
            "ok": all(r["verified"] and r["size_ok"] for r in rows)}


def table(r: dict[str, Any]) -> str:
    head = (f"plan range proof on the home, {r['frames']} frames, 1 mask broker, "
            f"{r['field']}, {r['interpreter']}")
    cols = ("cap (quanta)", "bits", "elems", "proof", "prove ms", "min heap", "64K",
            "share", "JSON field", "verified")
    lines = [head, "-" * len(head), " | ".join(cols)]
    for x in r["representations"]:
        lines.append(" | ".join((
            str(x["cap_quanta"]), str(x["bits_per_value"]), str(x["meas_len"]),
            str(x["proof_len"]), f"{x['prove_ms']:.1f}", f"{x['min_heapsize_bytes'] // 1024} KB",
            "yes" if x["heap_64k_ok"] else "NO", f"{x['share_bytes'] / 1024:.1f} KB",
            f"{x['flp_field_bytes'] / 1024:.1f} KB",
            "yes" if x["verified"] and x["size_ok"] else "NO")))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--json", action="store_true", help="one JSON object on stdout")
    p.add_argument("--frames", type=int, default=96)
    p.add_argument("--runs", type=int, default=3, help="proofs to average per representation")
    p.add_argument("--micropython", type=Path, default=MICROPYTHON)
    a = p.parse_args(argv)
    if not 1 <= a.frames <= 1440 or not 1 <= a.runs <= 100:
        p.error("--frames must be 1..1440 and --runs 1..100")
    if not a.micropython.exists():
        p.error(f"no such micropython binary: {a.micropython}")
    r = measure(a.frames, a.runs, a.micropython)
    print(json.dumps(r) if a.json else table(r))
    return 0 if r["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
