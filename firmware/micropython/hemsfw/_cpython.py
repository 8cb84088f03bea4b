# CPython stand-ins for MicroPython's time.ticks_* (hemsfw/clock.py imports them on CPython only,
# so their code never takes a board's RAM).

import time


def ticks_ms() -> int:
    return int(time.monotonic() * 1000)


def ticks_diff(a: int, b: int) -> int:
    return a - b


def ticks_add(a: int, b: int) -> int:
    return a + b


def sleep_ms(ms: float) -> None:
    time.sleep(ms / 1000)
