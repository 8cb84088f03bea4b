"""Network time on boards is bounded (issue 16): hemsfw/sntp.py's DNS and SNTP queries, run by
the MicroPython unix port against real UDP servers on loopback (a resolver and a time server
answering, or silent), return or fail within their timeout: no lookup without a timeout stands
between the loop and a Pico W's 8.4 s watchdog."""

from __future__ import annotations

import os
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MICROPYTHON = REPO / ".venv" / "bin" / "micropython"
T_2026 = 1795824000                     # 2026-11-28T00:00:00Z


def udp_server(answer: Callable[[bytes], bytes | None]) -> Iterator[int]:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    s.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                q, peer = s.recvfrom(512)
            except TimeoutError:
                continue
            r = answer(q)
            if r is not None:
                s.sendto(r, peer)

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        yield s.getsockname()[1]
    finally:
        stop.set()
        t.join(5)
        s.close()


def dns_answer(q: bytes) -> bytes:
    """A resolver's reply, built by hand: the question echoed, one CNAME-less A record with a
    compressed name (pointer to the question), 192.0.2.44."""
    txid = q[:2]
    question = q[12:]
    hdr = txid + struct.pack("!HHHHH", 0x8180, 1, 1, 0, 0)
    rr = struct.pack("!HHHIH", 0xC00C, 1, 1, 60, 4) + bytes([192, 0, 2, 44])
    return hdr + question + rr


def ntp_answer(q: bytes) -> bytes:
    r = bytearray(48)
    r[0] = 0x24                          # LI 0, version 4, mode 4 (server)
    r[1] = 2                             # stratum 2
    r[40:44] = struct.pack("!I", T_2026 + 2208988800)
    return bytes(r)


@pytest.fixture
def resolver() -> Iterator[int]:
    yield from udp_server(dns_answer)


@pytest.fixture
def time_server() -> Iterator[int]:
    yield from udp_server(ntp_answer)


@pytest.fixture
def silent() -> Iterator[int]:
    yield from udp_server(lambda q: None)


def mpy(code: str) -> tuple[str, float]:
    env = dict(os.environ, MICROPYPATH=str(REPO / "firmware" / "micropython"))
    t0 = time.monotonic()
    p = subprocess.run([str(MICROPYTHON), "-c", code], env=env, capture_output=True, text=True,
                       timeout=30)
    return (p.stdout + p.stderr).strip(), time.monotonic() - t0


def test_a_name_is_resolved_with_one_bounded_query(resolver: int) -> None:
    out, _ = mpy("from hemsfw import sntp\n"
                 f"print(sntp.resolve('pool.ntp.org', '127.0.0.1', 1, port={resolver}))")
    assert out == "192.0.2.44"


def fails_in_time(call: str) -> None:
    """`call` (hemsfw.sntp, timeout 1 s) raises OSError, well within 3 s."""
    out, secs = mpy(f"from hemsfw import sntp\ntry:\n    {call}\nexcept OSError:\n"
                    "    print('OSError')\n")
    assert out == "OSError" and secs < 3, (out, secs)


def test_a_silent_resolver_fails_within_the_timeout(silent: int) -> None:
    fails_in_time(f"sntp.resolve('pool.ntp.org', '127.0.0.1', 1, port={silent})")


def test_the_time_comes_from_one_bounded_query(time_server: int) -> None:
    out, _ = mpy(f"from hemsfw import sntp\nprint(sntp.query('127.0.0.1', 1, port={time_server}))")
    assert out == str(T_2026)


def test_a_silent_time_server_fails_within_the_timeout(silent: int) -> None:
    fails_in_time(f"sntp.query('127.0.0.1', 1, port={silent})")
