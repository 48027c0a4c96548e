"""Whose CPU is it? The machine's core-seconds over a window, split by who spent them.

A figure for the whole machine ("42 core-seconds per GiB") says nothing of what CastRay could
change. Every process's CPU time is read before and after (``psutil``), and each is put in
one share by its command line:

- **CastRay's data plane**: the endpoint actors (``ray::Endpoint``), which receive, hash,
  write and forward the bytes;
- **CastRay's control plane**: the agent (``-m castray.agent``) and the server
  (``-m castray serve``);
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
from typing import Any

import psutil

SHARES = (
    "CastRay data plane (endpoints)",
    "CastRay control plane (agent, server)",
    "Ray (raylets, GCS, Ray's agents)",
    "the kernel (emulated network, interrupts)",
    "the benchmark (its HTTP client)",
    "other processes",
)
DATA, CONTROL, RAY, KERNEL, BENCHMARK, OTHER = SHARES

Snapshot = tuple[float, dict[tuple[int, float], tuple[str, float]]]


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


def snapshot() -> Snapshot:
    """The machine's busy core-seconds so far, and each process's (keyed by pid and start)."""
    times = psutil.cpu_times()
    busy = sum(times) - times.idle - getattr(times, "iowait", 0.0)
    processes: dict[tuple[int, float], tuple[str, float]] = {}
    for process in psutil.process_iter(["cmdline", "cpu_times", "create_time", "name"]):
        info = process.info
        spent = info.get("cpu_times")
        if spent is None or info.get("create_time") is None:
            continue  # gone, or not ours to read
        key = (process.pid, info["create_time"])
        processes[key] = (
            share_of(process.pid, info.get("cmdline") or []),
            spent.user + spent.system,
        )
    return busy, processes


def spent(before: Snapshot, after: Snapshot) -> dict[str, float]:
    """Core-seconds each share spent between two snapshots (they add up to the machine's)."""
    result = dict.fromkeys(SHARES, 0.0)
    for key, (share, seconds) in after[1].items():
        start = before[1].get(key, (share, 0.0))[1]
        result[share] += max(0.0, seconds - start)
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
