# Board "esp32": ESP32 (and S2/S3/C3) with MicroPython 1.23+.  machine.WDT accepts long timeouts;
# the default is 30 s (config "watchdog_ms").  No default LED (boards differ; many use GPIO 2).
# MicroPython only.

from hemsfw.boards.mcu import McuBoard


class Board(McuBoard):
    name = "esp32"
    wdt_max_ms = 120000
