"""Installing the firmware as a resident or a hobbyist does (issue 16), host side: `hems firmware
provision` picks a relay pin that is not an ESP32 strapping pin and warns about risky ones,
copies the broker's CA; `hems firmware flash` refuses, before touching the board (exit 2, one
line), a config the board could not use, and copies the CA the config names."""

from __future__ import annotations

import io
import json
import subprocess
from pathlib import Path

import pytest
from firmware_kit import board_config, write_board_config
from pty_board import PtyBoard, run_bounded

from firmware import host

REPO = Path(__file__).resolve().parents[1]
PYTHON = REPO / ".venv" / "bin" / "python"
MICROPYTHON = REPO / ".venv" / "bin" / "micropython"
DER = bytes.fromhex("3082010a") + b"\x00" * 16      # starts like a DER certificate


def hems_firmware(*args: str) -> tuple[int, str, str]:
    p = subprocess.run([str(PYTHON), "-m", "firmware.host", *args], capture_output=True,
                       text=True, timeout=120, cwd=REPO)
    return p.returncode, p.stdout, p.stderr


def provision_args(tmp: Path, *extra: str) -> list[str]:
    return ["provision", "h1", "--out", str(tmp / "h1"), "--mask-broker",
            f"mb1={tmp / 'reg-mb1.json'}", "--passwd", str(tmp / "passwd"), *extra]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    b = tmp_path_factory.mktemp("bundle") / "b"
    host.build(b)
    return b


def refused(bundle: Path, cfg: Path) -> str:
    rc, out, err = hems_firmware("flash", "--port", "/dev/ttyUSB0", "--bundle", str(bundle),
                                 "--config", str(cfg), "--dry-run")
    assert rc == 2 and out == "" and len(err.splitlines()) == 1, (rc, out, err)
    return err


# ------------------------------------------------------------------ provision


def test_provision_default_relay_pin_is_not_a_strapping_pin(tmp_path: Path) -> None:
    rc, _out, err = hems_firmware(*provision_args(tmp_path))
    assert rc == 0 and err == "", err
    pin = json.loads((tmp_path / "h1" / "config.json").read_text())["relay"]["pin"]
    assert pin not in (0, 2, 5, 12, 15) and not 34 <= pin <= 39 and not 6 <= pin <= 11


def test_provision_warns_about_a_strapping_relay_pin(tmp_path: Path) -> None:
    rc, _out, err = hems_firmware(*provision_args(tmp_path, "--relay-pin", "5"))
    assert rc == 0
    assert err.startswith("warning: relay.pin: GPIO5 is an ESP32 strapping pin"), err


def test_provision_refuses_an_input_only_relay_pin(tmp_path: Path) -> None:
    rc, _out, err = hems_firmware(*provision_args(tmp_path, "--relay-pin", "34"))
    assert rc == 2 and err.strip() == ("hems firmware provision: relay.pin: GPIO34 is "
                                       "input-only on the ESP32")
    assert not (tmp_path / "h1").exists()


def test_provision_refuses_a_bad_mqtt_port(tmp_path: Path) -> None:
    rc, _out, err = hems_firmware(*provision_args(tmp_path, "--mqtt-port", "-5"))
    assert rc == 2 and len(err.splitlines()) == 1 and "--mqtt-port" in err, err
    assert not (tmp_path / "passwd").exists()      # nothing registered


def test_provision_copies_the_ca_beside_the_config(tmp_path: Path) -> None:
    ca = tmp_path / "broker-ca.der"
    ca.write_bytes(DER)
    rc, _out, err = hems_firmware(*provision_args(tmp_path, "--cafile-der", str(ca)))
    assert rc == 0, err
    assert (tmp_path / "h1" / "ca.der").read_bytes() == DER
    cfg = json.loads((tmp_path / "h1" / "config.json").read_text())
    assert cfg["mqtt"]["cafile_der"] == "/ca.der"


def test_provision_refuses_a_pem_ca(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    rc, _out, err = hems_firmware(*provision_args(tmp_path, "--cafile-der", str(ca)))
    assert rc == 2 and "not a DER certificate" in err and "openssl x509" in err, err


# ------------------------------------------------------------------ flash refusals


def test_flash_refuses_the_provisioned_wifi_placeholder(tmp_path: Path, bundle: Path) -> None:
    rc, _out, err = hems_firmware(*provision_args(tmp_path))
    assert rc == 0, err
    err = refused(bundle, tmp_path / "h1" / "config.json")
    assert "wifi.ssid is still 'CHANGE-ME'" in err, err


def test_flash_refuses_an_all_zero_plan(tmp_path: Path, bundle: Path) -> None:
    err = refused(bundle, write_board_config(tmp_path / "c.json", plan_wh=[0] * 24))
    assert "plan_wh is all zero" in err, err


def test_flash_refuses_a_bad_port(tmp_path: Path, bundle: Path) -> None:
    mqtt = dict(board_config()["mqtt"], port=-5)
    err = refused(bundle, write_board_config(tmp_path / "c.json", mqtt=mqtt))
    assert "mqtt.port must be in 1..65535" in err, err


def test_flash_refuses_an_unknown_key(tmp_path: Path, bundle: Path) -> None:
    err = refused(bundle, write_board_config(tmp_path / "c.json", safe_stat=True))
    assert "unknown key safe_stat" in err, err


def test_flash_refuses_a_ca_it_names_but_does_not_have(tmp_path: Path, bundle: Path) -> None:
    mqtt = dict(board_config()["mqtt"], cafile_der="/ca.der")
    err = refused(bundle, write_board_config(tmp_path / "c.json", mqtt=mqtt))
    assert "mqtt.cafile_der names /ca.der" in err and str(tmp_path / "ca.der") in err, err


def test_flash_warns_about_a_strapping_relay_pin(tmp_path: Path, bundle: Path) -> None:
    cfg = write_board_config(tmp_path / "c.json", relay={"pin": 12, "active_low": False})
    rc, _out, err = hems_firmware("flash", "--port", "/dev/ttyUSB0", "--bundle", str(bundle),
                                 "--config", str(cfg), "--dry-run")
    assert rc == 0 and "warning: relay.pin: GPIO12 is an ESP32 strapping pin" in err, err


def test_flash_dry_run_copies_the_ca_the_config_names(tmp_path: Path, bundle: Path) -> None:
    mqtt = dict(board_config()["mqtt"], cafile_der="/ca.der")
    cfg = write_board_config(tmp_path / "c.json", mqtt=mqtt)
    (tmp_path / "ca.der").write_bytes(DER)
    out = io.StringIO()
    assert host.flash("/dev/ttyUSB0", bundle, cfg, dry_run=True, out=out) == 0
    lines = out.getvalue().splitlines()
    assert f"mpremote connect /dev/ttyUSB0 cp {tmp_path / 'ca.der'} :ca.der" in lines
    # before the config: a board never holds a config naming a CA it does not have yet
    assert lines.index(f"mpremote connect /dev/ttyUSB0 cp {tmp_path / 'ca.der'} :ca.der") < \
        lines.index(f"mpremote connect /dev/ttyUSB0 cp {cfg} :config.json")


def test_flash_puts_the_ca_on_a_serial_board(tmp_path: Path, bundle: Path) -> None:
    """For real, on the unix port's REPL over a pty (tests/pty_board.py): the CA lands at the
    path the config names, byte for byte."""
    mqtt = dict(board_config()["mqtt"], cafile_der="/ca.der")
    cfg = write_board_config(tmp_path / "c.json", mqtt=mqtt)
    (tmp_path / "ca.der").write_bytes(DER)
    board = tmp_path / "board"
    board.mkdir()
    with PtyBoard(MICROPYTHON, board) as b:
        rc, out, err, _ = run_bounded(
            [str(PYTHON), "-m", "firmware.host", "flash", "--port", b.port, "--bundle",
             str(bundle), "--config", str(cfg), "--no-mip", "--resume", "--no-reset"], 120,
            cwd=REPO)
        assert rc == 0, (out, err, b.output()[-2000:])
    assert (board / "ca.der").read_bytes() == DER
    assert json.loads((board / "config.json").read_text())["mqtt"]["cafile_der"] == "/ca.der"
