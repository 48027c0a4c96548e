"""The lab's link shapes: what users type, and the tc / nft commands that follow (the lab
tests run them for real, as root)."""

from __future__ import annotations

import pytest

from castray.lab.shaping import LinkShape, ShapeError, parse_delay, parse_loss, parse_rate
from castray.lab.state import host_addresses


@pytest.mark.parametrize(
    ("text", "bits"),
    [("100mbit", 100_000_000), ("1gbit", 10**9), ("500kbit", 500_000), ("2.5Mbit", 2_500_000)],
)
def test_rates_read_as_tc_writes_them(text: str, bits: int) -> None:
    assert parse_rate(text) == bits


@pytest.mark.parametrize(
    ("call", "text", "says"),
    [
        (parse_rate, "fast", "100mbit"),
        (parse_rate, "100", "below 8kbit"),
        (parse_delay, "soon", "5ms"),
        (parse_loss, "lots", "1%"),
        (parse_loss, "150%", "between 0% and 100%"),
    ],
)
def test_bad_shapes_say_how_to_write_them(call: object, text: str, says: str) -> None:
    with pytest.raises(ShapeError, match=says):
        call(text)  # type: ignore[operator]


def test_a_rate_is_a_token_bucket_with_a_small_burst_and_a_short_queue() -> None:
    commands = LinkShape.parse("100mbit").tc_commands("eth0")
    add = commands[1]
    assert add[:6] == ["qdisc", "add", "dev", "eth0", "root", "handle"]
    burst = int(add[add.index("burst") + 1])
    limit = int(add[add.index("limit") + 1])
    assert burst == 50_000  # 4 ms of 12.5 MB/s
    assert limit == 625_000 + burst  # 50 ms of it, plus the burst
    assert len(commands) == 2  # no netem without a delay


def test_a_delay_hangs_a_netem_under_the_bucket_and_loss_is_an_nft_rule() -> None:
    shape = LinkShape.parse("50mbit", "5ms", "5%")
    netem = shape.tc_commands("h2")[-1]
    assert netem[netem.index("parent") + 1] == "1:1" and "netem" in netem
    assert netem[netem.index("delay") + 1] == "5000us"
    rules = shape.nft_ruleset("h2")
    assert 'hook ingress device "h2"' in rules
    assert "numgen random mod 1000000 < 50000 drop" in rules
    assert "drop" not in LinkShape.parse("50mbit").nft_ruleset("h2")


def test_lab_addresses_stay_in_the_benchmark_range() -> None:
    assert host_addresses("198.18.7.0/24", 3) == (["198.18.7.1", "198.18.7.2", "198.18.7.3"], 24)
    with pytest.raises(ValueError, match=r"198\.18\.0\.0/15"):
        host_addresses("10.0.0.0/24", 2)
    with pytest.raises(ValueError, match="room for 2"):
        host_addresses("198.18.0.0/30", 3)
