"""Regenerate the test vectors with an implementation independent of hemsfw.

Uses CPython's hmac/hashlib/struct only (not hemsfw.masking or hemsfw.seal), so the vectors are
known answers the firmware (under micropython) and the backend both have to reproduce.
Run: .venv/bin/python tests/vectors/make_vectors.py   (writes tests/vectors/*.json)
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import struct
from pathlib import Path

HERE = Path(__file__).parent
M32 = 1 << 32


def le(words: list[int]) -> bytes:
    return struct.pack(f"<{len(words)}I", *[w % M32 for w in words])


def expand(seed: bytes, frames: int) -> list[int]:
    out = b""
    ctr = 0
    while len(out) < 4 * frames:
        out += hashlib.sha256(b"hems/v1 mask expand" + seed + struct.pack("<I", ctr)).digest()
        ctr += 1
    return list(struct.unpack(f"<{frames}I", out[: 4 * frames]))


def seal(key: bytes, ad: bytes, pt: bytes, nonce: bytes) -> bytes:
    def h(k: bytes, m: bytes) -> bytes:
        return hmac.new(k, m, hashlib.sha256).digest()

    k_enc, k_mac = h(key, b"hems/v1 enc"), h(key, b"hems/v1 mac")
    ks = b"".join(h(k_enc, nonce + struct.pack("<H", i)) for i in range((len(pt) + 31) // 32))
    ct = bytes(a ^ b for a, b in zip(pt, ks, strict=False))
    tag = h(k_mac, struct.pack("<H", len(ad)) + ad + nonce + ct)
    return nonce + ct + tag


def masking_vectors() -> dict[str, object]:
    # The seed's worked example (JP5300899B2, FIGs. 5-9): blocks in frames T1..T3.
    alpha_plan, beta_plan = [1, 1, 0], [1, 0, 1]
    alpha_mask, beta_mask = [1, 0, 1], [1, 1, 0]
    masked_a = [(p + m) % M32 for p, m in zip(alpha_plan, alpha_mask, strict=True)]
    masked_b = [(p + m) % M32 for p, m in zip(beta_plan, beta_mask, strict=True)]
    seed_example = {
        "name": "JP5300899B2 worked example (homes alpha and beta, frames T1-T3)",
        "plans": {"alpha": alpha_plan, "beta": beta_plan},
        "masks": {"alpha": alpha_mask, "beta": beta_mask},
        "masked": {"alpha": masked_a, "beta": masked_b},
        "masked_sum": [(a + b) % M32 for a, b in zip(masked_a, masked_b, strict=True)],
        "mask_sum": [(a + b) % M32 for a, b in zip(alpha_mask, beta_mask, strict=True)],
        "group_total": [a + b for a, b in zip(alpha_plan, beta_plan, strict=True)],
    }
    wrap = {
        "name": "wrap-around mod 2^32",
        "plan": [2, 0, 1073741823, 65535],
        "mask": [0xFFFFFFFF, 0xFFFF0001, 0xC0000001, 0x0001FFFF],
    }
    wrap["masked"] = [(p + m) % M32 for p, m in zip(wrap["plan"], wrap["mask"], strict=True)]
    wrap["masked_b64"] = base64.b64encode(le(wrap["masked"])).decode()
    seed = bytes(range(32))
    seed2 = bytes(range(100, 132))
    expansion = {
        "name": "SHA-256 counter-mode seed expansion",
        "seed_hex": seed.hex(),
        "frames": 20,
        "words": expand(seed, 20),
        "two_brokers": {
            "seeds_hex": [seed.hex(), seed2.hex()],
            "frames": 9,
            "mask": [(a + b) % M32 for a, b in zip(expand(seed, 9), expand(seed2, 9), strict=True)],
        },
    }
    key = bytes(range(200, 232))
    nonce = bytes(range(16))
    ad = b"hems/v1|mask|mb1|h1|2026-11-27|1|" + b"ab" * 16
    sealing = {
        "name": "HMAC-SHA256 encrypt-then-MAC seal of a 32-byte seed",
        "key_hex": key.hex(),
        "ad": ad.decode(),
        "nonce_hex": nonce.hex(),
        "plaintext_hex": seed.hex(),
        "blob_hex": seal(key, ad, seed, nonce).hex(),
        "hmac_known_answer": {
            "key": "key",
            "msg": "The quick brown fox jumps over the lazy dog",
            "hex": "f7bc83f430538424b13298e6aa6fb143ef4d59a14946175997479dbc2d1a3cd8",
        },
    }
    ids = ["00" * 16, "11" * 16, "0123456789abcdef" * 2]
    acc = bytearray(32)
    for r in ids:
        for i, b in enumerate(hashlib.sha256(bytes.fromhex(r)).digest()):
            acc[i] ^= b
    checksum = {"name": "report-id checksum (XOR of SHA-256)", "report_ids": ids,
                "checksum": acc.hex()}
    adjust = {
        "name": "adjustment applied to a plan (simultaneous moves, then curtailment)",
        "plan": [5, 0, 3, 2, 0, 7],
        "moves": [[0, 1], [2, 4], [3, 2]],
        "curtail": [5],
        "adjusted": [0, 5, 2, 0, 3, 0],
    }
    return {"seed_example": seed_example, "wrap": wrap, "expansion": expansion,
            "sealing": sealing, "checksum": checksum, "adjustment": adjust}


def main() -> None:
    (HERE / "masking.json").write_text(json.dumps(masking_vectors(), indent=1) + "\n")


if __name__ == "__main__":
    main()
