"""How long discovery and connecting take, with two external clusters on this machine.

Run from the repository root: ``.venv/bin/python -m benchmarks.discovery``.

Starts two ``ray start`` clusters (one of two nodes) and a real ``castray serve``, then
measures ``GET /api/cluster/discover`` (p50/p99 over many calls, against ``/api/health`` on
the same server as the floor) and connect / disconnect of each cluster. Target (issue #4):
discovery answers in <= 0.5 s, so calling it often is harmless.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import httpx

from tests.harness.raycluster import running_cluster
from tests.harness.server import start_server


def timed_get(client: httpx.Client, path: str, count: int) -> list[float]:
    samples = []
    for _ in range(count):
        started = time.perf_counter()
        client.get(path).raise_for_status()
        samples.append((time.perf_counter() - started) * 1000)
    return samples


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3, help="connect/disconnect rounds")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="castray-bench-"))
    rows: list[tuple[str, float, float]] = []
    try:
        with (
            running_cluster(root / "a", "127.0.0.70", "127.0.0.71") as a,
            running_cluster(root / "b", "127.0.0.72") as b,
        ):
            server = start_server(root / "data")
            try:
                server.wait_alive(1)
                with server.client() as client:
                    for path in ("/api/health", "/api/cluster/discover"):
                        samples = timed_get(client, path, args.calls)
                        rows.append((f"GET {path}", pct(samples, 50), pct(samples, 99)))
                    for label, address in (("GCS", a.address), ("dashboard", b.dashboard_url)):
                        connects, disconnects = [], []
                        for _ in range(args.rounds):
                            started = time.perf_counter()
                            response = client.post(
                                "/api/cluster/connect-external", json={"cluster_address": address}
                            )
                            response.raise_for_status()
                            connects.append((time.perf_counter() - started) * 1000)
                            started = time.perf_counter()
                            client.delete("/api/cluster/disconnect-external").raise_for_status()
                            disconnects.append((time.perf_counter() - started) * 1000)
                        rows.append(
                            (
                                f"connect by {label} (endpoints alive)",
                                statistics.median(connects),
                                max(connects),
                            )
                        )
                        rows.append(
                            (
                                f"disconnect ({label})",
                                statistics.median(disconnects),
                                max(disconnects),
                            )
                        )
            finally:
                server.stop()
    finally:
        shutil.rmtree(root, ignore_errors=True)
    width = max(len(r[0]) for r in rows)
    print(
        f"\n{args.calls} discovery calls, {args.rounds} connect rounds; two clusters, three nodes"
    )
    print(f"| {'measure':<{width}} | p50/median ms | p99/max ms |")
    print(f"|{'-' * (width + 2)}|---------------|------------|")
    for name, mid, top in rows:
        print(f"| {name:<{width}} | {mid:13.1f} | {top:10.1f} |")
    print("target: discovery <= 500 ms")


if __name__ == "__main__":
    main()
