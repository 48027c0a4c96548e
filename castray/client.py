"""HTTP client SDK for a CastRay server, used by the CLI and by users' scripts."""

from __future__ import annotations

from types import TracebackType
from typing import Any

import httpx

from castray.errors import ServerUnreachable, error_from_code
from castray.models import Node, NodeList, StatusResponse

_BY_STATUS = {
    401: "unauthorized",
    404: "not_found",
    409: "conflict",
    422: "invalid_request",
    503: "cluster_unavailable",
    504: "agent_timeout",
}


class Client:
    """A thin, typed wrapper over the REST API; errors come back as CastRayError."""

    def __init__(self, server: str, token: str | None = None, timeout: float = 30.0) -> None:
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
        return StatusResponse.model_validate(self._get("/api/status"))

    def nodes(self) -> list[Node]:
        return NodeList.model_validate(self._get("/api/nodes")).nodes

    def _get(self, path: str) -> Any:
        try:
            response = self._http.get(path)
        except httpx.TransportError as exc:
            raise ServerUnreachable(
                f"no CastRay server at {self._http.base_url} ({exc}); start one with "
                "'castray serve' or pass --server"
            ) from exc
        if response.is_error:
            raise error_from_code(
                _BY_STATUS.get(response.status_code, "agent_failure"), _detail(response)
            )
        return response.json()


def _detail(response: httpx.Response) -> str:
    try:
        return str(response.json()["detail"])
    except (ValueError, KeyError, TypeError):
        return f"HTTP {response.status_code} from {response.request.url}"
