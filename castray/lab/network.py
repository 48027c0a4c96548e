"""The lab's network: a switch namespace with one bridge, and one namespace per host hanging
on it by a veth pair. Everything is made inside namespaces the lab owns (the veth pairs are
created in the switch's namespace and one end moved into the host's), so the machine's own
interfaces, routes and firewall are never touched, and deleting the namespaces removes it all.

Names: the switch is ``castray-<lab>-sw``, host ``i`` is ``castray-<lab>-h<i>``; inside the
switch, host ``i``'s port is ``h<i>``; inside a host, its link is ``eth0``.
"""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Sequence
from pathlib import Path

from castray.lab.shaping import LinkShape

PREFIX = "castray-"
BRIDGE = "br0"
HOST_LINK = "eth0"
NETNS_DIR = Path("/run/netns")


class NetworkError(RuntimeError):
    """An ``ip`` or ``tc`` command failed (the message has the command and what it said)."""


def switch_ns(lab: str) -> str:
    return f"{PREFIX}{lab}-sw"


def host_ns(lab: str, index: int) -> str:
    return f"{PREFIX}{lab}-h{index}"


def switch_port(index: int) -> str:
    return f"h{index}"


def run(args: Sequence[str], check: bool = True, stdin: str | None = None) -> str:
    """Run ``ip``/``tc``/``nft``; a failure raises ``NetworkError`` with what it said."""
    try:
        result = subprocess.run(list(args), input=stdin, capture_output=True, text=True, timeout=30)
    except FileNotFoundError as exc:
        raise NetworkError(
            f"{args[0]} is not installed: the lab needs iproute2 and nftables "
            "(apt-get install iproute2 nftables)"
        ) from exc
    if check and result.returncode != 0:
        said = (result.stderr or result.stdout).strip()
        raise NetworkError(f"{' '.join(args)} failed: {said}")
    return result.stdout


def namespaces(lab: str) -> list[str]:
    """The namespaces this lab has now (after a crash too: the names say whose they are)."""
    mine = f"{PREFIX}{lab}-"
    names = [line.split()[0] for line in run(["ip", "netns", "list"]).splitlines() if line]
    return sorted(n for n in names if n.startswith(mine))


def pids_in(namespace: str) -> list[int]:
    """Processes running in ``namespace``."""
    out = run(["ip", "netns", "pids", namespace], check=False)
    return [int(word) for word in out.split() if word.isdigit()]


def create_switch(lab: str) -> None:
    ns = switch_ns(lab)
    run(["ip", "netns", "add", ns])
    run(["ip", "-n", ns, "link", "set", "lo", "up"])
    run(["ip", "-n", ns, "link", "add", BRIDGE, "type", "bridge"])
    run(["ip", "-n", ns, "link", "set", BRIDGE, "up"])


def add_host(lab: str, index: int, address: str, prefix_len: int, shape: LinkShape) -> None:
    """Host ``index``: its namespace, its link to the switch (shaped both ways), its address,
    and no route beyond the lab's own subnet."""
    ns, sw, port = host_ns(lab, index), switch_ns(lab), switch_port(index)
    run(["ip", "netns", "add", ns])
    run(["ip", "-n", ns, "link", "set", "lo", "up"])
    run(
        [
            "ip",
            "-n",
            sw,
            "link",
            "add",
            port,
            "type",
            "veth",
            "peer",
            "name",
            HOST_LINK,
            "netns",
            ns,
        ]
    )
    run(["ip", "-n", sw, "link", "set", port, "master", BRIDGE])
    run(["ip", "-n", sw, "link", "set", port, "up"])
    run(["ip", "-n", ns, "addr", "add", f"{address}/{prefix_len}", "dev", HOST_LINK])
    run(["ip", "-n", ns, "link", "set", HOST_LINK, "up"])
    shape_host(lab, index, shape)


def shape_host(lab: str, index: int, shape: LinkShape) -> None:
    """Shape host ``index``'s link: its end (what it sends), the switch's end (what it gets)."""
    for ns, device in ((host_ns(lab, index), HOST_LINK), (switch_ns(lab), switch_port(index))):
        first, *rest = shape.tc_commands(device)
        run(["ip", "netns", "exec", ns, "tc", *first], check=False)  # no shape yet is fine
        for command in rest:
            try:
                run(["ip", "netns", "exec", ns, "tc", *command])
            except NetworkError as exc:
                if "netem" in command and "unknown" in str(exc):
                    raise NetworkError(
                        "this kernel has no netem (CONFIG_NET_SCH_NETEM), so a lab link cannot "
                        "be given a delay here; --rate and --loss work without it"
                    ) from None
                raise
        run(["ip", "netns", "exec", ns, "nft", "-f", "-"], stdin=shape.nft_ruleset(device))


def set_link(lab: str, index: int, up: bool) -> None:
    """Cut (or heal) host ``index``'s link at the switch: its cable is out, as far as it and
    every other host can tell (packets vanish; nothing answers)."""
    state = "up" if up else "down"
    run(["ip", "-n", switch_ns(lab), "link", "set", switch_port(index), state])


def link_is_up(lab: str, index: int) -> bool:
    out = run(["ip", "-n", switch_ns(lab), "-o", "link", "show", switch_port(index)], check=False)
    flags = out.partition("<")[2].partition(">")[0].split(",")
    return "UP" in flags


def delete(namespace: str) -> None:
    """Remove a namespace (and with it its links and their qdiscs)."""
    with contextlib.suppress(NetworkError):
        run(["ip", "netns", "del", namespace])
