"""The endpoint actor: CastRay's presence on one Ray node.

It is pinned to its node (node affinity, hard) and owns a storage directory there. It takes
no CPU, so it never competes with the cluster's own work for scheduling. Its methods run on
that node: reading a file being sent, writing, verifying and committing a file being
received, relaying chunks down a multicast chain, and keeping received messages.

Methods run one at a time in submission order (Ray's default group), which the relay relies
on; two groups of their own keep slow or urgent work out of that line: ``commit`` (fsync and
the final check, several at once) and ``control`` (liveness probes and messages, never
queued behind a file's chunks).

Chunks travel as NumPy ``uint8`` arrays: Ray hands them to the receiver straight out of the
object store, without a copy, and ``os.pwrite`` and BLAKE3 take them as buffers.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import blake3
import numpy as np
import ray

from castray.agent.outcomes import ChunkOutcome, ChunkStatus, CommitOutcome, EndpointFacts
from castray.chunks import HASH_THREADS, file_blake3


@dataclass
class _Running:
    """A BLAKE3 of the bytes seen so far, as long as they came in order from the start."""

    hasher: Any = field(default_factory=lambda: blake3.blake3(max_threads=HASH_THREADS))
    upto: int = 0

    def feed(self, offset: int, data: np.ndarray) -> None:
        if offset == self.upto:
            self.hasher.update(data.data)
            self.upto += len(data)

    def digest(self, size: int) -> str | None:
        """The whole digest if every byte was fed in order, else None."""
        return str(self.hasher.hexdigest()) if self.upto == size else None


@dataclass
class _Source:
    file: Any
    size: int
    running: _Running | None


@dataclass
class _Sink:
    fd: int
    temp: Path
    final: Path
    size: int
    running: _Running = field(default_factory=_Running)


class Endpoint:
    """State that lives on the endpoint's node; methods run there, one at a time."""

    def __init__(self, endpoint_id: str, storage_dir: str, messages_kept: int) -> None:
        self.endpoint_id = endpoint_id
        self.storage_dir = Path(storage_dir)
        self.storage_dir.mkdir(parents=True, exist_ok=True)
        self._sources: dict[str, _Source] = {}
        self._sinks: dict[str, _Sink] = {}
        self._messages: deque[dict[str, Any]] = deque(maxlen=messages_kept)
        self._corrupt_next = 0

    @ray.method(concurrency_group="control")
    def describe(self) -> EndpointFacts:
        """Where this endpoint really runs; proves the actor is up."""
        return EndpointFacts(
            endpoint_id=self.endpoint_id,
            ray_node_id=ray.get_runtime_context().get_node_id(),
            address=ray.util.get_node_ip_address(),
            pid=os.getpid(),
            storage_dir=str(self.storage_dir),
        )

    # ---- sending -------------------------------------------------------------------

    def open_source(self, transfer_id: str, path: str, hash_whole: bool) -> int:
        """Open a file to send: an absolute path, or one relative to this storage dir."""
        resolved = self._source_path(path)
        handle = resolved.open("rb")
        size = os.fstat(handle.fileno()).st_size
        self._sources[transfer_id] = _Source(handle, size, _Running() if hash_whole else None)
        return size

    def file_size(self, path: str) -> int:
        """Size of a file this endpoint could send."""
        return self._source_path(path).stat().st_size

    def read_chunk(self, transfer_id: str, offset: int, length: int) -> tuple[np.ndarray, str]:
        """One chunk and its BLAKE3; sequential first reads also feed the whole-file hash."""
        source = self._sources[transfer_id]
        data = np.empty(length, dtype=np.uint8)
        got = os.preadv(source.file.fileno(), [data.data], offset)
        if got != length:
            raise OSError(f"file shrank while being sent: wanted {length} bytes at {offset}")
        if source.running is not None:
            source.running.feed(offset, data)
        return data, blake3.blake3(data.data).hexdigest()

    def close_source(self, transfer_id: str) -> str | None:
        """Close the file; its BLAKE3 if it was hashed whole (every byte read in order)."""
        source = self._sources.pop(transfer_id, None)
        if source is None:
            return None
        source.file.close()
        return source.running.digest(source.size) if source.running is not None else None

    def _source_path(self, path: str) -> Path:
        candidate = Path(path)
        if candidate.is_absolute():
            return candidate
        resolved = (self.storage_dir / candidate).resolve()
        if not resolved.is_relative_to(self.storage_dir.resolve()):
            raise PermissionError(f"{path!r} is outside the storage of {self.endpoint_id}")
        return resolved

    # ---- receiving -----------------------------------------------------------------

    def open_sink(self, transfer_id: str, name: str, size: int) -> str:
        """Create the temporary file a transfer writes into; returns the final path."""
        final = self.storage_dir / name
        temp = self.storage_dir / f".{name}.{transfer_id}.part"
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.ftruncate(fd, size)
        except OSError:
            os.close(fd)
            temp.unlink(missing_ok=True)
            raise
        self._sinks[transfer_id] = _Sink(fd, temp, final, size)
        return str(final)

    def write_chunk(
        self,
        transfer_id: str,
        offset: int,
        data: np.ndarray | None,
        expected: str,
        forward: bool,
    ) -> tuple[ChunkOutcome, np.ndarray | None]:
        """Verify and write one chunk; hand it on for the next receiver when ``forward``.

        Expected failures are answered, not raised, so that the next receiver in a chain
        learns "nothing to relay" instead of inheriting this receiver's exception.
        """
        if data is None:
            return ChunkOutcome(ChunkStatus.UPSTREAM_MISSING), None
        sink = self._sinks.get(transfer_id)
        if sink is None:
            return ChunkOutcome(ChunkStatus.ERROR, error="the transfer is not open here"), None
        if self._corrupt_next > 0:
            self._corrupt_next -= 1
            data = data.copy()
            data[len(data) // 2] ^= 0xFF
        if blake3.blake3(data.data).hexdigest() != expected:
            return ChunkOutcome(ChunkStatus.CORRUPT), None
        try:
            written = os.pwrite(sink.fd, data.data, offset)
        except OSError as exc:
            failed = f"write failed: {exc.strerror or exc}"
            return ChunkOutcome(ChunkStatus.ERROR, error=failed), None
        if written != len(data):
            return ChunkOutcome(ChunkStatus.ERROR, error="short write: is the disk full?"), None
        sink.running.feed(offset, data)
        return ChunkOutcome(ChunkStatus.OK, len(data)), (data if forward else None)

    @ray.method(concurrency_group="commit")
    def commit_sink(self, transfer_id: str, expected: str) -> CommitOutcome:
        """fsync, check the whole file's BLAKE3 on disk, then rename it into place."""
        sink = self._sinks.pop(transfer_id, None)
        if sink is None:
            return CommitOutcome(False, error="the transfer is not open here")
        try:
            os.fsync(sink.fd)
        except OSError as exc:
            self._discard(sink)
            return CommitOutcome(False, error=f"fsync failed: {exc.strerror or exc}")
        os.close(sink.fd)
        # Chunks that came in order were hashed as they were written; a retried chunk breaks
        # the order, and then the file is read back and hashed whole.
        actual = sink.running.digest(sink.size) or file_blake3(sink.temp)
        if actual != expected:
            sink.temp.unlink(missing_ok=True)
            return CommitOutcome(False, error=f"whole-file BLAKE3 {actual} is not {expected}")
        sink.temp.replace(sink.final)
        _fsync_dir(sink.final.parent)
        return CommitOutcome(True, path=str(sink.final))

    def abort_sink(self, transfer_id: str) -> None:
        """Drop a transfer's partial file; nothing of it stays."""
        sink = self._sinks.pop(transfer_id, None)
        if sink is not None:
            self._discard(sink)

    def _discard(self, sink: _Sink) -> None:
        with contextlib.suppress(OSError):
            os.close(sink.fd)
        sink.temp.unlink(missing_ok=True)

    def corrupt_next_chunks(self, count: int) -> None:
        """Fault injection for tests: flip a byte in the next ``count`` received chunks."""
        self._corrupt_next = count

    # ---- messages ------------------------------------------------------------------

    @ray.method(concurrency_group="control")
    def receive_message(self, message: dict[str, Any]) -> None:
        self._messages.append({**message, "received_at": time.time()})

    @ray.method(concurrency_group="control")
    def messages(self, count: int) -> list[dict[str, Any]]:
        """The newest ``count`` messages, newest first."""
        return list(reversed(self._messages))[:count]


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# A Ray actor class; typed Any because Ray's decorator erases the methods' types.
_ACTOR_OPTIONS: dict[str, Any] = {
    "num_cpus": 0,
    "max_restarts": 0,
    "concurrency_groups": {"commit": 4, "control": 2},
}
EndpointActor: Any = ray.remote(**_ACTOR_OPTIONS)(Endpoint)
