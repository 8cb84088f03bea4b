"""The lab's rogue home (``hems lab --debug-rogue``): a registered home with its own credentials
that sends its masked plan under one report id and its sealed seeds under another, for every
round announced.  Each mask broker then refuses the home's group (``checksum_mismatch``) until
the coordinator, asking again with each member's report id, learns which member it is
(``report_mismatch``): the rogue alone must leave the round and its honest group members be
served (docs/protocol.md, "One bad report").

It is played by the lab process (paho) from the firmware's own masking and sealing code, so its
messages are what a home's would be, but for the report id.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any

import numpy as np
import paho.mqtt.client as mqtt

from hemsfw import masking, protocol, seal

__all__ = ["Rogue"]

log = logging.getLogger("hems.lab")


class Rogue:
    """Answers every new round announcement with a plan and seals of different report ids."""

    def __init__(self, client: mqtt.Client, host: str, port: int, home: str, mag: int,
                 plan_wh: list[int], keys: dict[str, str]) -> None:
        self.home, self.mag, self.plan = home, mag, plan_wh
        self.keys = {b: bytes.fromhex(k) for b, k in keys.items()}
        self.seen: set[tuple[str, int]] = set()
        self.lock = threading.Lock()
        self.c = client
        self.c.on_message = self._on_message
        self.c.connect(host, port)
        self.c.subscribe(protocol.t_round(), qos=1)
        self.c.loop_start()

    def _on_message(self, _c: object, _u: object, msg: mqtt.MQTTMessage) -> None:
        try:
            ann: dict[str, Any] = protocol.parse_round(protocol.decode(bytes(msg.payload)))
        except ValueError:
            return
        key = (str(ann["day"]), int(ann["round"]))
        with self.lock:
            if key in self.seen:
                return
            self.seen.add(key)
        for topic, payload in self.messages(ann):
            self.c.publish(topic, payload, qos=1)
        log.info("rogue %s reported for %s/%d under two report ids", self.home, *key)

    def messages(self, ann: dict[str, Any]) -> list[tuple[str, bytes]]:
        day, rnd, frames = str(ann["day"]), int(ann["round"]), int(ann["frames"])
        q = int(ann["quantum_wh"])
        plan = [-(-v // q) for v in (self.plan + [0] * frames)[:frames]]
        rid_plan, rid_seal = os.urandom(16).hex(), os.urandom(16).hex()
        out: list[tuple[str, bytes]] = []
        mask = np.zeros(frames, dtype=np.uint32)
        for b in ann["brokers"]:
            s = os.urandom(protocol.SEED_LEN)
            mask += np.frombuffer(masking.expand_seed(s, frames), dtype="<u4")
            blob = seal.seal(self.keys[b], protocol.mask_ad(b, self.home, day, rnd, rid_seal),
                             s, os.urandom(seal.NONCE_LEN))
            out.append((protocol.t_mask(b, self.home), protocol.encode(
                protocol.make_mask_report(self.home, day, rnd, rid_seal, blob))))
        masked = (np.array(plan, dtype=np.uint32) + mask).astype("<u4").tobytes()
        out.insert(0, (protocol.t_plan(self.home), protocol.encode(
            protocol.make_plan_report(self.home, day, rnd, rid_plan, self.mag, masked))))
        return out

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()
