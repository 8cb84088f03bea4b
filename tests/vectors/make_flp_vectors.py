"""Known answers for the plan range proof (hemsfw/flp.py), from an independent implementation.

Written from docs/integrity.md only, with CPython's hashlib and plain integers: Lagrange
interpolation and schoolbook polynomial products instead of the firmware's NTTs, the circuit
evaluated directly.  The firmware (under micropython) and the services must reproduce these bytes.
Run: .venv/bin/python tests/vectors/make_flp_vectors.py   (writes tests/vectors/flp.json)
"""

from __future__ import annotations

import base64
import hashlib
import json
import struct
from pathlib import Path

HERE = Path(__file__).parent
Q = 2**66 * 4611686018427387897 + 1          # Field128, draft-irtf-cfrg-vdaf
M32 = 1 << 32


def xof(domain: bytes, seed: bytes):  # type: ignore[no-untyped-def]
    """Generator of field elements: SHA-256(domain|seed|ctr LE4) blocks, 16-byte LE, rejection."""
    buf = b""
    ctr = 0
    while True:
        while len(buf) < 16:
            buf += hashlib.sha256(domain + seed + struct.pack("<I", ctr)).digest()
            ctr += 1
        x, buf = int.from_bytes(buf[:16], "little"), buf[16:]
        if x < Q:
            yield x


def expand_mask(seed: bytes, frames: int) -> list[int]:
    out = b"".join(hashlib.sha256(b"hems/v1 mask expand" + seed + struct.pack("<I", i)).digest()
                   for i in range((4 * frames + 31) // 32))
    return list(struct.unpack(f"<{frames}I", out[: 4 * frames]))


def weights(bound: int) -> list[int]:
    n = bound.bit_length()
    return [2**j for j in range(n - 1)] + ([bound - (2 ** (n - 1) - 1)] if n else [])


def decompose(v: int, ws: list[int]) -> list[int]:
    bits = [0] * len(ws)
    for j in reversed(range(len(ws))):
        if v >= ws[j]:
            bits[j], v = 1, v - ws[j]
    assert v == 0
    return bits


def sizes(n: int) -> tuple[int, int, int]:
    """(chunk, calls, P): the chunk with the smallest 2*chunk + 2P - 1, smallest chunk on ties."""
    best = None
    for c in range(1, n + 1):
        calls = -(-n // c)
        p = 1 << calls.bit_length()          # next power of two >= calls + 1
        if p // 2 >= calls + 1:
            p //= 2
        cand = (2 * c + 2 * p - 1, c, calls, p)
        if best is None or cand[0] < best[0]:
            best = cand
    assert best is not None
    return best[1], best[2], best[3]


def alpha(p: int) -> int:
    return pow(pow(7, (Q - 1) >> 66, Q), 2**66 // p, Q)


def pmul(a: list[int], b: list[int]) -> list[int]:
    out = [0] * (len(a) + len(b) - 1)
    for i, x in enumerate(a):
        for j, y in enumerate(b):
            out[i + j] = (out[i + j] + x * y) % Q
    return out


def lagrange(ys: list[int], xs: list[int]) -> list[int]:
    coeffs = [0] * len(xs)
    for k, (xk, yk) in enumerate(zip(xs, ys, strict=True)):
        num, den = [1], 1
        for m, xm in enumerate(xs):
            if m != k:
                num = pmul(num, [(-xm) % Q, 1])
                den = den * (xk - xm) % Q
        f = yk * pow(den, -1, Q) % Q
        coeffs = [(c + f * n) % Q for c, n in zip(coeffs, num, strict=True)]
    return coeffs


def peval(coeffs: list[int], x: int) -> int:
    return sum(c * pow(x, i, Q) for i, c in enumerate(coeffs)) % Q


def enc(xs: list[int]) -> bytes:
    return b"".join(x.to_bytes(16, "little") for x in xs)


def case(frames: int, cap: int, plan: list[int], seeds: list[bytes], rand: bytes, home: str,
         day: str, rnd: int, report_id: str, qseed: bytes, full: bool) -> dict[str, object]:
    nb = len(seeds)
    masks = [expand_mask(s, frames) for s in seeds]
    masked = [(plan[k] + sum(m[k] for m in masks)) % M32 for k in range(frames)]
    wraps = [(plan[k] + sum(m[k] for m in masks) - masked[k]) // M32 for k in range(frames)]
    vw, ww = weights(cap), weights(nb)
    meas: list[int] = []
    for k in range(frames):
        meas += decompose(plan[k], vw) + decompose(wraps[k], ww)
    n = len(meas)
    chunk, calls, p = sizes(n)
    proof_len = 2 * chunk + 2 * p - 1
    nonce = f"{home}|{day}|{rnd}|{report_id}".encode()
    helpers = [xof(b"hems/v1 flp share", s) for s in seeds]
    hshares = [[next(h) for _ in range(n + proof_len)] for h in helpers]
    blind = rand[:32]
    lmeas = [(meas[i] - sum(h[i] for h in hshares)) % Q for i in range(n)]
    masked_le = struct.pack(f"<{frames}I", *masked)
    parts = [hashlib.sha256(b"hems/v1 flp part" + b"\x00" + nonce + blind + enc(lmeas)
                            + masked_le).digest()]
    parts += [hashlib.sha256(b"hems/v1 flp part" + bytes([b + 1]) + nonce + seeds[b]).digest()
              for b in range(nb)]
    jx = xof(b"hems/v1 flp joint", hashlib.sha256(b"hems/v1 flp joint" + b"".join(parts)).digest())
    r, s = next(jx), next(jx)

    a = alpha(p)
    pts = [pow(a, k, Q) for k in range(p)]

    def wires(m: list[int], seeds_: list[int], shares: int) -> list[list[int]]:
        inv = pow(shares, -1, Q)
        out = [[0] * p for _ in range(2 * chunk)]
        for j in range(2 * chunk):
            out[j][0] = seeds_[j]
        for k in range(calls):
            for j in range(chunk):
                idx = k * chunk + j
                e = m[idx] if idx < n else 0
                out[2 * j][k + 1] = pow(r, idx + 1, Q) * e % Q
                out[2 * j + 1][k + 1] = (e - inv) % Q
        return out

    px = xof(b"hems/v1 flp prove", rand[32:])
    wseeds = [next(px) for _ in range(2 * chunk)]
    wpolys = [lagrange(w, pts) for w in wires(meas, wseeds, 1)]
    gadget = [0] * (2 * p - 1)
    for j in range(chunk):
        prod = pmul(wpolys[2 * j], wpolys[2 * j + 1])
        gadget = [(g + x) % Q for g, x in zip(gadget, prod, strict=True)]
    proof = wseeds + gadget
    lproof = [(proof[i] - sum(h[n + i] for h in hshares)) % Q for i in range(proof_len)]
    leader_share = enc(lmeas + lproof)

    tx = xof(b"hems/v1 flp query", qseed + nonce)
    t = next(tx)
    while pow(t, p, Q) == 1:
        t = next(tx)

    def verifier(m: list[int], d: list[int], pf: list[int], shares: int) -> list[int]:
        g = pf[2 * chunk:]
        out = sum(peval(g, pts[k + 1]) for k in range(calls))
        for k in range(frames):
            base = k * len(vw + ww)
            lin = d[k] - sum(vw[j] * m[base + j] for j in range(len(vw)))
            lin += M32 * sum(ww[j] * m[base + len(vw) + j] for j in range(len(ww)))
            out += pow(s, k + 1, Q) * lin
        ws = [peval(lagrange(w, pts), t) for w in wires(m, pf[:2 * chunk], shares)]
        return [out % Q, *ws, peval(g, t)]

    vs = [verifier(lmeas, masked, lproof, nb + 1)]
    for b in range(nb):
        vs.append(verifier(hshares[b][:n], [(-x) % Q for x in masks[b]], hshares[b][n:], nb + 1))
    total = [sum(col) % Q for col in zip(*vs, strict=True)]
    ok = total[0] == 0 and sum(total[1 + 2 * j] * total[2 + 2 * j] for j in range(chunk)) % Q \
        == total[-1]
    assert ok
    out: dict[str, object] = {
        "frames": frames, "cap": cap, "brokers": nb, "plan": plan,
        "seeds_hex": [x.hex() for x in seeds], "rand_hex": rand.hex(),
        "home": home, "day": day, "round": rnd, "report_id": report_id, "qseed_hex": qseed.hex(),
        "meas_len": n, "chunk": chunk, "calls": calls, "p": p, "proof_len": proof_len,
        "masked_b64": base64.b64encode(masked_le).decode(),
        "wraps": wraps, "helper_parts_hex": [x.hex() for x in parts[1:]],
        "leader_part_hex": parts[0].hex(), "r": str(r), "s": str(s), "t": str(t),
        "leader_share_sha256": hashlib.sha256(leader_share).hexdigest(),
        "verifier_shares_hex": [enc(v).hex() for v in vs],
    }
    if full:
        out["leader_share_b64"] = base64.b64encode(leader_share).decode()
    return out


def main() -> None:
    rid = "0123456789abcdef0123456789abcdef"
    small = case(4, 5, [0, 5, 3, 4], [bytes(range(32)), bytes(range(100, 132))],
                 bytes(range(64, 128)), "h-small", "2026-12-05", 2, rid, b"\x07" * 32, True)
    day = [(3 * k + k // 7) % 8 for k in range(96)]
    full = case(96, 7, day, [bytes(range(1, 33))], bytes(range(128, 192)), "home-7",
                "2026-12-05", 1, rid, b"\x09" * 32, False)
    doc = {"note": "made by tests/vectors/make_flp_vectors.py (independent of hemsfw.flp)",
           "field_modulus": str(Q), "cases": {"small_two_brokers": small, "day_96": full}}
    (HERE / "flp.json").write_text(json.dumps(doc, indent=1) + "\n")


if __name__ == "__main__":
    main()
