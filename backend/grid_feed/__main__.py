"""python -m backend.grid_feed openadr --vtn-url URL --ven-name NAME [...]

(also `hems grid-feed openadr ...`).  Bridges a utility's OpenADR 2.0b VTN to the capacity
topics: docs/grid-feed.md.  Exit status 0 after a clean stop (SIGTERM / SIGINT / SIGHUP),
2 on bad arguments or when openleadr is not installed.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import urllib.parse
import zoneinfo
from pathlib import Path

from backend.common.mqtt import add_mqtt_args, settings_from_args

log = logging.getLogger("hems.grid_feed")


def _tz(s: str) -> zoneinfo.ZoneInfo:
    try:
        return zoneinfo.ZoneInfo(s)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise argparse.ArgumentTypeError(f"unknown time zone {s!r} (IANA name, e.g. "
                                         "Asia/Tokyo)") from None


def _url(s: str) -> str:
    u = urllib.parse.urlparse(s)
    if u.scheme not in ("http", "https") or not u.netloc:
        raise argparse.ArgumentTypeError(f"not an http(s) URL: {s!r}")
    return s


def _positive(s: str) -> int:
    v = int(s)
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1: {s}")
    return v


def _wh(s: str) -> int:
    v = int(s)
    if not 0 <= v <= 1 << 50:
        raise argparse.ArgumentTypeError(f"not a Wh value in 0 .. 2^50: {s}")
    return v


def build_parser(prog: str = "hems grid-feed") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description="Grid feeds: a utility's demand-"
                                "response server in, the per-day capacity topics out.")
    sub = p.add_subparsers(dest="kind", metavar="KIND", required=True)
    o = sub.add_parser("openadr", help="an OpenADR 2.0b VEN (openleadr) for the utility's VTN",
                       description="An OpenADR 2.0b VEN: capacity events from the VTN to "
                       "hems/v1/capacity/<day>, the rounds' aggregate outcome back to the VTN "
                       "(docs/grid-feed.md).")
    o.add_argument("--vtn-url", required=True, type=_url,
                   help="the VTN's OpenADR 2.0b base URL, e.g. "
                   "https://vtn.example/OpenADR2/Simple/2.0b")
    o.add_argument("--ven-name", required=True, help="this VEN's name at the VTN")
    o.add_argument("--ven-id", default=None, help="this VEN's id, if the VTN issued one")
    o.add_argument("--state-dir", type=Path, default=None,
                   help="feed.json, status.json, changes.jsonl (without it a restart forgets "
                   "the events and there is no status file)")
    o.add_argument("--tz", type=_tz, default=_tz("UTC"),
                   help="time zone whose midnight starts a day until the day's round is "
                   "announced (default UTC)")
    o.add_argument("--frames", type=_positive, default=96, help="frames per day (default 96)")
    o.add_argument("--frame-s", type=_positive, default=900,
                   help="seconds per frame (default 900)")
    o.add_argument("--default-wh", type=_wh, default=None,
                   help="Wh per frame outside the events until the default profile "
                   "(hems/v1/capacity) is known (default: no limit there)")
    o.add_argument("--cert", default=None, help="VEN certificate (PEM) for TLS and signing")
    o.add_argument("--key", default=None, help="VEN private key (PEM)")
    o.add_argument("--ca-file", default=None, help="CA (PEM) for the VTN's certificate")
    o.add_argument("--vtn-fingerprint", default=None,
                   help="the VTN certificate's fingerprint, to check its signatures")
    o.add_argument("--log-level", default="info")
    add_mqtt_args(o, default_user="grid")
    return p


def main(argv: list[str] | None = None, prog: str = "hems grid-feed") -> int:
    a = build_parser(prog).parse_args(argv)
    if a.frames * a.frame_s > 2 * 86400:
        print(f"{prog}: --frames x --frame-s is more than two days", file=sys.stderr)
        return 2
    if (a.cert is None) != (a.key is None):
        print(f"{prog}: --cert and --key go together", file=sys.stderr)
        return 2
    try:
        import openleadr  # noqa: F401
    except ImportError:
        print(f"{prog}: openleadr is not installed: pip install -e '.[openadr]' "
              "(./run test and ./run lab --grid-feed install it)", file=sys.stderr)
        return 2
    from .feed import Feed
    from .ven import Ven, VenOptions

    logging.basicConfig(level=a.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # openleadr logs every message at INFO: keep it to warnings unless asked for debug.
    logging.getLogger("openleadr").setLevel(
        logging.DEBUG if a.log_level.lower() == "debug" else logging.WARNING)
    logging.getLogger("apscheduler").setLevel(logging.WARNING)
    feed = Feed(a.tz, a.frames, a.frame_s, a.default_wh)
    opts = VenOptions(a.vtn_url, a.ven_name, a.ven_id, a.state_dir, a.cert, a.key, a.ca_file,
                      a.vtn_fingerprint)
    try:
        ven = Ven(opts, settings_from_args(a), feed)
    except (OSError, ValueError, KeyError) as e:
        print(f"{prog}: cannot read the state dir {a.state_dir}: {e}", file=sys.stderr)
        return 2
    asyncio.run(ven.run())
    return 0


if __name__ == "__main__":
    sys.exit(main(prog="python -m backend.grid_feed"))
