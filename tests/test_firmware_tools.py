"""Host tools for the firmware (firmware/host.py, `hems firmware ...`): the mpy-cross bundle runs
a real round under the MicroPython unix port; provisioning registers a home that then really
connects; flash --dry-run prints the exact mpremote commands."""

from __future__ import annotations

import io
import json
import os
import subprocess
import time
from pathlib import Path

import pytest
from test_firmware_mqtt import (
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

from backend.common.broker import acl_text, free_port, render_conf, wait_port
from firmware import host, romfs
from hemsfw import config, plan, protocol

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


def _round_with(lab: Lab, cmd: list[str], env: dict[str, str]) -> str:
    """One real round and day of the firmware started by `cmd` (with `cfg` as its last
    argument, written here); returns its log after checking the relay followed the adjustment."""
    state = lab.tmp / "state"
    cfg = write_config(lab, state)
    coord = Peer(lab, "coordinator", [protocol.t_plan(HOME), protocol.t_status(HOME)])
    mb1 = Peer(lab, "mb1", [protocol.t_mask("mb1", HOME)])
    clock = Peer(lab, "lab", [])
    log = lab.tmp / "home.log"
    with open(log, "wb") as f:
        proc = subprocess.Popen([*cmd, str(cfg)], env=env, stdout=f, stderr=subprocess.STDOUT,
                                cwd=host.HERE.parent)
    try:
        assert coord.get(protocol.t_status(HOME)) == b"online"
        announce(coord)
        values = check_unmasks(lab, coord.get(protocol.t_plan(HOME)),
                               mb1.get(protocol.t_mask("mb1", HOME)))
        adj = protocol.make_adjustment("2026-11-28", 1, "g1", MOVES, [], START + 86400)
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


def test_bundle_runs_a_round_on_the_unix_port(lab: Lab, tmp_path: Path) -> None:
    bundle = tmp_path / "bundle"
    host.build(bundle)
    env = dict(os.environ, MICROPYPATH=f"{bundle}:{bundle / 'lib'}")
    text = _round_with(lab, [str(MICROPYTHON), str(bundle / "run_home.py")], env)
    assert "connected" in text
    assert not [x for x in text.splitlines() if x.endswith(".py")]


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
    env = dict(os.environ, MICROPYPATH="")
    text = _round_with(lab, [str(MICROPYTHON.parent / "python"), "-m", "firmware.romfs", "run",
                             "--heapsize", "52K", str(img)], env)
    assert "connected" in text
    # the control: the same code from files does not fit in that heap
    lab.tmp = lab.tmp / "files"
    lab.tmp.mkdir()
    cfg = write_config(lab, lab.tmp / "state")
    p = subprocess.run([str(MICROPYTHON), "-X", "heapsize=52K", str(bundle / "run_home.py"),
                        str(cfg)], env=dict(os.environ, MICROPYPATH=f"{bundle}:{bundle / 'lib'}"),
                       capture_output=True, text=True, timeout=60)
    assert p.returncode != 0 and "MemoryError" in p.stdout + p.stderr


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
        mpylib = MICROPYTHON.parent.parent / "lib" / "micropython"
        env = dict(os.environ, MICROPYPATH=f"{host.SRC}:{mpylib}")
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
    cfg = tmp_path / "config.json"
    cfg.write_text("{}")
    out = io.StringIO()
    assert host.flash("/dev/ttyUSB0", bundle, cfg, dry_run=True, out=out) == 0
    lines = out.getvalue().splitlines()
    assert lines[0] == "mpremote connect /dev/ttyUSB0 mip install umqtt.simple"
    assert lines[1:] == [
        "mpremote connect /dev/ttyUSB0 rm -r :hemsfw",     # the old one (may be absent)
        f"mpremote connect /dev/ttyUSB0 cp -r {bundle / 'hemsfw'} :",
        f"mpremote connect /dev/ttyUSB0 cp {bundle / 'main.py'} :main.py",
        f"mpremote connect /dev/ttyUSB0 cp {cfg} :config.json",
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


