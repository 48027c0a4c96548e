"""Where a process's CPU goes while something runs: ``py-spy record`` (it comes with Ray)
beside a run, summed by the function each sample was in (self time).

Used by ``benchmarks.lab_uneven --profile`` (a lab host's endpoint is found by its network
namespace, each host's processes living in their own; so are the agent and the server, host
1's) and ``benchmarks.transfer --profile`` (an endpoint by its raylet's address). py-spy
samples with ``--nonblocking`` (it never pauses the process), so its own CPU lands in the
benchmark's "other processes" share, not in CastRay's.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psutil

PY_SPY = Path(sys.executable).with_name("py-spy")


def in_namespace(namespace: str, command: str) -> int | None:
    """The pid of a process of ``namespace`` (``ip netns``) whose command line holds
    ``command`` (processes of other labs or clusters on the machine are in other ones)."""
    wanted = os.stat(f"/run/netns/{namespace}").st_ino
    for process in psutil.process_iter(["cmdline"]):
        if command not in " ".join(process.info.get("cmdline") or []):
            continue
        try:
            if os.stat(f"/proc/{process.pid}/ns/net").st_ino == wanted:
                return int(process.pid)
        except OSError:
            continue  # gone meanwhile
    return None


def on_node(address: str, command: str) -> int | None:
    """The pid of a process whose command line holds ``command`` and that runs under the
    raylet of ``address`` (several raylets on one machine, each on its own loopback IP)."""
    raylet = f"--node_ip_address={address}"
    for process in psutil.process_iter(["cmdline"]):
        if command not in " ".join(process.info.get("cmdline") or []):
            continue
        try:
            if any(raylet in parent.cmdline() for parent in process.parents()):
                return int(process.pid)
        except psutil.Error:
            continue  # gone meanwhile
    return None


@contextmanager
def recording(pids: dict[str, int], directory: Path, rate: int = 100) -> Iterator[None]:
    """py-spy on each of ``pids`` (name: pid) while the block runs; raw stacks in
    ``directory/<name>.txt``."""
    directory.mkdir(parents=True, exist_ok=True)
    record = [str(PY_SPY), "record", "--nonblocking", "-r", str(rate), "-f", "raw"]
    spies = [
        subprocess.Popen(
            [*record, "-o", str(directory / f"{name}.txt"), "-p", str(pid)],
            stdout=subprocess.DEVNULL,
            stderr=(directory / f"{name}.log").open("wb"),
        )
        for name, pid in pids.items()
    ]
    try:
        yield
    finally:
        for spy in spies:
            spy.send_signal(signal.SIGINT)  # py-spy writes what it has on Ctrl+C
        for spy in spies:
            spy.wait(timeout=60)


def self_time(raw: Path, top: int = 8) -> list[tuple[str, float]]:
    """The functions the samples were in, with their share of the samples, most first."""
    counts: Counter[str] = Counter()
    for line in raw.read_text().splitlines():
        stack, _, number = line.rpartition(" ")
        if stack and number.isdigit():
            leaf = stack.rsplit(";", 1)[-1]
            counts[leaf.split(" (")[0] + " (" + _where(leaf) + ")"] += int(number)
    total = sum(counts.values()) or 1
    return [(name, count / total) for name, count in counts.most_common(top)]


def samples(raw: Path) -> int:
    return sum(int(line.rpartition(" ")[2]) for line in raw.read_text().splitlines() if line)


def _where(frame: str) -> str:
    """``file.py`` of a py-spy frame ``name (path/file.py:line)``."""
    inside = frame.rpartition(" (")[2].rstrip(")")
    return Path(inside.split(":")[0]).name


def profiled(run: Callable[[], Any], pids: dict[str, int], directory: Path) -> list[str]:
    """Run ``run`` under py-spy and say, per process, the CPU it took (user and system: py-spy
    sees only Python's threads, and a thread in a system call as idle) and where its
    samples were."""
    before = {name: psutil.Process(pid).cpu_times() for name, pid in pids.items()}
    start = time.monotonic()
    with recording(pids, directory):
        run()
    wall = time.monotonic() - start
    lines = []
    for name, pid in pids.items():
        raw = directory / f"{name}.txt"
        if not raw.exists():
            lines.append(f"{name}: no profile ({(directory / f'{name}.log').read_text()[-200:]})")
            continue
        took = psutil.Process(pid).cpu_times()
        user, system = took.user - before[name].user, took.system - before[name].system
        lines.append(
            f"{name}: {user:.2f} s user, {system:.2f} s system CPU in {wall:.1f} s; "
            f"{samples(raw)} samples at 100 Hz, self time:"
        )
        lines += [f"  {share:5.1%} {function}" for function, share in self_time(raw)]
    return lines
