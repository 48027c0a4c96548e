"""Transfer throughput, fan-out cost and memory on a 3-node Ray cluster on this machine.

Run from the repository root: ``.venv/bin/python -m benchmarks.transfer``.

A head and two workers, each its own raylet on its own loopback IP, and a real
``castray serve --ray-address``; then, side by side in one run:

- unicast of a 1 GiB random file between endpoints on two Ray nodes, against ``cp`` of the
  same file (plus ``sync`` of the copy, since CastRay fsyncs) and raw Ray (the same bytes
  ``ray.put`` in chunks on one node and ``ray.get`` on the other, no disk, no hashing);
- broadcast of that file to the endpoints of the two other nodes, against as many parallel
  ``cp``, and the source's egress (its ``bytes_sent`` counter) over the file size;
- a 4 GiB unicast: peak object-store use (all nodes) and peak RSS of CastRay's processes;
- 1,000 files of 64 KiB, unicast, 16 in flight: files per second.

Targets (issue #3): unicast >= 0.8x cp; broadcast <= 1.25x parallel cp; egress <= 1.5x;
4 GiB with <= 512 MiB peak object store; >= 50 small files/s.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import psutil

from tests.harness import transfers as tx
from tests.harness.raycluster import RayCluster, running_cluster
from tests.harness.server import CastRayServer, start_server

HEAD, WORKER_A, WORKER_B = "127.0.0.20", "127.0.0.21", "127.0.0.22"
SRC, DST_A, DST_B = f"home-{HEAD}", f"home-{WORKER_A}", f"home-{WORKER_B}"
CLIENT_THREADS = 8
"""Requests the small-files client keeps in flight (it shares the machine's two cores)."""
GIB = 1024**3
MIB = 1024**2


def timed(action: Any) -> tuple[float, Any]:
    """Seconds ``action`` takes, starting with no dirty pages left by the steps before."""
    subprocess.run(["sync"], check=True)
    started = time.perf_counter()
    result = action()
    return time.perf_counter() - started, result


def cp(source: Path, targets: list[Path]) -> float:
    """Seconds for parallel ``cp`` + ``sync`` of each copy."""
    subprocess.run(["sync"], check=True)
    started = time.perf_counter()
    procs = [subprocess.Popen(["sh", "-c", f'cp "{source}" "{t}" && sync "{t}"']) for t in targets]
    for proc in procs:
        assert proc.wait() == 0
    seconds = time.perf_counter() - started
    for target in targets:
        target.unlink()
    return seconds


RAW_RAY = r"""
import sys, time, ray, numpy as np
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy as Pin
ray.init(address=sys.argv[1], log_to_driver=False)
nodes = {n["NodeManagerAddress"]: n["NodeID"] for n in ray.nodes() if n["Alive"]}
size, chunk, window = int(sys.argv[4]), 8 * 1024 * 1024, 8

@ray.remote(num_cpus=0)
class Producer:
    def make(self, n):
        return np.ones(n, dtype=np.uint8)

@ray.remote(num_cpus=0)
class Consumer:
    def take(self, data):
        return len(data)

p = Producer.options(scheduling_strategy=Pin(nodes[sys.argv[2]], soft=False)).remote()
c = Consumer.options(scheduling_strategy=Pin(nodes[sys.argv[3]], soft=False)).remote()
ray.get([p.make.remote(1), c.take.remote(b"")])
start = time.perf_counter()
pending, done = [], 0
for offset in range(0, size, chunk):
    pending.append(c.take.remote(p.make.remote(min(chunk, size - offset))))
    if len(pending) >= window:
        ready, pending = ray.wait(pending, num_returns=1)
        done += sum(ray.get(ready))
done += sum(ray.get(pending))
assert done == size
print(time.perf_counter() - start)
"""


def raw_ray(cluster: RayCluster, size: int) -> float:
    env = cluster.env()
    out = subprocess.run(
        [sys.executable, "-c", RAW_RAY, cluster.address, HEAD, WORKER_A, str(size)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return float(out.stdout.strip().splitlines()[-1])


class Sampler:
    """Peak object-store use (sum over nodes) and peak private RSS of CastRay's processes."""

    def __init__(self, cluster: RayCluster, server: CastRayServer) -> None:
        self._cluster = cluster
        self._server_pid = server.process.pid
        self.peak_store = 0
        self.peak_rss = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                summary = httpx.get(f"{self._cluster.dashboard_url}/nodes?view=summary", timeout=5)
                used = sum(
                    n["raylet"].get("objectStoreUsedMemory", 0)
                    for n in summary.json()["data"]["summary"]
                )
                self.peak_store = max(self.peak_store, used)
            except (httpx.HTTPError, KeyError, ValueError):
                pass
            self.peak_rss = max(self.peak_rss, self._castray_rss())
            self._stop.wait(0.2)

    def _castray_rss(self) -> int:
        total = 0
        for proc in psutil.process_iter(["pid", "cmdline"]):
            try:
                cmd = " ".join(proc.info["cmdline"] or [])
                ours = proc.info["pid"] == self._server_pid or "castray.agent" in cmd
                if ours or cmd.startswith("ray::Endpoint"):
                    # Private memory: the object store's shared pages are counted above.
                    info = proc.memory_info()
                    total += info.rss - info.shared
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
        return total


def small_files(server: CastRayServer, count: int, size: int) -> float:
    """Files per second, from the first request to the last file committed (server clock)."""
    payload = os.urandom(size)
    for i in range(count):
        tx.upload_bytes(server, f"small-{i:04d}.bin", payload)

    client = server.client()

    def one(i: int) -> str:
        body = {"source_node": SRC, "file": f"small-{i:04d}.bin", "recipients": [DST_A]}
        response = client.post("/api/transfers", json=body)
        assert response.status_code == 202, response.text
        return str(response.json()["transfer_id"])

    started = time.time()
    with client, concurrent.futures.ThreadPoolExecutor(CLIENT_THREADS) as pool:
        ids = set(pool.map(one, range(count)))
    done = [tx.wait_finished(server, transfer_id, timeout=600) for transfer_id in ids]
    assert {t["status"] for t in done} == {"completed"}, {t["status"] for t in done}
    last = max(datetime.fromisoformat(t["finished_at"]).timestamp() for t in done)
    return count / (last - started)


Rows = list[tuple[str, str, str]]


def measure_unicast(cluster: RayCluster, server: CastRayServer, root: Path) -> Rows:
    library_file = server.data_dir / "library" / "one-gib.bin"
    mb = GIB / MIB
    seconds, done = timed(
        lambda: tx.send(
            server, source_node=SRC, file="one-gib.bin", recipients=[DST_A], timeout=900
        )
    )
    assert done["status"] == "completed", done
    cp_seconds = cp(library_file, [root / "copy-1"])
    raw_seconds = raw_ray(cluster, GIB)
    return [
        ("unicast 1 GiB: CastRay", f"{mb / seconds:.0f} MB/s", ""),
        ("unicast 1 GiB: cp + sync", f"{mb / cp_seconds:.0f} MB/s", ""),
        ("unicast 1 GiB: raw Ray put/get", f"{mb / raw_seconds:.0f} MB/s", ""),
        ("CastRay / cp", f"{cp_seconds / seconds:.2f}x", "target >= 0.8x"),
        ("CastRay / raw Ray", f"{raw_seconds / seconds:.2f}x", ""),
    ]


def measure_broadcast(server: CastRayServer, root: Path) -> Rows:
    library_file = server.data_dir / "library" / "one-gib.bin"
    sent_before = server.nodes()[SRC]["counters"]["bytes_sent"]
    seconds, done = timed(
        lambda: tx.send(server, source_node=SRC, file="one-gib.bin", mode="broadcast", timeout=900)
    )
    assert done["status"] == "completed", done
    time.sleep(1.5)  # counters arrive with the agent's next endpoint update
    egress = server.nodes()[SRC]["counters"]["bytes_sent"] - sent_before
    recipients = len(done["recipients"])
    cp_seconds = cp(library_file, [root / f"copy-{i}" for i in range(recipients)])
    return [
        (f"broadcast 1 GiB to {recipients}: CastRay", f"{seconds:.1f} s", ""),
        (f"broadcast: {recipients} parallel cp + sync", f"{cp_seconds:.1f} s", ""),
        ("broadcast time / parallel cp", f"{seconds / cp_seconds:.2f}x", "target <= 1.25x"),
        ("source egress / file size", f"{egress / GIB:.2f}x", "target <= 1.5x"),
    ]


def measure_big(cluster: RayCluster, server: CastRayServer, size: str) -> Rows:
    big = tx.generate(server, "big.bin", size, "pattern")
    with Sampler(cluster, server) as sampler:
        seconds, done = timed(
            lambda: tx.send(
                server, source_node=SRC, file="big.bin", recipients=[DST_B], timeout=1800
            )
        )
    assert done["status"] == "completed", done
    return [
        (f"unicast {size}: CastRay", f"{big['size'] / MIB / seconds:.0f} MB/s", ""),
        (
            "peak object store (all nodes)",
            f"{sampler.peak_store / MIB:.0f} MiB",
            "target <= 512 MiB",
        ),
        ("peak private RSS, CastRay processes", f"{sampler.peak_rss / MIB:.0f} MiB", ""),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--big", default="4GB", help="size of the memory-bound unicast")
    parser.add_argument("--small-files", type=int, default=1000)
    parser.add_argument(
        "--parts", default="unicast,broadcast,big,small", help="which measurements to run"
    )
    args = parser.parse_args()
    parts = set(args.parts.split(","))

    root = Path(tempfile.mkdtemp(prefix="castray-bench-"))
    rows: Rows = []
    try:
        with running_cluster(root, HEAD, WORKER_A, WORKER_B, object_store_bytes=2 * GIB) as cluster:
            server = start_server(root / "data", "--ray-address", cluster.address)
            try:
                server.wait_alive(3)
                if parts & {"unicast", "broadcast"}:
                    tx.generate(server, "one-gib.bin", "1GB", "random")
                if "unicast" in parts:
                    rows += measure_unicast(cluster, server, root)
                if "broadcast" in parts:
                    rows += measure_broadcast(server, root)
                if "big" in parts:
                    rows += measure_big(cluster, server, args.big)
                if "small" in parts:
                    rate = small_files(server, args.small_files, 64 * 1024)
                    rows.append(
                        (
                            f"{args.small_files} files of 64 KiB, unicast",
                            f"{rate:.0f} files/s",
                            "target >= 50",
                        )
                    )
            finally:
                server.stop()
    finally:
        shutil.rmtree(root, ignore_errors=True)
        print_table(rows)


def print_table(rows: list[tuple[str, str, str]]) -> None:
    if not rows:
        return
    width = max(len(r[0]) for r in rows)
    print(f"\n| {'measure':<{width}} | {'result':>12} | {'':<18} |")
    print(f"|{'-' * (width + 2)}|{'-' * 14}|{'-' * 20}|")
    for name, value, note in rows:
        print(f"| {name:<{width}} | {value:>12} | {note:<18} |")


if __name__ == "__main__":
    main()
