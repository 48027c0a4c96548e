"""How a lab link is shaped: rate, delay and loss, and the commands that make it so.

A host's link is shaped the same way in both directions: on the host's end of its veth
(what the host sends) and on the switch's end (what it receives).

- **Rate**: a token bucket (``tc ... tbf``) at the root. Bursts stay small next to the rate
  (4 ms of it, at least 16 KiB), so no second of traffic slips through at line rate, and the
  queue holds about 50 ms of the rate, as a switch port would.
- **Delay**: a ``netem`` under the token bucket (tbf splits the kernel's large offload
  packets into wire-size ones first, so netem's limit counts real packets). Kernels built
  without netem (``CONFIG_NET_SCH_NETEM``) cannot delay; the lab then says so.
- **Loss**: an nftables rule on the ingress of each end of the link that drops that share of
  the packets at random, as a bad cable would, in the namespace that owns the end. It does
  not need netem, and touches no firewall but the lab's own namespaces'.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(bit|kbit|mbit|gbit)?\s*$", re.IGNORECASE)
_RATE_UNITS = {"bit": 1, "kbit": 10**3, "mbit": 10**6, "gbit": 10**9}
_TIME = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(us|ms|s)?\s*$", re.IGNORECASE)
_TIME_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0}
MTU = 1500
QUEUE_SECONDS = 0.05
"""Traffic a link queues before it drops (a switch port's buffer)."""


class ShapeError(ValueError):
    """A rate, delay or loss that ``tc`` would not take (the message says what to type)."""


def parse_rate(text: str) -> int:
    """``100mbit``, ``1gbit``, ``500kbit`` → bits per second."""
    match = _RATE.match(text)
    if not match:
        raise ShapeError(f"rate {text!r} is not a rate: write it like 100mbit, 1gbit or 500kbit")
    bits = float(match[1]) * _RATE_UNITS[(match[2] or "bit").lower()]
    if bits < 8_000:
        raise ShapeError(f"rate {text!r} is below 8kbit: a lab link that slow never finishes")
    return int(bits)


def parse_delay(text: str) -> float:
    """``5ms``, ``0.2s``, ``300us`` (a bare number is milliseconds) → seconds."""
    match = _TIME.match(text)
    if not match:
        raise ShapeError(f"delay {text!r} is not a time: write it like 5ms, 300us or 0.1s")
    seconds = float(match[1]) * _TIME_UNITS[(match[2] or "ms").lower()]
    if seconds > 10:
        raise ShapeError(f"delay {text!r} is over 10 s")
    return seconds


def parse_loss(text: str) -> float:
    """``5%`` or ``5`` → percent of packets dropped, each way."""
    try:
        percent = float(text.strip().removesuffix("%"))
    except ValueError:
        raise ShapeError(f"loss {text!r} is not a percentage: write it like 1% or 0.5%") from None
    if not 0 <= percent <= 100:
        raise ShapeError(f"loss {text!r} is not between 0% and 100%")
    return percent


@dataclass(frozen=True)
class LinkShape:
    """One host link's shape, each way."""

    rate_bits: int
    delay_s: float = 0.0
    loss_percent: float = 0.0

    @classmethod
    def parse(cls, rate: str, delay: str = "0ms", loss: str = "0%") -> LinkShape:
        return cls(parse_rate(rate), parse_delay(delay), parse_loss(loss))

    def describe(self) -> str:
        words = [_human_rate(self.rate_bits)]
        if self.delay_s:
            words.append(f"{self.delay_s * 1000:g} ms")
        if self.loss_percent:
            words.append(f"{self.loss_percent:g}% loss")
        return ", ".join(words)

    @property
    def rate_bytes(self) -> float:
        return self.rate_bits / 8

    def tc_commands(self, device: str) -> list[list[str]]:
        """``tc`` argument lists (run inside the device's namespace) that set this shape,
        replacing whatever shape the device had."""
        burst = max(16 * 1024, math.ceil(self.rate_bytes * 0.004))
        queue_bytes = math.ceil(self.rate_bytes * QUEUE_SECONDS) + burst
        tbf = [
            "tbf",
            "rate",
            f"{self.rate_bits}bit",
            "burst",
            str(burst),
            "limit",
            str(queue_bytes),
        ]
        commands = [
            ["qdisc", "del", "dev", device, "root"],
            ["qdisc", "add", "dev", device, "root", "handle", "1:", *tbf],
        ]
        if self.delay_s:
            in_flight = self.rate_bytes * self.delay_s + queue_bytes
            limit = max(64, math.ceil(in_flight / MTU))
            netem = ["netem", "limit", str(limit), "delay", f"{self.delay_s * 1e6:.0f}us"]
            commands.append(
                ["qdisc", "add", "dev", device, "parent", "1:1", "handle", "10:", *netem]
            )
        return commands

    def nft_ruleset(self, device: str) -> str:
        """An nftables script (for ``nft -f -`` in the device's namespace) that drops this
        shape's share of the packets arriving on ``device``; without loss, it only clears."""
        table = f"castray_loss_{device}"
        script = f"table netdev {table}\ndelete table netdev {table}\n"
        if self.loss_percent:
            per_million = round(self.loss_percent * 10_000)
            script += (
                f"table netdev {table} {{\n"
                f"  chain ingress {{\n"
                f'    type filter hook ingress device "{device}" priority 0; policy accept;\n'
                f"    numgen random mod 1000000 < {per_million} drop\n"
                f"  }}\n"
                f"}}\n"
            )
        return script

    def transfer_seconds(self, size: int) -> float:
        """The bound: ``size`` bytes through this link at its rate."""
        return size / self.rate_bytes


def _human_rate(bits: int) -> str:
    for unit, scale in (("gbit", 10**9), ("mbit", 10**6), ("kbit", 10**3)):
        if bits >= scale:
            return f"{bits / scale:g} {unit}/s"
    return f"{bits} bit/s"
