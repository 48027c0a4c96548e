"""HTTP client SDK for a CastRay server, used by the CLI and by users' scripts."""

from __future__ import annotations

import time
from types import TracebackType
from typing import Any

import httpx

from castray.errors import ServerUnreachable, error_from_code
from castray.models import (
    ConnectResult,
    DisconnectResult,
    DiscoverExternalResult,
    DiscoveryResult,
    ExternalInfo,
    GeneratedFile,
    Node,
    NodeList,
    StatusResponse,
    Transfer,
    TransferAccepted,
)

_BY_STATUS = {
    400: "bad_file_name",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    409: "conflict",
    413: "file_too_large",
    422: "invalid_request",
    502: "cluster_unreachable",
    503: "cluster_unavailable",
    504: "agent_timeout",
}


class Client:
    """A thin, typed wrapper over the REST API; errors come back as CastRayError."""

    def __init__(self, server: str, token: str | None = None, timeout: float = 60.0) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(base_url=server.rstrip("/"), headers=headers, timeout=timeout)

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
        self, size: str, content_type: str = "random", name: str | None = None
    ) -> GeneratedFile:
        body = {"size": size, "content_type": content_type, "name": name}
        return GeneratedFile.model_validate(
            self._call("POST", "/api/file-generator/create", json=body)
        )

    def send(self, source: str, file: str, recipients: list[str]) -> TransferAccepted:
        mode = "unicast" if len(recipients) == 1 else "multicast"
        body = {"source_node": source, "file": file, "mode": mode, "recipients": recipients}
        return TransferAccepted.model_validate(self._call("POST", "/api/transfers", json=body))

    def transfer(self, transfer_id: str) -> Transfer:
        return Transfer.model_validate(self._call("GET", f"/api/transfers/{transfer_id}"))

    def wait(self, transfer_id: str, timeout: float = 3600.0, poll: float = 0.25) -> Transfer:
        """Poll a transfer until it has finished."""
        deadline = time.monotonic() + timeout
        while True:
            transfer = self.transfer(transfer_id)
            if transfer.status.finished or time.monotonic() > deadline:
                return transfer
            time.sleep(poll)

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise ServerUnreachable(
                f"no CastRay server at {self._http.base_url} ({exc}); start one with "
                "'castray serve' or pass --server"
            ) from exc
        if response.is_error:
            code = _BY_STATUS.get(response.status_code, "agent_failure")
            raise error_from_code(code, _detail(response))
        return response.json()


def _detail(response: httpx.Response) -> str:
    try:
        return str(response.json()["detail"])
    except (ValueError, KeyError, TypeError):
        return f"HTTP {response.status_code} from {response.request.url}"
