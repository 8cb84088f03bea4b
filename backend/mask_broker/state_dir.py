"""--state-dir: what the mask broker must not forget across a restart (docs/privacy.md, "State").

Forgetting a group answered before (any day: the partition outlives days) would let a
restarted broker answer a reshuffle, so every release is appended and fsync'ed *before* its sum
is published.  The current round and its accepted masks are kept too, so a restart does not turn
accepted masks into missing members, and so are the homes' latest released reports (what a
later round may carry forward).

Layout (the directory is 0700, every file 0600):
  state.json                      the partition (each home's atom) and every home's latest
                                  released report (secret), as of the last round change
                                  (atomic replace, fsync'ed): the compaction of the log below
  releases.jsonl                  one line per answered group since then: membership (and which
                                  members were carried), never a value
  round.json                      the current round {day, round, frames} (atomic replace)
  masks-<day>-<round>.jsonl       the current round's accepted seeds (secret); deleted as soon as
                                  the round changes
At a round change the compaction is written first, then the log is emptied, then the new round
is recorded; a crash in between replays releases already in the snapshot, which changes nothing
(answering the same member set again is idempotent).  A torn last line (a crash mid-write) is
skipped on load.  ``releases-<day>.jsonl`` files of older versions (one partition per day) are
read into the partition once and folded into the next compaction.

Durability (docs/reliability.md): every record is flushed to the kernel before the service goes
on, so a kill -9 loses nothing; the service acknowledges the MQTT message (PUBACK) only after
that, so a message whose record was not written is delivered again.  Releases (and the round
file, and a new file's directory entry) are also fsync'ed, so not even a power cut can make the
broker forget an answered group; an accepted mask is not fsync'ed (one fsync per mask would cap the
ingest rate), so after a power cut a home may turn into a ``missing_members`` dropout, never
into a privacy leak.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from backend.common import fastjson
from backend.common.files import fsync_dir, write_atomic

from .core import Record

log = logging.getLogger("hems.mask_broker.store")


def _open_append(path: Path) -> IO[str]:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    return os.fdopen(fd, "a", encoding="utf-8")


def _open_append_bytes(path: Path) -> IO[bytes]:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    return os.fdopen(fd, "ab", buffering=1 << 20)


class StateDir:
    def __init__(self, path: Path) -> None:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.path = path
        self._masks: IO[bytes] | None = None
        self._releases: IO[str] | None = None

    def _round_file(self) -> Path:
        return self.path / "round.json"

    def _masks_file(self, day: str, rnd: int) -> Path:
        return self.path / f"masks-{day}-{rnd}.jsonl"

    def _flp_file(self, day: str, rnd: int) -> Path:
        return self.path / f"flp-{day}-{rnd}.jsonl"

    def _releases_file(self) -> Path:
        return self.path / "releases.jsonl"

    def _state_file(self) -> Path:
        return self.path / "state.json"

    # ------------------------------------------------------------ load

    def records(self) -> Iterator[tuple[str, dict[str, Any]]]:
        """The saved state as (kind, data) records, in the order MaskBroker.restore wants: the
        compaction, the round, its masks, the releases since the compaction."""
        try:
            yield "compact", json.loads(self._state_file().read_text())
        except FileNotFoundError:
            pass
        except ValueError as e:
            raise OSError(f"unreadable {self._state_file()}: {e}") from e
        for old in sorted(self.path.glob("releases-*.jsonl")):  # an older version's files
            for line in _lines(old):
                yield "release", line
        try:
            cur = json.loads(self._round_file().read_text())
            day, rnd = str(cur["day"]), int(cur["round"])
        except FileNotFoundError:
            cur = None
        except (ValueError, KeyError, TypeError) as e:
            log.error("ignoring unreadable %s: %s", self._round_file(), e)
            cur = None
        if cur is not None:
            yield "round", cur
            for line in _lines(self._masks_file(day, rnd)):
                yield "mask", line
            for line in _lines(self._flp_file(day, rnd)):
                yield "flp", line
        for line in _lines(self._releases_file()):
            yield "release", line

    # ------------------------------------------------------------ save

    def write(self, rec: Record, flush: bool = True) -> None:
        """Persist one record.  ``flush=False`` (mask records of one ingest batch): ``flush()``
        hands them to the kernel in one write; nothing that depends on them (the replies, the
        PUBACKs) may go out before."""
        d = rec.data
        if rec.kind == "compact":
            self.close()
            write_atomic(self._state_file(), json.dumps(d), durable=True)
            for old in [self._releases_file(), *self.path.glob("releases-*.jsonl")]:
                old.unlink(missing_ok=True)
            fsync_dir(self.path)
        elif rec.kind == "round":
            self.close()
            write_atomic(self._round_file(), json.dumps(d), durable=True)
            keep = self._masks_file(d["day"], d["round"])
            for old in self.path.glob("masks-*.jsonl"):
                if old != keep:
                    old.unlink()
            keep = self._flp_file(d["day"], d["round"])
            for old in self.path.glob("flp-*.jsonl"):
                if old != keep:
                    old.unlink()
        elif rec.kind == "mask":
            if self._masks is None:
                self._masks = _open_append_bytes(self._masks_file(d["day"], d["round"]))
            self._masks.write(fastjson.dumps(d) + b"\n")
            if flush:
                self._masks.flush()
        elif rec.kind == "flp":     # reports verified once (docs/integrity.md): durable first
            with _open_append(self._flp_file(d["day"], d["round"])) as f:
                f.write(json.dumps(d) + "\n")
                f.flush()
                os.fsync(f.fileno())
        elif rec.kind == "release":
            if self._releases is None:
                path = self._releases_file()
                new = not path.exists()
                self._releases = _open_append(path)
                if new:
                    fsync_dir(self.path)
            self._releases.write(json.dumps(d) + "\n")
            self._releases.flush()
            os.fsync(self._releases.fileno())
        else:
            raise ValueError(f"unknown record kind {rec.kind!r}")

    def flush(self) -> None:
        if self._masks is not None:
            self._masks.flush()

    def close(self) -> None:
        for f in (self._masks, self._releases):
            if f is not None:
                f.close()
        self._masks = self._releases = None


def _lines(path: Path) -> Iterator[dict[str, Any]]:
    try:
        f = path.open(encoding="utf-8")
    except FileNotFoundError:
        return
    with f:
        for n, line in enumerate(f, 1):
            try:
                obj = json.loads(line)
            except ValueError:
                log.warning("%s:%d: skipping a torn or corrupt line", path, n)
                continue
            if isinstance(obj, dict):
                yield obj
