"""The coordinator's Prometheus samples (``--metrics-port``; backend/common/metrics.py serves them).

Every value is read from the running daemon when scraped; nothing is counted twice.  Names are
prefixed ``hems_coordinator_``.  Per-round values are those of the current round (the newest one
announced); ``round_phase`` has one sample per open round.  Counters count this process (a
restarted coordinator starts from zero, except ``restarts`` and the round latency, which come from
the journal).
"""

from __future__ import annotations

from collections import Counter

from backend.common.metrics import Sample
from backend.coordinator.daemon import Daemon
from backend.coordinator.lifecycle import Phase
from backend.coordinator.mqtt_adapter import MqttAdapter

P = "hems_coordinator_"


def samples(d: Daemon, adapter: MqttAdapter) -> list[Sample]:
    out = [Sample(P + "connected", "gauge", "1 while both MQTT connections are up.",
                  int(adapter.connected)),
           Sample(P + "connects_total", "counter", "MQTT connections made.", adapter.connects)]
    for r in d.open:
        out.append(Sample(P + "round_phase", "gauge",
                          "1 for each open round, labelled with its phase (lifecycle.py).", 1,
                          {"day": r.s.day, "round": str(r.s.round), "phase": r.phase.value}))
    done = sum(1 for r, _ in d.finished if r.life.adjusted)
    out.append(Sample(P + "rounds_completed_total", "counter",
                      "Rounds whose adjustments were all acknowledged by the broker.",
                      done + sum(1 for r in d.open if r.phase is Phase.SERVING)))
    out.append(Sample(P + "rounds_failed_total", "counter", "Rounds that could not complete.",
                      sum(1 for r, _ in d.finished if r.phase is Phase.FAILED)))
    c = d.current
    if c is None:
        return out
    ledger = c.ledger
    out += [
        Sample(P + "reports_accepted_total", "counter", "Plan reports accepted this round.",
               c.reports_held()),
        Sample(P + "collection_open", "gauge", "1 while plan reports are being collected.",
               int(c.phase is Phase.COLLECTING)),
    ]
    for key, n in sorted(c.rejections.counts.items()):
        kind, _, reason = key.partition(":")
        out.append(Sample(P + "rejected_total", "counter",
                          "Messages rejected, by message kind and reason.", n,
                          {"kind": kind, "reason": reason}))
    out.append(Sample(P + "groups_released_total", "counter",
                      "Group sums released by the mask brokers.",
                      len(ledger.released) if ledger is not None else 0))
    refused = Counter(r["reason"] for r in (ledger.refused if ledger is not None else []))
    for reason, n in sorted(refused.items()):
        out.append(Sample(P + "groups_refused_total", "counter",
                          "Group sums refused by the mask brokers, by reason.", n,
                          {"reason": reason}))
    excluded = Counter(e.reason for e in c.excluded.values())
    for reason, n in sorted(excluded.items()):
        out.append(Sample(P + "excluded_homes", "gauge",
                          "Accepted homes left out of the adjustment, by reason.", n,
                          {"reason": reason}))
    out += [
        Sample(P + "late_homes", "gauge", "Homes whose plan report came after the deadline.",
               len(c.late_homes)),
        Sample(P + "adjusted_homes", "gauge", "Adjustments acknowledged by the broker.",
               c.adjusted_homes),
        Sample(P + "regroup_rounds", "gauge", "Refinements asked for this round.",
               c.regroup_rounds),
        Sample(P + "restarts", "gauge", "Earlier processes of this round (from the journal).",
               c.restarts),
        Sample(P + "ingest_connected", "gauge",
               "1 while the plan ingest connection (and every --workers process) is subscribed.",
               int(adapter.bulk.connected and (c.pool is None or c.pool.up))),
    ]
    if c.announced_at is not None and c.finished_at is not None:
        out.append(Sample(P + "round_latency_seconds", "gauge",
                          "From the announcement to the last adjustment acknowledged.",
                          round(c.finished_at - c.announced_at, 3)))
    for phase, s in c.timings.items():
        out.append(Sample(P + "phase_seconds", "gauge",
                          "Time spent per phase by this process.", round(s, 6),
                          {"phase": phase.removesuffix("_s")}))
    return out
