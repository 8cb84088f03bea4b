"""hems: one command for every role of the privacy-preserving demand-response system.

  hems lab            run the lab testbed: real rounds, day after day, on this machine; a report
  hems report         draw the HTML report from a `hems lab --json` summary
  hems broker         write mosquitto config, passwd and ACL; run mosquitto
  hems coordinator    run the coordinator service (rounds on a schedule), or one round
  hems mask-broker    run a mask broker
  hems home CONFIG    run the home firmware on this machine (micropython, or CPython)
  hems capacity       publish the grid's per-frame capacity profile (retained)
  hems grid-feed      bridge a utility's OpenADR VTN to the capacity topics (docs/grid-feed.md)
  hems firmware       build, provision and flash the home firmware (firmware/host.py)
  hems config         show the arguments a config file and the environment give each command

`hems COMMAND --help` describes each.  Settings: `--config FILE` (or $HEMS_CONFIG), a TOML file
with one table per command ([lab], [coordinator], [mask-broker], ...) and [mqtt]; environment
variables HEMS_<COMMAND>_<OPTION> override the file, the command line overrides both
(backend/common/config.py).

Logs go to stderr, results to stdout (--json where a program reads them).
Exit status: 0 ok, 1 the run failed, 2 usage or configuration error, 130 interrupted.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from backend.common import config
from backend.common.mqtt import add_mqtt_args, settings_from_args
from backend.common.usage import Parser

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


# ------------------------------------------------------------------ commands run in-process


def _capacity_values(a: argparse.Namespace) -> list[int]:
    from backend.common.capacity import builtin_profile, read_profile

    if a.flat is not None:
        return builtin_profile("flat", a.flat, a.frames)
    if a.builtin is not None:
        return builtin_profile(a.builtin, a.level, a.frames)
    return read_profile(Path(a.file))


def cmd_capacity(a: argparse.Namespace) -> int:
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    from hemsfw import protocol, protocol_svc

    try:
        vals = _capacity_values(a)
        target = None
        if a.target_file:
            from backend.common.capacity import read_profile

            target = read_profile(Path(a.target_file), "target_wh")
        if a.day is None:
            topic = protocol_svc.t_capacity()
            obj = protocol_svc.make_capacity(len(vals), vals, target)
            protocol_svc.parse_capacity(obj)  # validate before publishing
        else:
            topic = protocol_svc.t_day_capacity(a.day)
            obj = protocol_svc.make_day_capacity(a.day, len(vals), vals, target, source="cli",
                                             at=int(time.time()))
            protocol_svc.parse_day_capacity(obj, a.day)
    except (OSError, ValueError, KeyError, TypeError) as e:
        print(f"hems capacity: bad capacity profile: {e}", file=sys.stderr)
        return EXIT_USAGE
    s = settings_from_args(a)
    c = mqtt.Client(CallbackAPIVersion.VERSION2)
    if s.username:
        c.username_pw_set(s.username, s.password)
    if s.cafile:
        c.tls_set(ca_certs=s.cafile)
    try:
        c.connect(s.host, s.port)
    except OSError as e:
        print(f"hems capacity: cannot connect to {s.host}:{s.port}: {e}", file=sys.stderr)
        return EXIT_FAILED
    c.loop_start()
    try:
        info = c.publish(topic, protocol.encode(obj), qos=1, retain=True)
        info.wait_for_publish(10)
        if not info.is_published():
            print("hems capacity: publish not acknowledged", file=sys.stderr)
            return EXIT_FAILED
    finally:
        c.loop_stop()
        c.disconnect()
    print(json.dumps({"frames": len(vals), "max_wh": max(vals), "min_wh": min(vals),
                      "topic": topic}))
    return EXIT_OK


def cmd_home(a: argparse.Namespace) -> int:
    from backend.lab import procs

    exe = sys.executable if a.cpython else procs.micropython_exe()
    argv = [exe, str(procs.FIRMWARE / "run_home.py"), a.config]
    os.execve(exe, argv, procs.micropython_env())
    return EXIT_OK  # not reached


def cmd_broker(a: argparse.Namespace) -> int:
    from backend.common.broker import Mosquitto

    try:
        users = json.loads(Path(a.users).read_text())
    except (OSError, ValueError) as e:
        print(f"hems broker: cannot read --users {a.users}: {e}", file=sys.stderr)
        return EXIT_USAGE
    m = Mosquitto(Path(a.dir), users, a.mask_brokers.split(","), port=a.port)
    conf = m.write()
    print(json.dumps({"config": str(conf), "port": m.port}))
    if a.write_only:
        return EXIT_OK
    sys.stdout.flush()
    os.execvp("mosquitto", ["mosquitto", "-c", str(conf)])
    return EXIT_OK  # not reached


def cmd_report(a: argparse.Namespace) -> int:
    from backend.lab import report

    try:
        summary = json.loads(Path(a.summary).read_text())
        if not isinstance(summary, dict) or "homes" not in summary:
            raise ValueError("not a `hems lab --json` summary")
    except (OSError, ValueError) as e:
        print(f"hems report: {a.summary}: {e}", file=sys.stderr)
        return EXIT_USAGE
    path = report.write(summary, Path(a.output))
    print(path.resolve())
    return EXIT_OK


def cmd_lab(a: argparse.Namespace) -> int:
    from backend.lab import lab

    return lab.main(a)


# ------------------------------------------------------------------ commands with their own CLI


def _coordinator() -> tuple[Callable[[], argparse.ArgumentParser], Callable[[list[str]], int]]:
    from backend.coordinator import __main__ as m

    return m.build_parser, m.main


def _mask_broker() -> tuple[Callable[[], argparse.ArgumentParser], Callable[[list[str]], int]]:
    from backend.mask_broker import __main__ as m

    return (lambda: m.parser("hems mask-broker")), (lambda argv: m.main(argv, "hems mask-broker"))


def _grid_feed() -> tuple[Callable[[], argparse.ArgumentParser], Callable[[list[str]], int]]:
    from backend.grid_feed import __main__ as m

    return m.build_parser, m.main


def _firmware() -> tuple[Callable[[], argparse.ArgumentParser] | None,
                         Callable[[list[str]], int]]:
    # Hook for the firmware host tools (firmware/host.py, owned by the firmware work):
    # `hems firmware ARGS` is `firmware.host.main(ARGS)`.  No config table is applied (its
    # options belong to its own subcommands).
    # TODO(firmware): if host.py's entry point changes name, change it here, nowhere else.
    try:
        host: Any = importlib.import_module("firmware.host")
    except ModuleNotFoundError:
        def missing(argv: list[str]) -> int:
            print("hems firmware: the firmware host tools (firmware/host.py) are not "
                  "installed", file=sys.stderr)
            return EXIT_USAGE
        return None, missing
    return None, lambda argv: int(host.main(argv) or 0)


#: Commands whose module parses its own arguments (one definition of each CLI).
DELEGATED: dict[str, tuple[str, Callable[[], tuple[Any, Callable[[list[str]], int]]]]] = {
    "coordinator": ("run the coordinator service (or one round with --day)", _coordinator),
    "mask-broker": ("run a mask broker", _mask_broker),
    "grid-feed": ("bridge a utility's OpenADR VTN to the capacity topics", _grid_feed),
    "firmware": ("build, provision, flash the home firmware", _firmware),
}


def _run_delegated(cmd: str, argv: list[str], file: dict[str, dict[str, Any]],
                   path: Path | None) -> int:
    make_parser, run = DELEGATED[cmd][1]()
    prefix = config.resolve(cmd, make_parser(), file, path=path) if make_parser else []
    try:
        return int(run([*prefix, *argv]) or 0)
    except SystemExit as e:  # argparse: --help (0) or a usage error (2)
        return e.code if isinstance(e.code, int) else EXIT_USAGE


# ------------------------------------------------------------------ the parser


def _iso_day(s: str) -> str:
    import datetime as dt

    try:
        if len(s) != 10:
            raise ValueError(s)
        dt.date.fromisoformat(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a day YYYY-MM-DD: {s!r}") from None
    return s


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    from backend.lab import lab

    p = Parser(prog="hems", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", metavar="FILE", help="TOML settings (default $HEMS_CONFIG)")
    sub = p.add_subparsers(dest="cmd", metavar="COMMAND", required=True)
    subs: dict[str, argparse.ArgumentParser] = {}

    def add(name: str, help: str, func: Callable[[argparse.Namespace], int] | None,
            description: str | None = None) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help, description=description or help,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
        sp.set_defaults(func=func)
        subs[name] = sp
        return sp

    pl = add("lab", "run the lab testbed: real rounds, day after day, with a report",
             cmd_lab, lab.__doc__)
    lab.add_args(pl)

    pr = add("report", "draw the HTML report from a `hems lab --json` summary", cmd_report)
    pr.add_argument("summary", help="the JSON that `hems lab --json` printed")
    pr.add_argument("-o", "--output", default="lab-out/report.html",
                    help="where to write the report (default lab-out/report.html)")

    pb = add("broker", "write mosquitto config/passwd/ACL and run mosquitto", cmd_broker)
    pb.add_argument("--dir", required=True, help="directory for config, passwd, ACL, data")
    pb.add_argument("--users", required=True, help='JSON file {"user": "password", ...}')
    pb.add_argument("--mask-brokers", default="mb1", help="comma-separated mask broker ids")
    pb.add_argument("--port", type=int, default=1883, help="listener port (default 1883)")
    pb.add_argument("--write-only", action="store_true", help="write the files, do not run")

    for name, (help_, _) in DELEGATED.items():
        sub.add_parser(name, help=f"{help_} (see hems {name} --help)", add_help=False)

    ph = add("home", "run the home firmware on this machine", cmd_home)
    ph.add_argument("config", help="the home's config.json")
    ph.add_argument("--cpython", action="store_true", help="CPython + paho instead of micropython")

    pc = add("capacity", "publish the capacity profile (retained)", cmd_capacity)
    src = pc.add_mutually_exclusive_group(required=True)
    src.add_argument("--file", help="CSV (last column = Wh per frame) or JSON file")
    src.add_argument("--flat", type=int, help="the same capacity (Wh) in every frame")
    src.add_argument("--builtin", choices=["flat", "evening", "solar"],
                     help="a built-in shape scaled to --level (backend/common/capacity.py)")
    pc.add_argument("--level", type=int, default=10000,
                    help="Wh per frame for --builtin (default 10000)")
    pc.add_argument("--frames", type=int, default=96,
                    help="frames for --flat/--builtin (default 96)")
    pc.add_argument("--target-file", default=None,
                    help="optional target profile (JSON/CSV, Wh per frame): the coordinator "
                    "adds a deviation penalty")
    pc.add_argument("--day", type=_iso_day, default=None,
                    help="publish the profile of this day only (YYYY-MM-DD, on "
                    "hems/v1/capacity/DAY); without it, the default of every day")
    add_mqtt_args(pc, default_user="grid")

    pg = add("config", "print, as JSON, the arguments the config file and the environment "
             "give each command", None)
    pg.add_argument("commands", nargs="*", help="commands to show (default: all)")
    return p, subs


def show_config(cmds: list[str], subs: dict[str, argparse.ArgumentParser],
                file: dict[str, dict[str, Any]], path: Path | None) -> int:
    out: dict[str, Any] = {"file": str(path) if path else None, "commands": {}}
    for cmd in cmds or [*subs, *DELEGATED]:
        if cmd in ("config", "report", "firmware"):
            continue
        if cmd in DELEGATED:
            parser = DELEGATED[cmd][1]()[0]()
        elif cmd in subs:
            parser = subs[cmd]
        else:
            print(f"hems config: unknown command {cmd!r}", file=sys.stderr)
            return EXIT_USAGE
        out["commands"][cmd] = config.resolve(cmd, parser, file, path=path)
    print(json.dumps(out, indent=1))
    return EXIT_OK


def _split_global(argv: list[str]) -> tuple[str | None, list[str]]:
    """Leading global options (--config FILE / --config=FILE) and the rest."""
    cfg = None
    while argv and argv[0].startswith("--config"):
        if argv[0] == "--config" and len(argv) > 1:
            cfg, argv = argv[1], argv[2:]
        elif argv[0].startswith("--config="):
            cfg, argv = argv[0].split("=", 1)[1], argv[1:]
        else:
            break
    return cfg, argv


def _pop_config(args: list[str]) -> tuple[str | None, list[str]]:
    """``--config FILE`` / ``--config=FILE`` anywhere in a command's arguments, and the rest."""
    out, cfg, i = [], None, 0
    while i < len(args):
        a = args[i]
        if a == "--config" and i + 1 < len(args):
            cfg, i = args[i + 1], i + 2
            continue
        if a.startswith("--config="):
            cfg = a.split("=", 1)[1]
        else:
            out.append(a)
        i += 1
    return cfg, out


def main(argv: list[str] | None = None) -> int:
    try:
        return _main(sys.argv[1:] if argv is None else argv)
    except KeyboardInterrupt:
        print("hems: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def _main(argv: list[str]) -> int:
    cfg_arg, rest = _split_global(argv)
    parser, subs = build_parser()
    if not rest or rest[0] not in (*subs, *DELEGATED):
        try:
            parser.parse_args(rest)  # prints help (0) or the usage error (2)
        except SystemExit as e:
            return e.code if isinstance(e.code, int) else EXIT_USAGE
        return EXIT_USAGE
    cmd, args = rest[0], rest[1:]
    if cmd != "firmware":  # `hems coordinator --config FILE` works too (firmware has its own)
        local, args = _pop_config(args)
        cfg_arg = cfg_arg or local
    path = config.config_path(cfg_arg)
    try:
        file = config.load(path)
        if cmd in DELEGATED:
            return _run_delegated(cmd, args, file, path)
        prefix = [] if cmd == "config" else config.resolve(cmd, subs[cmd], file, path=path)
        try:
            a = parser.parse_args([cmd, *prefix, *args])
        except SystemExit as e:
            return e.code if isinstance(e.code, int) else EXIT_USAGE
        if cmd == "config":
            return show_config(a.commands, subs, file, path)
    except config.ConfigError as e:
        print(f"hems: {e}", file=sys.stderr)
        return EXIT_USAGE
    rc: int = a.func(a)
    return rc


if __name__ == "__main__":
    sys.exit(main())
