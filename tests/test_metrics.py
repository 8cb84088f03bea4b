"""The Prometheus exposition: format and the HTTP endpoint (real socket on loopback)."""

from __future__ import annotations

import asyncio

from backend.common.broker import free_port
from backend.common.metrics import Sample, render, serve


def test_render_groups_samples_and_escapes_labels() -> None:
    text = render([
        Sample("hems_reports_total", "counter", "Reports.", 3, {"status": "accepted"}),
        Sample("hems_reports_total", "counter", "Reports.", 1, {"reason": 'bad "x"'}),
        Sample("hems_round_latency_seconds", "gauge", "Latency.", 0.25),
    ])
    assert text.splitlines() == [
        "# HELP hems_reports_total Reports.",
        "# TYPE hems_reports_total counter",
        'hems_reports_total{status="accepted"} 3',
        'hems_reports_total{reason="bad \\"x\\""} 1',
        "# HELP hems_round_latency_seconds Latency.",
        "# TYPE hems_round_latency_seconds gauge",
        "hems_round_latency_seconds 0.25",
    ]


def test_endpoint_serves_current_values() -> None:
    counter = {"n": 0}

    def collect() -> list[Sample]:
        counter["n"] += 1
        return [Sample("hems_scrapes_total", "counter", "Scrapes.", counter["n"])]

    async def scenario() -> tuple[bytes, bytes, bytes]:
        port = free_port()
        server = await serve(port, collect)
        try:
            async def get(path: str) -> bytes:
                r, w = await asyncio.open_connection("127.0.0.1", port)
                w.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
                await w.drain()
                data = await asyncio.wait_for(r.read(), 5)
                w.close()
                return data

            return await get("/metrics"), await get("/metrics"), await get("/nope")
        finally:
            server.close()
            await server.wait_closed()

    first, second, missing = asyncio.run(asyncio.wait_for(scenario(), 20))
    assert first.startswith(b"HTTP/1.1 200") and b"hems_scrapes_total 1" in first
    assert b"hems_scrapes_total 2" in second
    assert missing.startswith(b"HTTP/1.1 404")
