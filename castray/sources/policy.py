"""Which URLs a transfer may fetch, and how a URL is shown.

The guard exists because a fetch runs on a cluster node, inside the cluster's network: a URL
that names ``localhost``, a private address or a cloud metadata service (169.254.169.254)
would let anyone who can start a transfer read what only the nodes can reach (server-side
request forgery). So ``https`` goes to public addresses, ``http`` only to listed hosts, and a
name is judged by every address it resolves to. The address a connection then uses is the one
that was checked (``Resolved.address``): a name that resolves elsewhere a moment later
(DNS rebinding) does not move it. ``s3`` URLs name a bucket and a key, never a host: they go
to the S3 endpoint the fetching node is configured with.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import quote, unquote, urlsplit

from castray.errors import Forbidden, InvalidRequest

SCHEMES = ("s3", "https", "http")
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]$")
ALLOW_SETTING = "origin_allowed_hosts (CASTRAY_ORIGIN_ALLOWED_HOSTS)"


@dataclass(frozen=True)
class OriginUrl:
    """A URL a transfer fetches from, split: ``host`` is the bucket of an ``s3`` URL."""

    raw: str
    scheme: str
    host: str
    port: int | None
    path: str
    """The object's key (``s3``), or the path with its query (``http(s)``)."""

    @property
    def shown(self) -> str:
        """The URL as logs, the history and answers show it: no credentials, no query."""
        return mask(self.raw)

    @property
    def name(self) -> str:
        """The file name a copy gets by default: the last segment of the path."""
        last = unquote(urlsplit(self.raw).path.rstrip("/").rsplit("/", 1)[-1])
        if not last or last in (".", ".."):
            raise InvalidRequest(
                f"{self.shown} names no file: give the name its copies get in 'file'"
            )
        return last

    @property
    def key(self) -> str:
        """An ``s3`` URL's object key."""
        return self.path


def mask(url: str) -> str:
    """``url`` without what may be a secret: its user and password and its query string (a
    presigned URL's signature)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<a malformed URL>"
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    try:
        port = f":{parts.port}" if parts.port is not None else ""
    except ValueError:
        port = ""
    query = "?<hidden>" if parts.query else ""
    return f"{parts.scheme}://{host}{port}{quote(unquote(parts.path), safe='/')}{query}"


def parse(url: str) -> OriginUrl:
    """Split ``url``; ``InvalidRequest`` says what is wrong with it."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError as exc:
        raise InvalidRequest(f"source_url is not a URL ({exc})") from None
    scheme = parts.scheme.lower()
    if scheme not in SCHEMES:
        raise InvalidRequest(
            f"source_url scheme {scheme + ':' if scheme else '(none)'} is not allowed: use "
            "s3://bucket/key, https://host/path or http://host/path"
        )
    host = (parts.hostname or "").lower()
    if not host:
        raise InvalidRequest(f"source_url {mask(url)} names no host (or bucket)")
    if scheme == "s3":
        key = unquote(parts.path.lstrip("/"))
        if not _BUCKET.match(host) or parts.username or port is not None:
            raise InvalidRequest(f"{mask(url)}: {host!r} is not an S3 bucket name")
        if not key or parts.query:
            raise InvalidRequest(f"{mask(url)} names no object: use s3://bucket/key")
        return OriginUrl(url.strip(), scheme, host, None, key)
    path = parts.path or "/"
    if parts.query:
        path = f"{path}?{parts.query}"
    return OriginUrl(url.strip(), scheme, host, port, path)


@dataclass(frozen=True)
class Resolved:
    """An ``http(s)`` origin's host and the address a connection to it must use."""

    host: str
    address: str
    port: int


def _listed(host: str, addresses: Sequence[str], allowed: Sequence[str]) -> bool:
    """Is the host named in ``allowed``, or is every address it has in a listed network?"""
    names = {entry.strip().lower() for entry in allowed}
    if host in names:
        return True
    networks = []
    for entry in names:
        try:
            networks.append(ipaddress.ip_network(entry, strict=False))
        except ValueError:
            continue  # a host name
    return bool(addresses) and all(
        any(ipaddress.ip_address(a) in net for net in networks) for a in addresses
    )


def _public(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


def resolve(host: str, port: int) -> list[str]:
    """Every address ``host`` has; ``OSError`` if it has none."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return sorted({str(info[4][0]) for info in infos})


def guard(url: OriginUrl, allowed: Sequence[str]) -> Resolved | None:
    """Refuse (``Forbidden``) a URL the policy does not allow; the address an ``http(s)``
    connection must use (None for ``s3``). ``OSError`` if the host does not resolve."""
    if url.scheme == "s3":
        return None
    port = url.port or (443 if url.scheme == "https" else 80)
    addresses = resolve(url.host, port)
    listed = _listed(url.host, addresses, allowed)
    if url.scheme == "http" and not listed:
        raise Forbidden(
            f"{url.shown}: plain http goes only to hosts listed in {ALLOW_SETTING}; use https, "
            f"or list {url.host!r} there"
        )
    if not listed:
        inner = [a for a in addresses if not _public(a)]
        if inner:
            raise Forbidden(
                f"{url.shown}: {url.host!r} resolves to {', '.join(inner)}, a loopback, "
                f"private, link-local or metadata address, which origins may not reach unless "
                f"listed in {ALLOW_SETTING}"
            )
    return Resolved(url.host, addresses[0], port)
