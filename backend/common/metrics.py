"""Prometheus metrics for the services: text exposition format over a tiny asyncio HTTP server.

A service passes a `collect()` function returning its current samples; nothing is kept here, so
the metrics are always exactly the service's own counters (its Rejections, its stats).  Served on
an optional port (`--metrics-port`), bound to loopback unless told otherwise.
Format: https://prometheus.io/docs/instrumenting/exposition_formats/ (text format 0.0.4).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

log = logging.getLogger("hems.metrics")


@dataclass(frozen=True)
class Sample:
    name: str
    kind: str  # "counter" | "gauge"
    help: str
    value: float
    labels: dict[str, str] = field(default_factory=dict)


def _escape(v: str) -> str:
    return v.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def render(samples: Iterable[Sample]) -> str:
    """Samples -> exposition text; one HELP/TYPE header per metric name, in first-seen order."""
    by_name: dict[str, list[Sample]] = {}
    for s in samples:
        by_name.setdefault(s.name, []).append(s)
    out: list[str] = []
    for name, group in by_name.items():
        out.append(f"# HELP {name} {group[0].help}")
        out.append(f"# TYPE {name} {group[0].kind}")
        for s in group:
            lab = ",".join(f'{k}="{_escape(v)}"' for k, v in sorted(s.labels.items()))
            value = repr(float(s.value)) if s.value != int(s.value) else str(int(s.value))
            out.append(f"{name}{{{lab}}} {value}" if lab else f"{name} {value}")
    return "\n".join(out) + "\n"


async def serve(
    port: int, collect: Callable[[], Iterable[Sample]], host: str = "127.0.0.1"
) -> asyncio.Server:
    """Start serving GET /metrics; the caller owns the returned server (close() it)."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await asyncio.wait_for(reader.readline(), 5)
            while (await asyncio.wait_for(reader.readline(), 5)) not in (b"\r\n", b"\n", b""):
                pass  # headers are not needed
            parts = line.split()
            if len(parts) >= 2 and parts[0] == b"GET" and parts[1].split(b"?")[0] == b"/metrics":
                body = render(collect()).encode()
                head = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\n"
            else:
                body = b"not found\n"
                head = b"HTTP/1.1 404 Not Found\r\nContent-Type: text/plain\r\n"
            writer.write(head + b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body))
            writer.write(body)
            await writer.drain()
        except (TimeoutError, ConnectionError) as e:
            log.debug("metrics request dropped: %s", e)
        except Exception:  # a scrape must never take the service down
            log.exception("metrics request failed")
        finally:
            writer.close()

    server = await asyncio.start_server(handle, host, port)
    log.info("metrics on http://%s:%d/metrics", host, port)
    return server
