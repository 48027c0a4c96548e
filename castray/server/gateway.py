"""The seams between the services and the agents: what a service may ask of the clusters'
agents, and what it may be told by them.

``Supervisor`` is the real thing; a service depends on these Protocols only, so its logic can
be tested with an in-memory stand-in (the real one is still tested against real Ray).
"""

from __future__ import annotations

from typing import Protocol, TypeVar

from pydantic import BaseModel

from castray.protocol import Operation, TransferMessage

R = TypeVar("R", bound=BaseModel)


class AgentGateway(Protocol):
    """Asks the agent of a cluster to do one operation; raises the agent's error as ours."""

    async def request(
        self, cluster: str, body: Operation, reply: type[R], timeout: float | None = None
    ) -> R:
        """``timeout``: seconds to wait for the answer, if not the setting's."""
        ...


class AgentListener(Protocol):
    """Told what the agents report about transfers, and when a cluster goes down."""

    def on_transfer_message(self, message: TransferMessage) -> None: ...

    def on_cluster_down(self, cluster: str, reason: str) -> None: ...
