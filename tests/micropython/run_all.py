# A tiny test runner in the MicroPython subset (no pytest on the device or the unix port).
#
#   micropython tests/micropython/run_all.py [substring]
#   python      tests/micropython/run_all.py [substring]
#
# Imports every tests/micropython/test_*.py, runs each function named test_* (sorted, optionally
# only those whose "module.function" contains `substring`), prints one line per failure with its
# traceback and then "N passed, M failed"; exits 1 on any failure.  tests/test_micropython_core.py
# runs it under both interpreters, so the firmware core is tested on the very VM it ships on.

import os
import sys

_HERE = __file__.rsplit("/", 1)[0] if "/" in __file__ else "."
# the tests' own folder (fakes.py) and the firmware package, wherever we are started from
sys.path.insert(0, _HERE + "/../../firmware/micropython")
sys.path.insert(0, _HERE)
if sys.implementation.name == "micropython" and ".frozen" not in sys.path:
    sys.path.append(".frozen")   # asyncio is frozen into the unix port


def _print_exc(e):
    if hasattr(sys, "print_exception"):   # MicroPython
        sys.print_exception(e)
    else:
        import traceback

        traceback.print_exception(type(e), e, e.__traceback__)


def main(argv):
    want = argv[1] if len(argv) > 1 else ""
    passed = failed = 0
    names = sorted(n[:-3] for n in os.listdir(_HERE) if n.startswith("test_") and n.endswith(".py"))
    for modname in names:
        try:
            mod = __import__(modname)
        except Exception as e:
            print("FAIL import", modname)
            _print_exc(e)
            failed += 1
            continue
        for fname in sorted(n for n in dir(mod) if n.startswith("test_")):
            full = modname + "." + fname
            fn = getattr(mod, fname)
            if want not in full or not callable(fn):
                continue
            try:
                fn()
            except Exception as e:
                print("FAIL", full)
                _print_exc(e)
                failed += 1
            else:
                passed += 1
    impl = sys.implementation.name
    print(f"{passed} passed, {failed} failed ({impl})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
