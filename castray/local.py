"""Where a file CastRay delivered is on this node, asked from inside a Ray task or actor.

Every CastRay endpoint actor is named in Ray's ``castray`` namespace after its Ray node
(``castray-endpoint:<node id>:<endpoint id>:<run>``), so code running on any node of a
connected cluster finds the endpoints of its own node without knowing CastRay's server or
its storage layout, and asks them for their verified copy: the path of the file as it was
committed (its BLAKE3 checked against the sender's), still of the same size and mtime.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from castray.errors import CopyNotFound

NAMESPACE = "castray"
PREFIX = "castray-endpoint:"
ASK_EVERY = 5.0
"""Seconds an endpoint waits for the copy to be committed, per question."""


def actor_name(ray_node_id: str, endpoint_id: str, run: str) -> str:
    """The name an endpoint actor gets in the ``castray`` namespace."""
    return f"{PREFIX}{ray_node_id}:{endpoint_id}:{run}"


def local_path(name: str, timeout: float = 0.0) -> Path:
    """The path of this node's verified copy of ``name`` (a file's name as it was sent, or a
    folder's), waiting up to ``timeout`` seconds for it to arrive (a pin fills a node that
    just joined). Raises ``CopyNotFound`` when there is none in time, with why.

    Call it in a Ray task or actor (or a driver) on a node of a cluster CastRay is connected
    to: ``castray.local_path("model.bin", timeout=600)``.
    """
    import ray

    if not ray.is_initialized():
        raise CopyNotFound(
            "castray.local_path runs inside Ray: call it from a task or an actor, or after "
            "ray.init() on a node of the cluster"
        )
    node = ray.get_runtime_context().get_node_id()
    deadline = time.monotonic() + max(timeout, 0.0)
    while True:
        endpoints = _endpoints_on(node)
        left = deadline - time.monotonic()
        for actor in endpoints:
            found = _ask(actor, name, min(max(left, 0.0), ASK_EVERY))
            if found is not None:
                return Path(found)
        left = deadline - time.monotonic()
        if left <= 0:
            break
        if not endpoints:  # none yet (the node just joined): look again in a moment
            time.sleep(min(left, 1.0))
    if not endpoints:
        raise CopyNotFound(
            f"no CastRay endpoint runs on this node ({node[:12]}...): is its cluster connected "
            "to a CastRay server?"
        )
    raise CopyNotFound(
        f"this node holds no verified copy of {name!r}"
        + (f" after {timeout:g} s" if timeout > 0 else "")
        + ": pin it (castray pin FILE --all) or send it here, and give it a timeout to arrive"
    )


def _endpoints_on(node: str) -> list[str]:
    import ray

    return sorted(
        entry["name"]
        for entry in ray.util.list_named_actors(all_namespaces=True)
        if entry.get("namespace") == NAMESPACE and entry["name"].startswith(f"{PREFIX}{node}:")
    )


def _ask(actor_name_: str, name: str, wait: float) -> str | None:
    import ray
    from ray.exceptions import GetTimeoutError, RayError

    try:
        actor: Any = ray.get_actor(actor_name_, namespace=NAMESPACE)
        found: Any = ray.get(actor.local_copy.remote(name, wait), timeout=wait + 30)
    except (RayError, GetTimeoutError, ValueError):  # gone since it was listed
        return None
    return str(found[0]) if found else None
