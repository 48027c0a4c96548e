"""Dependencies of the route handlers, as ``Annotated`` aliases."""

from __future__ import annotations

import secrets
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from castray.config import Settings
from castray.errors import Unauthorized
from castray.server.autopilot import Autopilot
from castray.server.groups import GroupService
from castray.server.library import Library
from castray.server.messages import MessageService
from castray.server.registry import Registry
from castray.server.supervisor import Supervisor
from castray.server.transfers import TransferService

_bearer = HTTPBearer(auto_error=False, description="Required when CastRay runs with --token.")


async def _settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def _registry(request: Request) -> Registry:
    registry: Registry = request.app.state.registry
    return registry


async def _supervisor(request: Request) -> Supervisor:
    supervisor: Supervisor = request.app.state.supervisor
    return supervisor


async def _library(request: Request) -> Library:
    library: Library = request.app.state.library
    return library


async def _transfers(request: Request) -> TransferService:
    service: TransferService = request.app.state.transfers
    return service


async def _groups(request: Request) -> GroupService:
    service: GroupService = request.app.state.groups
    return service


async def _messages(request: Request) -> MessageService:
    service: MessageService = request.app.state.messages
    return service


async def _autopilot(request: Request) -> Autopilot:
    autopilot: Autopilot = request.app.state.autopilot
    return autopilot


SettingsDep = Annotated[Settings, Depends(_settings)]
LibraryDep = Annotated[Library, Depends(_library)]
TransfersDep = Annotated[TransferService, Depends(_transfers)]
GroupsDep = Annotated[GroupService, Depends(_groups)]
MessagesDep = Annotated[MessageService, Depends(_messages)]
AutopilotDep = Annotated[Autopilot, Depends(_autopilot)]
RegistryDep = Annotated[Registry, Depends(_registry)]
SupervisorDep = Annotated[Supervisor, Depends(_supervisor)]


async def require_token(
    settings: SettingsDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    """When a token is configured, every API call must carry it as a bearer token."""
    if settings.token is None:
        return
    expected = settings.token.get_secret_value()
    if credentials is None or not secrets.compare_digest(
        credentials.credentials.encode(), expected.encode()
    ):
        raise Unauthorized(
            "this CastRay server requires a token: send 'Authorization: Bearer <token>' "
            "(the CLI takes --token or CASTRAY_TOKEN)"
        )
