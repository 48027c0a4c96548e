"""The FastAPI application: built by ``create_app(settings)``, nothing at import time."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from castray import __version__
from castray.config import Settings
from castray.errors import CastRayError, InvalidRequest, NotFound
from castray.server import ws
from castray.server.autopilot import Autopilot
from castray.server.clusters import ClusterService
from castray.server.deps import require_token
from castray.server.events import EventHub
from castray.server.groups import GroupService
from castray.server.history import History
from castray.server.library import Library
from castray.server.messages import MessageService
from castray.server.ray_token import RayTokens
from castray.server.registry import Registry
from castray.server.routes import (
    clusters,
    files,
    generator,
    groups,
    messages,
    nodes,
    status,
    transfers,
    ui,
)
from castray.server.supervisor import Supervisor
from castray.server.transfers import TransferService

log = logging.getLogger(__name__)


def create_app(settings: Settings) -> FastAPI:
    """Assemble the API; the lifespan starts the home cluster's agent and stops all agents."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        for folder in (
            settings.data_dir,
            settings.storage_root,
            settings.log_dir,
            settings.library_dir,
        ):
            folder.mkdir(parents=True, exist_ok=True)
        history = History(settings.history_file)
        interrupted = history.interrupt_unfinished()
        if interrupted:
            log.warning("%d transfer(s) were in flight when CastRay last stopped", interrupted)
        events = EventHub()
        registry = Registry(events)
        supervisor = Supervisor(settings, registry)
        library = Library(settings.library_dir, events.publisher_for_threads())
        group_service = GroupService(registry, history, events)
        transfer_service = TransferService(
            settings, registry, supervisor, library, history, events, group_service.members
        )
        autopilot = Autopilot(settings, registry, library, transfer_service)
        app.state.settings = settings
        app.state.registry = registry
        app.state.supervisor = supervisor
        app.state.events = events
        app.state.library = library
        app.state.groups = group_service
        app.state.transfers = transfer_service
        app.state.messages = MessageService(registry, supervisor, events, group_service.members)
        app.state.autopilot = autopilot
        tokens = RayTokens(settings.ray_token_trusted_hosts)
        app.state.clusters = ClusterService(settings, registry, supervisor, events, tokens)
        app.state.started_at = time.monotonic()
        await supervisor.start()
        autopilot.start()
        try:
            yield
        finally:
            await autopilot.stop()
            await transfer_service.close()
            await supervisor.stop()
            history.close()

    app = FastAPI(
        title="CastRay",
        version=__version__,
        summary="Move files and messages between the nodes of Ray clusters.",
        lifespan=lifespan,
    )
    api = [Depends(require_token)]
    # clusters before nodes: /api/nodes/external must not be taken for a node id.
    for module in (status, clusters, nodes, messages, files, generator, transfers, groups):
        app.include_router(module.router, prefix="/api", dependencies=api)
    ui.mount(app)
    app.include_router(ws.router)
    _add_error_handlers(app)
    return app


def _add_error_handlers(app: FastAPI) -> None:
    """Every error leaves as ``{"detail": "..."}`` with its status; never a traceback."""

    @app.exception_handler(CastRayError)
    async def castray_error(request: Request, exc: CastRayError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status_code == 401 else None
        return _error(exc.message, exc.code, exc.status_code, headers)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        return _error(describe_validation_error(exc), InvalidRequest.code, 422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = NotFound.code if exc.status_code == 404 else f"http_{exc.status_code}"
        return _error(str(exc.detail), code, exc.status_code, exc.headers)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return _error("internal error; the server log has the details", "internal", 500)


def _error(
    detail: str, code: str, status: int, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    return JSONResponse({"detail": detail, "code": code}, status, headers=headers)


def describe_validation_error(exc: RequestValidationError) -> str:
    """One readable sentence per problem: where it is and what was wrong."""
    parts = []
    for error in exc.errors():
        where = ".".join(str(p) for p in error.get("loc", ()) if p != "body") or "body"
        message = str(error.get("msg", "invalid"))
        parts.append(f"{where}: {message.removeprefix('Value error, ')}")
    return "; ".join(parts)
