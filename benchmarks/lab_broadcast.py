"""Does a broadcast stay flat as hosts grow? One file from host 1 to every other host of a
many-host lab (``castray lab``: network namespaces, each host's link shaped), for N hosts.

Run as root from the repository root: ``.venv/bin/python -m benchmarks.lab_broadcast``
(``--help``; the plot needs ``pip install -e '.[bench]'``).

One lab of the largest N is made once; for each N the recipients are hosts 2..N (the other
hosts idle). Side by side, alternated over ``--reps`` repetitions (medians):

- **castray stream** and **castray object-store**: one multicast to hosts 2..N;
- **N-1 unicasts**: one CastRay stream unicast per recipient, all started at once (what
  ``scp`` to every host does: the source's link carries N-1 copies);
- **Ray's own way**: every recipient's task ``ray.get``s the same chunk objects, which Ray
  pulls from whichever node holds them (``benchmarks/lab_ray_way.py``);
- **one unicast** host 1 to host 2, the yardstick, and the **bound**: size / link rate.

Each time runs from the transfer's creation to its last verified copy (the server's clock).
Also printed: the source's egress over the file size (its ``bytes_sent`` counter), the
machine's CPU use during each contender (two cores: near 100% means the CPU, not the links,
set the pace), and the peak memory of each host's processes.

Targets (issue #13): broadcast at 16 hosts <= 1.3x one unicast; growth from 2 to 16 hosts
<= 1.3x; source egress 1.0x the file.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
from collections import defaultdict
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import psutil

from castray.lab import lab as lab_ops
from castray.lab import network
from castray.lab.shaping import LinkShape
from castray.lab.state import LabState
from tests.harness import transfers as tx
from tests.harness.lab import LabServer

MIB = 1024**2
FILE = "lab-broadcast.bin"
LOOK = 1.0
"""Seconds between looks at a running transfer: its times come from the server's clock, and
more looks would only add their CPU to what is measured."""
CONTENDERS = ("castray stream", "castray object-store", "N-1 unicasts", "Ray's own way")


class Sampler:
    """Peak memory of each host's processes: RSS without shared pages (every Ray process
    maps its node's object store, and libraries are shared; counting them in each process
    would count them many times), summed over the host's processes."""

    def __init__(self, lab: LabState) -> None:
        self._lab = lab
        self.peak_rss: dict[int, int] = defaultdict(int)
        self.peak_total = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        # Every few seconds, one pass over /proc: light, so as not to take the CPU it measures.
        namespaces = {
            (network.NETNS_DIR / h.namespace).stat().st_ino: h.index for h in self._lab.hosts
        }
        while not self._stop.wait(3.0):
            per_host: dict[int, int] = defaultdict(int)
            for proc in psutil.process_iter():
                try:
                    host = namespaces.get(os.stat(f"/proc/{proc.pid}/ns/net").st_ino)
                    if host is not None:
                        info = proc.memory_info()
                        per_host[host] += info.rss - info.shared
                except (OSError, psutil.Error):
                    continue
            for host, rss in per_host.items():
                self.peak_rss[host] = max(self.peak_rss[host], rss)
            self.peak_total = max(self.peak_total, sum(per_host.values()))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def seconds_of(transfers: list[dict[str, Any]]) -> float:
    """From the first creation to the last end, on the server's clock."""
    start = min(datetime.fromisoformat(t["created_at"]) for t in transfers)
    end = max(datetime.fromisoformat(t["finished_at"]) for t in transfers)
    return (end - start).total_seconds()


def egress(server: LabServer) -> int:
    with server.client() as client:
        nodes = client.get("/api/nodes").json()["nodes"]
    return next(n["counters"]["bytes_sent"] for n in nodes if n["id"] == server.node_id(1))


def castray_multicast(server: LabServer, group: str, transport: str) -> float:
    done = tx.send(
        server,
        timeout=1800,
        interval=LOOK,
        source_node=server.node_id(1),
        file=FILE,
        mode="multicast",
        group=group,
        transport=transport,
    )
    assert done["status"] == "completed", done
    assert done["transport"] == transport, done
    return seconds_of([done])


def unicasts(server: LabServer, hosts: list[int], file: str = FILE) -> float:
    """Seconds for one unicast of ``file`` from host 1 to each of ``hosts``, all at once."""
    ids = [
        tx.start(
            server,
            source_node=server.node_id(1),
            file=file,
            recipients=[server.node_id(h)],
            transport="stream",
        )
        for h in hosts
    ]
    done = [tx.wait_finished(server, tid, 1800, LOOK) for tid in ids]
    assert all(d["status"] == "completed" for d in done), done
    return seconds_of(done)


def ray_way(lab: LabState, path: Path, chunk: int, hosts: list[int]) -> float:
    import subprocess

    ips = [lab.hosts[h - 1].address for h in hosts]
    command = [sys.executable, "-m", "benchmarks.lab_ray_way", str(path), str(chunk), *ips]
    argv, env = lab_ops.exec_argv(lab, "h1", command)
    env["PYTHONPATH"] = str(Path.cwd())
    out = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=1800)
    assert out.returncode == 0, out.stderr[-3000:]
    return float(out.stdout.strip().splitlines()[-1])


def timed(run: Callable[[], float]) -> tuple[float, float]:
    """The run's seconds, and the machine's CPU use (% of all cores) while it ran."""
    psutil.cpu_percent(None)
    seconds = run()
    return seconds, psutil.cpu_percent(None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hosts", default="2,4,8,16", help="the host counts N to measure")
    parser.add_argument("--rate", default="100mbit", help="each host link's rate")
    parser.add_argument("--size", default=256, type=int, help="file size, MiB")
    parser.add_argument("--reps", default=3, type=int)
    parser.add_argument("--chunk", default=8, type=int, help="Ray's own way: chunk MiB")
    parser.add_argument("--name", default="bench")
    parser.add_argument("--subnet", default="198.18.60.0/24")
    parser.add_argument("--port", default=0, type=int)
    parser.add_argument("--png", default="benchmarks/lab_broadcast.png")
    parser.add_argument("--skip", default="", help="contenders to leave out, comma-separated")
    args = parser.parse_args()
    counts = sorted(int(n) for n in args.hosts.split(","))
    shape = LinkShape.parse(args.rate)
    size = args.size * MIB
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    contenders = [c for c in CONTENDERS if c not in skip]

    lab_ops.down(args.name)
    lab = lab_ops.up(
        args.name,
        counts[-1],
        shape,
        args.subnet,
        args.port,
        384 * MIB,
        say=lambda line: print(line, file=sys.stderr),
    )
    server = LabServer(args.name, lab.url, lab.directory / "castray")
    sampler = Sampler(lab)
    times: dict[tuple[str, int], list[float]] = defaultdict(list)
    cpu: dict[tuple[str, int], list[float]] = defaultdict(list)
    egress_ratio: dict[int, list[float]] = defaultdict(list)
    failures: dict[tuple[str, int], int] = defaultdict(int)
    try:
        made = tx.generate(server, FILE, f"{args.size}MiB", "random")
        assert made["size"] == size
        path = server.data_dir / "library" / FILE
        for n in counts:
            hosts = list(range(2, n + 1))
            with server.client() as client:
                group = {"name": f"bench-{n}", "members": [server.node_id(h) for h in hosts]}
                client.post("/api/groups", json=group).raise_for_status()
            runs: dict[str, Callable[[], float]] = {
                "one unicast": lambda: unicasts(server, [2]),
                "castray stream": lambda g=f"bench-{n}": castray_multicast(server, g, "stream"),
                "castray object-store": lambda g=f"bench-{n}": castray_multicast(
                    server, g, "object-store"
                ),
                "N-1 unicasts": lambda h=hosts: unicasts(server, h),
                "Ray's own way": lambda h=hosts: ray_way(lab, path, args.chunk * MIB, h),
            }
            names = ["one unicast", *contenders]
            for rep in range(args.reps):
                turn = rep % len(names)
                for name in names[turn:] + names[:turn]:
                    before = egress(server)
                    try:
                        seconds, busy = timed(runs[name])
                    except AssertionError as exc:  # a failed run is reported, not fatal
                        failures[name, n] += 1
                        print(
                            f"N={n} rep {rep + 1}: {name} FAILED: {str(exc)[:300]}", file=sys.stderr
                        )
                        continue
                    if name == "castray stream":
                        egress_ratio[n].append((egress(server) - before) / size)
                    times[name, n].append(seconds)
                    cpu[name, n].append(busy)
                    print(
                        f"N={n} rep {rep + 1}: {name}: {seconds:.1f} s, CPU {busy:.0f}%",
                        file=sys.stderr,
                    )
    finally:
        sampler.stop()
        lab_ops.down(args.name)
    report(counts, ["one unicast", *contenders], times, cpu, egress_ratio, shape, size, sampler)
    for (name, n), count in sorted(failures.items()):
        print(f"| {name} at {n} hosts: FAILED {count} of {args.reps} | | |")
    plot(counts, contenders, times, shape, size, args)


def report(
    counts: list[int],
    names: list[str],
    times: dict[tuple[str, int], list[float]],
    cpu: dict[tuple[str, int], list[float]],
    egress_ratio: dict[int, list[float]],
    shape: LinkShape,
    size: int,
    sampler: Sampler,
) -> None:
    med = {k: statistics.median(v) for k, v in times.items() if v}
    bound = shape.transfer_seconds(size)
    print(
        f"\n{size // MIB} MiB from host 1 to hosts 2..N, each link {shape.describe()}; "
        f"medians of {len(next(iter(times.values())))} reps (s), CPU use in brackets\n"
    )
    header = "| N | bound | " + " | ".join(names) + " |"
    print(header)
    print("|" + "---|" * (len(names) + 2))
    for n in counts:
        cells = [
            f"{med[name, n]:.1f} ({statistics.median(cpu[name, n]):.0f}%)"
            if (name, n) in med
            else "failed"
            for name in names
        ]
        print(f"| {n} | {bound:.1f} | " + " | ".join(cells) + " |")
    top, low = counts[-1], counts[0]
    stream = "castray stream"
    print("\n| measure | value | target |\n|---|---|---|")
    if (stream, top) in med and ("one unicast", top) in med and (stream, low) in med:
        print(
            f"| broadcast at {top} hosts / one unicast | "
            f"{med[stream, top] / med['one unicast', top]:.2f}x | <= 1.3x |"
        )
        print(
            f"| growth from {low} to {top} hosts | "
            f"{med[stream, top] / med[stream, low]:.2f}x | <= 1.3x |"
        )
        print(
            f"| source egress / file at {top} hosts | "
            f"{statistics.median(egress_ratio[top]):.2f}x | 1.0x |"
        )
    for name in ("N-1 unicasts", "Ray's own way", "castray object-store"):
        if (name, top) in med and ("one unicast", top) in med:
            print(
                f"| {name} at {top} hosts / one unicast | "
                f"{med[name, top] / med['one unicast', top]:.2f}x | measured beside |"
            )
    peak = max(sampler.peak_rss.values()) if sampler.peak_rss else 0
    print(f"| peak private memory of one host's processes | {peak / MIB:.0f} MiB | |")
    print(f"| peak private memory of all hosts at once | {sampler.peak_total / MIB:.0f} MiB | |")


def plot(
    counts: list[int],
    names: list[str],
    times: dict[tuple[str, int], list[float]],
    shape: LinkShape,
    size: int,
    args: argparse.Namespace,
) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("no plot: pip install -e '.[bench]' for matplotlib", file=sys.stderr)
        return
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    for name in ["one unicast", *names]:
        shown = [n for n in counts if times[name, n]]
        ax.plot(shown, [statistics.median(times[name, n]) for n in shown], marker="o", label=name)
    ax.plot(
        counts,
        [shape.transfer_seconds(size)] * len(counts),
        linestyle="--",
        color="grey",
        label="bound: size / link rate",
    )
    ax.set_xscale("log", base=2)
    ax.set_xticks(counts, [str(n) for n in counts])
    ax.set_xlabel("hosts N (host 1 sends to the N-1 others)")
    ax.set_ylabel("seconds (median)")
    ax.set_title(f"{size // MIB} MiB to N-1 hosts, {shape.describe()} per host link")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(args.png)
    print(f"plot: {args.png}", file=sys.stderr)


if __name__ == "__main__":
    if os.geteuid() != 0:
        sys.exit("the lab makes network namespaces: run this as root")
    main()
