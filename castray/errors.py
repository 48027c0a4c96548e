"""The CastRay exception tree.

Every failure CastRay reports to a user is one of these. The docstring of each class says
what it means; the message says what was wrong and how to fix it. Each surface maps them in
one place: the FastAPI exception handler (``status_code``) and the CLI error printer. The
agent process reports them to the server by ``code``, which ``error_from_code`` turns back
into the same class.

    CastRayError
    ├── InvalidRequest          422  the request is well-formed but cannot be carried out
    ├── Unauthorized            401  a bearer token is required and was missing or wrong
    ├── Forbidden               403  a token was given and refused (e.g. by a Ray cluster)
    ├── BadFileName             400  a file name with '/', '..', NUL, a control or look-alike
    │                                character, or too long
    ├── BadUpload               400  a multipart upload that cannot be read
    ├── RequestTimeout          408  a request body that stopped arriving
    ├── FileTooLarge            413  an upload or a request body over its limit
    ├── TooManyRequests         429  too many uploads or generations at once
    ├── InsufficientStorage     507  not enough free disk for what was asked
    ├── Stopped                 503  work stopped before its end (server stopping, caller gone)
    ├── NotFound                404
    │   ├── NodeNotFound             no endpoint with that id
    │   ├── RayNodeNotFound          no alive Ray node with that id in the cluster
    │   ├── FileMissing              no such file in the library or on the source endpoint
    │   ├── TransferNotFound         no transfer with that id
    │   ├── GroupNotFound            no group with that name
    │   ├── PinNotFound              no pin with that id
    │   ├── CopyNotFound             (in a Ray task) no verified local copy of that file
    │   └── OriginMissing            the origin (S3, HTTP) has no object at the URL
    ├── Conflict                409
    │   ├── NodeExists               an endpoint with that id exists already
    │   ├── FileExists               a library file of that name exists (and was not to be
    │   │                            replaced)
    │   ├── SourceChanged            the file being sent changed after its transfer began
    │   ├── VersionMismatch          a cluster runs another Ray version than CastRay
    │   └── NodeUnavailable          the endpoint is dead or not yet alive
    ├── ClusterUnavailable      503  the cluster's agent is starting, lost or gone
    ├── ClusterUnreachable      502  nothing (or no Ray) answers at a cluster address
    ├── OriginFailed            502  the origin refused the fetch, failed or cannot be reached
    ├── AgentFailure            502  the agent could not do what was asked
    │   └── AgentTimeout        504  the agent did not answer in time
    └── ServerUnreachable            (client side) no CastRay server answered
"""

from __future__ import annotations

from typing import ClassVar


class CastRayError(Exception):
    """Base of every error CastRay reports to its users."""

    status_code: ClassVar[int] = 500
    code: ClassVar[str] = "internal"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidRequest(CastRayError):
    """The request cannot be carried out as given."""

    status_code = 422
    code = "invalid_request"


class Unauthorized(CastRayError):
    """A bearer token is required and was missing or wrong."""

    status_code = 401
    code = "unauthorized"


class Forbidden(CastRayError):
    """A token was given and refused."""

    status_code = 403
    code = "forbidden"


class NotFound(CastRayError):
    """The named thing does not exist."""

    status_code = 404
    code = "not_found"


class NodeNotFound(NotFound):
    """No CastRay endpoint has that id."""

    code = "node_not_found"


class RayNodeNotFound(NotFound):
    """No alive Ray node with that id is in the cluster."""

    code = "ray_node_not_found"


class Conflict(CastRayError):
    """The request conflicts with the current state."""

    status_code = 409
    code = "conflict"


class FileExists(Conflict):
    """A library file of that name exists, and the request did not ask to replace it."""

    code = "file_exists"


class SourceChanged(Conflict):
    """The file being sent changed after the transfer began (written in place, or replaced
    under the path a transfer of a file outside the library reads)."""

    code = "source_changed"


class NodeExists(Conflict):
    """An endpoint with that id exists already."""

    code = "node_exists"


class VersionMismatch(Conflict):
    """The cluster runs another Ray version than CastRay; a driver cannot join it."""

    code = "version_mismatch"


class ClusterUnreachable(CastRayError):
    """Nothing, or nothing that speaks Ray, answers at the cluster address given."""

    status_code = 502
    code = "cluster_unreachable"


class NodeUnavailable(Conflict):
    """The endpoint exists but cannot take part now (dead, or still starting)."""

    code = "node_unavailable"


class FileMissing(NotFound):
    """No file by that name in the library or at that path on the source endpoint."""

    code = "file_missing"


class TransferNotFound(NotFound):
    """No transfer with that id."""

    code = "transfer_not_found"


class GroupNotFound(NotFound):
    """No group with that name."""

    code = "group_not_found"


class PinNotFound(NotFound):
    """No pin with that id."""

    code = "pin_not_found"


class CopyNotFound(NotFound):
    """``castray.local_path``: this node holds no verified copy of that file (in time)."""

    code = "copy_not_found"


class BadFileName(CastRayError):
    """A file name that could escape its directory or is not printable."""

    status_code = 400
    code = "bad_file_name"


class FileTooLarge(CastRayError):
    """An upload or a request body over its configured size limit."""

    status_code = 413
    code = "file_too_large"


class BadUpload(CastRayError):
    """A multipart upload that cannot be read as one."""

    status_code = 400
    code = "bad_upload"


class RequestTimeout(CastRayError):
    """A request body that stopped arriving before it was complete."""

    status_code = 408
    code = "request_timeout"


class TooManyRequests(CastRayError):
    """More work of one kind at once than the server takes; try again shortly."""

    status_code = 429
    code = "too_many_requests"


class Stopped(CastRayError):
    """Work stopped before its end: the server is stopping, or its caller went away."""

    status_code = 503
    code = "stopped"


class InsufficientStorage(CastRayError):
    """Not enough free space on the disk for what was asked."""

    status_code = 507
    code = "insufficient_storage"


class ClusterUnavailable(CastRayError):
    """The cluster cannot take requests now (starting, lost or disconnected)."""

    status_code = 503
    code = "cluster_unavailable"


class AgentFailure(CastRayError):
    """The cluster's agent process failed to do what was asked."""

    status_code = 502
    code = "agent_failure"


class AgentTimeout(AgentFailure):
    """The cluster's agent process did not answer in time."""

    status_code = 504
    code = "agent_timeout"


class OriginMissing(NotFound):
    """The origin (an S3 store, an HTTP server) has no object at the URL."""

    code = "origin_missing"


class OriginFailed(CastRayError):
    """The origin refused the fetch (credentials), answered an error, or cannot be reached;
    the message has its reason in words."""

    status_code = 502
    code = "origin_failed"


class ServerUnreachable(CastRayError):
    """No CastRay server answered at the URL the client was given."""

    status_code = 503
    code = "server_unreachable"


def _all_subclasses(cls: type[CastRayError]) -> list[type[CastRayError]]:
    found = [cls]
    for sub in cls.__subclasses__():
        found.extend(_all_subclasses(sub))
    return found


def error_from_code(
    code: str, message: str, unknown: type[CastRayError] = AgentFailure
) -> CastRayError:
    """Rebuild an error from its ``code`` (an agent's report, an API answer); codes of no
    class here become ``unknown``."""
    for cls in _all_subclasses(CastRayError):
        if cls.code == code:
            return cls(message)
    return unknown(message)
