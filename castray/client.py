"""HTTP client SDK for a CastRay server, used by the CLI and by users' scripts."""

from __future__ import annotations

import json
import os
import ssl
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO

import httpx
from websockets.exceptions import InvalidStatus, WebSocketException
from websockets.sync.client import ClientConnection, connect

from castray import folders
from castray.errors import (
    BadUpload,
    CastRayError,
    InvalidRequest,
    ServerUnreachable,
    Unauthorized,
    error_from_code,
)
from castray.models import (
    ConnectResult,
    DisconnectResult,
    DiscoverExternalResult,
    DiscoveryResult,
    ExternalInfo,
    GeneratedFile,
    Group,
    LibraryFile,
    LiveEvent,
    Node,
    NodeList,
    Pin,
    PinCreate,
    PinList,
    PinNodes,
    SnapshotEvent,
    StatusResponse,
    StorageReport,
    Transfer,
    TransferAccepted,
    TransferPage,
    Transport,
    UploadResult,
)


def tls_context(ca_cert: Path | None = None) -> ssl.SSLContext:
    """Verification of an https server: by ``ca_cert`` (or ``CASTRAY_CA_CERT``) alone when
    given, else by the system's trust store."""
    named = ca_cert or (
        Path(os.environ["CASTRAY_CA_CERT"]) if os.environ.get("CASTRAY_CA_CERT") else None
    )
    if named is not None and not named.is_file():
        raise ServerUnreachable(f"cannot read the CA certificate {named}: no such file")
    return ssl.create_default_context(cafile=named)


class Client:
    """A thin, typed wrapper over the REST API; errors come back as CastRayError."""

    def __init__(
        self,
        server: str,
        token: str | None = None,
        timeout: float = 60.0,
        ca_cert: Path | None = None,
    ) -> None:
        """``ca_cert`` (else ``CASTRAY_CA_CERT``): the CA that signed an https server's
        certificate; without one, the system's trust store is used."""
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._tls = tls_context(ca_cert)
        self._http = httpx.Client(
            base_url=server.rstrip("/"), headers=self._headers, timeout=timeout, verify=self._tls
        )

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._http.close()

    def status(self) -> StatusResponse:
        return StatusResponse.model_validate(self._call("GET", "/api/status"))

    def nodes(self) -> list[Node]:
        return NodeList.model_validate(self._call("GET", "/api/nodes")).nodes

    def discover(self) -> DiscoveryResult:
        return DiscoveryResult.model_validate(self._call("GET", "/api/cluster/discover"))

    def discover_and_connect(self) -> DiscoverExternalResult:
        body = self._call("POST", "/api/cluster/discover-external")
        return DiscoverExternalResult.model_validate(body)

    def connect(self, address: str, ray_token: str | None = None) -> ConnectResult:
        body: dict[str, Any] = {"cluster_address": address}
        if ray_token:
            body["ray_token"] = ray_token
        return ConnectResult.model_validate(
            self._call("POST", "/api/cluster/connect-external", json=body)
        )

    def disconnect(self, cluster: str | None = None) -> DisconnectResult:
        params = {"cluster": cluster} if cluster else None
        return DisconnectResult.model_validate(
            self._call("DELETE", "/api/cluster/disconnect-external", params=params)
        )

    def external_info(self) -> ExternalInfo:
        return ExternalInfo.model_validate(self._call("GET", "/api/cluster/external-info"))

    def generate(
        self,
        size: str,
        content_type: str = "random",
        name: str | None = None,
        overwrite: bool = False,
    ) -> GeneratedFile:
        """A generated library file; one of the same name is replaced only with ``overwrite``
        (``FileExists`` otherwise)."""
        body = {"size": size, "content_type": content_type, "name": name, "overwrite": overwrite}
        return GeneratedFile.model_validate(
            self._call("POST", "/api/file-generator/create", json=body)
        )

    def files(self) -> list[LibraryFile]:
        return [LibraryFile.model_validate(f) for f in self._call("GET", "/api/files")]

    def upload(self, path: Path, sent: Callable[[int], None] | None = None) -> UploadResult:
        """Store a local file in the server's library (under its own name), streamed;
        ``sent`` hears how many more bytes went as they go."""
        with path.open("rb") as handle:
            body_file = _Counted(handle, sent) if sent is not None else handle
            files = {"file": (path.name, body_file, "application/octet-stream")}
            body = self._call("POST", "/api/upload", files=files, timeout=None)
        return UploadResult.model_validate(body)

    def upload_folder(
        self, folder: Path, sent: Callable[[int], None] | None = None
    ) -> UploadResult:
        """Store a local folder in the server's library as ``NAME/`` (its contents bundled,
        relative paths only; a symbolic link that leaves it is refused here already)."""
        with tempfile.TemporaryDirectory(prefix="castray-folder-") as scratch:
            bundle = Path(scratch) / "bundle.tar"
            try:
                folders.pack(folder, bundle)
            except BadUpload as exc:
                raise InvalidRequest(f"cannot send {folder}: {exc.message}") from None
            with bundle.open("rb") as handle:
                reader = _Counted(handle, sent)
                body = self._call(
                    "POST",
                    "/api/upload-folder",
                    params={"name": folder.resolve().name},
                    content=iter(lambda: reader.read(1 << 20), b""),
                    headers={"Content-Type": "application/x-tar"},
                    timeout=None,
                )
        return UploadResult.model_validate(body)

    def storage(self) -> StorageReport:
        return StorageReport.model_validate(self._call("GET", "/api/storage"))

    def sweep_storage(self) -> StorageReport:
        return StorageReport.model_validate(self._call("POST", "/api/storage/sweep"))

    def send(
        self,
        source: str | None,
        file: str | None,
        recipients: list[str] | None = None,
        group: str | None = None,
        transport: Transport | None = None,
        rate_limit: str | None = None,
        source_url: str | None = None,
        keep_in_library: bool = False,
    ) -> TransferAccepted:
        """Unicast/multicast to ``recipients``, multicast to ``group``, or else broadcast;
        over ``transport``, or the server's default one; at ``rate_limit`` ("50MB/s") at most.
        ``source_url``: what is at that URL, fetched by ``source`` (or a node the server
        chooses) first: the answer may come once the fetch is done, so no time limit;
        ``keep_in_library``: the library keeps the fetched object too."""
        body: dict[str, Any] = {"source_node": source, "file": file, "source_url": source_url}
        body = {key: value for key, value in body.items() if value is not None}
        if keep_in_library:
            body["keep_in_library"] = True
        if transport is not None:
            body["transport"] = transport.value
        if rate_limit is not None:
            body["rate_limit"] = rate_limit
        if group:
            body |= {"mode": "multicast", "group": group}
        elif recipients:
            mode = "unicast" if len(recipients) == 1 else "multicast"
            body |= {"mode": mode, "recipients": recipients}
        else:
            body["mode"] = "broadcast"
        patience: dict[str, Any] = {"timeout": None} if source_url else {}
        return TransferAccepted.model_validate(
            self._call("POST", "/api/transfers", json=body, **patience)
        )

    def transfer(self, transfer_id: str) -> Transfer:
        return Transfer.model_validate(self._call("GET", f"/api/transfers/{transfer_id}"))

    def transfers(self, limit: int = 20) -> TransferPage:
        return TransferPage.model_validate(
            self._call("GET", "/api/transfers", params={"limit": limit})
        )

    def cancel(self, transfer_id: str) -> Transfer:
        """Cancel a transfer in flight; of an ended one, discard what was kept to resume it."""
        return Transfer.model_validate(self._call("DELETE", f"/api/transfers/{transfer_id}"))

    def resume(self, transfer_id: str) -> TransferAccepted:
        """Send an ended transfer's recipients only what they lack."""
        return TransferAccepted.model_validate(
            self._call("POST", f"/api/transfers/{transfer_id}/resume")
        )

    def groups(self) -> list[Group]:
        return [Group.model_validate(g) for g in self._call("GET", "/api/groups")]

    def save_group(self, name: str, members: list[str], replace: bool = False) -> Group:
        if replace:
            body = self._call("PUT", f"/api/groups/{name}", json={"members": members})
        else:
            body = self._call("POST", "/api/groups", json={"name": name, "members": members})
        return Group.model_validate(body)

    def delete_group(self, name: str) -> None:
        self._call("DELETE", f"/api/groups/{name}")

    def pin(self, file: str, nodes: PinNodes = "all") -> Pin:
        """Keep a library file on these nodes, present and future (idempotent)."""
        body = PinCreate(file=file, nodes=nodes).model_dump(mode="json")
        return Pin.model_validate(self._call("POST", "/api/pins", json=body))

    def pins(self) -> list[Pin]:
        return PinList.model_validate(self._call("GET", "/api/pins")).pins

    def get_pin(self, pin_id: str) -> Pin:
        return Pin.model_validate(self._call("GET", f"/api/pins/{pin_id}"))

    def verify_pin(self, pin_id: str) -> Pin:
        return Pin.model_validate(self._call("POST", f"/api/pins/{pin_id}/verify"))

    def unpin(self, pin_id: str, remove_copies: bool = False) -> None:
        params = {"remove_copies": "true"} if remove_copies else None
        self._call("DELETE", f"/api/pins/{pin_id}", params=params)

    @contextmanager
    def events(self) -> Iterator[EventStream]:
        """The server's ``/ws`` stream; open it before acting, so no event is missed."""
        url = str(self._http.base_url).replace("http", "ws", 1).rstrip("/") + "/ws"
        try:
            connection = connect(
                url,
                additional_headers=self._headers,
                open_timeout=10,
                ssl=self._tls if url.startswith("wss://") else None,
            )
        except OSError as exc:
            raise self._no_server(exc) from exc
        except InvalidStatus as exc:
            if exc.response.status_code not in (401, 403):
                raise ServerUnreachable(f"cannot open the event stream {url}: {exc}") from exc
            raise Unauthorized(
                f"the server refused its event stream ({exc}): check the token (--token, "
                "--token-file, CASTRAY_TOKEN or CASTRAY_TOKEN_FILE)"
            ) from exc
        except WebSocketException as exc:
            raise ServerUnreachable(f"cannot open the event stream {url}: {exc}") from exc
        with connection:
            yield EventStream(connection)

    def wait(self, transfer_id: str, timeout: float = 3600.0, poll: float = 0.25) -> Transfer:
        """Poll a transfer until it has finished."""
        deadline = time.monotonic() + timeout
        while True:
            transfer = self.transfer(transfer_id)
            if transfer.status.finished or time.monotonic() > deadline:
                return transfer
            time.sleep(poll)

    def _no_server(self, exc: Exception) -> ServerUnreachable:
        return ServerUnreachable(
            f"no CastRay server at {self._http.base_url} ({exc}): start one with "
            "'castray serve', or point --server (CASTRAY_SERVER) at one"
        )

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise self._no_server(exc) from exc
        if response.is_error:
            raise _error(response)
        return response.json() if response.content else None


class EventStream:
    """The messages of ``/ws``, typed: each ``LiveEvent`` carries its payload model (the
    catalogue in ``castray.models``)."""

    def __init__(self, connection: ClientConnection) -> None:
        self._connection = connection
        first = self._receive(30.0)
        if first is None or not isinstance(first.data, SnapshotEvent):
            raise ServerUnreachable("the event stream did not start with a snapshot")
        self.snapshot: SnapshotEvent = first.data

    def next(self, timeout: float) -> LiveEvent | None:
        """The next message, or None if none came within ``timeout`` seconds."""
        return self._receive(timeout)

    def _receive(self, timeout: float) -> LiveEvent | None:
        try:
            raw = self._connection.recv(timeout=timeout)
        except TimeoutError:
            return None
        except WebSocketException as exc:
            raise ServerUnreachable(f"the event stream closed: {exc}") from exc
        return LiveEvent.parse(json.loads(raw))


def _error(response: httpx.Response) -> CastRayError:
    """The server's error as the class it was raised as (by its ``code``)."""
    try:
        body = response.json()
        return error_from_code(str(body["code"]), str(body["detail"]), unknown=CastRayError)
    except (ValueError, KeyError, TypeError):
        return CastRayError(f"HTTP {response.status_code} from {response.request.url}")


class _Counted:
    """A file read for an upload, telling ``sent`` how many bytes each read took."""

    def __init__(self, handle: BinaryIO, sent: Callable[[int], None] | None) -> None:
        self._handle = handle
        self._sent = sent

    def read(self, size: int = -1) -> bytes:
        data = self._handle.read(size)
        if self._sent is not None and data:
            self._sent(len(data))
        return data

    def __getattr__(self, name: str) -> Any:
        """Everything else (``fileno``, ``seek``, ``tell``: how httpx sizes a body) is the
        file's."""
        return getattr(self._handle, name)
