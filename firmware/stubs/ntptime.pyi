# micropython-lib's `ntptime` (frozen into the ESP32 and Pico W images).
host: str
timeout: int

def settime() -> None: ...
