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


def drop_init(*objs: object) -> None:
    """Drop the constructors of the classes of objects built once at boot, on MicroPython: their
    bytecode leaves the heap (~2.5 KB for the runner's objects on a 32-bit port); such a class
    must build no other instance after this (it would lack its attributes).  None (an object
    not configured) is skipped."""
    import sys

    if sys.implementation.name != "micropython":
        return
    for o in objs:
        if o is not None:
            c = type(o)
            # MicroPython's delete leaves the value in the class dict's freed slot, where the
            # collector still finds it: overwrite it first
            c.__init__ = None  # type: ignore[method-assign, assignment]  # (then deleted)
            del c.__init__
