"""Whose CPU is it? The machine's core-seconds over a window, split by who spent them.

A figure for the whole machine ("42 core-seconds per GiB") says nothing of what CastRay could
change. Every process's CPU time is read before and after (``psutil``), and each is put in
one share by its command line:

- **CastRay's data plane**: the endpoint actors (``ray::Endpoint``), which receive, hash,
  write and forward the bytes;
- **CastRay's control plane**: the agent (``-m castray.agent``) and the server
  (``-m castray serve``);
- **Ray's threads inside CastRay's processes**: an endpoint is a Ray worker and the agent a
  Ray driver, each with Ray's own native threads (``worker.io``, ``client.poll0``, gRPC's):
  the actor calls' transport, Ray's not CastRay's code. They are told apart from the Python
  threads by name: Ray names its native threads, a Python thread keeps the process's name
  (or the ``ray::`` title Ray gives the thread running an actor call). (py-spy
  sees the Python threads only, and a thread in a system call as idle: this split is what
  its profile cannot show.)
- **Ray**: raylets, GCS, Ray's own agents and idle workers;
- **the benchmark**: this process, the client that starts the transfers and waits on them
  over HTTP (its cost is the measurement's, not CastRay's);
- **the kernel**: kernel threads (``ksoftirqd``, ``kworker``: on a lab, the emulated
  network's veths, bridge and shaping) and what is left of the machine's busy time once every
  process is counted (interrupts and softirqs the kernel charges to no task);
- **other processes**: anything else on the machine, other users' clusters included.

A process that starts and ends inside the window is missed (its time lands in "the
kernel"); the endpoints, agent, server and Ray live throughout a run.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil

SHARES = (
    "CastRay data plane (endpoints)",
    "CastRay control plane (agent, server)",
    "Ray's threads inside CastRay's processes",
    "Ray (raylets, GCS, Ray's agents)",
    "the kernel (emulated network, interrupts)",
    "the benchmark (its HTTP client)",
    "other processes",
)
DATA, CONTROL, RAY_INSIDE, RAY, KERNEL, BENCHMARK, OTHER = SHARES

Snapshot = tuple[float, dict[tuple[int, float], tuple[str, float, float]]]
"""The machine's busy core-seconds; per process its share, CPU time, and Ray's threads' part."""


def share_of(pid: int, command: list[str]) -> str:
    """The share a process's command line puts it in (none: a kernel thread)."""
    if pid == os.getpid():
        return BENCHMARK
    if not command:
        return KERNEL
    line = " ".join(command)
    if line.startswith("ray::Endpoint"):
        return DATA
    if "-m castray.agent" in line or "-m castray serve" in line:
        return CONTROL
    if line.startswith("ray::") or "/ray/" in line or "raylet" in line or "gcs_server" in line:
        return RAY
    return OTHER


def named_threads(process: psutil.Process) -> float:
    """CPU seconds of the process's threads that carry a name of their own (Ray's native
    ones); Python's threads keep the process's name, or the ``ray::`` title of the actor call
    they run. Threads that never ran are not read."""
    try:
        own = Path(f"/proc/{process.pid}/comm").read_text()
        seconds = 0.0
        for thread in process.threads():
            spent = thread.user_time + thread.system_time
            if not spent:
                continue
            name = Path(f"/proc/{process.pid}/task/{thread.id}/comm").read_text()
            if name != own and not name.startswith("ray::"):
                seconds += spent
        return seconds
    except (OSError, psutil.Error):
        return 0.0  # gone meanwhile: its whole time stays in its share


def snapshot() -> Snapshot:
    """The machine's busy core-seconds so far, and each process's (keyed by pid and start)."""
    times = psutil.cpu_times()
    busy = sum(times) - times.idle - getattr(times, "iowait", 0.0)
    processes: dict[tuple[int, float], tuple[str, float, float]] = {}
    for process in psutil.process_iter(["cmdline", "cpu_times", "create_time", "name"]):
        info = process.info
        spent = info.get("cpu_times")
        if spent is None or info.get("create_time") is None:
            continue  # gone, or not ours to read
        share = share_of(process.pid, info.get("cmdline") or [])
        ray_part = named_threads(process) if share in (DATA, CONTROL) else 0.0
        key = (process.pid, info["create_time"])
        processes[key] = (share, spent.user + spent.system, ray_part)
    return busy, processes


def spent(before: Snapshot, after: Snapshot) -> dict[str, float]:
    """Core-seconds each share spent between two snapshots (they add up to the machine's)."""
    result = dict.fromkeys(SHARES, 0.0)
    for key, (share, seconds, ray_part) in after[1].items():
        _, start, ray_start = before[1].get(key, (share, 0.0, 0.0))
        ray_threads = max(0.0, ray_part - ray_start)
        result[RAY_INSIDE] += ray_threads
        result[share] += max(0.0, seconds - start - ray_threads)
    result[KERNEL] += max(0.0, (after[0] - before[0]) - sum(result.values()))
    return result


ALL = "the whole machine"


def measured(run: Callable[[], Any]) -> tuple[dict[str, float], float]:
    """Core-seconds each share spent while ``run`` ran (and ``ALL``), and its wall seconds."""
    before, start = snapshot(), time.monotonic()
    run()
    used = spent(before, snapshot())
    used[ALL] = sum(used.values())
    return used, time.monotonic() - start


def idle_rates(seconds: float) -> dict[str, float]:
    """Core-seconds per second each share takes while nothing is sent."""
    used, wall = measured(lambda: time.sleep(seconds))  # a measurement window, not a wait
    return {share: value / wall for share, value in used.items()}


def per_gib(run: Callable[[], Any], idle: dict[str, float], gib: float) -> dict[str, float]:
    """Each share's core-seconds per GiB that ``run`` moves, above what it takes idle."""
    used, wall = measured(run)
    return {share: (value - idle[share] * wall) / gib for share, value in used.items()}


def medians(runs: list[dict[str, float]]) -> dict[str, float]:
    return {share: statistics.median(run[share] for run in runs) for share in runs[0]}


def described(figures: dict[str, float]) -> str:
    parts = ", ".join(f"{share} {figures[share]:.1f}" for share in SHARES)
    return f"{figures[ALL]:.1f} core-s/GiB ({parts})"
