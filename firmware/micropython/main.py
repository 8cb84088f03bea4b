# Device entry point (ESP32 / Pico W): MicroPython runs /main.py at boot.
#
# Order matters for relay safety (DESIGN.md decision 9): the relay pin is put in its safe state
# first, before Wi-Fi, NTP or MQTT, so a boot loop or a dead network never leaves the special
# circuit in an arbitrary state.  Then: Wi-Fi, NTP (the SystemClock stays "unknown" until the RTC
# holds a plausible date), the watchdog, and the same runner the lab runs.
#
# Minimal on purpose: hardening (Wi-Fi supervision, NTP re-sync, WDT tuning, secure boot, flash
# encryption) is a separate issue; see boards/README.md.  Files on the device: /config.json,
# /hemsfw/*.py (or .mpy), /lib/umqtt/simple.py, /main.py.

import sys
import time

import machine

from hemsfw import clock, config, net_umqtt, relay, runner, store

CONFIG = "/config.json"
WIFI_WAIT_S = 30
WDT_MS = 30000          # > the longest bounded wait in a loop turn (MQTT timeout_s, NTP 1 s)
NTP_EVERY_MS = 3600000  # re-sync the RTC hourly (ESP32/RP2040 RTCs drift seconds per day)


def log(*args):
    print("[hems]", *args)


def wifi_up(ssid, password):
    import network

    wlan = network.WLAN(network.STA_IF)
    wlan.active(True)
    if not wlan.isconnected():
        wlan.connect(ssid, password)
        t0 = time.ticks_ms()
        while not wlan.isconnected() and time.ticks_diff(time.ticks_ms(), t0) < WIFI_WAIT_S * 1000:
            time.sleep_ms(200)
    log("wifi", "up" if wlan.isconnected() else "not up yet (the runner keeps retrying MQTT)")
    return wlan


class NtpWatchdog:
    """Fed once per healthy loop turn: feeds the hardware WDT and re-syncs NTP now and then."""

    def __init__(self):
        self.wdt = machine.WDT(timeout=WDT_MS)
        self.last = time.ticks_ms()   # main() has just synced

    def feed(self):
        self.wdt.feed()
        now = time.ticks_ms()
        if time.ticks_diff(now, self.last) >= NTP_EVERY_MS:
            self.last = now
            sync_time()


def sync_time():
    try:
        import ntptime

        ntptime.settime()   # sets the RTC to UTC; blocks at most ~1 s
        log("ntp ok")
    except Exception as e:  # no network yet: the clock stays unknown, the relay safe
        log("ntp failed:", e)


def main():
    try:
        cfg = config.load(CONFIG)
    except config.ConfigError as e:
        log(e)
        # Without a config there is no relay pin to make safe: stop here (no reboot loop).
        sys.exit(2)
    rel = relay.PinRelay(cfg["relay"]["pin"], cfg["relay"]["active_low"], cfg["safe_state"])
    wifi_up(cfg["wifi"]["ssid"], cfg["wifi"]["password"])
    sync_time()
    st = store.Store(cfg["state_dir"])
    client = net_umqtt.make_client(cfg["mqtt"], cfg["home_id"])
    # "lab" lets a real board join an accelerated lab day (1 s resolution: boards' time.time()
    # is an int), "system" is the RTC set by NTP.
    clk = clock.LabClock() if cfg["clock"] == "lab" else clock.SystemClock()
    r = runner.Runner(cfg, client, clk, rel, st, log, watchdog=NtpWatchdog())
    r.run()


main()
