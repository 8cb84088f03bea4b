"""``--state-dir``: the coordinator's round journal, an append-only log that survives kill -9.

The round is a deterministic function of a few inputs: the accepted plan reports, the moment
collection closed, the capacity profile taken, every mask broker's answer (or its silence) and
every solver result.  The journal records exactly those, in the order they happened, and nothing
derived; a restarted coordinator replays them through the very same code (intake.py, grouping.py,
sums.py, the adjustment engine) and so stands where the killed one stood, then goes on.  Records
(one JSON object per line, ``"kind"`` says which):

  round    the announcement (day, round, frames, frame_s, quantum_wh, start, deadline, brokers)
           and the parameters that shape the result (k, solver, window): written once, before
           the announcement is published; a restart reuses its deadline
  start    one per process start (pid, time): how often the round was resumed
  report   an accepted plan report (home, report_id, mag, masked as base64)
  closed   collection closed (accepted count): later reports are ``late``, also after a restart
  capacity the capacity profile the round uses (so a new retained profile cannot change it)
  ask      a group request (seq, broker, req, groups as [id, members, checksum]), before it is
           published; a restart re-asks the same request id with the same groups
  answer   a mask broker's answer to a request (or ``timeout``): the ledger's input
  solve    a solver result (index, fingerprint of the problem, the result)
  done     the adjustments were all acknowledged by the MQTT broker

Durability: ``append`` writes and flushes the line to the kernel at once (a kill -9 cannot lose
it); ``commit`` fsyncs, coalescing every line appended since the last fsync into one call (group
commit), and the service acknowledges a message to the MQTT broker, or answers it, only after the
commit that covers it.  A line torn by a crash can only be the last one: ``load`` drops it and
truncates the file back to the last newline before appending again.

Why an append-only log rather than SQLite (WAL): the state *is* a sequence of events, replayed
through pure code; a log stores it as such (no schema, no second representation of derived state to
keep consistent with the code), costs one sequential write per event and one fsync per batch, and
is the same mechanism the mask broker's state dir uses.  SQLite would pay off for random-access
queries or in-place updates across many rounds; one round's journal needs neither.

Layout (directory 0700, files 0600): ``round-<day>-<round>.jsonl``, and with ``--workers N`` one
``round-<day>-<round>.w<i>.jsonl`` per ingest worker (its round, reports and close: the main
process merges the workers' reports at every close, also after a restart).  The masked plans in
them are uniformly random to anyone without the masks; the files are still the operator's only.
"""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path
from typing import IO, Any

from backend.common import fastjson

__all__ = ["Journal"]

log = logging.getLogger("hems.coordinator.store")


class Journal:
    """One round's append-only journal in a state directory (see the module docstring)."""

    def __init__(self, state_dir: Path, day: str, rnd: int, part: str = "") -> None:
        """``part``: an ingest worker's own journal (``--workers``), ``round-<day>-<round>.<part>
        .jsonl``: the reports it accepted, and when it closed."""
        state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        name = f"round-{day}-{rnd}" + (f".{part}" if part else "")
        self.path = state_dir / f"{name}.jsonl"
        self._f: IO[bytes] | None = None
        self._appended = 0  # lines appended by this process
        self._synced = 0  # of which covered by an fsync
        self._lock = asyncio.Lock()

    def load(self) -> list[dict[str, Any]]:
        """The records written so far (a torn last line is dropped and truncated away)."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return []
        end = data.rfind(b"\n") + 1
        if end < len(data):
            log.warning("%s: dropping a torn last line (%d bytes)", self.path, len(data) - end)
            with open(self.path, "r+b") as f:
                f.truncate(end)
                os.fsync(f.fileno())
        out: list[dict[str, Any]] = []
        for n, line in enumerate(data[:end].splitlines(), 1):
            try:
                obj = fastjson.loads(line)
            except ValueError:
                log.error("%s:%d: skipping a corrupt line", self.path, n)
                continue
            if isinstance(obj, dict) and isinstance(obj.get("kind"), str):
                out.append(obj)
        return out

    def append(self, kind: str, flush: bool = True, **data: Any) -> None:
        """Write one record; flushed to the kernel before returning (kill -9 safe).
        ``flush=False`` (a batch of records): ``flush()`` or ``commit()`` writes them; nothing
        that depends on them may leave the process before."""
        if self._f is None:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            self._f = os.fdopen(fd, "ab", buffering=1 << 20)
        self._f.write(fastjson.dumps({**data, "kind": kind}) + b"\n")
        if flush:
            self._f.flush()
        self._appended += 1

    def flush(self) -> None:
        """Hand the records appended with ``flush=False`` to the kernel (one write)."""
        if self._f is not None:
            self._f.flush()

    @property
    def dirty(self) -> bool:
        return self._synced < self._appended

    async def commit(self) -> None:
        """fsync everything appended so far (one fsync covers every caller waiting on it)."""
        target = self._appended
        async with self._lock:
            if self._synced >= target or self._f is None:
                return
            upto = self._appended
            self._f.flush()
            await asyncio.to_thread(os.fsync, self._f.fileno())
            self._synced = max(self._synced, upto)

    def sync(self) -> None:
        """Blocking fsync (start-up and shutdown)."""
        if self._f is not None and self.dirty:
            self._f.flush()
            os.fsync(self._f.fileno())
            self._synced = self._appended

    def close(self) -> None:
        if self._f is not None:
            self.sync()
            self._f.close()
            self._f = None
