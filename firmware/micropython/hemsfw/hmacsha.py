# HMAC-SHA256 (RFC 2104) from `hashlib.sha256`, which every MicroPython port has: the seeds'
# sealing (hemsfw/seal.py), the page's password hash (hemsfw/auth.py, PBKDF2) and the update
# manifest's MAC (hemsfw/ota.py).  A module of its own, so that the password and the update
# load only these two functions, not the whole of seal.py.  MicroPython subset only.

import hashlib


def hmac_pads(key: bytes) -> tuple[bytes, bytes]:
    """HMAC's (inner, outer) padded keys: compute once to MAC many messages with one key."""
    if len(key) > 64:
        key = hashlib.sha256(key).digest()
    k = bytearray(64)
    k[:len(key)] = key
    ipad = bytearray(64)
    opad = bytearray(64)
    for i in range(64):
        ipad[i] = k[i] ^ 0x36
        opad[i] = k[i] ^ 0x5C
    return bytes(ipad), bytes(opad)


def hmac_sha256(key: bytes, msg: bytes, pads: "tuple[bytes, bytes] | None" = None) -> bytes:
    """HMAC-SHA256 (RFC 2104); pads: hmac_pads(key), if already computed."""
    ipad, opad = pads or hmac_pads(key)
    inner = hashlib.sha256(ipad)
    inner.update(msg)
    outer = hashlib.sha256(opad)
    outer.update(inner.digest())
    return outer.digest()
