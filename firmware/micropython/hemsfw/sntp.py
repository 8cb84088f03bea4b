# Network time with every step bounded (boards: hemsfw/boards/mcu.py).
#
# `ntptime.settime()` resolves the NTP host with getaddrinfo, which has no timeout on MicroPython
# (lwIP retries for many seconds: more than a Pico W's 8.4 s watchdog).  Here the name is looked
# up with one DNS query of our own (UDP, to the resolver DHCP gave, with a socket timeout) and
# the time is one SNTP query (RFC 4330) with a socket timeout: each call returns or raises
# within its timeout.  MicroPython subset; also runs under CPython (tests).

import socket
import struct

NTP_1970 = 2208988800     # seconds from 1900-01-01 (NTP) to 1970-01-01 (Unix)


def is_ip(host: str) -> bool:
    parts = host.split(".")
    return len(parts) == 4 and all(p.isdigit() and int(p) < 256 for p in parts)


def _udp(addr: str, port: int, msg: bytes, timeout_s: float) -> bytes:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.settimeout(timeout_s)
        a = socket.getaddrinfo(addr, port)[0][-1]   # an IP literal: no lookup, no wait
        s.sendto(msg, a)
        return s.recv(512)
    finally:
        s.close()


def resolve(host: str, server: str, timeout_s: float, txid: int = 0x4E54, port: int = 53
            ) -> str:
    """The first IPv4 address of `host` from the DNS resolver at `server` (an IP address);
    OSError on no answer within timeout_s, ValueError on an answer without an address."""
    if is_ip(host):
        return host
    q = bytearray(struct.pack("!HHHHHH", txid, 0x0100, 1, 0, 0, 0))   # recursion desired
    for label in host.rstrip(".").split("."):
        q.append(len(label))
        q.extend(label.encode())
    q.extend(b"\x00\x00\x01\x00\x01")                                  # QTYPE A, QCLASS IN
    r = _udp(server, port, bytes(q), timeout_s)
    rid, flags, qd, an = struct.unpack("!HHHH", r[:8])
    if rid != txid or not flags & 0x8000 or flags & 0x000F:
        raise ValueError("dns: no answer for " + host)
    i = 12
    for _ in range(qd):                  # skip the question(s)
        while r[i]:
            i += 1 + r[i]
        i += 5
    for _ in range(an):
        if r[i] & 0xC0 == 0xC0:          # a compressed name
            i += 2
        else:
            while r[i]:
                i += 1 + r[i]
            i += 1
        typ, cls, _ttl, rdlen = struct.unpack("!HHIH", r[i:i + 10])
        i += 10
        if typ == 1 and cls == 1 and rdlen == 4:
            return "%d.%d.%d.%d" % (r[i], r[i + 1], r[i + 2], r[i + 3])
        i += rdlen
    raise ValueError("dns: no address for " + host)


def query(addr: str, timeout_s: float, port: int = 123) -> int:
    """Unix time (s) from the SNTP server at `addr` (an IP address); OSError on no answer
    within timeout_s, ValueError on a reply that is not a server's (or not synchronised)."""
    msg = bytearray(48)
    msg[0] = 0x1B                        # LI 0, version 3, mode 3 (client)
    r = _udp(addr, port, bytes(msg), timeout_s)
    if len(r) < 48 or r[0] & 0x07 != 4 or r[1] == 0 or r[1] > 15:
        raise ValueError("ntp: bad reply")
    secs: int = struct.unpack("!I", r[40:44])[0]
    return secs - NTP_1970
