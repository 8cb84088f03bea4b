"""`hems`: one command for every role of the system.

  hems lab            run the lab testbed (one real round on this machine)
  hems broker         write mosquitto config, passwd and ACL; run mosquitto
  hems coordinator    run the coordinator (one round)
  hems mask-broker    run a mask broker
  hems home CONFIG    run the home firmware on this machine (micropython, or CPython)
  hems capacity       publish the grid's per-frame capacity profile (retained)

Logs go to stderr, results to stdout.  Exit codes: 0 ok, 1 the run failed, 2 usage error.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import runpy
import sys
from pathlib import Path

from backend.common.mqtt import add_mqtt_args, settings_from_args


def _delegate(module: str, argv: list[str]) -> int:
    """Run a service's own `python -m` entry point with these arguments."""
    old = sys.argv
    sys.argv = [module, *argv]
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    except SystemExit as e:
        return int(e.code or 0) if not isinstance(e.code, str) else 1
    finally:
        sys.argv = old
    return 0


def _capacity_values(a: argparse.Namespace) -> list[int]:
    if a.flat is not None:
        return [a.flat] * a.frames
    path = Path(a.file)
    if path.suffix == ".json":
        obj = json.loads(path.read_text())
        vals = obj["capacity_wh"] if isinstance(obj, dict) else obj
    else:
        with path.open() as f:
            vals = [int(float(row[-1])) for row in csv.reader(f) if row and row[-1].strip()
                    and row[-1].strip().lstrip("-").replace(".", "", 1).isdigit()]
    return [int(v) for v in vals]


def cmd_capacity(a: argparse.Namespace) -> int:
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    from hemsfw import protocol

    vals = _capacity_values(a)
    obj = protocol.make_capacity(len(vals), vals)
    protocol.parse_capacity(obj)  # validate before publishing
    s = settings_from_args(a)
    c = mqtt.Client(CallbackAPIVersion.VERSION2)
    if s.username:
        c.username_pw_set(s.username, s.password)
    if s.cafile:
        c.tls_set(ca_certs=s.cafile)
    c.connect(s.host, s.port)
    c.loop_start()
    try:
        info = c.publish(protocol.t_capacity(), protocol.encode(obj), qos=1, retain=True)
        info.wait_for_publish(10)
        if not info.is_published():
            print("hems capacity: publish not acknowledged", file=sys.stderr)
            return 1
    finally:
        c.loop_stop()
        c.disconnect()
    print(json.dumps({"frames": len(vals), "max_wh": max(vals), "min_wh": min(vals)}))
    return 0


def cmd_home(a: argparse.Namespace) -> int:
    from backend.lab import procs

    exe = sys.executable if a.cpython else procs.micropython_exe()
    argv = [exe, str(procs.FIRMWARE / "run_home.py"), a.config]
    os.execve(exe, argv, procs.micropython_env())
    return 0  # not reached


def cmd_broker(a: argparse.Namespace) -> int:
    from backend.common.broker import Mosquitto

    users = json.loads(Path(a.users).read_text())
    m = Mosquitto(Path(a.dir), users, a.mask_brokers.split(","), port=a.port)
    conf = m.write()
    print(json.dumps({"config": str(conf), "port": m.port}))
    if a.write_only:
        return 0
    os.execvp("mosquitto", ["mosquitto", "-c", str(conf)])
    return 0  # not reached


def build_parser() -> argparse.ArgumentParser:
    from backend.lab import lab

    p = argparse.ArgumentParser(prog="hems", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)

    pl = sub.add_parser("lab", help="run the lab testbed: one real round on this machine")
    lab.add_args(pl)
    pl.set_defaults(func=lab.main)

    pb = sub.add_parser("broker", help="write mosquitto config/passwd/ACL and run mosquitto")
    pb.add_argument("--dir", required=True, help="directory for config, passwd, ACL, data")
    pb.add_argument("--users", required=True, help='JSON file {"user": "password", ...}')
    pb.add_argument("--mask-brokers", default="mb1", help="comma-separated mask broker ids")
    pb.add_argument("--port", type=int, default=1883)
    pb.add_argument("--write-only", action="store_true", help="write the files, do not run")
    pb.set_defaults(func=cmd_broker)

    sub.add_parser("coordinator", help="run the coordinator (see --help)", add_help=False)
    sub.add_parser("mask-broker", help="run a mask broker (see --help)", add_help=False)

    ph = sub.add_parser("home", help="run the home firmware on this machine")
    ph.add_argument("config", help="the home's config.json")
    ph.add_argument("--cpython", action="store_true", help="CPython + paho instead of micropython")
    ph.set_defaults(func=cmd_home)

    pc = sub.add_parser("capacity", help="publish the capacity profile (retained)")
    src = pc.add_mutually_exclusive_group(required=True)
    src.add_argument("--file", help="CSV (last column = Wh per frame) or JSON file")
    src.add_argument("--flat", type=int, help="the same capacity (Wh) in every frame")
    pc.add_argument("--frames", type=int, default=96, help="frames for --flat (default 96)")
    add_mqtt_args(pc, default_user="grid")
    pc.set_defaults(func=cmd_capacity)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    # The services parse their own arguments (one definition of each CLI).
    if argv and argv[0] == "coordinator":
        return _delegate("backend.coordinator", argv[1:])
    if argv and argv[0] == "mask-broker":
        return _delegate("backend.mask_broker", argv[1:])
    a = build_parser().parse_args(argv)
    rc: int = a.func(a)
    return rc


if __name__ == "__main__":
    sys.exit(main())
