"""--release-log: every group this broker ever released, for an auditor (docs/privacy.md).

One JSON line per released group: ``{"day", "round", "req", "group", "members", "carried"}``,
membership only, never a value or a seed, so the file may be handed to an auditor (or the homes'
association) who checks, independently of the broker's own rule (``backend.mask_broker.audit``),
that no combination of everything released isolates a home.  The state dir compacts its own
release records at each round; this log never does: it grows by one line per released group
(about 20 KB a day for 1,000 homes in groups of 5), so rotating it is the operator's business.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import IO, Any

from .core import Record


class ReleaseLog:
    def __init__(self, path: Path) -> None:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
        self.path = path
        self._f: IO[str] = os.fdopen(fd, "a", encoding="utf-8")

    def write(self, rec: Record) -> None:
        """Append a release record (other kinds are not released sums: ignored)."""
        if rec.kind != "release":
            return
        d: dict[str, Any] = rec.data
        line = {"day": d["day"], "round": d["round"], "req": d["req"], "group": d["group"],
                "members": list(d["members"]), "carried": list(d.get("carried") or [])}
        self._f.write(json.dumps(line, separators=(",", ":")) + "\n")
        self._f.flush()

    def close(self) -> None:
        self._f.close()


def read_release_log(path: Path) -> list[dict[str, Any]]:
    """The released groups of a --release-log file (a torn last line is skipped)."""
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            out.append(dict(json.loads(line)))
        except ValueError:
            continue
    return out
