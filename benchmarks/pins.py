"""How fast does a pinned file reach a node that joins, and who pays for it? A 7-host lab
(``castray lab``: network namespaces, each link shaped), a 256 MiB file pinned to all nodes.

Run as root from the repository root: ``.venv/bin/python -m benchmarks.pins`` (``--help``).

Hosts 1 and 2 hold the pinned file (host 1 read it from the library: the pin's first
source). Hosts 3..7 join: their Ray nodes are stopped, their copies removed, and then
started again, alternated over ``--reps`` repetitions:

- **1 joins**: host 3's Ray node starts;
- **4 join at once**: hosts 4..7 start together.

Each joiner's time runs from its ``castray lab start`` returning (its raylet is up) to its
verified copy as the pin reports it (polled every 0.2 s); beside it, one unicast host 1 to
host 2 in the same run, and the bound, size / link rate. Also printed: host 1's egress (its
``bytes_sent``) while the joiners were filled: the target is 0, since host 2 holds the file.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import shutil
import statistics
import sys
import time
from typing import Any

from benchmarks.lab_broadcast import unicasts
from castray.lab import lab as lab_ops
from castray.lab.shaping import LinkShape
from tests.harness import transfers as tx
from tests.harness.lab import LabServer

MIB = 1024**2
FILE = "pinned-model.bin"
HOSTS = 7


def say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def sent_by(server: LabServer, host: int) -> int:
    with server.client() as client:
        nodes = client.get("/api/nodes").json()["nodes"]
    return next(n["counters"]["bytes_sent"] for n in nodes if n["id"] == server.node_id(host))


def copy_of(server: LabServer, pin_id: str, host: int) -> dict[str, Any] | None:
    with server.client() as client:
        pin = client.get(f"/api/pins/{pin_id}").json()
    copy = pin["copies"].get(server.node_id(host))
    return copy if copy and copy["status"] == "verified" else None


def wait_verified(server: LabServer, pin_id: str, host: int, timeout: float = 900) -> float:
    """When (monotonic) host's copy was first seen verified."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if copy_of(server, pin_id, host) is not None:
            return time.monotonic()
        time.sleep(0.2)  # the poll's interval: a measurement, not a synchronisation
    raise TimeoutError(f"host {host}'s copy did not arrive in {timeout:g} s")


def leave(server: LabServer, hosts: list[int]) -> None:
    """Stop the hosts' Ray nodes and remove their copies: they join as new nodes."""
    lab = server.state
    for host in hosts:
        lab_ops.kill(lab, f"h{host}")
    deadline = time.monotonic() + 180
    while any(server.nodes().get(server.node_id(h)) == "alive" for h in hosts):
        if time.monotonic() > deadline:
            raise TimeoutError("the stopped hosts still look alive")
        time.sleep(0.5)
    for host in hosts:
        shutil.rmtree(server.storage(host), ignore_errors=True)


def join(server: LabServer, pin_id: str, hosts: list[int]) -> list[float]:
    """Start the hosts at once; each one's seconds from its start to its verified copy."""
    lab = server.state  # one state for the threads: each save holds every start so far

    def one(host: int) -> float:
        lab_ops.start(lab, f"h{host}")
        started = time.monotonic()
        return wait_verified(server, pin_id, host) - started

    with concurrent.futures.ThreadPoolExecutor(len(hosts)) as pool:
        return list(pool.map(one, hosts))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", default="100mbit", help="each host link's rate")
    parser.add_argument("--size", default=256, type=int, help="the pinned file, MiB")
    parser.add_argument("--reps", default=3, type=int)
    parser.add_argument("--name", default="pins")
    parser.add_argument("--subnet", default="198.18.62.0/24")
    parser.add_argument("--port", default=0, type=int)
    args = parser.parse_args()
    shape = LinkShape.parse(args.rate)
    size = args.size * MIB
    lab_ops.down(args.name)
    lab = lab_ops.up(args.name, HOSTS, shape, args.subnet, args.port, 384 * MIB, say=say)
    server = LabServer(args.name, lab.url, lab.directory / "castray")
    single, together, unicast, egress = [], [], [], []
    try:
        assert tx.generate(server, FILE, f"{args.size}MiB", "random")["size"] == size
        joiners = list(range(3, HOSTS + 1))
        leave(server, joiners)
        made = tx.post(server, "/api/pins", {"file": FILE, "nodes": "all"})
        assert made.status_code == 201, made.text
        pin_id = made.json()["id"]
        for host in (1, 2):
            wait_verified(server, pin_id, host)
        for rep in range(args.reps):
            order = ["unicast", "one", "four"]
            turn = rep % len(order)
            for what in order[turn:] + order[:turn]:
                if what == "unicast":
                    unicast.append(unicasts(server, [2], FILE))
                    say(f"rep {rep + 1}: one unicast {unicast[-1]:.1f} s")
                elif what == "one":
                    single += join(server, pin_id, [3])
                    say(f"rep {rep + 1}: 1 joins: {single[-1]:.1f} s")
                    leave(server, [3])
                else:
                    before = sent_by(server, 1)
                    times = join(server, pin_id, [4, 5, 6, 7])
                    egress.append((sent_by(server, 1) - before) / size)
                    together.append(max(times))
                    say(f"rep {rep + 1}: 4 join: {', '.join(f'{t:.1f}' for t in times)} s")
                    leave(server, [4, 5, 6, 7])
    finally:
        lab_ops.down(args.name)
    bound = shape.transfer_seconds(size)
    print(
        f"\n{args.size} MiB pinned to all nodes, each link {shape.describe()}; "
        f"medians of {args.reps} reps\n"
    )
    print("| measure | value | target |\n|---|---|---|")
    print(f"| bound: size / link rate | {bound:.1f} s | |")
    print(f"| one unicast host 1 -> host 2 | {statistics.median(unicast):.1f} s | yardstick |")
    print(f"| 1 host joins: start to verified copy | {statistics.median(single):.1f} s | |")
    print(
        f"| 4 hosts join at once: start to the last verified copy | "
        f"{statistics.median(together):.1f} s | |"
    )
    print(
        f"| host 1's egress for the 4, over the file | {statistics.median(egress):.2f}x | "
        "0 (host 2 holds it) |"
    )


if __name__ == "__main__":
    if os.geteuid() != 0:
        sys.exit("the lab makes network namespaces: run this as root")
    main()
