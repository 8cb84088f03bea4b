"""systemd's notify protocol (sd_notify(3)), for ``Type=notify`` units with ``WatchdogSec=``.

A service started by systemd with ``NotifySocket`` finds the socket in ``$NOTIFY_SOCKET``; it says
``READY=1`` once it serves and ``WATCHDOG=1`` at least every ``WatchdogSec`` while it is healthy,
so a hung service is restarted by systemd.  Outside systemd every call is a no-op.  (The protocol
is one datagram of ``KEY=value`` lines on a unix socket; no library needed.)
"""

from __future__ import annotations

import os
import socket

__all__ = ["notify", "watchdog_interval_s"]


def notify(*states: str) -> bool:
    """Send ``states`` (e.g. "READY=1", "WATCHDOG=1", "STATUS=...") if systemd listens."""
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return False
    if path.startswith("@"):  # an abstract socket
        path = "\0" + path[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.connect(path)
            s.sendall("\n".join(states).encode())
    except OSError:
        return False
    return True


def watchdog_interval_s() -> float | None:
    """How often to send WATCHDOG=1 (half of systemd's WatchdogSec), or None if not asked."""
    usec = os.environ.get("WATCHDOG_USEC")
    try:
        return int(usec) / 2e6 if usec else None
    except ValueError:
        return None
