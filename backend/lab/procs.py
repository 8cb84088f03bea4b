"""Child processes of the lab: started with their own log file, always stopped."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from backend.common.children import tied

REPO = Path(__file__).resolve().parents[2]
FIRMWARE = REPO / "firmware" / "micropython"
VENV = Path(sys.prefix)


def micropython_exe() -> str:
    exe = VENV / "bin" / "micropython"
    if exe.exists():
        return str(exe)
    from shutil import which

    found = which("micropython")
    if found is None:
        raise FileNotFoundError("micropython not found: run ./run setup")
    return found


def micropython_env() -> dict[str, str]:
    env = dict(os.environ)
    env["MICROPYPATH"] = str(FIRMWARE)
    return env


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    def tail(self, n: int = 2000) -> str:
        try:
            return self.log.read_text(errors="replace")[-n:]
        except OSError:
            return ""


@dataclass
class Procs:
    """Every process the lab started, stopped in reverse order by stop_all()."""

    log_dir: Path
    procs: list[Proc] = field(default_factory=list)

    def start(
        self, name: str, argv: list[str], env: dict[str, str] | None = None
    ) -> Proc:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log = self.log_dir / f"{name}.log"
        with open(log, "wb") as f:
            # Its own session: a Ctrl-C on the terminal reaches the lab only, which stops the
            # children in order.  tied(): a lab killed outright takes them with it.
            p = subprocess.Popen(
                argv, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=REPO,
                start_new_session=True, preexec_fn=tied(),
            )
        proc = Proc(name, p, log)
        self.procs.append(proc)
        return proc

    def stop_all(self, timeout: float = 5.0) -> None:
        for p in reversed(self.procs):
            if p.popen.poll() is None:
                p.popen.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for p in reversed(self.procs):
            left = max(0.1, deadline - time.monotonic())
            try:
                p.popen.wait(left)
            except subprocess.TimeoutExpired:
                p.popen.kill()
                p.popen.wait(5)


def wait_all(procs: list[Proc], timeout: float) -> list[Proc]:
    """Wait for every process to exit; return those still running at the timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(p.popen.poll() is not None for p in procs):
            return []
        time.sleep(0.05)
    return [p for p in procs if p.popen.poll() is None]
