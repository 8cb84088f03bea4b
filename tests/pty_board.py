"""The MicroPython unix port as a "board" on a serial line, for tests of `hems firmware flash`.

mpremote drives the unix `micropython` REPL like a board (raw REPL, raw-paste, its filesystem
commands) over a pseudo-terminal.  micropython runs on one pty pair (its stdin / stdout / stderr on
the slave, its cwd is the board's filesystem); a thread copies bytes both ways between that pair's
master and the master of a second pair, whose slave name (`port`, /dev/pts/N) is what mpremote
opens.  The second pair's slave stays open here between mpremote runs, so the line never hangs
up.  Use `mpremote connect PORT resume ...`: a soft reset would end the unix REPL.

Test infrastructure, not product code.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import threading
import time
import tty
from pathlib import Path
from types import TracebackType


class PtyBoard:
    """`with PtyBoard(micropython, root) as board:` the REPL answers on `board.port`."""

    def __init__(self, micropython: Path, root: Path, ready_timeout: float = 30.0) -> None:
        self.root = root
        self._lock = threading.Lock()
        self._output = bytearray()              # everything the board wrote (for diagnostics)
        self._stop = threading.Event()
        self._fds: list[int] = []
        self.proc: subprocess.Popen[bytes] | None = None
        self._thread: threading.Thread | None = None
        try:
            self._start(micropython, ready_timeout)
        except BaseException:
            self.close()
            raise

    def _start(self, micropython: Path, ready_timeout: float) -> None:
        board_master, board_slave = os.openpty()
        self._fds += [board_master, board_slave]
        tty.setraw(board_slave)
        env = {k: v for k, v in os.environ.items() if k != "MICROPYPATH"}
        self.proc = subprocess.Popen([str(micropython)], cwd=self.root, env=env,
                                     stdin=board_slave, stdout=board_slave, stderr=board_slave,
                                     start_new_session=True)
        os.close(board_slave)
        self._fds.remove(board_slave)
        host_master, host_slave = os.openpty()
        self._fds += [host_master, host_slave]
        tty.setraw(host_slave)                  # no echo of the board's output back to it
        self.port = os.ttyname(host_slave)
        for fd in (board_master, host_master):
            os.set_blocking(fd, False)
        self._thread = threading.Thread(target=self._bridge, args=(board_master, host_master),
                                        name="pty-board", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + ready_timeout
        while b">>> " not in self.output():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the unix port REPL did not start: {self.output()!r}")
            time.sleep(0.02)

    def _bridge(self, board: int, host: int) -> None:
        peer = {board: host, host: board}
        pending = {board: bytearray(), host: bytearray()}
        readable = {board, host}
        while not self._stop.is_set():
            wanted = [fd for fd in (board, host) if pending[fd]]
            try:
                r, w, _ = select.select(sorted(readable), wanted, [], 0.05)
            except (OSError, ValueError):       # closed under us: close() is running
                return
            for fd in r:
                try:
                    data = os.read(fd, 65536)
                except BlockingIOError:
                    continue
                except OSError:                 # EIO: the slave's last holder is gone
                    data = b""
                if not data:
                    readable.discard(fd)
                    continue
                if fd == board:
                    with self._lock:
                        self._output += data
                pending[peer[fd]] += data
            for fd in w:
                try:
                    n = os.write(fd, pending[fd])
                except BlockingIOError:
                    continue
                except OSError:
                    pending[fd].clear()
                    continue
                del pending[fd][:n]

    def output(self) -> bytes:
        with self._lock:
            return bytes(self._output)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        for fd in self._fds:
            os.close(fd)
        self._fds.clear()

    def __enter__(self) -> PtyBoard:
        return self

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def run_bounded(cmd: list[str], timeout: float,
                cwd: Path | None = None) -> tuple[int, str, str, float]:
    """Run `cmd` in its own session; on timeout kill the whole group (mpremote children too)
    and fail.  Returns (exit status, stdout, stderr, seconds)."""
    t0 = time.monotonic()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         start_new_session=True, cwd=cwd)
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        out, err = p.communicate(timeout=10)
        raise AssertionError(f"{cmd} did not end within {timeout} s:\n{out}\n{err}") from None
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait(10)
    return p.returncode, out, err, time.monotonic() - t0
