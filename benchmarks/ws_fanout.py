"""How fast ``/ws`` delivers a burst of events to many clients at once.

Run from the repository root: ``.venv/bin/python -m benchmarks.ws_fanout``.

Starts a real ``castray serve``; opens N WebSocket clients (and one that reads its snapshot and
then nothing, a stalled client), then makes a burst of events through the REST API (group
updates: one event each) and records when every client receives each one. Delivery latency =
arrival time - the event's ``at`` stamp from the server (same machine, same clock). The same
burst is sent to 1 client first, so the table compares fan-out to 200 against a lone client.
Issue #5 asks for 200 concurrent clients who all receive the burst; the clients run in this
one Python process, on the same two cores as the server, so their own parsing is included.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from websockets.asyncio.client import ClientConnection, connect

from tests.harness.server import start_server


@dataclass
class Listener:
    expected: int
    latencies: list[float] = field(default_factory=list)
    last_arrival: float = 0.0
    done: asyncio.Event = field(default_factory=asyncio.Event)


async def listen(ws: ClientConnection, listener: Listener, group: str) -> None:
    async for raw in ws:
        message = json.loads(raw)
        if message["type"] == "group_saved" and message["data"]["group"]["name"] == group:
            now = time.time()
            listener.latencies.append((now - message["at"]) * 1000)
            listener.last_arrival = now
            if len(listener.latencies) == listener.expected:
                listener.done.set()
                return


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


async def burst(base: str, clients: int, events: int, group: str) -> dict[str, float]:
    ws_url = base.replace("http://", "ws://") + "/ws"
    sockets = [await connect(ws_url, max_queue=None) for _ in range(clients)]
    stalled = await connect(ws_url)
    try:
        for ws in [*sockets, stalled]:
            assert json.loads(await ws.recv())["type"] == "snapshot"
        listeners = [Listener(events) for _ in sockets]
        tasks = [
            asyncio.create_task(listen(ws, listener, group))
            for ws, listener in zip(sockets, listeners, strict=True)
        ]
        async with httpx.AsyncClient(base_url=base, timeout=30) as http:
            members = {"name": group, "members": ["home-127.0.0.1"]}
            (await http.post("/api/groups", json=members)).raise_for_status()
            # The create is event 1 of the burst; the rest are updates.
            started = time.time()
            for _ in range(events - 1):
                reply = await http.put(f"/api/groups/{group}", json={"members": members["members"]})
                reply.raise_for_status()
            sent = time.time()
            await asyncio.wait_for(
                asyncio.gather(*(listener.done.wait() for listener in listeners)), 120
            )
            (await http.delete(f"/api/groups/{group}")).raise_for_status()
        for task in tasks:
            task.cancel()
        latencies = [value for listener in listeners for value in listener.latencies]
        delivered = len(latencies)
        last = max(listener.last_arrival for listener in listeners)
        return {
            "clients": clients,
            "events": events,
            "delivered": delivered,
            "expected": clients * events,
            "p50": pct(latencies, 50),
            "p99": pct(latencies, 99),
            "max": max(latencies),
            "publish_s": sent - started,
            "drain_s": last - started,
            "rate": delivered / max(last - started, 1e-9),
        }
    finally:
        for ws in [*sockets, stalled]:
            await ws.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--events", type=int, default=100, help="events in the burst")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="castray-bench-"))
    try:
        server = start_server(root / "data")
        try:
            server.wait_alive(1)
            lone = asyncio.run(burst(server.url, 1, args.events, "bench-lone"))
            many = asyncio.run(burst(server.url, args.clients, args.events, "bench-many"))
        finally:
            server.stop()
    finally:
        shutil.rmtree(root, ignore_errors=True)

    print(f"/ws fan-out: a burst of {args.events} events, plus one stalled client each time")
    print(
        "| clients | delivered       | p50 ms | p99 ms | max ms | burst sent in "
        "| all delivered in | events/s delivered |"
    )
    print(
        "|---------|-----------------|--------|--------|--------|---------------"
        "|------------------|--------------------|"
    )
    for row in (lone, many):
        print(
            f"| {row['clients']:>7} | {row['delivered']:>6}/{row['expected']:<8} "
            f"| {row['p50']:>6.1f} | {row['p99']:>6.1f} | {row['max']:>6.1f} "
            f"| {row['publish_s']:>11.2f} s | {row['drain_s']:>14.2f} s | {row['rate']:>18.0f} |"
        )
    print(f"p99 ratio {args.clients} clients / 1 client: {many['p99'] / lone['p99']:.1f}x")
    complete = many["delivered"] == many["expected"]
    print(f"every client received every event: {'yes' if complete else 'NO'}")


if __name__ == "__main__":
    main()
