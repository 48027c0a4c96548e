"""Which discovered cluster CastRay connects (Ray's own rule), and how it tells the user."""

from __future__ import annotations

import os
import socket
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from castray.models import DiscoveredCluster
from castray.ray_address import AGENT_RAY_VERSION, parse_address
from castray.server import local_clusters
from castray.server.discovery import Choice, NoChoice, choose, others_note, recorded_address
from castray.server.local_clusters import LocalCluster

T0 = datetime(2026, 11, 28, 8, 0, tzinfo=timezone.utc)


def _found(gcs: str, minutes: int, **changes: object) -> DiscoveredCluster:
    cluster = DiscoveredCluster(
        gcs_address=gcs,
        dashboard_url=f"http://{gcs.split(':')[0]}:8265",
        ray_version=AGENT_RAY_VERSION,
        owner="me",
        own=True,
        started_at=T0 + timedelta(minutes=minutes),
        reachable=True,
    )
    return cluster.model_copy(update=changes)


def _newest_first(*found: DiscoveredCluster) -> list[DiscoveredCluster]:
    return sorted(found, key=lambda c: c.started_at or T0, reverse=True)


def _choose(
    found: list[DiscoveredCluster], named: str | None = None, recorded: str | None = None
) -> Choice | NoChoice:
    clusters = {c.gcs_address: LocalCluster(c.gcs_address) for c in found}
    return choose(
        found,
        named,
        clusters.get(named or ""),
        clusters.get(recorded or "") or (LocalCluster(recorded) if recorded else None),
    )


def test_with_several_clusters_and_nothing_to_tell_them_apart_nothing_is_chosen() -> None:
    found = _newest_first(_found("10.0.0.1:6379", 0), _found("10.0.0.2:6379", 5))

    choice = _choose(found)

    assert isinstance(choice, NoChoice)
    assert [c.gcs_address for c in choice.candidates] == ["10.0.0.2:6379", "10.0.0.1:6379"]
    assert "nothing was connected" in choice.reason
    assert "connect-external" in choice.reason and "RAY_ADDRESS" in choice.reason
    assert "GCS 10.0.0.1:6379" in choice.reason and "run by me" in choice.reason


def test_the_cluster_ray_recorded_for_the_last_ray_start_is_chosen_even_if_older() -> None:
    found = _newest_first(_found("10.0.0.1:6379", 0), _found("10.0.0.2:6379", 5))

    choice = _choose(found, recorded="10.0.0.1:6379")

    assert isinstance(choice, Choice)
    assert choice.cluster.gcs_address == "10.0.0.1:6379"
    assert "last 'ray start'" in choice.reason


def test_a_recorded_cluster_that_cannot_be_joined_falls_back_to_the_only_joinable_one() -> None:
    found = _newest_first(
        _found("10.0.0.1:6379", 0), _found("10.0.0.2:6379", 5, ray_version="2.40.0")
    )

    choice = _choose(found, recorded="10.0.0.2:6379")

    assert isinstance(choice, Choice)
    assert choice.cluster.gcs_address == "10.0.0.1:6379"
    assert "only Ray cluster of yours" in choice.reason


def test_a_dead_recorded_cluster_counts_for_nothing() -> None:
    found = [_found("10.0.0.1:6379", 0), _found("10.0.0.2:6379", 5)]
    assert isinstance(_choose(found, recorded="10.0.0.9:6379"), NoChoice)


def test_the_cluster_ray_address_names_comes_first_and_alone() -> None:
    found = _newest_first(_found("10.0.0.1:6379", 0), _found("10.0.0.2:6379", 5))

    choice = _choose(found, named="10.0.0.1:6379", recorded="10.0.0.2:6379")
    assert isinstance(choice, Choice)
    assert choice.cluster.gcs_address == "10.0.0.1:6379"
    assert "RAY_ADDRESS" in choice.reason

    nowhere = _choose(found, named="10.0.0.7:6379", recorded="10.0.0.2:6379")
    assert isinstance(nowhere, NoChoice)
    assert "names no Ray cluster running on this machine" in nowhere.reason


def test_another_users_cluster_is_never_chosen_even_when_named_or_alone() -> None:
    theirs = _found("10.0.0.9:6379", 30, own=False, owner="alice")
    found = _newest_first(_found("10.0.0.1:6379", 0), theirs)

    named = _choose(found, named="10.0.0.9:6379")
    assert isinstance(named, NoChoice)
    assert "run by alice" in named.reason

    alone = _choose(found)
    assert isinstance(alone, Choice) and alone.cluster.gcs_address == "10.0.0.1:6379"
    assert isinstance(_choose([theirs]), NoChoice)
    assert "(alice)" in others_note(found)


def test_clusters_that_cannot_be_joined_do_not_count_and_a_connected_one_does() -> None:
    found = _newest_first(
        _found("10.0.0.1:6379", 0),
        _found("10.0.0.2:6379", 1, ray_version="2.40.0"),
        _found("10.0.0.3:6379", 2, detail="needs a Ray token: connect it with ray_token"),
        _found("10.0.0.4:6379", 3, reachable=False),
    )
    choice = _choose(found)
    assert isinstance(choice, Choice) and choice.cluster.gcs_address == "10.0.0.1:6379"

    connected = _found("10.0.0.5:6379", 4, connected=True)
    assert isinstance(_choose([*found, connected]), NoChoice)
    again = _choose([connected])
    assert isinstance(again, Choice) and again.cluster.connected


def test_nothing_joinable_says_so() -> None:
    choice = _choose([_found("10.0.0.1:6379", 0, reachable=False)])
    assert isinstance(choice, NoChoice)
    assert "none of yours that CastRay can join" in choice.reason
    assert others_note([_found("10.0.0.1:6379", 0)]) == ""


def test_the_record_is_read_where_ray_keeps_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path))
    assert recorded_address() is None
    (tmp_path / "ray").mkdir()
    (tmp_path / "ray" / "ray_current_cluster").write_text("10.0.0.1:6379\n")
    assert recorded_address() == "10.0.0.1:6379"


def test_a_local_cluster_is_reached_only_at_the_addresses_it_listens_on() -> None:
    cluster = LocalCluster(
        "192.0.2.2:6379",
        dashboard="127.0.0.2:8265",
        client_ports={10001},
        listening={
            ("0.0.0.0", 6379),
            ("127.0.0.2", 8265),
            ("0.0.0.0", 10001),
            ("127.0.0.2", 40000),
        },
    )

    assert cluster.serves(parse_address("127.0.0.2:6379"))  # the GCS listens on every address
    assert cluster.serves(parse_address("127.0.0.1:6379"))
    assert cluster.serves(parse_address("http://127.0.0.2:8265"))
    assert cluster.serves(parse_address("127.0.0.2:8265"))
    assert not cluster.serves(parse_address("http://127.0.0.3:8265"))  # same port, other IP
    assert cluster.serves(parse_address("ray://127.0.0.2:10001"))
    assert not cluster.serves(parse_address("ray://127.0.0.2:10002"))
    assert not cluster.serves(parse_address("http://127.0.0.2:6379"))
    assert not cluster.serves(parse_address("192.0.2.77:6379"))
    assert not cluster.serves(parse_address("127.0.0.2:40000"))  # a raylet's own port


def test_without_its_sockets_only_the_recorded_addresses_count_exactly() -> None:
    cluster = LocalCluster("127.0.0.2:6379", dashboard="127.0.0.2:8265")

    assert cluster.serves(parse_address("127.0.0.2:6379"))
    assert cluster.serves(parse_address("http://127.0.0.2:8265"))
    assert not cluster.serves(parse_address("127.0.0.1:6379"))
    assert not cluster.serves(parse_address("http://127.0.0.3:8265"))


def test_a_dual_stack_socket_counts_at_its_ipv4_address() -> None:
    """Ray's client server listens on ``::ffff:127.0.0.N``: that is 127.0.0.N."""
    with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind(("::ffff:127.0.0.5", 0))
        sock.listen()
        port = sock.getsockname()[1]
        assert ("127.0.0.5", port) in local_clusters._listening({os.getpid()})[0]


def test_where_some_sockets_cannot_be_read_the_recorded_addresses_count_too() -> None:
    """A Ray Client server whose sockets are hidden is still found at the head's IP."""
    cluster = LocalCluster(
        "127.0.0.2:6379",
        dashboard="127.0.0.2:8265",
        client_ports={10001},
        listening={("127.0.0.2", 6379)},
        unreadable=True,
    )

    assert cluster.serves(parse_address("ray://127.0.0.2:10001"))
    assert cluster.serves(parse_address("http://127.0.0.2:8265"))
    assert not cluster.serves(parse_address("ray://127.0.0.3:10001"))
    cluster.unreadable = False
    assert not cluster.serves(parse_address("ray://127.0.0.2:10001"))
