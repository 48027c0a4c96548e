"""What an endpoint actor answers the agent: small typed results instead of dicts of strings.

Expected failures are answered, not raised, so that the next receiver in a chain learns
"nothing to relay" instead of inheriting this receiver's exception.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class ChunkStatus(str, Enum):
    OK = "ok"
    """Verified and written."""
    CORRUPT = "corrupt"
    """Its BLAKE3 was not the one expected: to be sent again."""
    UPSTREAM_MISSING = "upstream_missing"
    """Nothing arrived, the one before in the chain failed: to be sent again."""
    ERROR = "error"
    """This recipient cannot take it (disk full, transfer not open): it fails."""


@dataclass(frozen=True)
class ChunkOutcome:
    status: ChunkStatus
    bytes: int = 0
    error: str | None = None


@dataclass(frozen=True)
class CommitOutcome:
    """A sink's end: the verified file's final path, or why there is none."""

    ok: bool
    path: str | None = None
    error: str | None = None
    damaged: bool = False
    """The bytes failed their check on the way (a copy carried whole, inline): nothing is
    kept, and the same bytes sent again may pass."""
    refused: bool = False
    """The copy was refused before a byte was written (no room): a resume has nothing to
    take up there."""


@dataclass(frozen=True)
class EndpointFacts:
    """Where an endpoint actor really runs (its answer to a liveness probe)."""

    endpoint_id: str
    ray_node_id: str
    address: str
    pid: int
    storage_dir: str
    data_address: str | None = None
