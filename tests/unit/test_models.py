"""Endpoint ids: readable, stable, and safe as directory names."""

from __future__ import annotations

import pytest

from castray.models import is_valid_endpoint_id


@pytest.mark.parametrize("good", ["node_1", "home-127.0.0.1", "A.b-c_9", "x" * 64, "..."])
def test_valid_endpoint_ids(good: str) -> None:
    assert is_valid_endpoint_id(good)


@pytest.mark.parametrize("bad", ["", ".", "..", "a/b", "a\\b", "x" * 65, "a b", "é", "a\nb", "a:b"])
def test_invalid_endpoint_ids(bad: str) -> None:
    assert not is_valid_endpoint_id(bad)
