"""Does a slow member hold back the others, and what does a broadcast cost the CPU? Uneven
links in a many-host lab (``castray lab``: network namespaces, each host's link shaped).

Run as root from the repository root: ``.venv/bin/python -m benchmarks.lab_uneven``
(``--help``; the plot needs ``pip install -e '.[bench]'``).

One lab of 16 hosts at ``--rate`` (100 Mbit/s) is made once; each scenario reshapes links,
and its contenders are alternated over ``--reps`` repetitions (medians):

- **8 equal hosts**, the yardstick of the two below: a broadcast to hosts 2..8 with every
  link equal, over one unicast (what the chain itself costs on this machine);
- **one slow host** (hosts 1..8, host 4, the middle of the natural chain, at ``--slow``):
  a broadcast to hosts 2..8 beside one unicast host 1 to host 2 (a fast link). Each
  recipient's completion time (its own ``finished_at`` from the transfer's creation) over
  the unicast's, for the first broadcast after the reshape (the server has not seen the slow
  one slow: the agent finds it as the bytes go) and for the next ones (the server remembers
  it: it starts at the chain's end); the slow one's over its own bound (size / slow rate);
  the source's egress (its ``bytes_sent`` counter) over the file;
- **two slow hosts** (3 and 6): the same;
- **16 equal hosts**: broadcast to hosts 2..16 over one unicast, and the machine's CPU
  during the broadcast, split by whose it is (``benchmarks.cpu_shares``);
- **CPU at 16 hosts** (every link at ``--cpu-rate``, 10 Mbit/s): the machine's core-seconds
  per delivered GiB during a broadcast, above the idle lab's, against the same figure for a
  bulk unicast over an unshaped link in the same run, each split by whose they are (CastRay's
  data plane, its control plane, Ray's native threads inside those processes, the rest of
  Ray, the kernel's emulated network, the benchmark's own client); and the CPU use of N-1
  unicasts against the idle lab's. ``--profile DIR`` adds one broadcast (not counted) under
  py-spy: the source's endpoint, host 8's, the agent and the server, each summed by
  function.

Targets (issue #24): fast recipients <= 1.3x one unicast, the slow one <= 1.2x its bound,
egress <= 1.5x; 16 equal hosts <= 1.3x; broadcast CPU per GiB <= 1.5x the bulk unicast's;
N-1 unicasts within 10 points of the idle lab's CPU.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
from collections import defaultdict
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import psutil

from benchmarks import cpu_shares as cpu
from benchmarks import profiles
from benchmarks.lab_broadcast import LOOK, egress, seconds_of, unicasts
from castray.lab import lab as lab_ops
from castray.lab.shaping import LinkShape
from castray.lab.state import LabState
from tests.harness import transfers as tx
from tests.harness.lab import LabServer

MIB = 1024**2
GIB = 1024**3
FILE = "lab-uneven.bin"
CPU_FILE = "lab-uneven-cpu.bin"
BULK_FILE = "lab-uneven-bulk.bin"
UNSHAPED = LinkShape.parse("10gbit")
CORES = psutil.cpu_count() or 1

Rows = list[tuple[str, str, str]]


def reshape(lab: LabState, shapes: dict[int, LinkShape]) -> None:
    for host, shape in shapes.items():
        lab_ops.reshape(lab, f"h{host}", shape)


def broadcast(server: LabServer, file: str, hosts: list[int]) -> dict[str, Any]:
    done = tx.send(
        server,
        timeout=1800,
        interval=LOOK,
        source_node=server.node_id(1),
        file=file,
        mode="multicast" if len(hosts) > 1 else "unicast",
        recipients=[server.node_id(h) for h in hosts],
        transport="stream",
    )
    assert done["status"] == "completed", done
    return done


def finish_times(server: LabServer, done: dict[str, Any], hosts: list[int]) -> dict[int, float]:
    """Each recipient's seconds from the transfer's creation to its verified copy."""
    start = datetime.fromisoformat(done["created_at"])
    ends = {h: done["recipients"][server.node_id(h)]["finished_at"] for h in hosts}
    return {h: (datetime.fromisoformat(end) - start).total_seconds() for h, end in ends.items()}


def keep_logs(castray_dir: Path, into: Path) -> None:
    """The server's log and the agents' (they go with the lab): who was moved, and when."""
    into.mkdir(parents=True, exist_ok=True)
    for log_file in [castray_dir / "server.log", *castray_dir.glob("logs/*.log")]:
        if log_file.is_file():
            shutil.copy2(log_file, into / log_file.name)
    say(f"logs kept in {into}")


def slow_scenario(
    server: LabServer,
    lab: LabState,
    slow: list[int],
    args: argparse.Namespace,
) -> Rows:
    """The first broadcast after the reshape finds the slow ones as it goes (the server has
    not seen them slow); the next ones start with them at the chain's end (``server.paces``).
    Each is reported on its own."""
    fast_shape, slow_shape = LinkShape.parse(args.rate), LinkShape.parse(args.slow)
    hosts = list(range(2, 9))
    size = args.size * MIB
    reshape(lab, {h: slow_shape for h in slow})
    unicast: list[float] = []
    per_rep: list[dict[int, float]] = []
    ratio: list[float] = []
    try:
        for rep in range(args.reps):
            order = ["unicast", "broadcast"] if rep % 2 == 0 else ["broadcast", "unicast"]
            for name in order:
                if name == "unicast":
                    unicast.append(unicasts(server, [2], FILE))
                    continue
                before = egress(server)
                done = broadcast(server, FILE, hosts)
                ratio.append((egress(server) - before) / size)
                per_rep.append(finish_times(server, done, hosts))
            say(f"slow {slow} rep {rep + 1}: unicast {unicast[-1]:.1f} s, " + _times(per_rep[-1]))
    finally:
        reshape(lab, {h: fast_shape for h in slow})
    one = statistics.median(unicast)
    bound = slow_shape.transfer_seconds(size)
    first, later = per_rep[0], per_rep[1:] or per_rep
    medians = {h: statistics.median(rep[h] for rep in later) for h in hosts}
    plot(first, medians, slow, one, bound, args, f"{args.png.removesuffix('.png')}-{len(slow)}.png")
    label = " and ".join(f"h{h}" for h in slow)
    rows: Rows = [
        (f"{label} slow: one unicast h1->h2", f"{one:.1f} s", "yardstick"),
        (
            f"{label} slow: first broadcast, fast ones / one unicast",
            _spread(first, slow, one),
            "<= 1.3x",
        ),
        (
            f"{label} slow: next broadcasts (slow ones remembered), fast ones / one unicast",
            _spread(medians, slow, one),
            "<= 1.3x",
        ),
    ]
    for host in slow:
        taken = statistics.median(rep[host] for rep in per_rep)
        rows.append(
            (
                f"{label} slow: h{host} / its bound ({bound:.0f} s)",
                f"{taken / bound:.2f}x",
                "<= 1.2x",
            )
        )
    rows.append(
        (f"{label} slow: source egress / file", f"{statistics.median(ratio):.2f}x", "<= 1.5x")
    )
    return rows


def _spread(seconds: dict[int, float], slow: list[int], one: float) -> str:
    """The fast recipients' times over one unicast, from the best to the worst."""
    fast = {h: t for h, t in seconds.items() if h not in slow}
    worst = max(fast, key=lambda h: fast[h])
    return f"{min(fast.values()) / one:.2f}x to {fast[worst] / one:.2f}x (h{worst})"


def chain_scenario(server: LabServer, args: argparse.Namespace) -> Rows:
    """The yardstick of the slow scenarios: hosts 2..8, every link equal, against one
    unicast. What the fast ones take beyond this is the slow ones' doing; up to it, the
    chain's own on this machine (eight raylets on two cores)."""
    hosts = list(range(2, 9))
    runs: dict[str, Callable[[], float]] = {
        "one unicast": lambda: unicasts(server, [2], FILE),
        "broadcast": lambda: seconds_of([broadcast(server, FILE, hosts)]),
    }
    times = alternate(runs, args.reps, "8 equal")
    one, wide = statistics.median(times["one unicast"]), statistics.median(times["broadcast"])
    return [
        ("8 equal hosts (h2..h8): broadcast / one unicast", f"{wide / one:.2f}x", "the chain's own")
    ]


def equal_scenario(server: LabServer, args: argparse.Namespace) -> Rows:
    """Broadcast to 15 equal hosts against one unicast, and whose CPU the broadcast takes."""
    hosts = list(range(2, 17))
    busy: list[dict[str, float]] = []

    def watched() -> float:
        done: list[dict[str, Any]] = []
        used, wall = cpu.measured(lambda: done.append(broadcast(server, FILE, hosts)))
        busy.append({share: value / wall / CORES for share, value in used.items()})
        return seconds_of(done)

    runs: dict[str, Callable[[], float]] = {
        "one unicast": lambda: unicasts(server, [2], FILE),
        "broadcast": watched,
    }
    times = alternate(runs, args.reps, "16 equal")
    one, wide = statistics.median(times["one unicast"]), statistics.median(times["broadcast"])
    share = cpu.medians(busy)
    parts = ", ".join(f"{name} {share[name]:.0%}" for name in cpu.SHARES if share[name] >= 0.01)
    return [
        ("16 equal hosts: one unicast", f"{one:.1f} s", "yardstick"),
        ("16 equal hosts: broadcast / one unicast", f"{wide / one:.2f}x", "<= 1.3x"),
        ("16 equal hosts: the machine's CPU during the broadcast", f"{share[cpu.ALL]:.0%}", ""),
        ("16 equal hosts: of which", parts, ""),
    ]


def cpu_scenario(server: LabServer, lab: LabState, args: argparse.Namespace) -> Rows:
    """Core-seconds above the idle lab's, per delivered GiB, split by whose they are (see
    ``benchmarks.cpu_shares``), and the CPU use of N-1 unicasts."""
    slow, fast = LinkShape.parse(args.cpu_rate), LinkShape.parse(args.rate)
    hosts = list(range(2, 17))
    reshape(lab, {h: slow for h in range(1, 17)})
    try:
        idle = cpu.idle_rates(args.idle)
        say(f"idle lab: {sum(idle.values()) * 100 / CORES:.0f}% CPU")
        chain: list[dict[str, float]] = []
        for rep in range(args.reps):
            delivered = args.cpu_size * MIB * len(hosts) / GIB
            chain.append(cpu.per_gib(lambda: broadcast(server, CPU_FILE, hosts), idle, delivered))
            say(f"broadcast rep {rep + 1}: {cpu.described(chain[-1])}")
        if args.profile is not None:
            profiled_broadcast(server, lab, hosts, args.profile)
        used, seconds = cpu.measured(lambda: unicasts(server, hosts, CPU_FILE))
        unicasts_cpu = sum(used.values()) / seconds * 100 / CORES
        say(f"N-1 unicasts: {seconds:.1f} s, {unicasts_cpu:.0f}% CPU")
        reshape(lab, {1: UNSHAPED, 2: UNSHAPED})
        bulk: list[dict[str, float]] = []
        for rep in range(args.reps):
            size = args.bulk_size * MIB / GIB
            bulk.append(cpu.per_gib(lambda: broadcast(server, BULK_FILE, [2]), idle, size))
            say(f"bulk unicast rep {rep + 1}: {cpu.described(bulk[-1])}")
    finally:
        reshape(lab, {h: fast for h in range(1, 17)})
    idle_cpu = sum(idle.values()) * 100 / CORES
    chains, alone = cpu.medians(chain), cpu.medians(bulk)
    whole = chains[cpu.ALL] / alone[cpu.ALL]
    own = (cpu.DATA, cpu.CONTROL)
    ours = sum(chains[s] for s in own) / sum(alone[s] for s in own)
    processes = (*own, cpu.RAY_INSIDE)
    ours_with_ray = sum(chains[s] for s in processes) / sum(alone[s] for s in processes)
    return [
        ("16 hosts at 10 Mbit/s: idle lab", f"{idle_cpu:.0f}% CPU", "the floor"),
        ("broadcast: core-s per delivered GiB above idle", f"{chains[cpu.ALL]:.1f}", "measured"),
        ("bulk unshaped unicast: core-s per GiB above idle", f"{alone[cpu.ALL]:.1f}", "measured"),
        ("broadcast / bulk unicast, per GiB", f"{whole:.2f}x", "<= 1.5x"),
        *(
            (f"per GiB, {share}: broadcast / bulk", f"{chains[share]:.1f} / {alone[share]:.1f}", "")
            for share in cpu.SHARES
        ),
        ("CastRay's own code (both planes): broadcast / bulk, per GiB", f"{ours:.2f}x", "<= 1.5x"),
        (
            "CastRay's processes, Ray's threads in them too: broadcast / bulk, per GiB",
            f"{ours_with_ray:.2f}x",
            "",
        ),
        ("N-1 unicasts: CPU", f"{unicasts_cpu:.0f}% ({unicasts_cpu - idle_cpu:+.0f})", "<= +10"),
    ]


def profiled_broadcast(server: LabServer, lab: LabState, hosts: list[int], directory: Path) -> None:
    """One more broadcast (not counted) under py-spy: the source's endpoint, one in the
    middle of the chain, the agent and the server."""
    head = lab.hosts[0].namespace
    found = {
        "endpoint h1 (source)": profiles.in_namespace(head, "ray::Endpoint"),
        "endpoint h8": profiles.in_namespace(lab.hosts[7].namespace, "ray::Endpoint"),
        "agent": profiles.in_namespace(head, "-m castray.agent"),
        "server": profiles.in_namespace(head, "-m castray serve"),
    }
    pids = {name: pid for name, pid in found.items() if pid is not None}
    for line in profiles.profiled(lambda: broadcast(server, CPU_FILE, hosts), pids, directory):
        say(line)


def alternate(
    runs: dict[str, Callable[[], float]], reps: int, label: str
) -> dict[str, list[float]]:
    times: dict[str, list[float]] = defaultdict(list)
    names = list(runs)
    for rep in range(reps):
        turn = rep % len(names)
        for name in names[turn:] + names[:turn]:
            times[name].append(runs[name]())
            say(f"{label} rep {rep + 1}: {name}: {times[name][-1]:.1f} s")
    return times


def plot(
    first: dict[int, float],
    medians: dict[int, float],
    slow: list[int],
    one: float,
    bound: float,
    args: argparse.Namespace,
    png: str,
) -> None:
    """Each recipient's completion time in the first broadcast (the slow ones unknown) and in
    the next ones (remembered), the slow ones marked, beside one unicast's."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        say("no plot: pip install -e '.[bench]' for matplotlib")
        return
    fig, ax = plt.subplots(figsize=(7, 4), dpi=120)
    hosts = sorted(medians)
    colours = ["tab:red" if h in slow else "tab:blue" for h in hosts]
    at = range(len(hosts))
    ax.bar(
        [x - 0.2 for x in at],
        [first[h] for h in hosts],
        width=0.4,
        color=colours,
        alpha=0.45,
        hatch="//",
        label="first broadcast (slow ones unknown)",
    )
    ax.bar(
        [x + 0.2 for x in at],
        [medians[h] for h in hosts],
        width=0.4,
        color=colours,
        label="next ones (remembered), median",
    )
    ax.set_xticks(list(at), [f"h{h}" for h in hosts])
    ax.axhline(one, linestyle="--", color="tab:blue", label=f"one unicast at {args.rate}")
    ax.axhline(bound, linestyle=":", color="tab:red", label=f"bound at {args.slow}")
    ax.set_ylabel("seconds to a verified copy")
    ax.set_title(
        f"{args.size} MiB from h1 to h2..h8, {args.rate} links, "
        + " and ".join(f"h{h}" for h in slow)
        + f" at {args.slow}"
    )
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(png)
    say(f"plot: {png}")


def _times(seconds: dict[int, float]) -> str:
    return ", ".join(f"h{h} {v:.1f} s" for h, v in sorted(seconds.items()))


def say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", default="100mbit", help="every host link's rate")
    parser.add_argument("--slow", default="10mbit", help="a slow host's link rate")
    parser.add_argument("--cpu-rate", default="10mbit", help="link rate of the CPU scenario")
    parser.add_argument("--size", default=48, type=int, help="file size, MiB")
    parser.add_argument("--cpu-size", default=24, type=int, help="CPU scenario's file, MiB")
    parser.add_argument("--bulk-size", default=1024, type=int, help="bulk unicast's file, MiB")
    parser.add_argument("--idle", default=20.0, type=float, help="seconds the idle lab is timed")
    parser.add_argument("--reps", default=3, type=int)
    parser.add_argument("--name", default="uneven")
    parser.add_argument("--subnet", default="198.18.61.0/24")
    parser.add_argument("--port", default=0, type=int)
    parser.add_argument(
        "--profile",
        type=Path,
        help="CPU scenario: one more broadcast under py-spy, raw stacks kept in this folder",
    )
    parser.add_argument("--png", default="benchmarks/lab_uneven.png")
    parser.add_argument(
        "--keep-logs",
        type=Path,
        help="copy the server's and the agents' logs into this folder before the lab goes down",
    )
    parser.add_argument(
        "--server-config",
        type=Path,
        help="the lab's CastRay settings, a TOML file (log_level = \"debug\": every look's paces)",
    )
    parser.add_argument(
        "--parts", default="one-slow,two-slow,equal,cpu", help="scenarios, comma-separated"
    )
    args = parser.parse_args()
    parts = {p.strip() for p in args.parts.split(",")}
    lab_ops.down(args.name)
    lab = lab_ops.up(
        args.name,
        16,
        LinkShape.parse(args.rate),
        args.subnet,
        args.port,
        384 * MIB,
        server_config=args.server_config,
        say=say,
    )
    server = LabServer(args.name, lab.url, lab.directory / "castray")
    rows: Rows = []
    try:
        for name, size in (
            (FILE, args.size),
            (CPU_FILE, args.cpu_size),
            (BULK_FILE, args.bulk_size),
        ):
            assert tx.generate(server, name, f"{size}MiB", "random")["size"] == size * MIB
        if parts & {"one-slow", "two-slow"}:
            rows += chain_scenario(server, args)
        if "one-slow" in parts:
            rows += slow_scenario(server, lab, [4], args)
        if "two-slow" in parts:
            rows += slow_scenario(server, lab, [3, 6], args)
        if "equal" in parts:
            rows += equal_scenario(server, args)
        if "cpu" in parts:
            rows += cpu_scenario(server, lab, args)
    finally:
        if args.keep_logs is not None:
            keep_logs(lab.directory / "castray", args.keep_logs)
        lab_ops.down(args.name)
    print(
        f"\n{args.size} MiB from host 1 (CPU scenario: {args.cpu_size} MiB), links "
        f"{args.rate}, slow ones {args.slow}; medians of {args.reps} reps\n"
    )
    print("| measure | value | target |\n|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    if os.geteuid() != 0:
        sys.exit("the lab makes network namespaces: run this as root")
    main()
