"""Why a Ray call failed, in one line a user can read.

Ray's errors carry the remote traceback (with the install's paths, pids, actor ids and
terminal colour codes). None of that reaches a user: an OS error becomes its plain reason, a
Ray error the kind of failure it is; the full text stays in the agent's log.
"""

from __future__ import annotations

from ray.exceptions import (
    ActorDiedError,
    GetTimeoutError,
    NodeDiedError,
    ObjectLostError,
    OutOfMemoryError,
    RayActorError,
    RayError,
    RayTaskError,
)

from castray.errors import CastRayError

_RAY_REASONS: list[tuple[type[BaseException], str]] = [
    (GetTimeoutError, "it did not answer in time"),
    (NodeDiedError, "its Ray node died"),
    (ActorDiedError, "its actor died"),
    (RayActorError, "its actor is gone"),
    (OutOfMemoryError, "its Ray node ran out of memory"),
    (ObjectLostError, "data in Ray's object store was lost"),
]


def cause_of(exc: BaseException) -> BaseException:
    """The user's exception inside a Ray task error (an ``OSError`` raised by an actor, say).
    One of ours comes back as it was raised: its message is the words a user reads."""
    if isinstance(exc, RayTaskError):
        if isinstance(exc.cause, CastRayError):
            return exc.cause
        try:
            cause: BaseException = exc.as_instanceof_cause()
        except Exception:  # noqa: BLE001 - an exception Ray cannot rebuild stays Ray's
            return exc
        return cause
    return exc


def reason(exc: BaseException) -> str:
    """One line on why ``exc`` happened, without tracebacks or paths of the installation."""
    cause = cause_of(exc)
    if isinstance(cause, CastRayError):
        return cause.message
    if isinstance(cause, OSError):
        # Ray rebuilds an actor's OSError with the original as its only argument.
        inner = cause.args[0] if cause.args and isinstance(cause.args[0], OSError) else cause
        return inner.strerror or type(inner).__name__
    for kind, words in _RAY_REASONS:
        if isinstance(cause, kind):
            return words
    if isinstance(cause, RayError):
        return f"Ray reported {type(cause).__name__}"
    return type(cause).__name__
