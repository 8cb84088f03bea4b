"""Open sealed mask seeds with the stdlib's C HMAC, keys derived once per home.

Byte-identical to ``hemsfw.seal.open_sealed`` (the firmware's pure-Python HMAC, which the homes
must use: MicroPython has no ``hmac``) and to ``hemsfw.masking.expand_seed``; the tests check
both on random inputs and on tests/vectors.  Why a second implementation: the firmware's HMAC
costs ~34 us per seal here (two key derivations, a Python loop per pad byte), the stdlib's
with the per-home ``k_enc``/``k_mac`` derived at registry load ~7.6 us (docs/scaling.md).

The MAC is checked (constant time, ``hmac.compare_digest``) before the plaintext is produced,
so nothing unauthenticated leaves this module.
"""

from __future__ import annotations

import hashlib
import hmac

from hemsfw import masking, seal

__all__ = ["HomeKeys", "derive", "expand_seed", "expand_seeds", "open_sealed"]

#: (k_enc, k_mac) of one home for one broker, as hemsfw.seal._keys derives them.
HomeKeys = tuple[bytes, bytes]

_ENC = b"hems/v1 enc"
_MAC = b"hems/v1 mac"
_SHA = hashlib.sha256
try:  # hmac.digest's C core (OpenSSL) without its Python wrapper: one-shot, no HMAC object
    from _hashlib import hmac_digest as _hmac
except ImportError:  # pragma: no cover - a Python built without OpenSSL
    _hmac = hmac.digest  # type: ignore[assignment]
_DOMAIN: bytes = masking.DOMAIN  # the one definition of the expansion domain


def derive(key: bytes) -> HomeKeys:
    """The home's sealing keys (done once, at registry load)."""
    return (_hmac(key, _ENC, "sha256"), _hmac(key, _MAC, "sha256"))


def open_sealed(keys: HomeKeys, ad: bytes, blob: bytes) -> bytes:
    """``hemsfw.seal.open_sealed`` with derived keys; ValueError("bad_mac") on any tampering."""
    n_tag, n_nonce = seal.TAG_LEN, seal.NONCE_LEN
    if len(blob) < n_nonce + n_tag:
        raise ValueError("bad_mac")
    k_enc, k_mac = keys
    nonce = blob[:n_nonce]
    ct = blob[n_nonce:len(blob) - n_tag]
    n = len(ad)
    tag = _hmac(k_mac, b"".join((bytes((n & 0xFF, (n >> 8) & 0xFF)), ad, nonce, ct)),
                "sha256")
    if not hmac.compare_digest(tag, blob[len(blob) - n_tag:]):
        raise ValueError("bad_mac")
    m = len(ct)
    stream = b"".join([_hmac(k_enc, nonce + c, "sha256") for c in _counters(m, 2)])
    return (int.from_bytes(ct, "little") ^ int.from_bytes(stream[:m], "little")).to_bytes(
        m, "little")


def expand_seed(seed: bytes, frames: int) -> bytes:
    """``hemsfw.masking.expand_seed`` with the domain prefix hashed once (a state copy per
    block instead of re-hashing the prefix)."""
    head = _SHA(_DOMAIN)
    head.update(seed)
    n = 4 * frames
    out = []
    for c in _counters(n, 4):
        h = head.copy()
        h.update(c)
        out.append(h.digest())
    return b"".join(out)[:n]


def expand_seeds(seeds: bytes, frames: int, seed_len: int = 32) -> bytes:
    """``expand_seed`` of every ``seed_len``-byte seed of ``seeds``, concatenated (one batch:
    the mask broker expands a round's seeds when a group request first needs them)."""
    if len(seeds) % seed_len:
        raise ValueError("seeds must be whole seeds")
    n = 4 * frames
    ctrs = _counters(n, 4)
    sha, dom = _SHA, _DOMAIN
    out: list[bytes] = []
    push = out.append
    whole = n % 32 == 0
    for i in range(0, len(seeds), seed_len):
        head = sha(dom + seeds[i:i + seed_len])
        if whole:
            for c in ctrs:
                h = head.copy()
                h.update(c)
                push(h.digest())
        else:
            blocks = []
            for c in ctrs:
                h = head.copy()
                h.update(c)
                blocks.append(h.digest())
            push(b"".join(blocks)[:n])
    return b"".join(out)


def _counters(nbytes: int, width: int) -> list[bytes]:
    """The little-endian block counters of ``width`` bytes for ``nbytes`` of stream (they wrap
    like the firmware's: ``hemsfw.seal`` keeps 2 bytes)."""
    blocks = -(-nbytes // 32)
    cached = _CACHED[width]
    if blocks <= len(cached):
        return cached[:blocks]
    wrap = 1 << (8 * width)
    return [(i % wrap).to_bytes(width, "little") for i in range(blocks)]


#: the first counters (a seed is one block of keystream; 96 frames are 12 blocks)
_CACHED = {w: [i.to_bytes(w, "little") for i in range(64)] for w in (2, 4)}
