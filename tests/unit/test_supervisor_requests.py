"""A request to a cluster that was detached meanwhile fails as "unavailable", which every
caller already handles, never with a bare KeyError (seen in CI: a pin's check awaited one
cluster while an external one was disconnected)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from castray.config import Settings
from castray.errors import ClusterUnavailable
from castray.protocol import Done, RemoveEndpoint
from castray.server.registry import Registry
from castray.server.supervisor import Supervisor


def test_a_request_to_a_detached_cluster_is_unavailable(tmp_path: Path) -> None:
    registry = Registry()
    supervisor = Supervisor(Settings(data_dir=tmp_path), registry)
    registry.add_cluster("ext-gone", is_home=False, is_external=True)
    registry.remove_cluster("ext-gone")
    with pytest.raises(ClusterUnavailable, match="no longer attached"):
        asyncio.run(supervisor.request("ext-gone", RemoveEndpoint(endpoint_id="x"), Done))


def test_a_request_to_a_starting_cluster_is_unavailable(tmp_path: Path) -> None:
    registry = Registry()
    supervisor = Supervisor(Settings(data_dir=tmp_path), registry)
    registry.add_cluster("ext-new", is_home=False, is_external=True)
    with pytest.raises(ClusterUnavailable, match="starting"):
        asyncio.run(supervisor.request("ext-new", RemoveEndpoint(endpoint_id="x"), Done))
