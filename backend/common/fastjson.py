"""JSON for the services' hot paths: orjson when installed, the stdlib otherwise.

orjson decodes a plan report in ~7 us instead of ~11 us (docs/scaling.md) and is a drop-in for
what the services read and write: objects of str / int / list / bool / None.  ``loads`` raises
ValueError (both libraries' errors derive from it) on anything that is not JSON.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from hemsfw import protocol

__all__ = ["BACKEND", "decode", "dumps", "loads"]

loads: Callable[[bytes], Any]
dumps: Callable[[Any], bytes]

try:
    import orjson
except ImportError:  # pragma: no cover - orjson is a dependency; the fallback keeps it optional
    BACKEND = "json"

    def loads(payload: bytes) -> Any:
        return json.loads(payload)

    def dumps(obj: Any) -> bytes:
        """Compact JSON as bytes (no spaces, like orjson)."""
        return json.dumps(obj, separators=(",", ":")).encode()
else:
    BACKEND = "orjson"
    loads = orjson.loads
    dumps = orjson.dumps


def decode(payload: bytes, limit: int = protocol.MAX_PAYLOAD) -> Any:
    """``hemsfw.protocol.decode`` (same checks, same reasons: ``too_large``, ``bad_json``,
    ``bad_version``) with this module's decoder."""
    if len(payload) > limit:
        raise ValueError("too_large")
    try:
        obj = loads(payload)
    except ValueError:
        raise ValueError("bad_json") from None
    protocol.check_version(obj)  # the firmware's own check
    return obj
