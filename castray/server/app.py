"""The FastAPI application: built by ``create_app(settings)``, nothing at import time."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from castray import __version__
from castray.config import Settings
from castray.errors import CastRayError, InvalidRequest, NotFound
from castray.models import ErrorResponse
from castray.server.autopilot import Autopilot
from castray.server.clusters import ClusterService
from castray.server.deps import require_token
from castray.server.events import EventHub
from castray.server.faults import FaultInjector
from castray.server.generator import Generator
from castray.server.groups import GroupService
from castray.server.headers import SecurityHeaders
from castray.server.history import History
from castray.server.library import Library
from castray.server.limits import JsonBodyLimit, WriteSlots
from castray.server.messages import MessageService
from castray.server.metrics import Metrics
from castray.server.origins import OriginGuard, OriginPolicy
from castray.server.pins import PinService
from castray.server.ray_token import RayTokens
from castray.server.registry import Registry
from castray.server.routes import (
    clusters,
    files,
    generator,
    groups,
    messages,
    metrics,
    nodes,
    pins,
    status,
    storage,
    transfers,
    ui,
    ws,
)
from castray.server.storage import StorageService
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
            log.warning("%d transfer(s) were in flight when CastRay last stopped", len(interrupted))
        events = EventHub(settings.ws_queue_events)
        registry = Registry(events)
        app.state.metrics = Metrics(registry, events)
        supervisor = Supervisor(settings, registry)
        library = Library(settings.library_dir, events.publisher_for_threads(), settings.chunk_size)
        write_slots = WriteSlots(settings.max_concurrent_writes)
        generator = Generator(library, settings, write_slots)
        group_service = GroupService(registry, history, events)
        transfer_service = TransferService(
            settings, registry, supervisor, library, history, events, group_service.members
        )
        supervisor.subscribe(transfer_service)
        autopilot = Autopilot(settings, registry, library, generator, transfer_service)
        app.state.settings = settings
        app.state.registry = registry
        app.state.supervisor = supervisor
        app.state.events = events
        app.state.library = library
        app.state.write_slots = write_slots
        app.state.generator = generator
        app.state.groups = group_service
        app.state.transfers = transfer_service
        app.state.messages = MessageService(
            settings, registry, supervisor, events, group_service.members
        )
        app.state.autopilot = autopilot
        app.state.faults = FaultInjector(settings, registry, supervisor)
        tokens = RayTokens(settings.ray_token_trusted_hosts)
        cluster_service = ClusterService(settings, registry, supervisor, events, tokens, history)
        supervisor.subscribe(cluster_service)
        app.state.clusters = cluster_service
        pin_service = PinService(
            registry,
            library,
            transfer_service,
            supervisor,
            group_service.members,
            events,
            history,
            settings.pin_check_interval,
            app.state.metrics.observe_pin_fill,
        )
        app.state.pins = pin_service
        app.state.metrics.watch_pins(pin_service)
        storage_service = StorageService(
            settings, registry, supervisor, history, events, pin_service.pinned_names
        )
        app.state.storage = storage_service
        app.state.started_at = time.monotonic()
        await supervisor.start()
        cluster_service.restore()
        autopilot.start()
        storage_service.start()
        pin_service.start()
        if settings.auto_resume:
            transfer_service.auto_resume(history.resumable_interrupted())
        try:
            yield
        finally:
            await autopilot.stop()
            await pin_service.stop()
            await storage_service.stop()
            await asyncio.to_thread(generator.close)
            await transfer_service.close()
            await cluster_service.stop()
            await supervisor.stop()
            history.close()

    gated = settings.token is not None  # then the schema needs the token too; no /docs page
    app = FastAPI(
        title="CastRay",
        version=__version__,
        summary="Move files and messages between the nodes of Ray clusters.",
        lifespan=lifespan,
        openapi_url=None if gated else "/openapi.json",
        docs_url=None if gated else "/docs",
        redoc_url=None if gated else "/redoc",
    )
    # Set the moment a stop is asked for (see runner.py), before requests in flight end.
    app.state.stopping = asyncio.Event()
    api = [Depends(require_token)]
    # clusters before nodes: /api/nodes/external must not be taken for a node id.
    routed = (status, clusters, nodes, messages, files, generator, transfers, groups, pins, storage)
    for module in routed:
        app.include_router(module.router, prefix="/api", dependencies=api)
    app.include_router(metrics.router, dependencies=[] if settings.metrics_public else api)
    ui.mount(app)
    app.include_router(ws.router)
    _add_error_handlers(app)
    _describe_errors_in_openapi(app)
    if gated:

        @app.get("/openapi.json", include_in_schema=False, dependencies=api)
        async def schema() -> JSONResponse:
            return JSONResponse(app.openapi())

    app.add_middleware(JsonBodyLimit, limit=settings.max_json_bytes)
    app.add_middleware(OriginGuard, policy=OriginPolicy(settings))
    app.add_middleware(SecurityHeaders)
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
        error_id = uuid.uuid4().hex[:8]
        log.exception("unexpected error %s on %s %s", error_id, request.method, request.url.path)
        return _error(f"internal error {error_id}; the server log has the details", "internal", 500)


def _error(
    detail: str, code: str, status: int, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    return JSONResponse({"detail": detail, "code": code}, status, headers=headers)


def _describe_errors_in_openapi(app: FastAPI) -> None:
    """The schema says what errors really look like: every error of every operation is an
    ``ErrorResponse`` (FastAPI would describe 422 as a list of validation details)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title, version=app.version, summary=app.summary, routes=app.routes
            )
            error = {"$ref": "#/components/schemas/ErrorResponse"}
            as_json = {"application/json": {"schema": error}}
            for operations in schema.get("paths", {}).values():
                for operation in operations.values():
                    responses = operation.setdefault("responses", {})
                    for code, response in responses.items():
                        if code[0] in "45":
                            response["content"] = as_json
                    responses["default"] = {"description": "An error", "content": as_json}
            schemas = schema.setdefault("components", {}).setdefault("schemas", {})
            schemas["ErrorResponse"] = ErrorResponse.model_json_schema()
            for unused in ("HTTPValidationError", "ValidationError"):
                schemas.pop(unused, None)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def describe_validation_error(exc: RequestValidationError) -> str:
    """One readable sentence per problem: where it is and what was wrong."""
    parts = []
    for error in exc.errors():
        where = ".".join(str(p) for p in error.get("loc", ()) if p != "body") or "body"
        message = str(error.get("msg", "invalid"))
        parts.append(f"{where}: {message.removeprefix('Value error, ')}")
    return "; ".join(parts)
