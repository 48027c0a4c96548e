"""CastRay: move files and messages between the nodes of Ray clusters.

For scripts: ``Client`` talks to a running server (``with Client("http://127.0.0.1:8000") as
c: c.nodes()``), and every failure it reports is a ``CastRayError`` (the tree is in
``castray.errors``).
"""

from importlib.metadata import PackageNotFoundError, version

from castray.client import Client, EventStream
from castray.errors import (
    CastRayError,
    ClusterUnavailable,
    ClusterUnreachable,
    Conflict,
    FileMissing,
    InvalidRequest,
    NodeNotFound,
    NotFound,
    ServerUnreachable,
    TransferNotFound,
    Unauthorized,
)

try:
    __version__ = version("castray")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0"

__all__ = [
    "CastRayError",
    "Client",
    "ClusterUnavailable",
    "ClusterUnreachable",
    "Conflict",
    "EventStream",
    "FileMissing",
    "InvalidRequest",
    "NodeNotFound",
    "NotFound",
    "ServerUnreachable",
    "TransferNotFound",
    "Unauthorized",
    "__version__",
]
