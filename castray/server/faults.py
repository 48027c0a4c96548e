"""Fault injection, a test hook: off unless ``enable_fault_injection`` is set.

Tests prove that CastRay verifies what it receives by making an endpoint damage the chunks it
is sent; the route asks this service, which asks the endpoint's agent.
"""

from __future__ import annotations

from castray.config import Settings
from castray.errors import NotFound
from castray.models import FaultInjection
from castray.protocol import Done, InjectFaults
from castray.server.gateway import AgentGateway
from castray.server.registry import Registry


class FaultInjector:
    def __init__(self, settings: Settings, registry: Registry, agents: AgentGateway) -> None:
        self._enabled = settings.enable_fault_injection
        self._registry = registry
        self._agents = agents

    async def inject(self, node_id: str, faults: FaultInjection) -> None:
        """The node gets wrong what ``faults`` says, from now on."""
        if not self._enabled:
            raise NotFound(
                "fault injection is off; start CastRay with CASTRAY_ENABLE_FAULT_INJECTION=1"
            )
        node = self._registry.node(node_id)
        await self._agents.request(
            node.cluster,
            InjectFaults(endpoint_id=node_id, faults=faults),
            Done,
        )
