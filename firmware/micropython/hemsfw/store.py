# Persistent state on the device's filesystem with atomic replacement.
#
# Write to "<name>.tmp", flush (and fsync where the port has it), then rename over the old file:
# on littlefs (ESP32/RP2040 default) and POSIX, rename is atomic, so after a power cut the file is
# either the old or the new version, never a torn mix.  A stale "<name>.tmp" left by a cut is
# simply overwritten by the next write.  MicroPython subset only.

import json
import os

if False:  # types for mypy only (docs/firmware.md, "Types")
    from typing import Any


class Store:
    def __init__(self, root: str) -> None:
        self.root = root
        try:
            os.mkdir(root)
        except OSError:
            pass  # exists

    def path(self, name: str) -> str:
        return self.root + "/" + name

    def write(self, name: str, obj: "Any") -> None:
        p = self.path(name)
        tmp = p + ".tmp"
        with open(tmp, "w") as f:
            json.dump(obj, f)      # streamed: no second copy of the document in RAM
            f.flush()
            fsync = getattr(os, "fsync", None)
            if fsync is not None:
                fsync(f.fileno())
        os.rename(tmp, p)

    def read(self, name: str, default: "Any" = None) -> "Any":
        try:
            with open(self.path(name)) as f:
                return json.load(f)
        except (OSError, ValueError):
            # Missing, or unreadable: a torn .tmp never replaces the file, so ValueError here
            # means the storage itself is corrupt; start from the default rather than crash.
            return default

    def rename(self, old: str, new: str) -> None:
        """Atomically replace `new` by `old` (both names in this store)."""
        os.rename(self.path(old), self.path(new))

    def remove(self, name: str) -> None:
        try:
            os.remove(self.path(name))
        except OSError:
            pass  # already gone

    def append_line(self, name: str, obj: "Any") -> None:
        # Append-only log (the lab relay log): one JSON object per line.
        with open(self.path(name), "a") as f:
            f.write(json.dumps(obj) + "\n")
