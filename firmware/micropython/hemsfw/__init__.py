# hemsfw: the home controller firmware core (MicroPython subset; also imported by CPython).

VERSION = "0.2.0"   # the firmware's version (Home Assistant diagnostics, update bundles)
