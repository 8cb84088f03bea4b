# End-to-end sealing of a mask seed from a home to one mask broker (DESIGN.md decision 2b).
#
# Encrypt-then-MAC built only from SHA-256, which every MicroPython port has (`hashlib.sha256`;
# `cryptolib` has no CTR mode on the 1.2x unix port and CPython has no `cryptolib` at all):
#   k_enc = HMAC(key, "enc"), k_mac = HMAC(key, "mac")           (key separation)
#   keystream block i = HMAC(k_enc, nonce | i)                      (PRF in counter mode)
#   ct = pt XOR keystream;  tag = HMAC(k_mac, len(ad) | ad | nonce | ct)
# HMAC-SHA256 is a PRF, so this is IND-CPA + INT-CTXT (Bellare-Namprempre EtM).  The associated
# data binds broker, home, day, round and report id: a blob moved to another home, broker or round
# fails the MAC.  The nonce is 16 fresh random bytes per seal (and keys are per home and broker).
#
# MicroPython subset only.

# (hemsfw/hmacsha.py: HMAC-SHA256 on its own; re-exported, hosts call seal.hmac_sha256)
from hemsfw.hmacsha import hmac_pads as hmac_pads
from hemsfw.hmacsha import hmac_sha256 as hmac_sha256

TAG_LEN = 32
NONCE_LEN = 16


def _keys(key: bytes) -> tuple[bytes, bytes]:
    return hmac_sha256(key, b"hems/v1 enc"), hmac_sha256(key, b"hems/v1 mac")


def _xor_stream(k_enc: bytes, nonce: bytes, data: bytes) -> bytearray:
    out = bytearray(data)
    i = 0
    ctr = 0
    while i < len(out):
        block = hmac_sha256(k_enc, bytes(nonce) + bytes((ctr & 0xFF, (ctr >> 8) & 0xFF)))
        n = min(32, len(out) - i)
        for j in range(n):
            out[i + j] ^= block[j]
        i += n
        ctr += 1
    return out


def _tag(k_mac: bytes, ad: bytes, nonce: bytes, ct: bytes | bytearray) -> bytes:
    n = len(ad)
    return hmac_sha256(k_mac, bytes((n & 0xFF, (n >> 8) & 0xFF)) + ad + nonce + ct)


def equal_ct(a: bytes, b: bytes) -> bool:
    """Constant-time comparison (no early exit on the first differing byte)."""
    if len(a) != len(b):
        return False
    d = 0
    for i in range(len(a)):
        d |= a[i] ^ b[i]
    return d == 0


def seal(key: bytes, ad: bytes, plaintext: bytes, nonce: bytes) -> bytes:
    """Return nonce | ciphertext | tag.  `nonce` must be NONCE_LEN fresh random bytes."""
    if len(nonce) != NONCE_LEN:
        raise ValueError("nonce")
    k_enc, k_mac = _keys(key)
    ct = _xor_stream(k_enc, nonce, plaintext)
    return bytes(nonce) + bytes(ct) + _tag(k_mac, ad, nonce, ct)


def open_sealed(key: bytes, ad: bytes, blob: bytes) -> bytes:
    """Inverse of seal(); raises ValueError('bad_mac') on any tampering or wrong key/ad."""
    if len(blob) < NONCE_LEN + TAG_LEN:
        raise ValueError("bad_mac")
    nonce = blob[:NONCE_LEN]
    ct = blob[NONCE_LEN:len(blob) - TAG_LEN]
    tag = blob[len(blob) - TAG_LEN:]
    k_enc, k_mac = _keys(key)
    if not equal_ct(_tag(k_mac, ad, nonce, ct), tag):
        raise ValueError("bad_mac")
    return bytes(_xor_stream(k_enc, nonce, ct))
