"""Which S3 client CastRay fetches origins with: boto3 against obstore, side by side.

Run from the repository root: ``.venv/bin/python -m benchmarks.s3_clients`` (obstore is not a
dependency: ``.venv/bin/pip install obstore`` first).

A moto S3 server in its own process on a loopback port holds one random object; each client
reads it whole as CastRay's fetch does (ranges of 8 MiB, 4 at a time), alternated over
``--reps`` repetitions. The table has the medians of the wall time and of the client's CPU
time per GiB (the server's CPU is not counted: it is the same for both).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import httpx

PART = 8 << 20
BUCKET = "castray-bench"
KEY = "object.bin"


def _wait_answering(url: str) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.TransportError:
            time.sleep(0.1)
    raise RuntimeError(f"no S3 server answered at {url}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=256, help="object size in MiB")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--port", type=int, default=47123)
    args = parser.parse_args()
    size = args.mib << 20
    endpoint = f"http://127.0.0.1:{args.port}"
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(args.port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_answering(endpoint)
        print(_run(endpoint, size, args.reps))
    finally:
        server.terminate()
        server.wait(10)


def _run(endpoint: str, size: int, reps: int) -> str:
    import boto3
    import obstore
    from obstore.store import S3Store

    keys = {"aws_access_key_id": "bench", "aws_secret_access_key": "bench"}
    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", **keys)
    s3.create_bucket(Bucket=BUCKET)
    s3.put_object(Bucket=BUCKET, Key=KEY, Body=os.urandom(size))
    store = S3Store(
        BUCKET,
        endpoint=endpoint,
        region="us-east-1",
        access_key_id="bench",
        secret_access_key="bench",
        client_options={"allow_http": True},
    )
    ranges = [(start, min(start + PART, size)) for start in range(0, size, PART)]

    def with_boto3(span: tuple[int, int]) -> int:
        answer = s3.get_object(Bucket=BUCKET, Key=KEY, Range=f"bytes={span[0]}-{span[1] - 1}")
        return len(answer["Body"].read())

    def with_obstore(span: tuple[int, int]) -> int:
        return len(bytes(obstore.get_range(store, KEY, start=span[0], end=span[1])))

    contenders: dict[str, Callable[[tuple[int, int]], int]] = {
        "boto3": with_boto3,
        "obstore": with_obstore,
    }
    results: dict[str, list[tuple[float, float]]] = {name: [] for name in contenders}
    for _ in range(reps):
        for name, read in contenders.items():
            cpu, began = time.process_time(), time.monotonic()
            with ThreadPoolExecutor(4) as pool:
                assert sum(pool.map(read, ranges)) == size
            results[name].append((time.monotonic() - began, time.process_time() - cpu))
    lines = ["| client | median s | MB/s | client CPU s per GiB |", "|---|---|---|---|"]
    for name, runs in results.items():
        wall = statistics.median(run[0] for run in runs)
        cpu = statistics.median(run[1] for run in runs)
        lines.append(
            f"| {name} | {wall:.2f} | {size / wall / 1e6:.0f} | {cpu * 2**30 / size:.2f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
