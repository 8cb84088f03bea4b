# The home controller's round logic (the seed's HEMS server 20), without any I/O.
#
# Inputs are decoded messages and the time; outputs are (topic, payload bytes) pairs to publish
# and the relay state to drive.  Adapters (MQTT client, relay driver, clock, filesystem Store)
# live elsewhere and are passed in.  State that must survive a power cut goes through `store`
# *before* anything is published, so a restart re-sends the very same report (same report id,
# same sealed seeds) instead of drawing a new one: nothing is lost and nothing is reported twice.
#
# MicroPython subset only.

import binascii
import hashlib

from hemsfw import masking, plan, protocol, seal

STATE = "round.json"


def _hex(b):
    return binascii.hexlify(b).decode()


class Home:
    def __init__(self, cfg, store, urandom, log=None):
        """cfg: dict with home_id, magnification, plan_wh (list), keys {broker: hex key}."""
        self.id = cfg["home_id"]
        if not protocol.valid_id(self.id):
            raise ValueError("bad home_id")
        self.mag = int(cfg.get("magnification", 1))
        self.plan_wh = cfg["plan_wh"]
        self.keys = {}
        for b, k in cfg.get("keys", {}).items():
            self.keys[b] = binascii.unhexlify(k)
        self.store = store
        self.urandom = urandom
        self.log = log or (lambda *a: None)
        self.state = store.read(STATE, {}) or {}

    # ------------------------------------------------------------ the round

    def on_round(self, ann):
        """A (validated) round announcement -> messages to publish (possibly none)."""
        day, rnd = ann["day"], ann["round"]
        st = self.state
        if st.get("day") == day and st.get("round") == rnd:
            # Already reported this round: re-send only what was not confirmed sent.
            return [] if st.get("sent") else self._outbox()
        missing = [b for b in ann["brokers"] if b not in self.keys]
        if missing:
            self.log("no key for mask broker(s)", missing)
            return []
        frames = ann["frames"]
        values = plan.to_quanta(plan.resample(self.plan_wh, frames), ann["quantum_wh"])
        report_id = _hex(self.urandom(16))
        seeds = [self.urandom(protocol.SEED_LEN) for _ in ann["brokers"]]
        mask = masking.mask_from_seeds(seeds, frames)
        masked = masking.add_plan(mask, values)
        out = [[protocol.t_plan(self.id), protocol.make_plan_report(
            self.id, day, rnd, report_id, self.mag, masked)]]
        for b, s in zip(ann["brokers"], seeds):
            ad = protocol.mask_ad(b, self.id, day, rnd, report_id)
            blob = seal.seal(self.keys[b], ad, s, self.urandom(seal.NONCE_LEN))
            out.append([protocol.t_mask(b, self.id),
                        protocol.make_mask_report(self.id, day, rnd, report_id, blob)])
        # Persist before publishing.  Only the sealed seeds are kept (the outbox); the mask
        # itself is kept as a digest for bookkeeping, never in the clear.
        self.state = {
            "day": day, "round": rnd, "start": ann["start"], "frame_s": ann["frame_s"],
            "frames": frames, "quantum_wh": ann["quantum_wh"], "report_id": report_id,
            "plan": values, "mask_sha256": _hex(hashlib.sha256(mask).digest()),
            "outbox": out, "sent": False, "adjustment": None, "adjusted": None,
        }
        self.store.write(STATE, self.state)
        return self._outbox()

    def _outbox(self):
        return [(t, protocol.encode(m)) for t, m in self.state.get("outbox", [])]

    def mark_sent(self):
        if self.state and not self.state.get("sent"):
            self.state["sent"] = True
            self.store.write(STATE, self.state)

    def on_adjustment(self, obj):
        """A decoded adjustment; returns a reason string if ignored, else None."""
        st = self.state
        if not st:
            return "no_plan"
        try:
            day, rnd, group, moves, curtail, expires = protocol.parse_adjustment(obj, st["frames"])
        except ValueError as e:
            return str(e)
        if day != st["day"] or rnd != st["round"]:
            return "other_round"
        st["adjustment"] = {"group": group, "moves": moves, "curtail": curtail,
                            "expires": expires}
        st["adjusted"] = plan.apply_adjustment(st["plan"], moves, curtail)
        self.store.write(STATE, st)
        return None

    # ------------------------------------------------------------ the relay

    def current_plan(self):
        st = self.state
        if not st:
            return None
        return st["adjusted"] if st.get("adjusted") is not None else st["plan"]

    def frame(self, now):
        st = self.state
        if not st:
            return None
        return plan.frame_at(now, st["start"], st["frame_s"], st["frames"])

    def relay_on(self, now, safe_state=False):
        """Relay state for time `now` (None = time unknown): the stored plan for the current
        frame, else the configured safe state."""
        k = self.frame(now)
        if k is None:
            return safe_state
        return self.current_plan()[k] > 0
