"""`hems lab` never harms its user: its output folder, relative paths, signals, arguments."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from backend.common.usage import UsageError
from backend.lab.outdir import MARKER, OutDir, check_out, check_report

HEMS = str(Path(sys.prefix) / "bin" / "hems")
#: a short lab: 3 homes, 8 frames of 0.5 s
SHORT = ["--homes", "3", "--frames", "8", "--frame-real-s", "0.5", "--no-report",
         "--no-progress"]


def hems_lab(*args: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([HEMS, "lab", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=dict(os.environ))


def processes_naming(path: Path) -> list[str]:
    """Command lines of the running processes that mention ``path`` (the lab's children all
    name a file in their lab folder)."""
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if str(path) in cmd:
            out.append(f"{d.name}: {cmd}")
    return out


def wait_gone(path: Path, timeout: float = 15.0) -> list[str]:
    deadline = time.monotonic() + timeout
    left = processes_naming(path)
    while left and time.monotonic() < deadline:
        time.sleep(0.1)
        left = processes_naming(path)
    return left


# ----------------------------------------------------------------- the output folder


def test_out_refuses_a_folder_with_files_it_did_not_create(tmp_path: Path) -> None:
    keep = tmp_path / "keep"
    keep.mkdir()
    (keep / "notes.txt").write_text("x\n")
    r = hems_lab(*SHORT, "--out", "keep", cwd=tmp_path)
    assert r.returncode == 2
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "not empty" in r.stderr
    assert sorted(p.name for p in keep.iterdir()) == ["notes.txt"]
    assert (keep / "notes.txt").read_text() == "x\n"


def test_out_dot_in_a_checkout_is_refused(tmp_path: Path) -> None:
    (tmp_path / "README.md").write_text("mine\n")
    r = hems_lab(*SHORT, "--out", ".", cwd=tmp_path)
    assert r.returncode == 2
    assert (tmp_path / "README.md").read_text() == "mine\n"


def test_earlier_lab_output_is_cleaned_of_its_own_entries_only(tmp_path: Path) -> None:
    out = OutDir.open(tmp_path / "run")
    out.path("logs").mkdir()
    (out.path("logs") / "h001.log").write_text("old\n")
    out.path("result.json").write_text("{}")
    (tmp_path / "run" / "my-notes.txt").write_text("keep me\n")
    check_out(tmp_path / "run")  # an earlier lab output is accepted
    again = OutDir.open(tmp_path / "run")
    names = sorted(p.name for p in again.root.iterdir())
    assert names == [MARKER, "my-notes.txt"]
    assert json.loads((again.root / MARKER).read_text())["created"] == []


def test_marker_names_an_entry_before_it_exists(tmp_path: Path) -> None:
    out = OutDir.open(tmp_path / "run")
    target = out.path("state-coordinator")
    assert not target.exists()
    assert json.loads((tmp_path / "run" / MARKER).read_text())["created"] == [
        "state-coordinator"]


def test_out_that_is_a_file_is_refused(tmp_path: Path) -> None:
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(UsageError, match="not a folder"):
        check_out(f)


def test_report_never_overwrites_a_file_that_is_not_a_lab_report(tmp_path: Path) -> None:
    mine = tmp_path / "report.html"
    mine.write_text("<html>my own page</html>")
    r = hems_lab(*SHORT[:-2], "--report", str(mine), cwd=tmp_path)
    assert r.returncode == 2
    assert mine.read_text() == "<html>my own page</html>"
    with pytest.raises(UsageError, match="not a hems lab report"):
        check_report(mine)


def test_relative_out_works_from_any_folder(tmp_path: Path) -> None:
    elsewhere = tmp_path / "somewhere" / "else"
    elsewhere.mkdir(parents=True)
    r = hems_lab(*SHORT, "--out", "rel-out", cwd=elsewhere, timeout=180)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    assert any((elsewhere / "rel-out" / "state-coordinator" / "results").glob("*.json"))
    assert (elsewhere / "rel-out" / MARKER).is_file()


# ----------------------------------------------------------------- arguments


@pytest.mark.parametrize("args", [
    ["--homes", "0"], ["--homes", "-1"], ["--k", "1"], ["--frames", "0"],
    ["--mask-brokers", "0"], ["--homes", "2"], ["--frame-real-s", "0"],
    ["--frames", "100000"], ["--frames", "7"], ["--frames", "8", "--frame-real-s", "0.1"],
    ["--days", "0"], ["--days", "31"], ["--dropout", "0.9"], ["--homes", "100000"],
])
def test_bad_arguments_are_one_line_and_start_nothing(tmp_path: Path, args: list[str]) -> None:
    r = hems_lab(*args, "--out", "never", "--no-report", cwd=tmp_path, timeout=30)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("hems lab: error:")
    assert not (tmp_path / "never").exists()


def test_too_many_homes_says_what_the_machine_can_do(tmp_path: Path) -> None:
    r = hems_lab("--homes", "100000", "--no-report", cwd=tmp_path, timeout=30)
    assert r.returncode == 2
    assert "can run about" in r.stderr and "bench/fleet.py" in r.stderr


# ----------------------------------------------------------------- signals


def start_lab(out: Path) -> subprocess.Popen[str]:
    return subprocess.Popen([HEMS, "lab", *SHORT, "--frames", "96", "--out", str(out)],
                            cwd=out.parent, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=dict(os.environ))


def wait_for_homes(out: Path, lab: subprocess.Popen[str], n: int = 3) -> None:
    """Until every home process of the lab runs (its log exists and it is alive)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        homes = [c for c in processes_naming(out) if "run_home.py" in c]
        if len(homes) >= n:
            return
        assert lab.poll() is None, lab.stderr.read() if lab.stderr else ""
        time.sleep(0.1)
    raise AssertionError("the lab's homes did not start")


@pytest.mark.integration
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT])
def test_a_signal_stops_every_child(tmp_path: Path, sig: signal.Signals) -> None:
    out = tmp_path / "lab"
    lab = start_lab(out)
    try:
        wait_for_homes(out, lab)
        lab.send_signal(sig)
        lab.wait(60)
        assert lab.returncode == 128 + sig, lab.stderr.read() if lab.stderr else ""
        assert wait_gone(out) == []
    finally:
        if lab.poll() is None:
            lab.kill()


@pytest.mark.integration
def test_sigkill_of_the_lab_takes_its_children(tmp_path: Path) -> None:
    out = tmp_path / "lab"
    lab = start_lab(out)
    try:
        wait_for_homes(out, lab)
        lab.kill()
        lab.wait(30)
        assert wait_gone(out) == []
    finally:
        if lab.poll() is None:
            lab.kill()
