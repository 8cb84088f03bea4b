"""`hems` configuration: one TOML file for every role, with environment-variable overrides.

The file (``hems --config FILE ...`` or ``$HEMS_CONFIG``) has one table per subcommand,
``[lab]``, ``[coordinator]``, ``[mask-broker]``, ``[broker]``, ``[capacity]``, ``[home]``, and
``[mqtt]``, read by the subcommands that connect to MQTT (coordinator, mask-broker, capacity).
A key is a long option of that subcommand, with ``-`` or ``_`` (``frame-real-s`` or
``frame_real_s``); a value is what the option takes: a string, a number, a list (joined with
commas: ``brokers = ["mb1", "mb2"]``) or, for a switch, true / false.  An unknown table or key
is an error (exit status 2), not silently ignored.

Each option's value is the first found of: the command line; ``$HEMS_<CMD>_<KEY>``
(``HEMS_LAB_HOMES=30``, ``HEMS_MASK_BROKER_METRICS_PORT=9101``); the ``[<cmd>]`` table;
``$HEMS_MQTT_<KEY>`` and then the ``[mqtt]`` table (MQTT options only); the built-in default.
Passwords are never read from the file: ``--password-env`` names the variable that holds one.

How: the resolved settings become command-line arguments put *before* the user's own, so
argparse applies every option's own type and check, and a later (user) argument wins.
"""

from __future__ import annotations

import argparse
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

#: The tables a file may have.
SECTIONS = ("lab", "coordinator", "mask-broker", "broker", "capacity", "home", "mqtt")
#: Subcommands that read the [mqtt] table and $HEMS_MQTT_* for their MQTT options.
MQTT_COMMANDS = ("coordinator", "mask-broker", "capacity")
MQTT_KEYS = ("host", "port", "user", "password_env", "cafile")
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off", "")


class ConfigError(Exception):
    """A bad file, table, key or value; the message names it (exit status 2)."""


def _norm(key: str) -> str:
    return key.replace("-", "_")


def env_name(section: str, key: str) -> str:
    return f"HEMS_{section}_{key}".upper().replace("-", "_")


def load(path: Path | None) -> dict[str, dict[str, Any]]:
    """The file's tables ({} without a file); checks the table names."""
    if path is None:
        return {}
    try:
        with path.open("rb") as f:
            data = tomllib.load(f)
    except OSError as e:
        raise ConfigError(f"cannot read {path}: {e.strerror or e}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: {e}") from None
    out: dict[str, dict[str, Any]] = {}
    for name, table in data.items():
        if name not in SECTIONS:
            raise ConfigError(f"{path}: unknown table [{name}] (known: {', '.join(SECTIONS)})")
        if not isinstance(table, dict):
            raise ConfigError(f"{path}: [{name}] must be a table")
        out[name] = {_norm(k): v for k, v in table.items()}
    unknown = sorted(set(out.get("mqtt", {})) - set(MQTT_KEYS))
    if unknown:
        raise ConfigError(f"{path}: [mqtt] unknown key(s) {unknown} (known: {list(MQTT_KEYS)})")
    return out


def options(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """The parser's long options by key (dest), help and version left out."""
    out = {}
    for a in parser._actions:  # the only way argparse lists its options
        if a.option_strings and a.dest not in ("help", "version") and any(
                s.startswith("--") for s in a.option_strings):
            out[a.dest] = a
    return out


def _flag(a: argparse.Action) -> str:
    return next(s for s in a.option_strings if s.startswith("--"))


def _bool(value: object, where: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _TRUE + _FALSE:
        return value.strip().lower() in _TRUE
    raise ConfigError(f"{where}: expected true or false, got {value!r}")


def to_argv(a: argparse.Action, value: object, where: str) -> list[str]:
    """One setting as the command-line arguments that say the same."""
    if a.nargs == 0:  # a switch (store_true / store_false / store_const)
        want = a.const if isinstance(a.const, bool) else True
        return [_flag(a)] if _bool(value, where) == want else []
    if isinstance(value, bool | dict):
        raise ConfigError(f"{where}: {_flag(a)} takes a value, got {value!r}")
    if isinstance(value, list):
        value = ",".join(str(v) for v in value)
    return [f"{_flag(a)}={value}"]  # one word: a value may start with "-"


def resolve(cmd: str, parser: argparse.ArgumentParser, file: Mapping[str, Mapping[str, Any]],
            env: Mapping[str, str] | None = None, path: Path | None = None) -> list[str]:
    """The arguments the file and the environment give `hems CMD` (to go before the user's)."""
    env = os.environ if env is None else env
    opts = options(parser)
    table = file.get(cmd, {})
    where = str(path or "config")
    unknown = sorted(set(table) - set(opts))
    if unknown:
        raise ConfigError(f"{where}: [{cmd}] unknown key(s) {unknown} "
                          f"(known: {sorted(opts)})")
    mqtt = file.get("mqtt", {}) if cmd in MQTT_COMMANDS else {}
    out: list[str] = []
    for key, action in opts.items():
        sources: list[tuple[str, Mapping[str, Any], str]] = [
            (f"${env_name(cmd, key)}", env, env_name(cmd, key)),
            (f"{where}: [{cmd}] {key}", table, key)]
        if cmd in MQTT_COMMANDS and key in MQTT_KEYS:
            sources += [(f"${env_name('mqtt', key)}", env, env_name("mqtt", key)),
                        (f"{where}: [mqtt] {key}", mqtt, key)]
        for label, src, name in sources:
            if name in src:
                out += to_argv(action, src[name], label)
                break
    return out


def config_path(explicit: str | None, env: Mapping[str, str] | None = None) -> Path | None:
    env = os.environ if env is None else env
    p = explicit or env.get("HEMS_CONFIG")
    return Path(p) if p else None
