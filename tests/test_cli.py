"""`hems`: every subcommand's --help, exit codes, stdout/stderr, the TOML config and its
environment-variable overrides."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest

from backend import cli
from backend.common import config
from backend.common.broker import free_port

REPO = Path(__file__).resolve().parents[1]
HEMS = str(Path(sys.prefix) / "bin" / "hems")
COMMANDS = ("lab", "report", "broker", "coordinator", "mask-broker", "home", "capacity",
            "firmware", "config")


def run(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([HEMS, *argv], capture_output=True, text=True, timeout=120, cwd=REPO,
                          env=env)


def test_top_level_help_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    for c in COMMANDS:
        assert c in out, c
    assert "Exit status" in out


@pytest.mark.parametrize("cmd", COMMANDS)
def test_every_command_has_help(cmd: str, capsys: pytest.CaptureFixture[str]) -> None:
    if cmd == "firmware":
        pytest.importorskip("firmware.host")
    assert cli.main([cmd, "--help"]) == 0
    out = capsys.readouterr().out
    assert "usage:" in out


@pytest.mark.parametrize("argv", [
    [], ["no-such-command"], ["lab", "--homes", "many"],
    ["capacity"],  # --file or --flat is required
    ["mask-broker"],  # --broker-id and --registry are required
])
def test_usage_errors_exit_2_with_one_line(argv: list[str],
                                           capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "error:" in err[0], err


def test_results_on_stdout_logs_on_stderr(tmp_path: Path) -> None:
    users = tmp_path / "users.json"
    users.write_text(json.dumps({"coordinator": "pw1", "mb1": "pw2", "grid": "pw3"}))
    r = run("broker", "--dir", str(tmp_path / "mq"), "--users", str(users), "--write-only",
            "--port", "18830")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)  # stdout is exactly the result
    assert out["port"] == 18830 and Path(out["config"]).exists()


def test_capacity_exit_1_when_the_broker_is_unreachable() -> None:
    r = run("capacity", "--flat", "1000", "--port", str(free_port()))
    assert r.returncode == 1
    assert r.stdout == "" and "cannot connect" in r.stderr


def test_report_command(tmp_path: Path) -> None:
    from report_kit import make_summary

    src = tmp_path / "summary.json"
    src.write_text(json.dumps(make_summary()))
    r = run("report", str(src), "-o", str(tmp_path / "r.html"))
    assert r.returncode == 0, r.stderr
    assert Path(r.stdout.strip()) == (tmp_path / "r.html").resolve()
    assert 'id="heatmap"' in (tmp_path / "r.html").read_text()
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2]")
    assert run("report", str(bad)).returncode == 2


# ------------------------------------------------------------------ config


def _lab_parser() -> argparse.ArgumentParser:
    return cli.build_parser()[1]["lab"]


def test_config_file_env_and_command_line_precedence(tmp_path: Path) -> None:
    f = tmp_path / "hems.toml"
    f.write_text('[lab]\nhomes = 30\nseed = 4\nframe-real-s = 0.1\ntls = true\n'
                 'python_homes = false\n')
    file = config.load(f)
    env = {"HEMS_LAB_SEED": "9"}
    args = config.resolve("lab", _lab_parser(), file, env)
    assert sorted(args) == sorted(["--homes=30", "--seed=9", "--frame-real-s=0.1", "--tls"])
    a = _lab_parser().parse_args([*args, "--homes", "12"])  # the command line wins
    assert (a.homes, a.seed, a.frame_real_s, a.tls, a.python_homes) == (12, 9, 0.1, True, False)


def test_mqtt_table_and_its_environment(tmp_path: Path) -> None:
    from backend.mask_broker.__main__ import parser

    f = tmp_path / "hems.toml"
    f.write_text('[mqtt]\nhost = "10.0.0.1"\nport = 8883\nuser = "x"\n'
                 '[mask-broker]\nuser = "mb7"\nmetrics-port = 9101\n'
                 '[coordinator]\nbrokers = ["mb1", "mb2"]\n')
    file = config.load(f)
    mb = config.resolve("mask-broker", parser(), file, {"HEMS_MQTT_PORT": "1884"})
    # [mask-broker] beats [mqtt]; $HEMS_MQTT_PORT beats [mqtt] port.
    assert sorted(mb) == sorted(["--host=10.0.0.1", "--port=1884", "--user=mb7",
                                 "--metrics-port=9101"])
    assert config.resolve("lab", _lab_parser(), file, {}) == []  # the lab has no MQTT options
    from backend.coordinator.__main__ import build_parser

    co = config.resolve("coordinator", build_parser(), file, {"HEMS_COORDINATOR_K": "4"})
    assert "--brokers=mb1,mb2" in co and "--k=4" in co


@pytest.mark.parametrize("text, message", [
    ("[lab]\nhomez = 3\n", "unknown key(s) ['homez']"),
    ("[labs]\nhomes = 3\n", "unknown table [labs]"),
    ("[mqtt]\npassword = 'x'\n", "[mqtt] unknown key(s) ['password']"),
    ("[lab]\ntls = 'maybe'\n", "expected true or false"),
    ("[lab\n", "hems.toml"),
])
def test_bad_config_is_a_usage_error(tmp_path: Path, text: str, message: str) -> None:
    f = tmp_path / "hems.toml"
    f.write_text(text)
    r = run("--config", str(f), "lab", "--help")
    assert r.returncode == 2, r.stdout
    assert message in r.stderr, r.stderr


def test_config_command_shows_what_each_command_gets(tmp_path: Path) -> None:
    f = tmp_path / "hems.toml"
    f.write_text('[lab]\nhomes = 30\n[mqtt]\nhost = "broker.local"\n')
    r = run("--config", str(f), "config", "lab", "capacity",
            env={"PATH": "/usr/bin:/bin", "HEMS_LAB_JSON": "yes"})
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["file"] == str(f)
    assert sorted(out["commands"]["lab"]) == ["--homes=30", "--json"]
    assert out["commands"]["capacity"] == ["--host=broker.local"]
    # $HEMS_CONFIG names the file too.
    r = run("config", "lab", env={"PATH": "/usr/bin:/bin", "HEMS_CONFIG": str(f)})
    assert json.loads(r.stdout)["commands"]["lab"] == ["--homes=30"]


def test_readme_config_example_is_valid(tmp_path: Path) -> None:
    """The TOML example in the README is accepted for every command it configures."""
    text = (REPO / "README.md").read_text()
    block = text.split("```toml\n", 1)[1].split("```", 1)[0]
    f = tmp_path / "hems.toml"
    f.write_text(block)
    r = run("--config", str(f), "config", env={"PATH": "/usr/bin:/bin"})
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)["commands"]
    assert "--metrics-port=9101" in got["mask-broker"]
    assert "--host=broker.example.net" in got["coordinator"]
    assert "--brokers=mb1,mb2" in got["coordinator"]
    assert got["lab"] == ["--homes=30"]
