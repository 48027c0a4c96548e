"""CastRay: move files and messages between the nodes of Ray clusters.

For scripts: ``Client`` talks to a running server (``with Client("http://127.0.0.1:8000") as
c: c.nodes()``), and every failure it reports is a ``CastRayError`` (the tree is in
``castray.errors``). Inside a Ray task, ``local_path("model.bin", timeout=600)`` is where this
node's verified copy of a file CastRay delivered (or keeps pinned) is.
"""

from importlib.metadata import PackageNotFoundError, version

from castray.client import Client, EventStream
from castray.errors import (
    CastRayError,
    ClusterUnavailable,
    ClusterUnreachable,
    Conflict,
    CopyNotFound,
    FileMissing,
    InvalidRequest,
    NodeNotFound,
    NotFound,
    ServerUnreachable,
    TransferNotFound,
    Unauthorized,
)
from castray.local import local_path

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
    "CopyNotFound",
    "EventStream",
    "FileMissing",
    "InvalidRequest",
    "NodeNotFound",
    "NotFound",
    "ServerUnreachable",
    "TransferNotFound",
    "Unauthorized",
    "__version__",
    "local_path",
]
