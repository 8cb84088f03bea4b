"""Child processes that never outlive the process that started them, and signals that stop it.

* ``tied()``: the ``preexec_fn`` for ``subprocess.Popen`` that asks Linux to send the child
  SIGTERM when its parent dies, however it dies (SIGKILL included: no handler runs then, so the
  kernel must do it; prctl(2), PR_SET_PDEATHSIG).  The kernel ties that signal to the *thread*
  that forked the child, so a child started from any other thread (a test's or a benchmark's
  helper thread, which may end long before the process) is not tied: ``tied()`` is None there.
* ``stop_on_signals``: SIGTERM and SIGHUP (what ``timeout``, systemd, CI and a closed terminal
  send) raise ``Stopped`` in the main thread, the way SIGINT raises KeyboardInterrupt, so every
  ``finally`` that stops children runs.  Further signals during that clean-up are ignored.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType

__all__ = ["Stopped", "stop_on_signals", "tied"]

_PR_SET_PDEATHSIG = 1


def _libc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    except OSError:
        return None


_LIBC = _libc()


def _die_with_parent() -> None:
    # runs in the child between fork and exec: one plain libc call, nothing else
    if _LIBC is not None:
        _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def tied() -> Callable[[], None] | None:
    """``preexec_fn`` that makes the child die with this process, when called from the main
    thread (see the module docstring); None elsewhere."""
    if _LIBC is None or threading.current_thread() is not threading.main_thread():
        return None
    return _die_with_parent


class Stopped(BaseException):
    """SIGTERM or SIGHUP arrived (a BaseException, like KeyboardInterrupt: ``except Exception``
    must not swallow it).  ``exit_status`` is 128 + the signal number, the shell's convention."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def exit_status(self) -> int:
        return 128 + self.signum


@contextmanager
def stop_on_signals() -> Iterator[None]:
    """Within the block, the first SIGTERM or SIGHUP raises ``Stopped`` and the first SIGINT
    raises KeyboardInterrupt; every signal after that is ignored until the block has unwound,
    so the clean-up in its ``finally`` clauses is not cut short by a second Ctrl-C or kill."""
    sigs = (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)
    old = {s: signal.getsignal(s) for s in sigs}
    fired = False

    def handler(signum: int, _frame: FrameType | None) -> None:
        nonlocal fired
        if fired:
            return
        fired = True
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        raise Stopped(signum)

    for s in sigs:
        signal.signal(s, handler)
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)
