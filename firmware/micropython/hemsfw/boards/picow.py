# Board "picow": Raspberry Pi Pico W / Pico 2 W (RP2040 / RP2350 + CYW43439), MicroPython 1.23+.
#
# The RP2040's watchdog counts at most 8388 ms: every blocking step of a loop turn (one MQTT
# budget timeout_s, NTP 1 s) must stay below it, so config.check caps mqtt.timeout_s at 6 s for
# this board.  The on-board LED is the CYW43's "LED" pin (default status LED).  Wi-Fi power
# saving is turned off (pm 0xa11140): with it on, the CYW43 answers the broker's packets late.
# MicroPython only.

from hemsfw.boards.mcu import McuBoard

if False:  # types for mypy only (docs/firmware.md, "Types")
    from hemsfw.interfaces import Json


class Board(McuBoard):
    name = "picow"
    wdt_max_ms = 8388
    led_default = "LED"

    def _wifi_pre(self, w: "Json") -> None:
        country = w.get("country")   # regulatory domain, before the radio is up
        if country:
            import rp2

            rp2.country(country)
        McuBoard._wifi_pre(self, w)

    def _wifi_post(self, w: "Json") -> None:
        try:
            self.wlan.config(pm=0xA11140)
        except Exception as e:
            self.log("wifi: power management left on:", e)
