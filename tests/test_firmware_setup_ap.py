"""Wi-Fi set-up without a PC (issue 16), over real HTTP: the firmware's set-up page
(hemsfw/setup_ap.py) on the MicroPython unix port, with a stand-in `network` access point and
reset: the page is served, a bad form is refused with the reason, a good one is saved into
config.json (checked as the board checks it) and the board resets."""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from firmware_kit import board_config

from backend.common.broker import free_port
from hemsfw import config

REPO = Path(__file__).resolve().parents[1]
MICROPYTHON = REPO / ".venv" / "bin" / "micropython"

BOARD = """
import sys
sys.path.append('.frozen')
from hemsfw import config, setup_ap

class WLAN:
    def __init__(self, i): self.cfg = {}
    def active(self, on): print('ap active', on)
    def config(self, **kw): print('ap config', sorted(kw.items()))
    def ifconfig(self): return ('192.168.4.1', '', '', '')

class Network:
    AP_IF = 1
    WLAN = WLAN

def reset():
    print('reset')

cfg = config.load('config.json')
print('setup wanted', setup_ap.wanted(cfg))
sys.exit(setup_ap.run(cfg, 'config.json', print, reset, Network, port=%d))
"""


def post(port: int, form: dict[str, str]) -> tuple[int, str]:
    req = urllib.request.Request(f"http://127.0.0.1:{port}/save",
                                 data=urllib.parse.urlencode(form).encode())
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def test_the_setup_page_saves_wifi_and_broker_then_resets(tmp_path: Path) -> None:
    cfg = board_config(wifi={"ssid": "", "password": ""})
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    port = free_port()
    env = dict(os.environ, MICROPYPATH=f"{REPO / 'firmware' / 'micropython'}")
    with open(tmp_path / "log", "wb") as f:
        proc = subprocess.Popen([str(MICROPYTHON), "-c", BOARD % port], cwd=tmp_path, env=env,
                                stdout=f, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 15
        while "wifi set-up: join" not in (tmp_path / "log").read_text():
            assert time.monotonic() < deadline and proc.poll() is None, \
                (tmp_path / "log").read_text()
            time.sleep(0.05)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as r:
            page = r.read().decode()
        assert 'name="ssid"' in page and 'value="192.0.2.10"' in page
        code, body = post(port, {"ssid": "home", "password": "short", "host": "192.0.2.10"})
        assert code == 400 and "8 to 63" in body
        assert json.loads((tmp_path / "config.json").read_text())["wifi"]["ssid"] == ""
        code, body = post(port, {"ssid": "home net", "password": "s3cret-pw",
                                 "host": "192.0.2.77", "port": "1884"})
        assert code == 200 and "Saved" in body
        assert proc.wait(15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    log = (tmp_path / "log").read_text()
    assert "setup wanted True" in log and "ap config [('essid', 'hems-h1')]" in log, log
    assert log.rstrip().endswith("reset"), log
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["wifi"] == {"ssid": "home net", "password": "s3cret-pw"}
    assert (saved["mqtt"]["host"], saved["mqtt"]["port"]) == ("192.0.2.77", 1884)
    assert config.check(saved)["relay"]["pin"] == 26
