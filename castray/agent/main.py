"""Agent process entry: one Ray driver per cluster, speaking the protocol to the server.

Run as ``python -m castray.agent '<AgentConfig JSON>'``. The server starts it; a user never
needs to. It exits when the server closes its stdin, asks it to shut down, or the server's
end of the pipe breaks.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ValidationError

from castray.agent.dataplane import all_chunks
from castray.agent.environment import prepare_environment
from castray.agent.transports.head_trials import HeadTrials
from castray.agent.wire import Wire
from castray.errors import (
    AgentFailure,
    CastRayError,
    FileMissing,
    InvalidRequest,
    TooManyRequests,
    TransferNotFound,
)
from castray.models import Transport
from castray.protocol import (
    AgentConfig,
    AgentTunables,
    CancelTransfer,
    ClusterUpdate,
    CopiesTended,
    CreateEndpoint,
    Delivered,
    DeliverMessage,
    Discarded,
    DiscardPartials,
    Done,
    EndpointCreated,
    Fatal,
    FetchOrigin,
    FileSize,
    ImportListening,
    ImportTransfer,
    InjectFaults,
    LinksProbed,
    ManifestRead,
    MessagesRead,
    MissingRead,
    Operation,
    OriginFeed,
    ProbeFile,
    ProbeLinks,
    ReadManifest,
    ReadMessages,
    ReadMissing,
    Ready,
    RecipientFinished,
    RemoveEndpoint,
    Reply,
    Request,
    Shutdown,
    StartTransfer,
    StorageSwept,
    SweepStorage,
    TendCopies,
    TransferFinished,
    TransferMessage,
    TransferOpened,
)
from castray.sources.fetch import FETCH_TIMEOUT

if TYPE_CHECKING:
    from castray.agent.fleet import Fleet
    from castray.agent.transports.inline import InlineRun
    from castray.agent.transports.object_store import TransferRun
    from castray.agent.transports.stream import StreamRun

    Run = TransferRun | StreamRun | InlineRun

log = logging.getLogger("castray.agent")

REQUEST_THREADS = 8
FETCHES = REQUEST_THREADS // 2
"""Fetches from origins at once per agent: each holds a request thread for its whole length,
and the others must stay free for the rest."""
ORIGIN_INFO_TIMEOUT = 120.0
"""Seconds an origin gets to say what its object is (a slow store, retried reads)."""
IMPORT_HOST = "127.0.0.1"
"""Agents run beside the server, so streams between clusters stay on loopback."""
EXIT_GRACE = 1.5
"""Seconds the agent gets to stop cleanly once its server is gone or asked it to stop; then
it exits whatever Ray is doing (a call to a dead cluster can block for a minute)."""
PARENT_CHECK_EVERY = 0.5


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
    logging.getLogger().setLevel(config.log_level.upper())  # the server's level
    watch_parent(os.getppid())
    prepare_environment(config)
    # Imported only now: Ray reads part of its environment when it is imported.
    from castray.agent.connect import connect
    from castray.agent.fleet import Fleet

    try:
        identity = connect(config)
    except CastRayError as exc:
        wire.send(Fatal(error_code=exc.code, message=exc.message))
        return 1
    fleet = Fleet(config.cluster, identity, config.storage_root, config.tunables, wire.send)
    Agent(config, fleet, wire).run()
    return 0


def watch_parent(parent: int) -> None:
    """Exit soon after the server that started this agent is gone, even if stdin never closes
    (its pipe may be held open by a process it started)."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(PARENT_CHECK_EVERY)
        log.warning("the CastRay server is gone; the agent exits")
        exit_soon()

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def exit_soon() -> None:
    """Exit within ``EXIT_GRACE`` seconds, cleanly if the main loop manages it."""
    timer = threading.Timer(EXIT_GRACE, os._exit, (0,))
    timer.daemon = True
    timer.start()


def _run_spec(cls: Any, spec: StartTransfer | ImportTransfer, tunables: AgentTunables) -> Any:
    return cls(
        transfer_id=spec.transfer_id,
        file_name=spec.file_name,
        expected_blake3=spec.expected_blake3,
        chunk_size=spec.chunk_size,
        window=spec.window,
        tunables=tunables,
        rate_limit=spec.rate_limit,
    )


def _file_error(exc: BaseException, path: str, endpoint: str) -> CastRayError:
    """A source-side file error as the user should see it."""
    from castray.agent.reasons import cause_of, reason

    exc = cause_of(exc)
    if isinstance(exc, FileNotFoundError):
        return FileMissing(f"{path!r} does not exist on {endpoint}")
    if isinstance(exc, PermissionError | IsADirectoryError | NotADirectoryError):
        return InvalidRequest(f"cannot send {path!r} from {endpoint}: {reason(exc)}")
    if isinstance(exc, CastRayError):
        return exc
    return AgentFailure(f"cannot open {path!r} on {endpoint}: {reason(exc)}")


def _manifest_read(described: Any, **extra: Any) -> ManifestRead:
    """A file as an endpoint described it (its ``Manifest`` or ``OriginCopy``), for the wire."""
    return ManifestRead(
        size=described.size,
        manifest=[digest.hex() for digest in described.chunks],
        blake3=described.whole,
        identity=described.identity,
        **extra,
    )


def ray_get(ref: Any, timeout: float = 60.0) -> Any:
    import ray

    return ray.get(ref, timeout=timeout)


class Agent:
    """The protocol loop: requests on worker threads, the cluster looked at on this one."""

    def __init__(self, config: AgentConfig, fleet: Fleet, wire: Wire) -> None:
        self._config = config
        self._fleet = fleet
        self._wire = wire
        self._stop = threading.Event()
        self._pool = ThreadPoolExecutor(REQUEST_THREADS, thread_name_prefix="request")
        self._fetches = threading.BoundedSemaphore(FETCHES)
        self._runners: set[threading.Thread] = set()
        """Each transfer's part runs on a thread of its own, started at once: a slow transfer
        never holds up another (the number at once is capped instead, see ``_admit``)."""
        self._transfers: dict[str, Run] = {}
        self._unpack: dict[str, str] = {}
        """Transfers of a folder's bundle: the folder each recipient unpacks it into."""
        self._starting: dict[int, Run] = {}
        self._head_trials = HeadTrials()
        """What trying a chain's head at its end taught, for the runs to come."""

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
        for run in list(self._transfers.values()):
            run.cancel()
        # First, while there is time (the agent exits within EXIT_GRACE): no partial files.
        self._fleet.abort_partials()
        self._pool.shutdown(wait=False, cancel_futures=True)
        for runner in list(self._runners):
            runner.join(EXIT_GRACE)
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
        # Asked to stop, or the server closed our stdin: stop, and never outlive it for long.
        self._stop.set()
        exit_soon()

    def _answer(self, request: Request) -> None:
        try:
            result = self._dispatch(request.id, request.body)
        except CastRayError as exc:
            reply = Reply(id=request.id, error_code=exc.code, error_message=exc.message)
        except Exception:
            error_id = uuid.uuid4().hex[:8]
            log.exception("request %s failed (error %s)", request.body.op, error_id)
            message = (
                f"the agent of cluster {self._config.cluster} could not do {request.body.op} "
                f"(error {error_id}; its log has the details)"
            )
            reply = Reply(id=request.id, error_code="agent_failure", error_message=message)
        else:
            reply = Reply(id=request.id, result=result.model_dump(mode="json"))
        self._wire.send(reply)
        # A transfer starts only after its reply is on the wire, so the server always learns
        # of it before any of its progress.
        started = self._starting.pop(request.id, None)
        if started is not None and reply.error_code is None:
            self._transfers[started.spec.transfer_id] = started
            runner = threading.Thread(
                target=self._run, args=(started,), name=f"transfer-{started.spec.transfer_id}"
            )
            self._runners.add(runner)
            runner.start()

    def _run(self, run: Run) -> None:
        try:
            run.run()
        finally:
            self._runners.discard(threading.current_thread())

    def _admit(self) -> None:
        """Refuse a transfer past the cap of those this agent drives at once."""
        cap = self._config.tunables.transfer_threads
        if len(self._transfers) + len(self._starting) >= cap:
            raise TooManyRequests(
                f"cluster {self._config.cluster} runs {cap} transfers at once, the most one "
                "agent drives (CASTRAY_AGENT_TRANSFER_THREADS); try again when one ends"
            )

    def _described(self, endpoint: str, path: str, ask: Callable[[Any], Any], wait: float) -> Any:
        """What an endpoint answers about a file it reads (``Manifest``, ``OriginCopy``)."""
        try:
            return ray_get(ask(self._fleet.handle(endpoint)), wait)
        except Exception as exc:  # the actor's error decides the answer
            raise _file_error(exc, path, endpoint) from exc

    def _read_manifest(self, body: ReadManifest) -> ManifestRead:
        manifest = self._described(
            body.endpoint_id,
            body.path,
            lambda handle: handle.manifest_of.remote(body.path, body.chunk_size),
            3600,
        )
        return _manifest_read(manifest)

    def _fetch_origin(self, body: FetchOrigin) -> ManifestRead:
        if not self._fetches.acquire(blocking=False):
            raise TooManyRequests(
                f"cluster {self._config.cluster} fetches {FETCHES} URLs at once, the most one "
                "agent does; try again when one ends"
            )
        try:
            copy = self._described(
                body.endpoint_id,
                body.name,
                lambda handle: handle.fetch_origin.remote(
                    body.fetch_id, body.url, body.name, body.chunk_size, body.allowed_hosts
                ),
                FETCH_TIMEOUT,
            )
        finally:
            self._fetches.release()
        return _manifest_read(
            copy, checked=copy.checked, resumed_reads=copy.resumed_reads, seconds=copy.seconds
        )

    def _dispatch(self, request_id: int, body: Operation) -> BaseModel:
        """Carry out one operation; its reply model (see ``protocol``)."""
        if isinstance(body, CreateEndpoint):
            return EndpointCreated(
                endpoint=self._fleet.create_named(body.endpoint_id, body.ray_node_id)
            )
        if isinstance(body, RemoveEndpoint):
            self._fleet.remove(body.endpoint_id)
            return Done()
        if isinstance(body, StartTransfer | ImportTransfer):
            self._admit()
        if isinstance(body, StartTransfer):
            if body.transport is Transport.STREAM:
                return TransferOpened(size=self._open_stream(request_id, body))
            return TransferOpened(size=self._open_transfer(request_id, body))
        if isinstance(body, ImportTransfer):
            if body.transport is Transport.STREAM:
                self._open_stream(request_id, body)
                return Done()
            host, port, secret = self._open_import(request_id, body)
            return ImportListening(host=host, port=port, secret=secret.hex())
        if isinstance(body, ReadManifest):
            return self._read_manifest(body)
        if isinstance(body, FetchOrigin):
            return self._fetch_origin(body)
        if isinstance(body, ReadMissing):
            refs = {
                e: self._fleet.handle(e).missing_of.remote(
                    body.transfer_id, body.file_name, body.size, body.chunk_size, body.blake3
                )
                for e in body.endpoints
            }
            timeout = self._config.tunables.control_timeout
            return MissingRead(missing={e: ray_get(ref, timeout) for e, ref in refs.items()})
        if isinstance(body, ProbeLinks):
            return LinksProbed(failures=self._probe_links(body.links))
        if isinstance(body, ProbeFile):
            handle = self._fleet.handle(body.endpoint_id)
            try:
                return FileSize(size=ray_get(handle.file_size.remote(body.path)))
            except Exception as exc:  # the actor's error decides the answer
                raise _file_error(exc, body.path, body.endpoint_id) from exc
        if isinstance(body, CancelTransfer):
            run = self._transfers.get(body.transfer_id)
            if run is None:
                raise TransferNotFound(f"transfer {body.transfer_id} is not running here")
            run.cancel()
            return Done()
        if isinstance(body, DiscardPartials):
            return self._discard(body)
        if isinstance(body, SweepStorage):
            return self._sweep_storage(body)
        if isinstance(body, TendCopies):
            return self._tend_copies(body)
        if isinstance(body, DeliverMessage):
            return self._deliver(body)
        if isinstance(body, ReadMessages):
            handle = self._fleet.handle(body.endpoint_id)
            return MessagesRead(messages=ray_get(handle.messages.remote(body.count)))
        if isinstance(body, InjectFaults):
            handle = self._fleet.handle(body.endpoint_id)
            ray_get(handle.inject_faults.remote(body.faults))
            return Done()
        raise CastRayError(f"unknown operation {body.op!r}")

    def _open_transfer(self, request_id: int, spec: StartTransfer) -> int:
        """Open the source file; the transfer itself starts once the reply is sent."""
        from castray.agent.transports.feeds import EndpointFeed, Exporter
        from castray.agent.transports.object_store import RunSpec, TransferRun

        source = self._fleet.handle(spec.source)
        feed = EndpointFeed(spec.transfer_id, spec.source, source, spec.path, spec.source_identity)
        recipients = [(rid, self._fleet.handle(rid)) for rid in spec.recipients]
        run = TransferRun(
            _run_spec(RunSpec, spec, self._config.tunables),
            feed,
            recipients,
            self._on_transfer_message,
        )
        try:
            size = run.open()
        except Exception as exc:  # the source's error decides the answer
            raise _file_error(exc, spec.path, spec.source) from exc
        try:
            timeout = self._config.tunables.stream_timeout
            run.export_to(
                [
                    Exporter(spec.transfer_id, host, port, bytes.fromhex(secret), timeout)
                    for host, port, secret in spec.exports
                ]
            )
        except OSError as exc:
            feed.abort()
            raise AgentFailure(f"cannot reach the agent of a recipient cluster: {exc}") from exc
        self._opened(request_id, spec, run)
        return size

    def _opened(self, request_id: int, spec: StartTransfer | ImportTransfer, run: Run) -> None:
        """A transfer's part is open here: it runs once its reply is sent (and a folder's
        bundle is unpacked by each recipient that verified it)."""
        self._starting[request_id] = run
        if spec.unpack_to is not None:
            self._unpack[spec.transfer_id] = spec.unpack_to

    def _open_stream(self, request_id: int, spec: StartTransfer | ImportTransfer) -> int:
        """Open this part's sinks on their data ports; the source (if here) starts sending
        once the reply is sent. The file's size."""
        from castray.agent.transports import inline
        from castray.agent.transports.stream import StreamRun
        from castray.agent.transports.stream_parts import Member, StreamSpec

        plan = spec.stream
        origin = spec.origin if isinstance(spec, StartTransfer) else None
        if plan is None or (spec.expected_blake3 is None and origin is None):
            raise AgentFailure("a stream transfer needs its manifest and its BLAKE3")
        source = None
        if isinstance(spec, StartTransfer):
            source = self._member(spec.source, Member)
        manifest = [bytes.fromhex(digest) for digest in plan.manifest]
        size = plan.size
        if origin is not None:
            assert source is not None and isinstance(spec, StartTransfer)
            size = self._start_fetch(spec, origin, source.handle)
            manifest = [b""] * len(all_chunks(size, spec.chunk_size))
        stream_spec = StreamSpec(
            transfer_id=spec.transfer_id,
            file_name=spec.file_name,
            size=size,
            chunk_size=spec.chunk_size,
            manifest=manifest,
            expected_blake3=spec.expected_blake3 or "",
            secret=bytes.fromhex(plan.secret),
            recipients=[self._member(rid, Member) for rid in spec.recipients],
            source=source,
            source_path=spec.path if isinstance(spec, StartTransfer) else None,
            downstream=plan.downstream,
            tunables=self._config.tunables,
            resume=plan.resume,
            rate_limit=spec.rate_limit,
            source_identity=spec.source_identity if isinstance(spec, StartTransfer) else None,
            send_on=tuple(plan.send_on),
            await_stream=plan.await_stream,
            origin_fetch=origin.fetch_id if origin is not None else None,
            placed_last=frozenset(plan.placed_last),
        )
        run: StreamRun | InlineRun
        if inline.fits(stream_spec):
            run = inline.InlineRun(stream_spec, self._on_transfer_message)
        else:
            run = StreamRun(
                stream_spec,
                self._on_transfer_message,
                self._fleet.death,
                self._fleet.suspect,
                self._head_trials,
            )
        try:
            run.open()
        except Exception as exc:  # the source's error decides the answer
            if origin is not None and source is not None:  # nobody will send what it fetches
                source.handle.stop_fetch.remote(origin.fetch_id)
            if isinstance(spec, StartTransfer):
                raise _file_error(exc, spec.path, spec.source) from exc
            raise
        self._opened(request_id, spec, run)
        return size

    def _start_fetch(self, spec: StartTransfer, origin: OriginFeed, handle: Any) -> int:
        """Have the source start fetching the origin's object; its size."""
        return int(
            self._described(
                spec.source,
                spec.path,
                lambda _: handle.start_fetch.remote(
                    origin.fetch_id, origin.url, spec.path, spec.chunk_size, origin.allowed_hosts
                ),
                ORIGIN_INFO_TIMEOUT,
            )
        )

    def _member(self, endpoint_id: str, kind: Any) -> Any:
        handle = self._fleet.handle(endpoint_id)
        address = self._fleet.data_address(endpoint_id)
        return kind(id=endpoint_id, handle=handle, data_address=address)

    def _probe_links(self, links: list[tuple[str, str]]) -> dict[str, str]:
        """Each link's endpoint tries a data connection to its address, all at once."""
        from castray.agent.reasons import reason

        refs = {}
        failures: dict[str, str] = {}
        for source, address in links:
            key = f"{source} -> {address}"
            try:
                refs[key] = self._fleet.handle(source).probe_link.remote(address)
            except CastRayError as exc:
                failures[key] = exc.message
        for key, ref in refs.items():
            try:
                why = ray_get(ref, self._config.tunables.control_timeout)
            except Exception as exc:  # noqa: BLE001 - a link that cannot be checked is down
                why = reason(exc)
            if why is not None:
                failures[key] = why
        return failures

    def _open_import(self, request_id: int, spec: ImportTransfer) -> tuple[str, int, bytes]:
        """Listen for the source cluster's stream, which must open with the secret made here;
        the run starts once the reply is sent. Where to stream to, and that secret."""
        from castray.agent.transports.feeds import StreamFeed
        from castray.agent.transports.object_store import RunSpec, TransferRun

        recipients = [(rid, self._fleet.handle(rid)) for rid in spec.recipients]
        feed = StreamFeed.listen(
            IMPORT_HOST, spec.transfer_id, spec.source, self._config.tunables.stream_timeout
        )
        run = TransferRun(
            _run_spec(RunSpec, spec, self._config.tunables),
            feed,
            recipients,
            self._on_transfer_message,
            size=spec.size,
        )
        self._opened(request_id, spec, run)
        host, port = feed.address
        return host, port, feed.secret

    def _on_transfer_message(self, message: TransferMessage) -> None:
        """Counts verified work on the endpoints (a folder's bundle unpacked first), then
        passes the message on."""
        folder = self._unpack.get(message.transfer_id)
        if isinstance(message, RecipientFinished) and message.ok and folder is not None:
            message = self._unpacked(message, folder)
        if isinstance(message, RecipientFinished):
            run = self._transfers.get(message.transfer_id)
            if message.ok and run is not None:
                self._fleet.count(message.recipient, bytes_received=run.size, transfers_ok=1)
            elif not message.ok:
                self._fleet.count(message.recipient, transfers_failed=1)
        if isinstance(message, TransferFinished):
            self._transfers.pop(message.transfer_id, None)
            self._unpack.pop(message.transfer_id, None)
            for endpoint_id, served in message.bytes_served.items():
                self._fleet.count(endpoint_id, bytes_sent=served)
        self._wire.send(message)

    def _discard(self, body: DiscardPartials) -> Discarded:
        """Each endpoint removes what it kept of the transfer; a dead one is only named."""
        removed, unreachable = 0, []
        for endpoint_id in body.endpoints:
            try:
                handle = self._fleet.handle(endpoint_id)
                removed += ray_get(handle.discard.remote(body.transfer_id))
            except Exception:  # noqa: BLE001 - a dead endpoint is reported, not raised
                unreachable.append(endpoint_id)
        return Discarded(removed=removed, unreachable=unreachable)

    def _unpacked(self, finished: RecipientFinished, folder: str) -> RecipientFinished:
        """The recipient unpacks the bundle it verified into ``folder``; its outcome."""
        from castray.agent.reasons import reason

        try:
            handle = self._fleet.handle(finished.recipient)
            path = ray_get(
                handle.unpack_folder.remote(finished.transfer_id, finished.path, folder), 3600
            )
        except Exception as exc:  # noqa: BLE001 - the recipient fails with the reason
            return finished.model_copy(
                update={"ok": False, "path": None, "error": f"could not unpack: {reason(exc)}"}
            )
        return finished.model_copy(update={"path": path})

    def _sweep_storage(self, body: SweepStorage) -> StorageSwept:
        """Every alive endpoint sweeps its storage at once; a dead one is only named."""
        refs = {
            endpoint_id: handle.sweep_storage.remote(
                body.retention, body.quota, body.remove, body.keep.get(endpoint_id, [])
            )
            for endpoint_id, handle in self._fleet.alive_handles().items()
        }
        swept, unreachable = {}, []
        for endpoint_id, ref in refs.items():
            try:
                swept[endpoint_id] = ray_get(ref)
            except Exception:  # noqa: BLE001 - a dead endpoint is reported, not raised
                unreachable.append(endpoint_id)
        return StorageSwept(endpoints=swept, unreachable=unreachable)

    def _tend_copies(self, body: TendCopies) -> CopiesTended:
        """Ask every endpoint named about its pinned copies at once; a dead one is named."""
        alive = self._fleet.alive_handles()
        method = {"check": "verified_copies", "hash": "hash_copies", "remove": "remove_copies"}
        refs = {
            endpoint_id: getattr(alive[endpoint_id], method[body.action]).remote(names)
            for endpoint_id, names in body.endpoints.items()
            if endpoint_id in alive
        }
        unreachable = [e for e in body.endpoints if e not in alive]
        copies: dict[str, dict[str, str | None]] = {}
        removed = 0
        for endpoint_id, ref in refs.items():
            try:
                answer = ray_get(ref, 3600 if body.action == "hash" else 60)
            except Exception:  # noqa: BLE001 - a dead endpoint is reported, not raised
                unreachable.append(endpoint_id)
                continue
            if body.action == "remove":
                removed += int(answer)
            else:
                copies[endpoint_id] = answer
        return CopiesTended(copies=copies, removed=removed, unreachable=unreachable)

    def _deliver(self, body: DeliverMessage) -> Delivered:
        from castray.agent.reasons import reason

        refs = {}
        failed: dict[str, str] = {}
        for rid in body.recipients:
            try:
                message = body.message.model_dump(mode="json")
                refs[rid] = self._fleet.handle(rid).receive_message.remote(message)
            except CastRayError as exc:
                failed[rid] = exc.message
        delivered = []
        for rid, ref in refs.items():
            try:
                ray_get(ref)
            except Exception as exc:  # noqa: BLE001 - one recipient's failure is reported, not raised
                failed[rid] = reason(exc)
            else:
                delivered.append(rid)
                self._fleet.count(rid, messages_received=1)
        if delivered:
            self._fleet.count(body.sender, messages_sent=len(delivered))
        return Delivered(delivered=delivered, failed=failed)
