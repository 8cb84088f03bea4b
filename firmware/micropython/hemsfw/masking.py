# Masking arithmetic: plan + mask mod 2^32, on little-endian uint32 byte vectors.
#
# Why bytes and 16-bit halves: on 32-bit boards (ESP32, RP2040) MicroPython small ints stop at
# 2^30, so `(p + m) % 2**32` would allocate a big int per frame.  Working on 16-bit halves keeps
# every intermediate below 2^18: no heap allocation per frame, and the result is already the wire
# encoding (base64 of '<u4' words) that the backend reads with numpy.frombuffer.
#
# The seed (JP5300899B2) requires only that the conversion is additively homomorphic
# (psi(P1) + psi(P2) = psi(P1 + P2)); DESIGN.md decision 1 makes it exact: masks are uniform in
# Z/2^32 per frame, so a masked plan is independent of the plan (one-time pad over Z/2^32).
#
# MicroPython subset only: no dataclasses, and types only as annotations.

import hashlib

if False:  # types for mypy only (docs/firmware.md, "Types")
    from collections.abc import Iterable, Sequence

# The expansion's domain separation (backend/mask_broker/unseal.py expands with it too).
DOMAIN = b"hems/v1 mask expand"


def expand_seed(seed: bytes, frames: int) -> bytearray:
    """Expand a secret seed into `frames` uniform uint32 words (4*frames bytes).

    SHA-256 in counter mode: block i = SHA-256(domain | seed | i as 4-byte LE).  The mask broker
    runs the same function on the seed it receives, so only the seed travels."""
    out = bytearray(4 * frames)
    pos = 0
    ctr = 0
    while pos < len(out):
        h = hashlib.sha256(DOMAIN)
        h.update(seed)
        h.update(bytes((ctr & 0xFF, (ctr >> 8) & 0xFF, (ctr >> 16) & 0xFF, (ctr >> 24) & 0xFF)))
        block = h.digest()
        n = min(32, len(out) - pos)
        out[pos:pos + n] = block[:n]
        pos += n
        ctr += 1
    return out


def add_words(acc: bytearray, other: bytes | bytearray) -> bytearray:
    """acc += other (mod 2^32 per LE word), in place; both bytearray/bytes of equal length."""
    if len(acc) != len(other) or len(acc) % 4:
        raise ValueError("length")
    for i in range(0, len(acc), 4):
        lo = acc[i] + (acc[i + 1] << 8) + other[i] + (other[i + 1] << 8)
        hi = acc[i + 2] + (acc[i + 3] << 8) + other[i + 2] + (other[i + 3] << 8) + (lo >> 16)
        acc[i] = lo & 0xFF
        acc[i + 1] = (lo >> 8) & 0xFF
        acc[i + 2] = hi & 0xFF
        acc[i + 3] = (hi >> 8) & 0xFF
    return acc


def add_plan(mask: bytes | bytearray, plan: list[int]) -> bytearray:
    """Return bytearray masked = mask + plan (mod 2^32 per frame); plan values 0 <= v < 2^30."""
    if len(mask) != 4 * len(plan):
        raise ValueError("length")
    out = bytearray(mask)
    for k in range(len(plan)):
        v = plan[k]
        if v < 0 or v >= 0x40000000:
            raise ValueError("plan value out of range")
        i = 4 * k
        lo = out[i] + (out[i + 1] << 8) + (v & 0xFFFF)
        hi = out[i + 2] + (out[i + 3] << 8) + (v >> 16) + (lo >> 16)
        out[i] = lo & 0xFF
        out[i + 1] = (lo >> 8) & 0xFF
        out[i + 2] = hi & 0xFF
        out[i + 3] = (hi >> 8) & 0xFF
    return out


def mask_from_seeds(seeds: "Iterable[bytes]", frames: int) -> bytearray:
    """The home's mask: the sum of every mask broker's expanded seed (one share per broker)."""
    acc = bytearray(4 * frames)
    for s in seeds:
        add_words(acc, expand_seed(s, frames))
    return acc


def words(buf: bytes | bytearray) -> list[int]:
    """LE uint32 words as a list of ints (for tests and small vectors; allocates)."""
    out = []
    for i in range(0, len(buf), 4):
        out.append(buf[i] | (buf[i + 1] << 8) | (buf[i + 2] << 16) | (buf[i + 3] << 24))
    return out


def from_words(values: "Sequence[int]") -> bytearray:
    """Pack ints (taken mod 2^32) into LE uint32 bytes (for tests and vectors)."""
    out = bytearray(4 * len(values))
    for k in range(len(values)):
        v = values[k] % 4294967296
        for j in range(4):
            out[4 * k + j] = (v >> (8 * j)) & 0xFF
    return out
