"""``/api/nodes``: CastRay's endpoints, automatic and named."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, status

from castray.models import ErrorResponse, FaultInjection, Node, NodeCreate, NodeList
from castray.server.deps import FaultsDep, RegistryDep, SupervisorDep

router = APIRouter(prefix="/nodes", tags=["nodes"])

_ERRORS: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorResponse},
    409: {"model": ErrorResponse},
    503: {"model": ErrorResponse},
}


@router.get("")
async def list_nodes(registry: RegistryDep) -> NodeList:
    nodes = registry.nodes()
    return NodeList(nodes=nodes, count=len(nodes))


@router.post("", status_code=status.HTTP_201_CREATED, responses=_ERRORS)
async def create_node(body: NodeCreate, supervisor: SupervisorDep) -> Node:
    """Deploy a named endpoint on a Ray node of the home cluster (its head by default)."""
    return await supervisor.create_node(body.node_id, body.ray_node_id)


@router.post("/{node_id}/faults", status_code=status.HTTP_204_NO_CONTENT, responses=_ERRORS)
async def inject_faults(node_id: str, body: FaultInjection, faults: FaultsDep) -> None:
    """Only with ``CASTRAY_ENABLE_FAULT_INJECTION=1``; lets tests prove chunks are verified."""
    await faults.inject(node_id, body)


@router.get("/{node_id}", responses=_ERRORS)
async def get_node(node_id: str, registry: RegistryDep) -> Node:
    return registry.node(node_id)


@router.delete("/{node_id}", status_code=status.HTTP_204_NO_CONTENT, responses=_ERRORS)
async def delete_node(node_id: str, supervisor: SupervisorDep) -> None:
    """Remove a named endpoint (its stored files stay), or forget a dead one."""
    await supervisor.delete_node(node_id)
