"""TEST ONLY: a "fleet" identity that may publish for every home, for scale runs.

A real home publishes only under its own id (``pattern write hems/v1/plan/%u``): the ACL is what
keeps a home from speaking for another (docs/protocol.md, "ACL").  A scale run simulates up to
100,000 homes from one process (bench/fleet.py); one connection per home would measure the
simulator, not the services.  So the benchmarks add one extra identity, ``fleet``, that may
publish plans and masks for *any* home and read every home's adjustments and replies.

Never provision it on a real broker: it is exactly the power the ACL exists to deny.  It lives in
this module, not in ``broker.acl_text``, so that the production ACL generator cannot emit it;
``FleetMosquitto`` is the only way to get a broker that knows it, and only the benchmarks and
their tests use that class.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from backend.common.broker import Mosquitto, acl_text
from hemsfw import protocol

P = protocol.PREFIX

#: The test-only identity (never a valid home id in a real deployment's registry).
FLEET_USER = "fleet"


def fleet_acl_text(user: str = FLEET_USER) -> str:
    """ACL lines granting ``user`` every home's publish and read rights (TEST ONLY)."""
    return "\n".join(
        [
            "",
            "# TEST ONLY (backend/common/fleet_acl.py): the fleet simulator speaks for every home.",
            "# Never deploy: it defeats the per-home ACL above.",
            f"user {user}",
            f"topic write {P}/plan/+",
            f"topic write {P}/mask/+/+",
            f"topic readwrite {P}/status/+",
            f"topic read {P}/adjust/+",
            f"topic read {P}/reply/+/+",
            f"topic read {P}/round",
            "",
        ]
    )


@dataclass
class FleetMosquitto(Mosquitto):
    """``Mosquitto`` whose ACL also has the test-only fleet identity (and optional extra
    ``mosquitto.conf`` lines, e.g. ``queue_qos0_messages true`` for a benchmark)."""

    fleet_user: str = FLEET_USER
    extra_conf: str = ""

    def write(self) -> Path:
        conf = super().write()
        acl = self.data_dir / "hems.acl"
        acl.write_text(acl_text(self.mask_brokers) + fleet_acl_text(self.fleet_user))
        # The fleet identity stands in for thousands of homes at once, each connection with a
        # client id of its own: binding client ids to user names would make them kick each
        # other off.  Test and benchmark brokers only (the shipped template keeps it on).
        text = conf.read_text()
        if "\nuse_username_as_clientid true\n" not in text:
            raise RuntimeError("broker template: expected use_username_as_clientid true")
        conf.write_text(text.replace("\nuse_username_as_clientid true\n",
                                     "\nuse_username_as_clientid false\n"))
        if self.extra_conf:
            conf.write_text(conf.read_text() + "\n" + self.extra_conf.strip() + "\n")
        return conf
