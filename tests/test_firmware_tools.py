"""Host tools for the firmware (firmware/host.py, `hems firmware ...`): the mpy-cross bundle runs
a real round under the MicroPython unix port; provisioning registers a home that then really
connects; flash --dry-run prints the exact mpremote commands; flash really flashes a "board" (the
unix port's REPL on a pseudo-terminal, tests/pty_board.py), whose firmware then runs a round, and
fails in bounded time when nothing answers."""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import shlex
import shutil
import subprocess
import time
import tty
from pathlib import Path

import pytest
from firmware_kit import write_board_config
from firmware_peers import (
    DAY_REAL_S,
    HOME,
    MICROPYTHON,
    MOVES,
    START,
    Lab,
    Peer,
    announce,
    check_relay_log,
    check_unmasks,
    lab,
    publish_clock,
    read_state,
    stop,
    wait_until,
    write_config,
)
from pty_board import PtyBoard, run_bounded

from backend.common.broker import acl_text, free_port, render_conf, wait_port
from firmware import host, romfs
from hemsfw import config, plan, protocol, protocol_svc

pytestmark = pytest.mark.integration
__all__ = ["lab"]


def test_build_bundle_contents(tmp_path: Path) -> None:
    m = host.build(tmp_path / "b")
    files = set(m["files"])
    assert "hemsfw/runner.mpy" in files and "hemsfw/boards/esp32.mpy" in files
    assert "hemsfw/boards/picow.mpy" in files and "main.py" in files
    for host_only in ("hemsfw/net_paho.mpy", "hemsfw/boards/rpi.mpy", "hemsfw/_cpython.mpy",
                      "hemsfw/protocol_svc.mpy"):
        assert host_only not in files
    assert not list((tmp_path / "b").rglob("hemsfw/**/*.py"))
    assert json.loads((tmp_path / "b" / "manifest.json").read_text())["files"] == m["files"]
    assert (tmp_path / "b" / "hemsfw" / "protocol.mpy").read_bytes()[:1] == b"M"
    # the CLI says where the ROMFS image is, and it is there
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert host.main(["build", "--out", str(tmp_path / "c")]) == 0
    said = json.loads(out.getvalue())
    img = Path(said["romfs"])
    assert img.read_bytes()[:3] == romfs.HEADER and img.stat().st_size == said["romfs_bytes"]


PYTHON = MICROPYTHON.parent / "python"
MPREMOTE = MICROPYTHON.parent / "mpremote"


def run_round(lab: Lab, script: Path, cfg: Path, micropypath: str,
              cwd: Path | None = None, cmd: list[str] | None = None) -> str:
    """A real round (coordinator, mb1 and the lab clock played here) by the unix port running
    `script` (a run_home.py) with MICROPYPATH=micropypath: plan, mask, adjustment, relay day.
    cmd: start the firmware with `cmd + [cfg]` instead.  Returns the firmware's log."""
    state = Path(json.loads(cfg.read_text())["state_dir"])
    coord = Peer(lab, "coordinator", [protocol.t_plan(HOME), protocol.t_status(HOME)])
    mb1 = Peer(lab, "mb1", [protocol.t_mask("mb1", HOME)])
    clock = Peer(lab, "lab", [])
    log = lab.tmp / "home.log"
    env = dict(os.environ, MICROPYPATH=micropypath)
    with open(log, "wb") as f:
        proc = subprocess.Popen([*(cmd or [str(MICROPYTHON), str(script)]), str(cfg)], env=env,
                                cwd=cwd, stdout=f, stderr=subprocess.STDOUT)
    try:
        assert coord.get(protocol.t_status(HOME)) == b"online"
        announce(coord)
        values = check_unmasks(lab, coord.get(protocol.t_plan(HOME)),
                               mb1.get(protocol.t_mask("mb1", HOME)))
        adj = protocol_svc.make_adjustment("2026-11-28", 1, "g1", MOVES, [], START + 86400)
        coord.publish(protocol.t_adjust(HOME), protocol.encode(adj))
        adjusted = plan.apply_adjustment(values, [tuple(m) for m in MOVES], [])
        wait_until(lambda: (read_state(state) or {}).get("adjusted") == adjusted, 10, "no adj")
        publish_clock(clock)
        assert proc.wait(DAY_REAL_S + 15) == 0, log.read_text()
    finally:
        stop(proc)
        for p in (coord, mb1, clock):
            p.close()
    check_relay_log(state, adjusted)
    return log.read_text()


def test_romfs_image_runs_a_round_with_its_code_outside_the_heap(lab: Lab,
                                                                  tmp_path: Path) -> None:
    """The bundle's ROMFS image, mapped read-only outside the MicroPython heap as a board's flash
    (firmware/romfs.py), runs a whole round in a 52 KB heap, where the same code imported from
    files (copied into the heap) cannot even start its round: the bytecode really runs in place.
    Nothing else is on the module path (MICROPYPATH empty)."""
    bundle = tmp_path / "bundle"
    m = host.build(bundle)
    img = bundle / host.ROMFS_IMAGE
    assert img.read_bytes()[:3] == romfs.HEADER and m["romfs"]["bytes"] == img.stat().st_size
    cfg = write_config(lab, lab.tmp / "state")
    text = run_round(lab, img, cfg, "", cwd=host.HERE.parent,
                     cmd=[str(PYTHON), "-m", "firmware.romfs", "run", "--heapsize", "52K",
                          str(img)])
    assert "connected" in text
    # the control: the same code from files does not fit in that heap
    lab.tmp = lab.tmp / "files"
    lab.tmp.mkdir()
    cfg = write_config(lab, lab.tmp / "state")
    p = subprocess.run([str(MICROPYTHON), "-X", "heapsize=52K", str(bundle / "run_home.py"),
                        str(cfg)], env=dict(os.environ, MICROPYPATH=str(bundle)),
                       capture_output=True, text=True, timeout=60)
    assert p.returncode != 0 and "MemoryError" in p.stdout + p.stderr


def test_bundle_runs_a_round_on_the_unix_port(lab: Lab, tmp_path: Path) -> None:
    bundle = tmp_path / "bundle"
    host.build(bundle)
    cfg = write_config(lab, lab.tmp / "state")
    run_round(lab, bundle / "run_home.py", cfg, str(bundle))


def test_provision_registers_a_home_that_connects(tmp_path: Path) -> None:
    etc = tmp_path / "etc"
    regs = {"mb1": etc / "registry-mb1.json", "mb2": etc / "registry-mb2.json"}
    passwd, acl = etc / "hems.passwd", etc / "hems.acl"
    port = free_port()
    cfg = host.provision("h7", tmp_path / "h7", regs, passwd, acl, "127.0.0.1", port,
                         board="unix", extra={"clock": "lab",
                                              "state_dir": str(tmp_path / "state")})
    assert oct((tmp_path / "h7" / "config.json").stat().st_mode & 0o777) == "0o600"
    on_disk = json.loads((tmp_path / "h7" / "config.json").read_text())
    assert on_disk == cfg and config.check(on_disk)["mqtt"]["user"] == "h7"
    for b, reg in regs.items():
        obj = json.loads(reg.read_text())
        assert obj == {"homes": {"h7": {"key": cfg["keys"][b]}}}
        assert len(cfg["keys"][b]) == 64
    assert cfg["keys"]["mb1"] != cfg["keys"]["mb2"]
    assert passwd.read_text().startswith("h7:$")          # hashed, not the password
    assert acl.read_text() == acl_text(["mb1", "mb2"])
    # a second home joins the same files; the first stays
    host.provision("h8", tmp_path / "h8", regs, passwd, acl, board="unix")
    assert set(json.loads(regs["mb1"].read_text())["homes"]) == {"h7", "h8"}
    assert [x.split(":")[0] for x in passwd.read_text().splitlines()] == ["h7", "h8"]
    # refusals: reserved names, bad ids, duplicates without --force
    for bad in ("coordinator", "grid", "lab", "mb3", "mb1", "H7", "a" * 33, "h 7"):
        with pytest.raises(host.ToolError):
            host.provision(bad, tmp_path / "x", regs, passwd, board="unix")
    with pytest.raises(host.ToolError, match="exists"):
        host.provision("h7", tmp_path / "h7", regs, passwd, board="unix")
    with pytest.raises(host.ToolError, match="already"):
        host.provision("h7", tmp_path / "h7b", regs, passwd, board="unix")
    old_key = cfg["keys"]["mb1"]
    cfg = host.provision("h7", tmp_path / "h7", regs, passwd, acl, "127.0.0.1", port,
                         board="unix", force=True,
                         extra={"clock": "lab", "state_dir": str(tmp_path / "state")})
    assert json.loads(regs["mb1"].read_text())["homes"]["h7"]["key"] == cfg["keys"]["mb1"]
    assert cfg["keys"]["mb1"] != old_key

    # the broker accepts the provisioned identity (real mosquitto with these very files)
    data = tmp_path / "broker"
    data.mkdir()
    (data / "m.conf").write_text(render_conf(port, data, passwd, acl))
    with open(data / "log", "wb") as f:
        broker = subprocess.Popen(["mosquitto", "-c", str(data / "m.conf")], stdout=f,
                                  stderr=f)
    log = tmp_path / "home.log"
    try:
        wait_port(port)
        env = dict(os.environ, MICROPYPATH=str(host.SRC))
        with open(log, "wb") as f:
            proc = subprocess.Popen([str(MICROPYTHON), str(host.SRC / "run_home.py"),
                                     str(tmp_path / "h7" / "config.json")], env=env,
                                    stdout=f, stderr=subprocess.STDOUT)
        try:
            wait_until(lambda: "mqtt connected" in log.read_text(), 10, log.read_text())
            time.sleep(0.3)
            assert "link down" not in log.read_text()
        finally:
            stop(proc)
    finally:
        broker.terminate()
        broker.wait(10)


def test_flash_dry_run_prints_the_exact_commands(tmp_path: Path) -> None:
    bundle = tmp_path / "b"
    host.build(bundle)
    cfg = write_board_config(tmp_path / "config.json")
    out = io.StringIO()
    assert host.flash("/dev/ttyUSB0", bundle, cfg, dry_run=True, out=out) == 0
    lines = out.getvalue().splitlines()
    # safe mode first: the flag file, and a reset that stops the running app's watchdog
    assert lines[:2] == [
        "mpremote connect /dev/ttyUSB0 exec 'open(\"safemode\", \"w\").close()'",
        "mpremote connect /dev/ttyUSB0 reset"]
    assert lines[2:] == [
        "mpremote connect /dev/ttyUSB0 rm -r :hemsfw",     # the old one (may be absent)
        "mpremote connect /dev/ttyUSB0 rm -r :lib/umqtt",  # an older flash's (may be absent)
        f"mpremote connect /dev/ttyUSB0 cp -r {bundle / 'hemsfw'} :hemsfw",
        f"mpremote connect /dev/ttyUSB0 cp {bundle / 'main.py'} :main.py",
        f"mpremote connect /dev/ttyUSB0 cp {cfg} :config.json",
        "mpremote connect /dev/ttyUSB0 rm :safemode",
        "mpremote connect /dev/ttyUSB0 reset",
    ]
    with pytest.raises(host.ToolError):
        host.flash("/dev/ttyUSB0", tmp_path / "nothing", cfg, dry_run=True)
    # the CLI entry point: usage errors are exit 2 without a traceback
    assert host.main(["flash", "--port", "x", "--bundle", str(tmp_path / "no"), "--config",
                      str(cfg), "--dry-run"]) == 2
    p = subprocess.run([str(MICROPYTHON.parent / "python"), "-m", "firmware.host", "flash",
                        "--port", "/dev/ttyACM0", "--bundle", str(bundle), "--config", str(cfg),
                        "--dry-run", "--no-mip"], capture_output=True, text=True, timeout=60,
                       cwd=host.HERE.parent)
    assert p.returncode == 0 and "mip install" not in p.stdout
    assert p.stdout.splitlines()[-1] == "mpremote connect /dev/ttyACM0 reset"
    # --resume: `resume` right after `connect PORT` (no soft reset); --no-reset: no final reset
    out = io.StringIO()
    assert host.flash("/dev/ttyUSB0", bundle, cfg, dry_run=True, resume=True, reset=False,
                      out=out) == 0
    assert out.getvalue().splitlines() == [
        "mpremote connect /dev/ttyUSB0 resume exec 'open(\"safemode\", \"w\").close()'",
        "mpremote connect /dev/ttyUSB0 resume rm -r :hemsfw",
        "mpremote connect /dev/ttyUSB0 resume rm -r :lib/umqtt",
        f"mpremote connect /dev/ttyUSB0 resume cp -r {bundle / 'hemsfw'} :hemsfw",
        f"mpremote connect /dev/ttyUSB0 resume cp {bundle / 'main.py'} :main.py",
        f"mpremote connect /dev/ttyUSB0 resume cp {cfg} :config.json",
        "mpremote connect /dev/ttyUSB0 resume rm :safemode",
    ]
    rc, stdout, _, _ = flash_cli("--port", "/dev/ttyACM0", "--bundle", str(bundle), "--config",
                                 str(cfg), "--dry-run", "--resume")
    assert rc == 0 and stdout.splitlines()[2] == ("mpremote connect /dev/ttyACM0 resume rm -r "
                                                  ":hemsfw")
    assert stdout.splitlines()[-1] == "mpremote connect /dev/ttyACM0 resume reset"
    rc, stdout, _, _ = flash_cli("--port", "/dev/ttyACM0", "--bundle", str(bundle), "--config",
                                 str(cfg), "--dry-run", "--no-reset")
    assert rc == 0 and stdout.splitlines()[-1].endswith(" rm :safemode")
    assert " resume " not in stdout
    assert host.main(["flash", "--port", "x", "--bundle", str(bundle), "--config", str(cfg),
                      "--dry-run", "--step-timeout", "0"]) == 2
    # --romfs: the image to the ROMFS partition, and no copy of hemsfw left on the filesystem
    # to shadow /rom (nor an older flash's umqtt)
    rc, stdout, _, _ = flash_cli("--port", "/dev/ttyACM0", "--bundle", str(bundle), "--config",
                                 str(cfg), "--dry-run", "--romfs")
    assert rc == 0 and stdout.splitlines() == [
        "mpremote connect /dev/ttyACM0 exec 'open(\"safemode\", \"w\").close()'",
        "mpremote connect /dev/ttyACM0 reset",
        f"mpremote connect /dev/ttyACM0 romfs deploy {bundle / 'romfs.img'}",
        "mpremote connect /dev/ttyACM0 rm -r :hemsfw",
        "mpremote connect /dev/ttyACM0 rm -r :lib/umqtt",
        f"mpremote connect /dev/ttyACM0 cp {bundle / 'main.py'} :main.py",
        f"mpremote connect /dev/ttyACM0 cp {cfg} :config.json",
        "mpremote connect /dev/ttyACM0 rm :safemode",
        "mpremote connect /dev/ttyACM0 reset",
    ]
    (bundle / "romfs.img").unlink()
    with pytest.raises(host.ToolError, match=r"romfs\.img"):
        host.flash("/dev/ttyUSB0", bundle, cfg, dry_run=True, romfs=True)


def flash_cli(*args: str, timeout: float = 120.0) -> tuple[int, str, str, float]:
    """`python -m firmware.host flash ARGS` (what `hems firmware flash` runs), in its own session
    and killed with its mpremote if it outlives `timeout`: (exit status, stdout, stderr, s)."""
    return run_bounded([str(PYTHON), "-m", "firmware.host", "flash", *args], timeout,
                       cwd=host.HERE.parent)


def tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_flash_to_a_serial_board_then_run_a_round(lab: Lab, tmp_path: Path) -> None:
    """`hems firmware flash` for real, to the unix port's REPL on a serial line (a pty): mpremote
    copies into the REPL's cwd, the board's filesystem.  The files there are checked, not what the
    tool prints: the bundle's code byte for byte, the config, a stale older firmware gone, /lib
    left alone; then twice (the second flash replaces the first), and the flashed files run a
    round.  --resume (a soft reset would end the unix REPL) and --no-reset (the unix port has no
    machine.reset(); mpremote's `reset` does not wait for the result, so it would pass anyway);
    --no-mip (no effect any more: older scripts pass it).  The umqtt.simple an older flash
    installed with mip is removed; the rest of /lib is left alone."""
    bundle = tmp_path / "bundle"
    host.build(bundle)
    assert not (bundle / "lib").exists()    # no umqtt.simple: the firmware's own client
    lib = {"lib/other.mpy": b"M\x06\x00\x1f"}     # someone else's library
    umqtt = {"lib/umqtt/simple.mpy": b"M\x06\x00\x1f", "lib/umqtt/__init__.mpy": b""}
    code = {f"hemsfw/{k}": v for k, v in tree(bundle / "hemsfw").items()}
    assert code and all(k.endswith(".mpy") for k in code)
    code["main.py"] = (bundle / "main.py").read_bytes()

    board = tmp_path / "board"
    # An older firmware: a source module that would shadow home.mpy (a .py wins over an .mpy), a
    # module since retired, old main.py and config.json; /lib from an earlier mip install.
    old = {"hemsfw/home.py": b"raise ImportError('stale hemsfw/home.py')\n",
           "hemsfw/boards/retired.mpy": b"M\x06\x00\x1f", "main.py": b"print('old')\n",
           "config.json": b"{}\n", **umqtt, **lib}
    for rel, data in old.items():
        (board / rel).parent.mkdir(parents=True, exist_ok=True)
        (board / rel).write_bytes(data)

    cfg = write_config(lab, lab.tmp / "state")
    first = tmp_path / "first.json"             # flashed first, then replaced by cfg
    first.write_text(json.dumps(dict(json.loads(cfg.read_text()), loop_ms=20)))
    exe = str(MPREMOTE)
    with PtyBoard(MICROPYTHON, board) as b:
        for i, conf in enumerate((first, cfg)):
            args = ["--port", b.port, "--bundle", str(bundle), "--config", str(conf),
                    "--no-mip", "--resume", "--no-reset"]
            rc, out, err, secs = flash_cli(*args)
            print(f"flash {i + 1}: {secs:.1f} s")
            assert rc == 0, (out, err, b.output()[-2000:])
            ran = [x for x in out.splitlines() if x.startswith(exe + " ")]
            assert ran == [shlex.join(c) for c in host.flash_commands(
                b.port, bundle, conf, exe, resume=True, reset=False)]
            # --dry-run prints these very commands (with the bare name)
            rc, dry, _, _ = flash_cli(*args, "--dry-run")
            assert rc == 0 and dry.splitlines() == [x.replace(exe, "mpremote", 1) for x in ran]
            assert tree(board) == {**code, "config.json": conf.read_bytes(), **lib}
        # the board was not reset and sees the same files
        rc, out, err, _ = run_bounded(
            [exe, "connect", b.port, "resume", "exec",
             "import os; print(sorted(os.listdir('hemsfw')))"], 60)
        assert rc == 0, (out, err)
        assert out.strip() == repr(sorted(p.name for p in (bundle / "hemsfw").iterdir()))
        assert b.proc is not None and b.proc.poll() is None

    # The flashed firmware runs a round: the bundle's run_home.py (the unix port's entry point;
    # nothing beside it) imports hemsfw from the board only, with the flashed config.
    runner = tmp_path / "runner"
    runner.mkdir()
    shutil.copy(bundle / "run_home.py", runner / "run_home.py")
    run_round(lab, runner / "run_home.py", board / "config.json", f"{board}:{board / 'lib'}",
              cwd=board)


def test_flash_fails_in_bounded_time_when_no_board_answers(tmp_path: Path) -> None:
    bundle = tmp_path / "b"
    host.build(bundle)
    cfg = write_board_config(tmp_path / "config.json")
    common = ["--bundle", str(bundle), "--config", str(cfg), "--no-mip"]
    # No such port: the first step (safe mode's flag) fails at once and nothing runs after it.
    rc, out, err, _ = flash_cli("--port", str(tmp_path / "ttyNONE"), *common, "--no-reset")
    assert rc == 1, (out, err)
    assert "step failed (exit 1)" in err and " exec " in err.splitlines()[-1], err
    assert ":main.py" not in out and " rm " not in out
    # A line where nothing answers (a pty nobody reads): mpremote 1.29 waits for ever on a
    # /dev/pts/N port (it reads without a timeout there); --step-timeout kills it and fails.
    master, slave = os.openpty()
    try:
        tty.setraw(slave)
        rc, out, err, secs = flash_cli("--port", os.ttyname(slave), *common,
                                       "--step-timeout", "3", timeout=90)
        print(f"silent line: failed in {secs:.1f} s")
        assert rc == 1, (out, err)
        assert "step timed out after 3 s" in err and " exec " in err, err
        assert secs < 60
        assert " cp " not in out and " rm " not in out   # stopped at the first step
        # mpremote really talked to the line (Ctrl-C, Ctrl-A: enter the raw REPL), and nothing
        # holds it any more: with our slave closed too, the master reads EOF (EIO).
        os.close(slave)
        slave = -1
        os.set_blocking(master, False)
        seen = b""
        deadline = time.monotonic() + 10
        while True:
            try:
                data = os.read(master, 4096)
            except BlockingIOError:
                assert time.monotonic() < deadline, "the line is still held open"
                time.sleep(0.05)
                continue
            except OSError as e:
                assert e.errno == errno.EIO
                break
            seen += data
        assert b"\x03" in seen and b"\x01" in seen, seen
    finally:
        os.close(master)
        if slave >= 0:
            os.close(slave)




def test_flash_romfs_to_a_board_without_romfs_fails_and_changes_nothing(tmp_path: Path) -> None:
    """The unix port has no ROMFS partition (no vfs.rom_ioctl), like a stock ESP32 image: the
    deploy step fails, the flash stops there with exit 1, and the board's files are untouched
    but for safe mode's flag (the board stays in safe mode, ready to be flashed again)."""
    bundle = tmp_path / "bundle"
    host.build(bundle)
    cfg = write_board_config(tmp_path / "config.json")
    board = tmp_path / "board"
    (board / "hemsfw").mkdir(parents=True)
    (board / "hemsfw" / "home.mpy").write_bytes(b"M\x06\x00\x1f")
    (board / "main.py").write_text("print('old')\n")
    before = tree(board)
    with PtyBoard(MICROPYTHON, board) as b:
        rc, out, err, _ = flash_cli("--port", b.port, "--bundle", str(bundle), "--config",
                                    str(cfg), "--romfs", "--resume", "--no-reset")
        assert rc == 1, (out, err)
        assert "step failed" in err and "romfs deploy" in err
        assert "ROMFS is not enabled" in out + err
        assert [x for x in out.splitlines() if " connect " in x] == [
            f"{MPREMOTE} connect {b.port} resume exec 'open(\"safemode\", \"w\").close()'",
            f"{MPREMOTE} connect {b.port} resume romfs deploy {bundle / 'romfs.img'}"]
    assert tree(board) == {**before, "safemode": b""}
