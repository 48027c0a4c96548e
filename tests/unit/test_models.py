"""Endpoint ids (readable, stable, safe as directory names) and the event catalogue."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from castray.models import (
    EVENT_PAYLOADS,
    EventType,
    LiveEvent,
    TransferProgressEvent,
    is_valid_endpoint_id,
)


@pytest.mark.parametrize("good", ["node_1", "home-127.0.0.1", "A.b-c_9", "x" * 64, "..."])
def test_valid_endpoint_ids(good: str) -> None:
    assert is_valid_endpoint_id(good)


@pytest.mark.parametrize("bad", ["", ".", "..", "a/b", "a\\b", "x" * 65, "a b", "é", "a\nb", "a:b"])
def test_invalid_endpoint_ids(bad: str) -> None:
    assert not is_valid_endpoint_id(bad)


def test_the_readme_lists_exactly_the_event_catalogue() -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme.split("### Live events: `/ws`", 1)[1].split("\n### ", 1)[0]
    named = set(re.findall(r"`([a-z]+(?:_[a-z]+)*)`", section))
    catalogue = {kind.value for kind in EventType}
    not_events = {
        "clusters",
        "nodes",
        "transfers",
        "groups",
        "seq",
        "bytes_done",
        "ws_send_timeout",
    }

    assert catalogue <= named, f"missing from the README: {sorted(catalogue - named)}"
    assert named - not_events <= catalogue, f"not events: {sorted(named - not_events - catalogue)}"


def test_every_event_type_has_one_payload_model_that_round_trips() -> None:
    assert set(EVENT_PAYLOADS) == set(EventType)
    message = {
        "type": "transfer_progress",
        "seq": 7,
        "at": 1.5,
        "data": {"transfer_id": "t", "bytes_total": 10, "bytes_done": {"a": 5}},
    }

    event = LiveEvent.parse(message)

    assert isinstance(event.data, TransferProgressEvent)
    assert event.data.bytes_done == {"a": 5}
    assert event.data.model_dump(mode="json") == message["data"]
