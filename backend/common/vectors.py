"""Wire vectors (little-endian uint32, base64 in JSON) as numpy arrays."""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

U32 = np.dtype("<u4")


def u32(raw: bytes) -> NDArray[np.uint32]:
    """Bytes of LE uint32 words -> a read-only uint32 view (no copy)."""
    return np.frombuffer(raw, dtype=U32)


def unwrap(total: NDArray[np.uint32]) -> NDArray[np.int64]:
    """A group total mod 2^32 -> int64 quanta.

    The sum is exact while a group's true total stays below 2^32 quanta per frame; the round's
    Wh quantum is chosen so that it does (docs/protocol.md, "Quantum")."""
    return total.astype(np.int64)
