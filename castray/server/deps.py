"""Dependencies of the route handlers, as ``Annotated`` aliases."""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from castray.config import Settings
from castray.errors import Unauthorized
from castray.server.autopilot import Autopilot
from castray.server.clusters import ClusterService
from castray.server.faults import FaultInjector
from castray.server.generator import Generator
from castray.server.groups import GroupService
from castray.server.library import Library
from castray.server.limits import WriteSlots
from castray.server.messages import MessageService
from castray.server.pins import PinService
from castray.server.registry import Registry
from castray.server.storage import StorageService
from castray.server.supervisor import Supervisor
from castray.server.transfers import TransferService

_bearer = HTTPBearer(auto_error=False, description="Required when CastRay runs with --token.")


def _from_state(attribute: str) -> Callable[[Request], Awaitable[Any]]:
    """A dependency that hands out one of the objects ``create_app``'s lifespan built."""

    async def dependency(request: Request) -> Any:
        return getattr(request.app.state, attribute)

    return dependency


SettingsDep = Annotated[Settings, Depends(_from_state("settings"))]
RegistryDep = Annotated[Registry, Depends(_from_state("registry"))]
SupervisorDep = Annotated[Supervisor, Depends(_from_state("supervisor"))]
LibraryDep = Annotated[Library, Depends(_from_state("library"))]
TransfersDep = Annotated[TransferService, Depends(_from_state("transfers"))]
GroupsDep = Annotated[GroupService, Depends(_from_state("groups"))]
MessagesDep = Annotated[MessageService, Depends(_from_state("messages"))]
AutopilotDep = Annotated[Autopilot, Depends(_from_state("autopilot"))]
ClustersDep = Annotated[ClusterService, Depends(_from_state("clusters"))]
GeneratorDep = Annotated[Generator, Depends(_from_state("generator"))]
FaultsDep = Annotated[FaultInjector, Depends(_from_state("faults"))]
WriteSlotsDep = Annotated[WriteSlots, Depends(_from_state("write_slots"))]
StorageDep = Annotated[StorageService, Depends(_from_state("storage"))]
PinsDep = Annotated[PinService, Depends(_from_state("pins"))]


def token_matches(settings: Settings, given: str | None) -> bool:
    """Whether ``given`` is the server's token (any value when none is configured)."""
    if settings.token is None:
        return True
    expected = settings.token.get_secret_value().encode()
    return given is not None and secrets.compare_digest(given.encode(), expected)


async def require_token(
    settings: SettingsDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    """When a token is configured, every API call must carry it as a bearer token."""
    if not token_matches(settings, credentials.credentials if credentials else None):
        raise Unauthorized(
            "this CastRay server requires a token: send 'Authorization: Bearer <token>' "
            "(the CLI takes --token, CASTRAY_TOKEN or a file named by CASTRAY_TOKEN_FILE)"
        )
