"""The endpoint actor: CastRay's presence on one Ray node.

It is pinned to its node (node affinity, hard) and owns a storage directory there. It takes
no CPU, so it never competes with the cluster's own work for scheduling.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import ray


class Endpoint:
    """State that lives on the endpoint's node; methods run there."""

    def __init__(self, endpoint_id: str, storage_dir: str) -> None:
        self.endpoint_id = endpoint_id
        self.storage_dir = Path(storage_dir)
        self.storage_dir.mkdir(parents=True, exist_ok=True)

    def describe(self) -> dict[str, Any]:
        """Where this endpoint really runs; proves the actor is up."""
        context = ray.get_runtime_context()
        return {
            "endpoint_id": self.endpoint_id,
            "ray_node_id": context.get_node_id(),
            "address": ray.util.get_node_ip_address(),
            "pid": os.getpid(),
            "storage_dir": str(self.storage_dir),
        }


# A Ray actor class; typed Any because Ray's decorator erases the methods' types.
EndpointActor: Any = ray.remote(num_cpus=0, max_restarts=0)(Endpoint)
