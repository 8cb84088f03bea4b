"""Where the lab writes: a folder it may only ever clean up after itself in.

The lab keeps configs, logs and state of a run in one folder (``--out DIR``, else a temporary
one).  It must never delete or overwrite anything it did not create (a mistyped ``--out .``
must not wipe a checkout), so:

* ``check_out(path)`` (argument checking, before anything starts): a folder that does not exist
  yet, an empty folder, or an earlier lab output is accepted; anything else is refused.
* An earlier lab output is recognised by its marker file ``.hems-lab.json``, which lists every
  top-level entry the lab created there.  ``OutDir.open`` removes exactly those entries (an
  earlier run's journals must not be replayed by this one) and leaves every other file alone.
* ``OutDir.path(name)`` is the only way the lab names a top-level entry: the name goes into the
  marker (written atomically) *before* the entry exists, so even a run killed with SIGKILL
  leaves a marker that lists all it created.

``check_report(path)`` applies the same rule to the HTML report: a new file, or an earlier
report of ``hems lab`` (recognised by its generator tag) may be written; any other file is not.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from backend.common.files import write_atomic
from backend.common.usage import UsageError

__all__ = ["MARKER", "REPORT_TAG", "OutDir", "check_out", "check_report"]

MARKER = ".hems-lab.json"
#: in the <head> of every report (report.py); how an earlier report is recognised
REPORT_TAG = '<meta name="generator" content="hems lab">'
_OLD_REPORT = "Made by <code>hems lab</code>"  # reports written before the tag existed


def _marker(path: Path) -> list[str] | None:
    """The entries an earlier lab run created in ``path``, or None if it is not a lab output."""
    try:
        obj = json.loads((path / MARKER).read_text())
    except (OSError, ValueError):
        return None
    made = obj.get("created") if isinstance(obj, dict) else None
    if obj.get("tool") != "hems lab" or not isinstance(made, list):
        return None
    return [m for m in made if isinstance(m, str) and m and "/" not in m and m not in (".", "..")]


def check_out(path: Path) -> None:
    """Raise UsageError unless the lab may write into ``path`` (nothing is changed)."""
    if not path.exists():
        if path.is_symlink():
            raise UsageError(f"--out {path}: a broken symbolic link")
        parent = next((p for p in path.parents if p.exists()), None)
        if parent is None or not os.access(parent, os.W_OK):
            raise UsageError(f"--out {path}: cannot create it (no writable parent folder)")
        return
    if not path.is_dir():
        raise UsageError(f"--out {path}: exists and is not a folder")
    if not os.access(path, os.W_OK | os.X_OK):
        raise UsageError(f"--out {path}: not writable")
    if any(path.iterdir()) and _marker(path) is None:
        raise UsageError(
            f"--out {path}: the folder is not empty and holds no earlier lab output "
            f"(no {MARKER}); name a new or an empty folder")


def check_report(path: Path) -> None:
    """Raise UsageError unless the report may be written at ``path`` (nothing is changed)."""
    if path.is_dir():
        raise UsageError(f"--report {path}: is a folder")
    if path.exists() or path.is_symlink():
        try:
            with open(path, encoding="utf-8", errors="replace") as f:
                head = f.read(4096)
        except OSError as e:
            raise UsageError(f"--report {path}: {e.strerror or e}") from None
        if REPORT_TAG not in head and _OLD_REPORT not in head:
            raise UsageError(f"--report {path}: the file exists and is not a hems lab "
                             "report; it would be overwritten")


class OutDir:
    """The lab's output folder, after ``check_out`` accepted it."""

    def __init__(self, root: Path, created: list[str]) -> None:
        self.root = root
        self._created = created

    @classmethod
    def open(cls, root: Path) -> OutDir:
        """Create ``root`` or clean an earlier lab output in it (only what that run created)."""
        check_out(root)
        root.mkdir(parents=True, exist_ok=True)
        for name in _marker(root) or []:
            entry = root / name
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            elif entry.exists() or entry.is_symlink():
                entry.unlink()
        out = cls(root, [])
        out._write_marker()
        return out

    def path(self, name: str) -> Path:
        """``root/name``, recorded as the lab's own before the caller creates it."""
        if "/" in name or name in ("", ".", "..", MARKER):
            raise ValueError(f"not a top-level entry name: {name!r}")
        if name not in self._created:
            self._created.append(name)
            self._write_marker()
        return self.root / name

    def _write_marker(self) -> None:
        write_atomic(self.root / MARKER,
                     json.dumps({"tool": "hems lab", "created": self._created}) + "\n", 0o644)
