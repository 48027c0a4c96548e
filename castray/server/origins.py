"""Which web pages may drive the API: the server's own, and the origins an operator allows.

A browser attaches ``Origin`` to the cross-site requests it makes, and a page on any site can
send a form or multipart POST without a preflight, or open a WebSocket, to this server. Those
are refused (403) unless their origin is the server's own or listed in ``allowed_origins``.
Requests without ``Origin`` (the CLI, curl, scripts) are not driven by a web page and pass.

The server's own origin is the one its ``Host`` names, provided that host is this server: a
loopback name, the address it binds, or (bound to every interface) one of this machine's
addresses or names. So a page served from a DNS name that was rebound to 127.0.0.1 does not
pass for the server's own.
"""

from __future__ import annotations

import ipaddress
import json
import socket
from urllib.parse import urlsplit

from starlette.types import ASGIApp, Receive, Scope, Send

from castray.config import Settings
from castray.errors import Forbidden
from castray.ray_address import is_this_machine

CHANGES_STATE = {"POST", "PUT", "PATCH", "DELETE"}


class OriginPolicy:
    def __init__(self, settings: Settings) -> None:
        self._allowed = {_normal(origin) for origin in settings.allowed_origins}
        self._bound = settings.host.strip("[]").lower()

    def allows(self, origin: str | None, host: str | None, scheme: str) -> bool:
        """Whether a request from a page at ``origin`` (None: no page) may go on."""
        if origin is None:
            return True
        origin = _normal(origin)
        if origin in self._allowed:
            return True
        if not host or origin != _normal(f"{scheme}://{host}"):
            return False
        return self._is_this_server(urlsplit(origin).hostname or "")

    def _is_this_server(self, hostname: str) -> bool:
        hostname = hostname.strip("[]").lower()
        if hostname in ("localhost", self._bound):
            return True
        try:
            address = ipaddress.ip_address(hostname)
        except ValueError:
            wildcard = self._bound in ("0.0.0.0", "::")
            return wildcard and hostname in {socket.gethostname().lower(), socket.getfqdn().lower()}
        if address.is_loopback:
            return True
        return self._bound in ("0.0.0.0", "::") and is_this_machine(hostname)


class OriginGuard:
    """ASGI middleware: refuses state-changing requests and WebSockets from foreign pages."""

    def __init__(self, app: ASGIApp, policy: OriginPolicy) -> None:
        self._app = app
        self._policy = policy

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        guarded = kind == "websocket" or (
            kind == "http" and scope.get("method", "GET") in CHANGES_STATE
        )
        if not guarded:
            await self._app(scope, receive, send)
            return
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        scheme = str({"ws": "http", "wss": "https"}.get(scope["scheme"], scope["scheme"]))
        if self._policy.allows(headers.get("origin"), headers.get("host"), scheme):
            await self._app(scope, receive, send)
            return
        refusal = Forbidden(
            f"requests from web pages at {headers.get('origin')} are refused: only this server's "
            "own page, or an origin listed in CASTRAY_ALLOWED_ORIGINS, may use its API"
        )
        if kind == "websocket":
            await send({"type": "websocket.close", "code": 1008, "reason": "origin not allowed"})
            return
        body = json.dumps({"detail": refusal.message, "code": refusal.code}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": refusal.status_code,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": body})


def _normal(origin: str) -> str:
    return origin.strip().rstrip("/").lower()
