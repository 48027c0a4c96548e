"""Which discovered cluster CastRay connects, and how it tells the user."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from castray.models import DiscoveredCluster
from castray.ray_address import AGENT_RAY_VERSION, parse_address
from castray.server.discovery import choose, others_note
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


def test_the_most_recently_started_of_the_users_clusters_is_chosen() -> None:
    found = _newest_first(_found("10.0.0.1:6379", 0), _found("10.0.0.2:6379", 5))

    choice = choose(found, named=None)

    assert choice is not None
    assert choice.cluster.gcs_address == "10.0.0.2:6379"
    assert choice.reason == (
        "it is the most recently started of your Ray clusters (started 08:05:00 UTC)"
    )


def test_the_cluster_ray_address_names_comes_first() -> None:
    found = _newest_first(_found("10.0.0.1:6379", 0), _found("10.0.0.2:6379", 5))

    choice = choose(found, named=LocalCluster("10.0.0.1:6379"))

    assert choice is not None
    assert choice.cluster.gcs_address == "10.0.0.1:6379"
    assert "RAY_ADDRESS" in choice.reason


def test_another_users_cluster_is_never_chosen_even_when_newest() -> None:
    theirs = _found("10.0.0.9:6379", 30, own=False, owner="alice")
    found = _newest_first(_found("10.0.0.1:6379", 0), theirs)

    choice = choose(found, named=LocalCluster("10.0.0.9:6379"))

    assert choice is not None
    assert choice.cluster.gcs_address == "10.0.0.1:6379"
    assert "not connected yet" not in choice.reason
    assert choose([theirs], named=None) is None
    assert "(alice)" in others_note(found)


def test_connected_or_unjoinable_clusters_are_skipped_and_the_reason_says_so() -> None:
    found = _newest_first(
        _found("10.0.0.1:6379", 0),
        _found("10.0.0.2:6379", 1, ray_version="2.40.0"),
        _found("10.0.0.3:6379", 2, detail="needs a Ray token: connect it with ray_token"),
        _found("10.0.0.4:6379", 3, reachable=False),
        _found("10.0.0.5:6379", 4, connected=True),
    )

    choice = choose(found, named=None)

    assert choice is not None
    assert choice.cluster.gcs_address == "10.0.0.1:6379"
    assert "not connected yet" in choice.reason


def test_nothing_is_chosen_when_every_cluster_is_connected() -> None:
    assert choose([_found("10.0.0.1:6379", 0, connected=True)], named=None) is None
    assert others_note([_found("10.0.0.1:6379", 0)]) == ""


def test_a_local_cluster_knows_the_addresses_that_point_at_it() -> None:
    cluster = LocalCluster(
        "127.0.0.2:6379", dashboard="127.0.0.2:8265", client_ports={10001}, node_ips={"127.0.0.2"}
    )

    assert cluster.serves(parse_address("127.0.0.2:6379"))
    assert cluster.serves(parse_address("127.0.0.1:6379"))  # this machine, any loopback form
    assert cluster.serves(parse_address("http://127.0.0.2:8265"))
    assert cluster.serves(parse_address("127.0.0.2:8265"))
    assert cluster.serves(parse_address("ray://127.0.0.2:10001"))
    assert not cluster.serves(parse_address("ray://127.0.0.2:10002"))
    assert not cluster.serves(parse_address("http://127.0.0.2:6379"))
    assert not cluster.serves(parse_address("192.0.2.77:6379"))
