"""The coordinator's Prometheus samples (``--metrics-port``; backend/common/metrics.py serves them).

Every value is read from the running Coordinator when scraped; nothing is counted twice.  Names are
prefixed ``hems_coordinator_``; counters count this process (a restarted coordinator starts from
zero, except ``restarts`` and the round latency, which come from the journal).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from backend.common.metrics import Sample

if TYPE_CHECKING:
    from backend.coordinator.service import Coordinator

P = "hems_coordinator_"


def samples(c: Coordinator) -> list[Sample]:
    st, ledger, link = c.state, c.ledger, c.link
    out = [
        Sample(P + "reports_accepted_total", "counter", "Plan reports accepted this round.",
               c.reports_held()),
        Sample(P + "collection_open", "gauge", "1 while plan reports are being collected.",
               int(st is not None and not st.closed)),
    ]
    for key, n in sorted(c.rejections.counts.items()):
        kind, _, reason = key.partition(":")
        out.append(Sample(P + "rejected_total", "counter",
                          "Messages rejected, by message kind and reason.", n,
                          {"kind": kind, "reason": reason}))
    out.append(Sample(P + "rounds_completed_total", "counter",
                      "Rounds whose adjustments were all acknowledged by the broker.",
                      int(c.completed)))
    out.append(Sample(P + "groups_released_total", "counter",
                      "Group sums released by the mask brokers.",
                      len(ledger.released) if ledger is not None else 0))
    refused: dict[str, int] = {}
    for r in ledger.refused if ledger is not None else []:
        refused[r["reason"]] = refused.get(r["reason"], 0) + 1
    for reason, n in sorted(refused.items()):
        out.append(Sample(P + "groups_refused_total", "counter",
                          "Group sums refused by the mask brokers, by reason.", n,
                          {"reason": reason}))
    excluded: dict[str, int] = {}
    for e in c.excluded.values():
        excluded[e.reason] = excluded.get(e.reason, 0) + 1
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
        Sample(P + "connected", "gauge", "1 while connected to the MQTT broker.",
               int(link is not None and link.connected)),
        Sample(P + "connects_total", "counter", "MQTT connections made.",
               link.connects if link is not None else 0),
        Sample(P + "ingest_connected", "gauge",
               "1 while the plan ingest connection (and every --workers process) is subscribed.",
               int(c.ingest is not None and c.ingest.connected
                   and all(w.up.is_set() for w in c._workers))),
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
