"""Who serves a pinned file to the nodes that lack it, and how a pin's copies are counted
(pure: no server, no Ray)."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

from castray.agent.copies import CopyIndex
from castray.models import CopyStatus, PinnedCopy
from castray.server.pin_plan import Delivery, Place, deliveries
from castray.server.pin_state import copy_name, coverage_of, moved

T0 = datetime(2026, 12, 3, tzinfo=timezone.utc)


def test_late_joiners_share_one_transfer_from_a_holder_of_their_own_cluster() -> None:
    missing = [Place("a-3", "a"), Place("a-4", "a"), Place("b-2", "b")]
    # a-1 read the library and sent the file to the others: it has sent the most.
    holders = [Place("a-2", "a", 100), Place("b-1", "b", 0), Place("a-1", "a", 300)]
    plan = deliveries(missing, holders, ["a-1"])
    assert plan == [
        Delivery("a-2", False, ("a-3", "a-4")),  # the original source pays nothing more...
        Delivery("b-1", False, ("b-2",)),  # ... and cluster b is served from inside b
    ]


def test_the_first_source_is_spared_even_when_it_has_sent_no_more_than_the_others() -> None:
    """Measured in the lab: host 1 (the library's reader) and host 2 had sent as much, and the
    id broke the tie, so host 1 served the joiners."""
    holders = [Place("a-1", "a", 256), Place("a-2", "a", 256)]
    assert deliveries([Place("a-3", "a")], holders, ["a-1"]) == [Delivery("a-2", False, ("a-3",))]
    # The first source alone holds it: it serves.
    assert deliveries([Place("a-3", "a")], holders[:1], ["a-1"]) == [
        Delivery("a-1", False, ("a-3",))
    ]


def test_a_cluster_without_a_holder_is_served_by_a_holder_elsewhere() -> None:
    plan = deliveries([Place("b-1", "b"), Place("b-2", "b")], [Place("a-1", "a")], ["a-1"])
    assert plan == [Delivery("a-1", False, ("b-1", "b-2"))]


def test_with_no_holder_the_library_is_read_by_a_local_endpoint_that_is_not_a_recipient() -> None:
    missing = [Place("a-1", "a"), Place("a-2", "a")]
    assert deliveries(missing, [], ["a-1", "a-9"]) == [Delivery("a-9", True, ("a-1", "a-2"))]
    # The only reader lacks the file too: it is a recipient of its own transfer (on a
    # one-node cluster, it is the only node there is).
    assert deliveries(missing, [], ["a-1"]) == [Delivery("a-1", True, ("a-1", "a-2"))]
    assert deliveries(missing[:1], [], ["a-1"]) == [Delivery("a-1", True, ("a-1",))]
    assert deliveries(missing, [], []) == []


def test_a_folder_pin_is_always_sent_from_the_library() -> None:
    plan = deliveries([Place("a-2", "a")], [Place("a-1", "a")], ["a-9"], from_holders=False)
    assert plan == [Delivery("a-9", True, ("a-2",))]


def test_coverage_counts_each_state_and_a_move_clears_what_no_longer_holds() -> None:
    failed = PinnedCopy(status=CopyStatus.FAILED, since=T0, error="full", retry_at=T0, tries=2)
    copies = {
        "n1": moved(failed, CopyStatus.VERIFIED, T0, blake3="ab", path="/x"),
        "n2": failed,
        "n3": PinnedCopy(status=CopyStatus.WAITING, since=T0),
    }
    assert copies["n1"].error is None and copies["n1"].retry_at is None and copies["n1"].tries == 0
    coverage = coverage_of(copies)
    assert (coverage.nodes, coverage.verified, coverage.failed, coverage.waiting) == (3, 1, 1, 1)
    assert copy_name("models/") == "models" and copy_name("a.bin") == "a.bin"


def test_a_copy_counts_as_verified_only_while_it_is_as_it_was_committed(tmp_path: Path) -> None:
    copy = tmp_path / "model.bin"
    copy.write_bytes(b"weights")
    index = CopyIndex(tmp_path)
    index.record(copy, "f00d")
    assert index.current("model.bin") is not None
    assert CopyIndex(tmp_path).current("model.bin") is not None  # kept across a restart
    copy.write_bytes(b"changed, and longer")
    assert index.current("model.bin") is None
    index.record(copy, "beef")
    assert index.forget(["model.bin", "../outside"]) == 1
    assert not copy.exists() and index.current("model.bin") is None
    assert index.wait("model.bin", 0.05) is None
