"""Agent process entry: one Ray driver per cluster, speaking the protocol to the server.

Run as ``python -m castray.agent '<AgentConfig JSON>'``. The server starts it; a user never
needs to. It exits when the server closes its stdin, asks it to shut down, or the server's
end of the pipe breaks.
"""

from __future__ import annotations

import logging
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from castray.agent.environment import prepare_environment
from castray.agent.wire import Wire
from castray.errors import CastRayError
from castray.protocol import (
    AgentConfig,
    ClusterUpdate,
    CreateEndpoint,
    Fatal,
    Ready,
    RemoveEndpoint,
    Reply,
    Request,
    Shutdown,
)

if TYPE_CHECKING:
    from castray.agent.fleet import Fleet

log = logging.getLogger("castray.agent")

REQUEST_THREADS = 8


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s agent %(name)s: %(message)s"
    )
    wire = Wire.take_stdout()
    try:
        config = AgentConfig.model_validate_json(args[0])
    except (IndexError, ValidationError) as exc:
        wire.send(Fatal(error_code="invalid_request", message=f"bad agent config: {exc}"))
        return 2
    prepare_environment(config)
    # Imported only now: Ray reads part of its environment when it is imported.
    from castray.agent.connect import connect
    from castray.agent.fleet import Fleet

    try:
        identity = connect(config)
    except CastRayError as exc:
        wire.send(Fatal(error_code=exc.code, message=exc.message))
        return 1
    fleet = Fleet(config.cluster, identity, config.storage_root, wire.send)
    Agent(config, fleet, wire).run()
    return 0


class Agent:
    """The protocol loop: requests on worker threads, the cluster looked at on this one."""

    def __init__(self, config: AgentConfig, fleet: Fleet, wire: Wire) -> None:
        self._config = config
        self._fleet = fleet
        self._wire = wire
        self._stop = threading.Event()
        self._pool = ThreadPoolExecutor(REQUEST_THREADS, thread_name_prefix="request")

    def run(self) -> None:
        self._wire.send(Ready(ray=self._fleet.refresh()))
        threading.Thread(target=self._read_requests, name="reader", daemon=True).start()
        while not self._stop.is_set() and not self._wire.broken.is_set():
            self._stop.wait(self._config.poll_interval)
            try:
                state = self._fleet.refresh()
            except Exception:
                log.exception("could not look at the cluster")
                continue
            self._wire.send(ClusterUpdate(ray=state))
        log.info("agent stopping")
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._fleet.close()
        import ray

        ray.shutdown()

    def _read_requests(self) -> None:
        for line in sys.stdin:
            try:
                request = Request.model_validate_json(line)
            except ValidationError as exc:
                log.error("ignoring a malformed request: %s", exc)
                continue
            if isinstance(request.body, Shutdown):
                self._wire.send(Reply(id=request.id, result={}))
                break
            self._pool.submit(self._answer, request)
        self._stop.set()

    def _answer(self, request: Request) -> None:
        try:
            result = self._dispatch(request.body)
        except CastRayError as exc:
            reply = Reply(id=request.id, error_code=exc.code, error_message=exc.message)
        except Exception as exc:
            log.exception("request %s failed", request.body.op)
            reply = Reply(id=request.id, error_code="agent_failure", error_message=str(exc))
        else:
            reply = Reply(id=request.id, result=result)
        self._wire.send(reply)

    def _dispatch(self, body: Any) -> dict[str, Any]:
        if isinstance(body, CreateEndpoint):
            state = self._fleet.create_named(body.endpoint_id, body.ray_node_id)
            return {"endpoint": state.model_dump(mode="json")}
        if isinstance(body, RemoveEndpoint):
            self._fleet.remove(body.endpoint_id)
            return {}
        raise CastRayError(f"unknown operation {body.op!r}")
