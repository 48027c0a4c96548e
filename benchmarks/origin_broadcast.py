"""A file from S3 onto every host: one fetch by CastRay against every host downloading it.

Run as root from the repository root: ``.venv/bin/python -m benchmarks.origin_broadcast``
(``--help``).

A lab of N hosts (``castray lab``), each link shaped to ``--rate``; an S3 server (moto, as
``tests.harness.origins`` runs it, logging the range of every GET) in host 1 holds one random
object. Its readers are hosts 2..N. Side by side, alternated over ``--reps`` repetitions
(medians):

- **one download**: host 2 downloads the object with boto3's ``download_file`` (parallel
  ranged GETs), the yardstick;
- **every host downloads**: hosts 2..N each do the same, all at once (what users do today);
- **CastRay from the origin**: ``POST /api/transfers {"source_url": ...}``, host 2 fetching,
  hosts 3..N receiving (cut-through: the chain is fed as the object arrives): from the request
  to the last verified copy;
- **CastRay from a copy**: the same chain from host 2's copy of the object, the origin not
  involved: what the chain alone costs at this scale, the best cut-through can reach;
- **bound**: the size over the origin's link rate.

Also printed: the origin's egress over the object's size for each contender (from the S3
server's own log of the bytes it served), and the machine's CPU use during it (every lab host
shares this machine's cores). ``--profile DIR`` then runs CastRay from the origin once more
under ``py-spy record`` (the fetching endpoint and the last recipient's) and prints where
their time went.

Targets (issue #26) at 8 hosts, 100 Mbit/s, 256 MiB: CastRay <= 1.3x one download; origin
egress 1.0x.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from castray.lab import lab as lab_ops
from castray.lab.shaping import LinkShape
from castray.lab.state import LabState, host_addresses
from tests.harness import transfers as tx
from tests.harness.lab import LabServer
from tests.harness.origins import UPLOAD, RangeLog

MIB = 1024**2
S3_PORT = 9000
BUCKET = "bench-origin"
KEY = "model.safetensors"
AWS = {
    "AWS_ACCESS_KEY_ID": "bench",
    "AWS_SECRET_ACCESS_KEY": "bench-secret",
    "AWS_DEFAULT_REGION": "us-east-1",
}
CONTENDERS = (
    "one download",
    "every host downloads",
    "CastRay from the origin",
    "CastRay from a copy",
)
DOWNLOAD = """
import pathlib, sys, time, boto3
bucket, key, dest, ready, go = sys.argv[1:6]
s3 = boto3.client("s3")
pathlib.Path(ready).touch()
while not pathlib.Path(go).exists():
    time.sleep(0.01)
s3.download_file(bucket, key, dest)
print(time.time())
"""


def in_host(lab: LabState, host: int, command: list[str]) -> tuple[list[str], dict[str, str]]:
    argv, env = lab_ops.exec_argv(lab, f"h{host}", command)
    return argv, env | s3_env(lab)


def s3_env(lab: LabState) -> dict[str, str]:
    return AWS | {"AWS_ENDPOINT_URL_S3": f"http://{lab.hosts[0].address}:{S3_PORT}"}


def downloads(lab: LabState, hosts: list[int], work: Path) -> float:
    """Hosts download the object at once (after their imports): seconds to the last one."""
    go = work / "go"
    go.unlink(missing_ok=True)
    runs = []
    for host in hosts:
        ready, dest = work / f"ready-{host}", work / f"copy-{host}"
        ready.unlink(missing_ok=True)
        argv, env = in_host(
            lab,
            host,
            [sys.executable, "-c", DOWNLOAD, BUCKET, KEY, str(dest), str(ready), str(go)],
        )
        runs.append(subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, text=True))
    deadline = time.monotonic() + 120
    while not all((work / f"ready-{h}").exists() for h in hosts):
        assert time.monotonic() < deadline, "the downloaders did not start"
        time.sleep(0.05)
    began = time.time()
    go.touch()
    ends = []
    for run in runs:
        out, _ = run.communicate(timeout=3600)
        assert run.returncode == 0, "a download failed"
        ends.append(float(out.strip().splitlines()[-1]))
    for host in hosts:
        (work / f"copy-{host}").unlink(missing_ok=True)
    return max(ends) - began


def castray(server: LabServer, hosts: list[int], origin: bool = True) -> float:
    """Host ``hosts[0]`` sends to the others: what it fetches from the origin, or its copy
    of it (fetched by an earlier run)."""
    source = {"source_url": f"s3://{BUCKET}/{KEY}"} if origin else {"file": KEY}
    with server.client() as client:
        began = time.monotonic()
        answer = client.post(
            "/api/transfers",
            json={
                **source,
                "source_node": server.node_id(hosts[0]),
                "mode": "multicast",
                "recipients": [server.node_id(h) for h in hosts[1:]],
            },
            timeout=3600,
        )
    assert answer.status_code == 202, answer.text
    transfer_id = answer.json()["transfer_id"]
    done = tx.wait_finished(server, transfer_id, timeout=3600)
    assert done["status"] == "completed", done
    seconds = time.monotonic() - began
    for line in (server.data_dir / "logs" / "agent-home.log").read_text().splitlines():
        if transfer_id in line and ("whole and checked" in line or "committed its" in line):
            print(f"  {line.partition(': ')[2]} (transfer: {seconds:.1f} s)", file=sys.stderr)
    print(f"  {timeline(done)}", file=sys.stderr)
    return seconds


def timeline(done: dict[str, object]) -> str:
    """When each recipient finished, and the transfer, in seconds after it was created (the
    server's clock)."""

    def at(stamp: object) -> float:
        return (datetime.fromisoformat(str(stamp)) - created).total_seconds()

    created = datetime.fromisoformat(str(done["created_at"]))
    recipients = done["recipients"]
    assert isinstance(recipients, dict)
    ends = ", ".join(f"{r} {at(s['finished_at']):.1f}" for r, s in recipients.items())
    return f"finished after creation (s): {ends}; the transfer {at(done['finished_at']):.1f}"


def cpu_busy() -> tuple[int, int]:
    """The machine's busy and total CPU time so far (``/proc/stat``, in ticks)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle and iowait
    return sum(fields) - idle, sum(fields)


def profile(server: LabServer, hosts: list[int], out: Path) -> None:
    """CastRay from the origin once more, its fetching endpoint and last recipient under
    ``py-spy record``; each one's busiest functions (own time)."""
    with server.client() as client:
        nodes = {n["id"]: n for n in client.get("/api/nodes").json()["nodes"]}
    watched = {f"h{h}": nodes[server.node_id(h)]["pid"] for h in (hosts[0], hosts[-1])}
    out.mkdir(parents=True, exist_ok=True)
    spies = {
        host: subprocess.Popen(
            [
                str(Path(sys.executable).parent / "py-spy"),
                "record",
                "--pid",
                str(pid),
                "--format",
                "raw",
                "--rate",
                "50",
                "-o",
                str(out / f"{host}.txt"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for host, pid in watched.items()
    }
    try:
        print(f"profiled run: {castray(server, hosts):.1f} s", file=sys.stderr)
    finally:
        for spy in spies.values():
            spy.send_signal(signal.SIGINT)
            spy.wait(60)
    for host in spies:
        print(
            f"\n{host} ({'fetches' if host == f'h{hosts[0]}' else 'last recipient'}): "
            "where its CPU time went (functions' own time, share of busy samples)"
        )
        for line in own_time(out / f"{host}.txt")[:8]:
            print(f"  {line}")


def own_time(raw: Path) -> list[str]:
    """The leaf functions of collapsed stacks, by share of samples."""
    counts: dict[str, int] = defaultdict(int)
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            counts[stack.split(";")[-1]] += int(count)
    total = sum(counts.values()) or 1
    ranked = sorted(counts.items(), key=lambda kv: -kv[1])
    return [f"{100 * n / total:5.1f}%  {frame}" for frame, n in ranked]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", default=8, type=int)
    parser.add_argument("--rate", default="100mbit")
    parser.add_argument("--size", default=256, type=int, help="MiB")
    parser.add_argument("--reps", default=3, type=int)
    parser.add_argument("--name", default="origin")
    parser.add_argument("--subnet", default="198.18.64.0/24")
    parser.add_argument("--profile", type=Path, help="profile one more CastRay run into DIR")
    parser.add_argument(
        "--skip",
        default="",
        help="comma-separated contenders left out (not 'one download', the yardstick)",
    )
    args = parser.parse_args()
    skipped = {s.strip() for s in args.skip.split(",") if s.strip()}
    assert skipped <= set(CONTENDERS) - {"one download"}, f"--skip: one of {CONTENDERS[1:]}"
    contenders = [c for c in CONTENDERS if c not in skipped]
    shape = LinkShape.parse(args.rate)
    size = args.size * MIB
    readers = list(range(2, args.hosts + 1))
    work = Path(tempfile.mkdtemp(prefix="castray-origin-bench-"))
    lab_ops.down(args.name)
    # The lab's Ray nodes inherit this environment: their S3 store is the one in host 1.
    head = host_addresses(args.subnet, args.hosts)[0][0]
    os.environ.update(AWS | {"AWS_ENDPOINT_URL_S3": f"http://{head}:{S3_PORT}"})
    lab = lab_ops.up(
        args.name,
        args.hosts,
        shape,
        args.subnet,
        0,
        384 * MIB,
        say=lambda s: print(s, file=sys.stderr),
    )
    server = LabServer(args.name, lab.url, lab.directory / "castray")
    log = work / "ranges.log"
    argv, env = in_host(
        lab,
        1,
        [
            sys.executable,
            "-m",
            "tests.harness.origins",
            lab.hosts[0].address,
            str(S3_PORT),
            str(log),
        ],
    )
    s3 = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, start_new_session=True)
    times: dict[str, list[float]] = defaultdict(list)
    egress: dict[str, list[float]] = defaultdict(list)
    cpu: dict[str, list[float]] = defaultdict(list)
    try:
        (work / "object").write_bytes(os.urandom(size))
        argv, env = in_host(
            lab, 1, [sys.executable, "-c", UPLOAD, BUCKET, KEY, str(work / "object")]
        )
        subprocess.run(argv, env=env, check=True, timeout=600)
        (work / "object").unlink()
        runs: dict[str, Callable[[], float]] = {
            "one download": lambda: downloads(lab, readers[:1], work),
            "every host downloads": lambda: downloads(lab, readers, work),
            "CastRay from the origin": lambda: castray(server, readers),
            "CastRay from a copy": lambda: castray(server, readers, origin=False),
        }
        castray(server, readers)  # untimed: host 2 has its copy before any rep begins
        for rep in range(args.reps):
            turn = rep % len(contenders)
            for name in contenders[turn:] + contenders[:turn]:
                before = RangeLog.read(log).bytes_served()
                busy, total = cpu_busy()
                seconds = runs[name]()
                busy_after, total_after = cpu_busy()
                served = RangeLog.read(log).bytes_served() - before
                times[name].append(seconds)
                egress[name].append(served / size)
                cpu[name].append((busy_after - busy) / max(1, total_after - total))
                print(
                    f"rep {rep + 1}: {name}: {seconds:.1f} s, origin egress {served / size:.2f}x"
                    f", CPU {100 * cpu[name][-1]:.0f}%",
                    file=sys.stderr,
                )
        if args.profile is not None:
            profile(server, readers, args.profile)
    finally:
        os.killpg(s3.pid, signal.SIGTERM)
        s3.wait(30)
        lab_ops.down(args.name)
        for child in work.iterdir():
            child.unlink()
        work.rmdir()
    report(times, egress, cpu, shape, size, args.hosts, args.reps)


def report(
    times: dict[str, list[float]],
    egress: dict[str, list[float]],
    cpu: dict[str, list[float]],
    shape: LinkShape,
    size: int,
    hosts: int,
    reps: int,
) -> None:
    med = {name: statistics.median(values) for name, values in times.items()}
    one = med["one download"]
    print(
        f"\n{size // MIB} MiB from an S3 server in host 1 onto hosts 2..{hosts}, each link "
        f"{shape.describe()}; medians of {reps} reps\n"
    )
    print("| contender | seconds | / one download | origin egress / object | machine CPU |")
    print("|---|---|---|---|---|")
    bound = shape.transfer_seconds(size)
    print(f"| bound (size / origin link) | {bound:.1f} | {bound / one:.2f}x | 1.00x | |")
    for name in (c for c in CONTENDERS if c in med):
        print(
            f"| {name} | {med[name]:.1f} | {med[name] / one:.2f}x | "
            f"{statistics.median(egress[name]):.2f}x | "
            f"{100 * statistics.median(cpu[name]):.0f}% |"
        )


if __name__ == "__main__":
    main()
