"""Latency of ``GET /api/status`` with 32 endpoints under 50 concurrent clients.

Run from the repository root: ``.venv/bin/python -m benchmarks.status_latency``
(needs ``wrk``: ``apt-get install wrk``).

It starts a real ``castray serve`` (embedded Ray, ``--demo-nodes 31`` plus the head's own
endpoint: 32 endpoints), waits until all are alive, and drives 50 keep-alive connections back
to back with ``wrk`` (a C load generator, so the client does not eat the server's CPU).
``/api/health`` on the same server is the floor (routing, token check, JSON); the ratio says
what ``/api/status`` costs on top. Target (issue #2): ``/api/status`` p99 <= 20 ms.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import httpx

from tests.harness.server import start_server

ENDPOINTS = 32
CLIENTS = 50
WARMUP_SECONDS = 2


def wrk(url: str, seconds: int) -> tuple[float, float, float]:
    """p50 ms, p99 ms and requests/s from ``wrk --latency``."""
    out = subprocess.run(
        ["wrk", "-t1", f"-c{CLIENTS}", f"-d{seconds}s", "--latency", url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout

    def ms(label: str) -> float:
        match = re.search(rf"^\s*{label}\s+([\d.]+)(us|ms|s)\s*$", out, re.MULTILINE)
        assert match, out
        value, unit = float(match[1]), match[2]
        return {"us": value / 1000, "ms": value, "s": value * 1000}[unit]

    rate = re.search(r"Requests/sec:\s+([\d.]+)", out)
    assert rate, out
    return ms("50%"), ms("99%"), float(rate[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=10, help="duration of each measurement")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("this benchmark needs wrk: apt-get install wrk")

    root = Path(tempfile.mkdtemp(prefix="castray-bench-"))
    server = start_server(root / "data", "--demo-nodes", str(ENDPOINTS - 1))
    try:
        server.wait_alive(ENDPOINTS, timeout=300)
        size = len(httpx.get(server.url + "/api/status").content)
        results = {}
        for path in ("/api/health", "/api/status"):
            wrk(server.url + path, WARMUP_SECONDS)
            results[path] = wrk(server.url + path, args.seconds)
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)

    floor = results["/api/health"][1]
    print(f"\n{ENDPOINTS} endpoints, {CLIENTS} concurrent clients (wrk), {args.seconds} s each;")
    print(f"/api/status answer: {size} bytes")
    print("| path        | p50 ms | p99 ms |  req/s | p99 / health p99 |")
    print("|-------------|--------|--------|--------|------------------|")
    for path, (p50, p99, rate) in results.items():
        print(f"| {path:<11} | {p50:6.2f} | {p99:6.2f} | {rate:6.0f} | {p99 / floor:15.2f}x |")
    verdict = "met" if results["/api/status"][1] <= 20 else "NOT met"
    print(f"target /api/status p99 <= 20 ms: {verdict}")


if __name__ == "__main__":
    main()
