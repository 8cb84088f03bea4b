# MicroPython's `machine`, as far as hemsfw/boards/mcu.py uses it.
from typing import Any

class Pin:
    IN: int
    OUT: int
    PULL_UP: int
    PULL_DOWN: int
    IRQ_FALLING: int
    IRQ_RISING: int
    def __init__(self, id: Any, mode: int = ..., pull: int | None = ..., *,
                 value: int | None = ...) -> None: ...
    def value(self, x: int | None = ...) -> int: ...
    def irq(self, handler: Any = ..., trigger: int = ..., hard: bool = ...) -> Any: ...

class WDT:
    def __init__(self, id: int = ..., timeout: int = ...) -> None: ...
    def feed(self) -> None: ...
