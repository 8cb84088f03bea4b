# hemsfw: the home controller firmware core (MicroPython subset; also imported by CPython).

VERSION = "0.2.0"   # the firmware's version (Home Assistant diagnostics, update bundles)


def unload(*names: str) -> None:
    """Drop once-used modules after use on MicroPython (their code leaves the heap)."""
    import sys

    if sys.implementation.name != "micropython":
        return
    g = globals()
    for n in names:
        sys.modules.pop("hemsfw." + n, None)
        if n in g:
            del g[n]
