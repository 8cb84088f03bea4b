"""Can this machine hold N home processes?  Asked before the lab starts anything.

Every lab home is a real firmware process.  Measured on the reference machine (docs/benchmarks.md,
"Lab homes"): a home on the MicroPython unix port has a proportional set size (PSS, its private
memory plus its share of the binary) of about 5.5 MiB; a home under CPython (paho) about 15 MiB.
The lab refuses a fleet that would take more than ``SHARE`` of the memory the kernel reports as
available, or more processes or file descriptors (one MQTT connection each in mosquitto) than the
limits allow, and says what it can run instead.  After the first home is up its real PSS is read
(``pss_bytes``) and the check is made again with the measured figure.
"""

from __future__ import annotations

import resource
from pathlib import Path

__all__ = ["HOME_PSS", "MIB", "SHARE", "available_bytes", "fleet_problem", "home_kind", "pss_bytes"]

MIB = 1 << 20  # bytes
#: measured PSS per home process (bytes), by interpreter
HOME_PSS = {"micropython": int(5.5 * MIB), "cpython": 15 * MIB}
#: fraction of MemAvailable the homes may take (the services, mosquitto and the page cache
#: need the rest)
SHARE = 0.6
#: file descriptors and processes kept free for the services, mosquitto and the lab itself
RESERVE_FDS = 200
RESERVE_PROCS = 200


def available_bytes(meminfo: Path = Path("/proc/meminfo")) -> int | None:
    """MemAvailable in bytes, or None when the kernel does not say."""
    try:
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def pss_bytes(pid: int) -> int | None:
    """The process's proportional set size (Linux smaps_rollup), or None."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def fleet_problem(homes: int, per_home: int, avail: int | None = None) -> str | None:
    """Why ``homes`` home processes of ``per_home`` bytes each cannot run here, or None."""
    avail = available_bytes() if avail is None else avail
    limits = []
    if avail is not None:
        fit = int(avail * SHARE) // max(per_home, 1)
        limits.append((fit, f"{avail / MIB / 1024:.1f} GiB available, "
                            f"{per_home / MIB:.1f} MiB per home"))
    nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if nofile != resource.RLIM_INFINITY:
        limits.append((nofile - RESERVE_FDS, f"open-file limit {nofile} (ulimit -n)"))
    nproc = resource.getrlimit(resource.RLIMIT_NPROC)[0]
    if nproc != resource.RLIM_INFINITY:
        limits.append((nproc - RESERVE_PROCS, f"process limit {nproc} (ulimit -u)"))
    if not limits:
        return None
    most, why = min(limits)
    if homes <= most:
        return None
    most = max(most, 0)
    return (f"--homes {homes}: this machine can run about {most} home processes ({why}); "
            f"use --homes {most} or fewer, or bench/fleet.py, which simulates many homes in "
            "one process")


def home_kind(python_homes: bool) -> str:
    return "cpython" if python_homes else "micropython"
