# hemsfw: the home controller firmware core (MicroPython subset; also imported by CPython).
