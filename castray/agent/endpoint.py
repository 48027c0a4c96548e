"""The endpoint actor: CastRay's presence on one Ray node.

It is pinned to its node (node affinity, hard) and owns a storage directory there. It takes
no CPU, so it never competes with the cluster's own work for scheduling. Its methods run on
that node: reading a file being sent, writing, verifying and committing a file being
received, relaying chunks down a multicast chain, and keeping received messages.

Two transports move a file's bytes. ``stream`` (the default): the endpoint's data port
takes TCP streams from other endpoints, and its sinks and senders (``dataplane``) do the
work on their own threads; Ray carries only the calls that open, link, watch and commit.
``object-store``: chunks travel as NumPy ``uint8`` arrays through Ray's object store (Ray
hands them over without a copy; ``os.pwrite`` and BLAKE3 take them as buffers).

Methods run one at a time in submission order (Ray's default group), which the object-store
relay relies on; groups of their own keep other work out of that line: ``commit`` (fsync and
the final check), ``control`` (liveness probes, status, messages: never queued behind a
file's chunks), ``stream`` (opening and linking stream sinks) and ``send`` (streams being
sent: each call lasts as long as its stream).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import blake3
import numpy as np
import ray
from ray.exceptions import ActorUnavailableError

from castray import folders, ratelimit
from castray.agent import copies, journal, origin_copy, space, storage
from castray.agent import dataplane as streams
from castray.agent.outcomes import ChunkOutcome, ChunkStatus, CommitOutcome, EndpointFacts
from castray.chunks import HASH_THREADS, FileIdentity, file_blake3, identity_of
from castray.errors import OriginFailed, SourceChanged, TooManyRequests
from castray.models import FaultInjection
from castray.protocol import StorageUsage
from castray.writeback import start_write_back

log = logging.getLogger(__name__)

COMMITS_KEPT = 1024
"""Commits remembered per endpoint, to answer one asked again (the oldest are forgotten)."""

STOP_KEPT_SECONDS = 3600.0
"""How long a transfer's stop is remembered here, for its sends that start late."""
FETCHES = 4
"""Origin fetches one endpoint runs at once, at most (each holds up to 32 MiB and a thread)."""


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
    path: Path | None = None
    used_at: float = field(default_factory=time.monotonic)
    """When a send last started or ended with it (a held source nobody uses is let go)."""
    opened: os.stat_result | None = None
    """The file as it was opened: each chunk read checks it is still that."""
    fetch: origin_copy.LiveFetch | None = None
    """The origin fetch that fills the file as it is sent (a stream waits for its bytes)."""

    def check(self) -> None:
        """``SourceChanged`` if the open file was written since it was opened: its size or
        mtime moved, or its ctime did with its link count unchanged (a write whose mtime was
        put back). A rename over its name, or its removal, changes neither its bytes nor this
        answer: the transfer goes on reading the file it began with."""
        if self.opened is None:
            return
        now = os.fstat(self.file.fileno())
        before = self.opened
        written = (now.st_size, now.st_mtime_ns) != (before.st_size, before.st_mtime_ns) or (
            now.st_ctime_ns != before.st_ctime_ns and now.st_nlink == before.st_nlink
        )
        if written:
            raise SourceChanged(
                f"{self.path} changed while it was being sent (written in place): start the "
                "transfer again once it is written"
            )


@dataclass
class _Sink:
    fd: int
    temp: Path
    final: Path
    size: int
    running: _Running = field(default_factory=_Running)


class Endpoint:
    """State that lives on the endpoint's node; methods run there, one at a time."""

    def __init__(self, endpoint_id: str, storage_dir: str, options: EndpointOptions) -> None:
        self.endpoint_id = endpoint_id
        self.storage_dir = Path(storage_dir)
        self.storage_dir.mkdir(parents=True, exist_ok=True)
        self._options = options
        self._sources: dict[str, _Source] = {}
        self._sinks: dict[str, _Sink] = {}
        self._messages: deque[dict[str, Any]] = deque(maxlen=options.messages_kept)
        self._corrupt_next = 0
        self._sync_faults = 0
        self._unavailable_statuses = 0
        self._lost_commit_answers = 0
        self._commits: dict[str, Future[CommitOutcome]] = {}
        """Each transfer's commit here, made or under way: a commit asked again (its answer
        was lost) answers what the first did, and commits nothing twice."""
        self._commits_lock = threading.Lock()
        self._wedged = threading.Event()
        """Fault injection: set while receiving object-store chunks hangs, as a stuck disk."""
        self._port = streams.DataPort(
            ray.util.get_node_ip_address(), options.data_ports, options.connect_timeout
        )
        self._sending: dict[str, streams.Stopper] = {}
        self._metrics = _RayMetrics(endpoint_id, options.cluster)
        self._lock = threading.Lock()
        self._streaming: Counter[Path] = Counter()
        """Files being sent by stream right now: a storage sweep spares them."""
        # Shared by all of this endpoint's transfers: together they keep to the limits.
        self._egress = ratelimit.bucket_for(options.egress_limit)
        self._ingress = ratelimit.bucket_for(options.ingress_limit)
        self._room = space.Room(self.storage_dir)
        self._copies = copies.CopyIndex(self.storage_dir)
        self._fetches: dict[str, origin_copy.LiveFetch] = {}
        """Origin fetches under way here, or whole but still a stream's source."""
        journal.sweep(self.storage_dir, options.partial_retention)
        threading.Thread(target=self._reap_orphans, name="orphan-reaper", daemon=True).start()

    @ray.method(concurrency_group="control")
    def describe(self) -> EndpointFacts:
        """Where this endpoint really runs; proves the actor is up, and its data port too (a
        port that died fails the probe: transfers must not be sent to it)."""
        if self._port.dead is not None:
            raise OSError(errno.EPIPE, f"endpoint {self.endpoint_id}: {self._port.dead}")
        return EndpointFacts(
            endpoint_id=self.endpoint_id,
            ray_node_id=ray.get_runtime_context().get_node_id(),
            address=ray.util.get_node_ip_address(),
            pid=os.getpid(),
            storage_dir=str(self.storage_dir),
            data_address=self._port.address,
        )

    # ---- sending -------------------------------------------------------------------

    def open_source(
        self, transfer_id: str, path: str, hash_whole: bool, identity: FileIdentity | None = None
    ) -> int:
        """Open a file to send (an absolute path, or one relative to this storage dir); it
        must be the file ``identity`` says, when given (``SourceChanged`` otherwise)."""
        source = self._open_source(path, identity)
        source.running = _Running() if hash_whole else None
        self._sources[transfer_id] = source
        return source.size

    @ray.method(concurrency_group="stream")
    def hold_source(self, transfer_id: str, path: str, identity: FileIdentity | None = None) -> int:
        """Open the file a stream transfer sends and keep it open until the transfer ends
        (``end_sending``): every send and repair of the transfer reads that very file, so
        a file replaced under its name meanwhile (a new upload) is never seen; one changed
        in place fails the transfer (``SourceChanged``). Its size."""
        source = self._open_source(path, identity)
        self._sources[transfer_id] = source
        self._sending[transfer_id] = streams.Stopper()  # a new run: an earlier stop is over
        return source.size

    def _open_source(self, path: str, identity: FileIdentity | None) -> _Source:
        resolved = self._source_path(path)
        handle = resolved.open("rb")
        status = os.fstat(handle.fileno())
        if identity is not None and identity_of(status) != tuple(identity):
            handle.close()
            raise SourceChanged(
                f"{path} changed after its hashes were made for this transfer (its size, times "
                "or inode differ): start the transfer again"
            )
        return _Source(handle, status.st_size, None, resolved, opened=status)

    def _release(self, transfer_id: str) -> None:
        source = self._sources.pop(transfer_id, None)
        if source is not None:
            source.file.close()
            if source.fetch is not None:  # the transfer it fed ended: a fetch under way stops
                self._stop_fetch(source.fetch.fetch_id)

    def file_size(self, path: str) -> int:
        """Size of a file this endpoint could send."""
        return self._source_path(path).stat().st_size

    def read_chunk(self, transfer_id: str, offset: int, length: int) -> tuple[np.ndarray, str]:
        """One chunk and its BLAKE3; sequential first reads also feed the whole-file hash."""
        source = self._sources[transfer_id]
        if self._egress is not None:
            self._egress.take(length)
        data = np.empty(length, dtype=np.uint8)
        got = os.preadv(source.file.fileno(), [data.data], offset)
        source.check()  # after the read: what was read is the file as it was opened
        if got != length:
            raise OSError(f"file shrank while being sent: wanted {length} bytes at {offset}")
        if source.running is not None:
            source.running.feed(offset, data)
        self._metrics.count_sent(length)
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
            self._room.take(transfer_id, fd, size, name)  # every block, before a byte comes
            os.ftruncate(fd, size)
        except OSError:
            os.close(fd)
            temp.unlink(missing_ok=True)
            self._room.give_back(transfer_id)
            raise
        self._sinks[transfer_id] = _Sink(fd, temp, final, size)
        self._forget_commit(transfer_id)
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
        while self._wedged.is_set():  # fault injection: a disk that stopped taking writes
            time.sleep(0.1)
        if self._ingress is not None:
            self._ingress.take(len(data))
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
        start_write_back(sink.fd, offset, written)
        sink.running.feed(offset, data)
        return ChunkOutcome(ChunkStatus.OK, len(data)), (data if forward else None)

    @ray.method(concurrency_group="commit")
    def commit_sink(self, transfer_id: str, expected: str) -> CommitOutcome:
        """Commit a transfer's copy here, once: asked again (Ray lost the first answer, and
        the agent cannot tell whether the commit was made), it answers what the first call
        did, once that is done."""
        return self._once(transfer_id, lambda: self._commit_sink(transfer_id, expected))

    def _once(self, transfer_id: str, commit_now: Callable[[], CommitOutcome]) -> CommitOutcome:
        """``commit_now()``'s outcome, the first time a transfer's commit is asked for here;
        the same outcome, once it is known, every later time."""
        with self._commits_lock:
            first = transfer_id not in self._commits
            if first:
                self._commits[transfer_id] = Future()
                while len(self._commits) > COMMITS_KEPT:  # the oldest first
                    del self._commits[next(iter(self._commits))]
            commit = self._commits[transfer_id]
        if first:
            try:
                commit.set_result(commit_now())
            except Exception as exc:  # noqa: BLE001 - kept for a repeat, then raised
                commit.set_exception(exc)
            finally:
                if not commit.done():  # interrupted (the actor exits): a repeat must not wait
                    commit.set_exception(RuntimeError("the commit was interrupted"))
        outcome = commit.result()
        if self._lost_commit_answers > 0:  # fault injection: the answer lost, the commit made
            self._lost_commit_answers -= 1
            raise ActorUnavailableError("the answer was lost (fault injection)", None)
        return outcome

    def _commit_sink(self, transfer_id: str, expected: str) -> CommitOutcome:
        """fsync, check the whole file's BLAKE3, then rename it into place (either transport).

        Bytes that came in order were hashed as they arrived; a chunk sent again breaks the
        order, and then the file is read back from disk and hashed whole.
        """
        self._room.give_back(transfer_id)  # every byte is written by now
        stream = self._port.unregister(transfer_id)
        if stream is not None:
            if not stream.complete():
                stream.close()
                stream.temp.unlink(missing_ok=True)
                return CommitOutcome(False, error="not every chunk arrived verified")
            stream.close(keep_fd=True, forwarding=True)  # a slower next one is still fed
            if stream.error is not None:  # a sync failed at the last moment
                return CommitOutcome(False, error=stream.error)
            journal.journal_path(stream.temp).unlink(missing_ok=True)
            done = _commit(
                stream.fd,
                stream.temp,
                stream.final,
                stream.whole_digest,
                expected,
                stream.size,
                self._take_sync_fault,
            )
            return self._received(done, stream.size, expected)
        sink = self._sinks.pop(transfer_id, None)
        if sink is None:
            return CommitOutcome(False, error="the transfer is not open here")
        done = _commit(
            sink.fd,
            sink.temp,
            sink.final,
            lambda: sink.running.digest(sink.size) or file_blake3(sink.temp),
            expected,
            sink.size,
            self._take_sync_fault,
        )
        return self._received(done, sink.size, expected)

    @ray.method(concurrency_group="stream")
    def read_whole(
        self, transfer_id: str, path: str, identity: FileIdentity | None, expected: str
    ) -> bytes:
        """A small file's every byte, for a transfer that carries it inside its calls
        (``transports.inline``); ``SourceChanged`` unless it is still the file hashed as
        ``expected``. (``transfer_id`` names the read in Ray's task list.)"""
        source = self._open_source(path, identity)
        with source.file:
            data = os.pread(source.file.fileno(), source.size + 1, 0)
            source.check()
        if len(data) != source.size or blake3.blake3(data).hexdigest() != expected:
            raise SourceChanged(
                f"{path} changed after its hashes were made for this transfer: start the "
                "transfer again"
            )
        if self._egress is not None:
            self._egress.take(len(data))
        self._metrics.count_sent(len(data))
        return data

    @ray.method(concurrency_group="commit")
    def receive_whole(
        self, transfer_id: str, name: str, data: bytes, expected: str
    ) -> CommitOutcome:
        """Check, write and commit a small file that came whole inside this call
        (``transports.inline``). Bytes that fail their check are answered ``damaged`` (the
        agent sends them again) and leave nothing; a commit asked again answers as the first
        did."""
        if self._ingress is not None:
            self._ingress.take(len(data))
        if data and self._take_corruption():  # fault injection: a byte flipped on the way
            data = bytes([data[0] ^ 0xFF]) + data[1:]
        actual = blake3.blake3(data).hexdigest()
        if actual != expected:
            return CommitOutcome(False, error=f"BLAKE3 {actual} is not {expected}", damaged=True)
        return self._once(transfer_id, lambda: self._write_whole(transfer_id, name, data, actual))

    def _write_whole(self, transfer_id: str, name: str, data: bytes, blake3: str) -> CommitOutcome:
        temp = self.storage_dir / f".{name}.{transfer_id}.part"
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        room_taken = False
        try:
            self._room.take(transfer_id, fd, len(data), name)  # every block, before a byte
            room_taken = True
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
        except OSError as exc:
            os.close(fd)
            temp.unlink(missing_ok=True)
            why = f"could not create the file: {exc.strerror or exc}"
            return CommitOutcome(False, error=why, refused=not room_taken)
        finally:
            self._room.give_back(transfer_id)
        done = _commit(
            fd,
            temp,
            self.storage_dir / name,
            lambda: blake3,
            blake3,
            len(data),
            self._take_sync_fault,
        )
        return self._received(done, len(data), blake3)

    def _received(self, done: CommitOutcome, size: int, blake3: str) -> CommitOutcome:
        if done.ok and done.path is not None:
            self._metrics.count_received(size)
            self._copies.record(Path(done.path), blake3)
        return done

    # ---- verified copies (pins, castray.local_path) ---------------------------------------

    @ray.method(concurrency_group="control")
    def local_copy(self, name: str, wait: float = 0.0) -> tuple[str, str] | None:
        """The path and BLAKE3 of this endpoint's verified copy called ``name`` (as received:
        a file name, or a folder's), waiting up to ``wait`` seconds (at most 5) for it to be
        committed; None when there is none as verified."""
        found = self._copies.wait(name, min(max(wait, 0.0), 5.0))
        return (str(self.storage_dir / found.name), found.blake3) if found else None

    @ray.method(concurrency_group="control")
    def verified_copies(self, names: list[str]) -> dict[str, str | None]:
        """For each name: the BLAKE3 of the verified copy here, if it is as it was verified
        (same size and mtime); None when it is missing or changed."""
        return {
            name: (found.blake3 if (found := self._copies.current(name)) else None)
            for name in names
        }

    @ray.method(concurrency_group="commit")
    def hash_copies(self, names: list[str]) -> dict[str, str | None]:
        """Each copy's BLAKE3 read from disk now (a pin's verify); None when it is missing."""
        found: dict[str, str | None] = {}
        for name in names:
            path = self.storage_dir / name
            found[name] = file_blake3(path) if path.is_file() else None
        return found

    @ray.method(concurrency_group="commit")
    def remove_copies(self, names: list[str]) -> int:
        """Remove these received copies (an unpin that removes its copies)."""
        return self._copies.forget(names)

    # ---- the stream transport ---------------------------------------------------------

    @ray.method(concurrency_group="control")
    def probe_link(self, address: str) -> str | None:
        """Whether this endpoint can open a data connection to ``address`` (None), or why not."""
        try:
            streams.probe(address, self._options.connect_timeout)
        except streams.StreamError as exc:
            return str(exc)
        return None

    @ray.method(concurrency_group="control")
    def missing_of(
        self, transfer_id: str, name: str, size: int, chunk_size: int, blake3: str
    ) -> list[int]:
        """The chunks this endpoint lacks of a transfer, as its resume journal says (all of
        them without a journal of that very file)."""
        part = self.storage_dir / f".{name}.{transfer_id}.part"
        count = len(streams.all_chunks(size, chunk_size))
        kept = journal.Journal.read(journal.journal_path(part))
        if kept is None or not part.exists() or not kept.matches(size, chunk_size, blake3):
            return list(range(count))
        return [i for i, ok in enumerate(kept.verified) if not ok]

    @ray.method(concurrency_group="hash")
    def manifest_of(self, path: str, chunk_size: int) -> Manifest:
        """What a receiver checks a file against: its chunks' and its whole BLAKE3 (one read)."""
        return manifest_of(self._source_path(path), chunk_size)

    @ray.method(concurrency_group="stream")
    def start_fetch(
        self, fetch_id: str, url: str, name: str, chunk_size: int, allowed_hosts: list[str]
    ) -> int:
        """Start fetching an origin's object into this endpoint's storage as ``name`` (a
        verified copy here once whole); the object's size, once the origin said what it is.
        A stream may send it as it arrives (``hold_origin``); ``stop_fetch``, the end of
        that stream's transfer, and ``abort_all`` stop it. At most ``FETCHES`` at once."""
        return self._start_fetch(fetch_id, url, name, chunk_size, allowed_hosts)

    def _start_fetch(
        self, fetch_id: str, url: str, name: str, chunk_size: int, allowed_hosts: list[str]
    ) -> int:
        with self._lock:
            under_way = sum(not f.done for f in self._fetches.values())
        if under_way >= FETCHES:
            raise TooManyRequests(
                f"{self.endpoint_id} fetches {FETCHES} URLs at once, the most one endpoint "
                "does; try again when one ends"
            )
        fetch = origin_copy.LiveFetch(
            self.storage_dir,
            self._room,
            fetch_id,
            url,
            name,
            chunk_size,
            allowed_hosts,
            self.endpoint_id,
            time.monotonic,
            lambda copy: self._copies.record(Path(copy.path), copy.whole),
        )
        size = fetch.open()
        with self._lock:
            self._fetches[fetch_id] = fetch
        fetch.start()
        return size

    @ray.method(concurrency_group="watch")
    def fetch_state(self, fetch_id: str, since: int) -> origin_copy.FetchState:
        """How far a fetch is: its chunks' BLAKE3 from chunk ``since`` on, and, once whole
        and checked, the file's."""
        fetch = self._fetches.get(fetch_id)
        if fetch is None:
            return origin_copy.FetchState([], None, "the fetch is not under way here")
        return fetch.state(since)

    @ray.method(concurrency_group="links")
    def stop_fetch(self, fetch_id: str) -> None:
        """Stop a fetch (its transfer did not start, or ended): its partial file goes."""
        self._stop_fetch(fetch_id)

    def _stop_fetch(self, fetch_id: str) -> None:
        with self._lock:
            fetch = self._fetches.pop(fetch_id, None)
        if fetch is not None and not fetch.done:
            fetch.stop()

    @ray.method(concurrency_group="fetch")
    def fetch_origin(
        self, fetch_id: str, url: str, name: str, chunk_size: int, allowed_hosts: list[str]
    ) -> origin_copy.OriginCopy:
        """Fetch an origin's object into this endpoint's storage as ``name`` and answer once
        it is whole: a verified copy here, and the source of the transfer that sends it on."""
        self._start_fetch(fetch_id, url, name, chunk_size, allowed_hosts)
        try:
            return self._fetches[fetch_id].result()
        finally:
            with self._lock:
                self._fetches.pop(fetch_id, None)

    @ray.method(concurrency_group="stream")
    def hold_origin(self, transfer_id: str, fetch_id: str) -> int:
        """``hold_source`` for a file still being fetched: the transfer's streams send each
        chunk once the fetch has it. Its size."""
        fetch = self._fetches.get(fetch_id)
        if fetch is None:
            raise OriginFailed(f"the fetch {fetch_id} is not under way on {self.endpoint_id}")
        self._sources[transfer_id] = _Source(
            fetch.reader(), fetch.size, None, fetch.final, fetch=fetch
        )
        self._sending[transfer_id] = streams.Stopper()
        return fetch.size

    @ray.method(concurrency_group="stream")
    def open_stream_sink(
        self,
        transfer_id: str,
        name: str,
        size: int,
        chunk_size: int,
        manifest: list[bytes],
        secret: bytes,
        downstream: str | None,
        blake3: str,
        resume: bool = False,
        await_stream: bool = False,
    ) -> tuple[str, int]:
        """Get ready to receive a transfer on the data port (``resume``: taking up what an
        earlier run of it left here; ``await_stream``: and wait for a stream from upstream
        before counting as ended); the final path, and the verified bytes taken up."""
        # An earlier run's sink still open here (its end never reached this node) hands over.
        self._drop_stream_sink(transfer_id, keep=True)
        self._sending[transfer_id] = streams.Stopper()  # a new run: an earlier stop is over
        sink = streams.StreamSink(
            transfer_id=transfer_id,
            temp=self.storage_dir / f".{name}.{transfer_id}.part",
            final=self.storage_dir / name,
            size=size,
            chunk_size=chunk_size,
            manifest=manifest,
            secret=secret,
            downstream=downstream,
            stall_timeout=self._options.stall_timeout,
            connect_timeout=self._options.connect_timeout,
            blake3=blake3,
            corrupt_next=self._take_corruption,
            sync_fails=self._take_sync_fault,
            ingress=self._ingress,
        )
        sink.open(resume, await_stream)
        try:
            self._room.take(transfer_id, sink.fd, size, name)  # every block, before a byte
        except OSError:
            sink.close()
            self._room.give_back(transfer_id)
            if not sink.resumed_bytes:
                journal.remove(sink.temp)
            raise
        self._port.register(sink)
        self._forget_commit(transfer_id)
        return str(sink.final), sink.resumed_bytes

    def _forget_commit(self, transfer_id: str) -> None:
        """A new run of a transfer opened a sink here: an earlier run's commit (failed, or
        a copy since replaced) is not this one's answer."""
        with self._commits_lock:
            self._commits.pop(transfer_id, None)

    @ray.method(concurrency_group="watch")
    def sink_status(
        self,
        transfer_id: str,
        wait: float = 0.0,
        told: int = 0,
        digests: list[bytes] | None = None,
        blake3: str | None = None,
    ) -> streams.SinkStatus | None:
        """The sink's status, after up to ``wait`` seconds for it to settle; first, for a
        file still being fetched, the manifest entries from ``told`` on that became known,
        and the whole file's BLAKE3 once it is."""
        if self._unavailable_statuses > 0:  # fault injection: a host too busy to be reached
            self._unavailable_statuses -= 1
            raise ActorUnavailableError("the endpoint is busy (fault injection)", None)
        sink = self._port.sink(transfer_id)
        if sink is None:
            return None
        if digests or blake3:
            sink.learn(told, digests or [], blake3)
        return sink.status(wait)

    @ray.method(concurrency_group="links")
    def relink(self, transfer_id: str, downstream: str | None) -> None:
        """Streams that start from now on are passed on to ``downstream``."""
        sink = self._port.passing_on(transfer_id)
        if sink is not None:
            sink.relink(downstream)

    @ray.method(concurrency_group="links")
    def redirect(self, transfer_id: str, downstream: str | None, from_chunk: int) -> bool:
        """Pass the stream arriving now on to ``downstream`` instead, from chunk
        ``from_chunk`` on (the chain was reordered: a slow receiver moved to its end).
        Whether it is passed on there now (a committed sink that passes nothing on cannot)."""
        sink = self._port.passing_on(transfer_id)
        return sink is not None and sink.redirect(downstream, from_chunk)

    @ray.method(concurrency_group="links")
    def move_stream(self, transfer_id: str, target: str, to: str, from_chunk: int) -> bool:
        """Move this endpoint's stream to ``target`` over to ``to``, from chunk ``from_chunk``
        on (the chain's head was slow: it moves to the end, the next one is fed from here).
        False when no stream of the transfer goes to ``target`` any more."""
        stop = self._sending.get(transfer_id)
        return stop is not None and stop.move(target, to, from_chunk)

    @ray.method(concurrency_group="send")
    def send_stream(
        self,
        transfer_id: str,
        path: str | None,
        target: str,
        secret: bytes,
        chunks: list[tuple[int, int, int]],
        forward: bool,
        rate: int = 0,
    ) -> int:
        """Stream ``chunks`` of a file to ``target``, returning when they are all sent: the
        file at ``path``, or (None) what this endpoint received of the transfer so far (a
        survivor sends on what its downstream lacks), at ``rate`` bytes per second at most
        (0: no limit) within the endpoint's egress limit. The bytes sent."""
        held = self._sources.get(transfer_id) if path is not None else None
        opened: contextlib.AbstractContextManager[Any]
        check: Callable[[], None] | None = None
        ready: Callable[[int], None] | None = None
        stop = self._sending.setdefault(transfer_id, streams.Stopper())
        if held is not None and held.fetch is not None:
            fetch = held.fetch
            ready = lambda end: fetch.wait_for(end, stop.is_set)  # noqa: E731
        if held is not None and held.path is not None:
            check = held.check
            source, opened = held.path, contextlib.nullcontext(held.file)
            held.used_at = time.monotonic()
        elif path is None:
            sink = self._port.sink(transfer_id)
            if sink is None:
                raise FileNotFoundError(f"transfer {transfer_id} is not open here")
            source, opened = sink.temp, sink.temp.open("rb")
        else:
            source = self._source_path(path)
            opened = source.open("rb")
        with self._sending_file(source), opened as file:
            sent = streams.send(
                file,
                target,
                transfer_id,
                secret,
                chunks,
                forward,
                self._options.connect_timeout,
                self._options.stall_timeout,
                stop,
                ratelimit.buckets(ratelimit.bucket_for(rate), self._egress),
                check,
                ready,
            )
        if held is not None:
            held.used_at = time.monotonic()
        self._metrics.count_sent(sent)
        return sent

    @ray.method(concurrency_group="commit")
    def unpack_folder(self, transfer_id: str, bundle: str, folder: str) -> str:
        """Unpack a folder's verified bundle into ``folder`` here, each file committed
        atomically, and remove the bundle; the folder's path."""
        target = self.storage_dir / folders.check_folder_name(folder)
        verified = self._copies.current(Path(bundle).name)
        try:
            folders.unpack(
                Path(bundle), target, self.storage_dir / f".{folder}.{transfer_id}.unpack"
            )
        finally:
            Path(bundle).unlink(missing_ok=True)
        if verified is not None:  # the folder is what its verified bundle held
            self._copies.forget([verified.name])
            self._copies.record(target, verified.blake3)
        return str(target)

    @contextlib.contextmanager
    def _sending_file(self, path: Path) -> Iterator[None]:
        with self._lock:
            self._streaming[path] += 1
        try:
            yield
        finally:
            with self._lock:
                self._streaming[path] -= 1

    @ray.method(concurrency_group="control")
    def sweep_storage(
        self, retention: float, quota: int, remove: bool, keep: list[str] | None = None
    ) -> StorageUsage:
        """Remove received copies past ``retention`` seconds, then the oldest past ``quota``
        bytes, sparing what is being sent and the pinned copies ``keep`` (names in the storage
        directory, a folder's name sparing what is under it); what is kept and what went
        (see ``storage``)."""
        with self._lock:
            in_use = {p for p, n in self._streaming.items() if n > 0}
        in_use |= {s.path for s in list(self._sources.values()) if s.path is not None}
        pinned = {self.storage_dir / name for name in keep or []}
        return storage.sweep(self.storage_dir, retention, quota, in_use, remove, pinned=pinned)

    @ray.method(concurrency_group="links")
    def sever(self, transfer_id: str, upstream: bool, downstream: bool) -> None:
        """Drop the transfer's streams from a sender or to a receiver that is gone (cut off,
        or its node lost): they would only stall until the stall timeout."""
        sink = self._port.passing_on(transfer_id)
        if sink is not None:
            sink.sever(upstream, downstream)

    @ray.method(concurrency_group="links")
    def end_sending(self, transfer_id: str) -> int:
        """The transfer's run ended: stop its streams from here at once, a stream waiting on a
        rate limit too, and any that starts later (a call that waited for a thread; the stop
        stays set until a new run of the transfer opens here); close the source file it held;
        and answer the bytes its streams sent in this run, a stream that broke half-way
        included. One call, not three: a small file's transfer is mostly such calls."""
        stop = self._sending.setdefault(transfer_id, streams.Stopper())
        stop.set()
        self._release(transfer_id)
        return stop.sent

    @ray.method(concurrency_group="links")
    def stop_sending(self, transfer_id: str, target: str) -> None:
        """End the transfer's streams from here to ``target`` only (its receiver was cut off):
        the transfer's repairs from here go on. ``end_sending`` stops them all."""
        stop = self._sending.get(transfer_id)
        if stop is not None:
            stop.cut(target)

    def _take_sync_fault(self) -> bool:
        if self._sync_faults > 0:
            self._sync_faults -= 1
            return True
        return False

    def _take_corruption(self) -> bool:
        if self._corrupt_next > 0:
            self._corrupt_next -= 1
            return True
        return False

    @ray.method(concurrency_group="stream")
    def abort_sink(self, transfer_id: str, keep: bool = False) -> None:
        """Stop receiving a transfer. Its partial file goes, unless ``keep``: then a stream
        sink's stays with its journal, for a resume (an object-store sink keeps none)."""
        self._abort(transfer_id, keep)

    def _abort(self, transfer_id: str, keep: bool) -> None:
        self._room.give_back(transfer_id)
        passing = self._port.passing_on(transfer_id)
        if passing is not None:  # committed, still feeding a slower receiver: no more
            passing.sever(upstream=False, downstream=True)
        sink = self._sinks.pop(transfer_id, None)
        if sink is not None:
            self._discard(sink)
        self._drop_stream_sink(transfer_id, keep)
        self._sending.setdefault(transfer_id, streams.Stopper()).set()

    @ray.method(concurrency_group="control")
    def abort_all(self) -> int:
        """Stop every transfer here (the server is stopping: this actor is about to be
        killed). Stream sinks keep their partial files, journaled, for a resume; nothing else
        half-written stays. The transfers stopped."""
        running = (t for t, stop in self._sending.items() if not stop.is_set())
        transfer_ids = {*self._sinks, *(tid for tid, _ in self._port.sinks()), *running}
        for transfer_id in transfer_ids:
            self._abort(transfer_id, keep=True)
        for transfer_id in list(self._sources):
            self._release(transfer_id)
        for fetch_id in list(self._fetches):
            self._stop_fetch(fetch_id)
        return len(transfer_ids)

    @ray.method(concurrency_group="stream")
    def discard(self, transfer_id: str) -> int:
        """Give up what a finished transfer kept here for a resume; the partial files removed."""
        if not transfer_id.isalnum():
            raise ValueError(f"{transfer_id!r} is not a transfer id")
        self._abort(transfer_id, keep=False)
        return journal.discard(self.storage_dir, transfer_id)

    def _drop_stream_sink(self, transfer_id: str, keep: bool) -> None:
        """Close a transfer's sink; its partial file and journal stay with ``keep`` and only
        if it verified something (a resume of nothing would be a new transfer)."""
        stream = self._port.unregister(transfer_id)
        if stream is not None:
            keep = keep and stream.verified_bytes > 0
            stream.close(journal=keep)
            if not keep:
                journal.remove(stream.temp)

    def _reap_orphans(self) -> None:
        """Close the sink of a transfer its agent stopped asking about (the agent died, or
        this node was cut off and the abort never came): its partial file stays, journaled,
        for a resume, until the transfer is discarded or the retention sweeps it."""
        timeout = self._options.orphan_timeout
        while True:
            time.sleep(min(5.0, timeout / 4))
            self._release_idle_sources()
            self._forget_old_stops()
            for transfer_id, sink in self._port.sinks():
                idle = time.monotonic() - sink.last_contact
                if idle > timeout:
                    log.warning(
                        "transfer %s: no word from its agent for %.0f s; its partial file %s "
                        "is closed and kept for a resume",
                        transfer_id,
                        idle,
                        sink.temp.name,
                    )
                    self._drop_stream_sink(transfer_id, keep=True)

    def _release_idle_sources(self) -> None:
        """A held source of a transfer whose agent went away (no ``end_sending`` will
        come) is closed once no send used it for longer than a transfer may stall."""
        idle_for = 2 * max(self._options.orphan_timeout, self._options.stall_timeout)
        now = time.monotonic()
        with self._lock:
            busy = {p for p, n in self._streaming.items() if n > 0}
        for transfer_id, source in list(self._sources.items()):
            if (
                source.running is None
                and source.path not in busy
                and now - source.used_at > idle_for
            ):
                log.warning("transfer %s: its source file was held unused; closed", transfer_id)
                self._release(transfer_id)

    def _forget_old_stops(self) -> None:
        """A stop is kept for late sends of its transfer; an hour later none can come."""
        now = time.monotonic()
        for transfer_id, stop in list(self._sending.items()):
            if stop.stopped_at is not None and now - stop.stopped_at > STOP_KEPT_SECONDS:
                self._sending.pop(transfer_id, None)

    def _discard(self, sink: _Sink) -> None:
        with contextlib.suppress(OSError):
            os.close(sink.fd)
        sink.temp.unlink(missing_ok=True)

    @ray.method(concurrency_group="control")
    def inject_faults(self, faults: FaultInjection) -> None:
        """Fault injection for tests: what this endpoint is to get wrong from now on."""
        self._corrupt_next = faults.corrupt_chunks
        self._sync_faults = faults.fail_syncs
        self._unavailable_statuses = faults.unavailable_statuses
        self._lost_commit_answers = faults.lost_commit_answers
        if faults.wedge is not None:
            (self._wedged.set if faults.wedge else self._wedged.clear)()
        if faults.refuse_data_connections is not None:
            self._port.refusing = faults.refuse_data_connections
        if faults.close_data_port:
            self._port.close()

    # ---- messages ------------------------------------------------------------------

    @ray.method(concurrency_group="control")
    def receive_message(self, message: dict[str, Any]) -> None:
        self._messages.append({**message, "received_at": time.time()})

    @ray.method(concurrency_group="control")
    def messages(self, count: int) -> list[dict[str, Any]]:
        """The newest ``count`` messages, newest first."""
        return list(reversed(self._messages))[:count]


@dataclass(frozen=True)
class EndpointOptions:
    """How an endpoint is set up (from the agent's tunables)."""

    messages_kept: int
    data_ports: tuple[int, int] | None
    stall_timeout: float
    connect_timeout: float
    orphan_timeout: float
    partial_retention: float
    """Seconds a resumable partial file is kept, counted from its last write."""
    egress_limit: int = 0
    """Bytes per second all of this endpoint's sending shares, at most; 0: no limit."""
    cluster: str = ""
    """The CastRay cluster it belongs to: a tag of its Ray metrics."""
    ingress_limit: int = 0
    """Bytes per second all of this endpoint's receiving shares, at most; 0: no limit."""


class _RayMetrics:
    """This endpoint's byte counters as Ray metrics: a Ray cluster scraped by Prometheus shows
    them on each node's metrics port, as ``ray_castray_endpoint_bytes_*_total``."""

    def __init__(self, endpoint_id: str, cluster: str) -> None:
        from ray.util.metrics import Counter as RayCounter

        tags = {"endpoint": endpoint_id, "cluster": cluster}
        keys = ("endpoint", "cluster")
        self.sent = RayCounter(
            "castray_endpoint_bytes_sent", "Bytes this endpoint sent.", keys
        ).set_default_tags(tags)
        self.received = RayCounter(
            "castray_endpoint_bytes_received", "Verified bytes this endpoint received.", keys
        ).set_default_tags(tags)

    # Ray's counters refuse an increment of 0 (an empty file): it is no bytes anyway.
    def count_sent(self, count: int) -> None:
        if count > 0:
            self.sent.inc(count)

    def count_received(self, count: int) -> None:
        if count > 0:
            self.received.inc(count)


@dataclass(frozen=True)
class Manifest:
    """A file's size, its chunks' BLAKE3 (raw digests) and its whole BLAKE3."""

    size: int
    chunks: list[bytes]
    whole: str
    identity: FileIdentity | None = None
    """The file as it was read (None: it changed while it was read)."""


def manifest_of(path: Path, chunk_size: int) -> Manifest:
    """Read ``path`` once, hashing each chunk and the whole; ``SourceChanged`` if it changed
    while it was read."""
    whole = blake3.blake3(max_threads=HASH_THREADS)
    chunks: list[bytes] = []
    buffer = bytearray(chunk_size)
    size = 0
    with path.open("rb", buffering=0) as file:
        before = identity_of(os.fstat(file.fileno()))
        while True:
            n = file.readinto(buffer)
            if not n:
                break
            view = memoryview(buffer)[:n]
            whole.update(view)
            chunks.append(blake3.blake3(view).digest())
            size += n
        if identity_of(os.fstat(file.fileno())) != before:
            raise SourceChanged(f"{path} changed while it was being read: try again")
    return Manifest(size, chunks, str(whole.hexdigest()), before)


def _commit(
    fd: int,
    temp: Path,
    final: Path,
    digest: Callable[[], str],
    expected: str,
    size: int,
    sync_fails: Callable[[], bool] = lambda: False,
) -> CommitOutcome:
    """fsync the file, check its size and whole BLAKE3, rename it into place, fsync the
    directory; on any failure nothing stays."""
    try:
        if sync_fails():
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        os.fsync(fd)
        written = os.fstat(fd).st_size
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.close(fd)
        temp.unlink(missing_ok=True)
        return CommitOutcome(False, error=f"fsync failed: {exc.strerror or exc}")
    os.close(fd)
    if written != size:
        temp.unlink(missing_ok=True)
        return CommitOutcome(False, error=f"the file is {written} bytes, not {size}")
    actual = digest()
    if actual != expected:
        temp.unlink(missing_ok=True)
        return CommitOutcome(False, error=f"whole-file BLAKE3 {actual} is not {expected}")
    storage.put_in_place(temp, final)
    return CommitOutcome(True, path=str(final))


# A Ray actor class; typed Any because Ray's decorator erases the methods' types.
_ACTOR_OPTIONS: dict[str, Any] = {
    "num_cpus": 0,
    "max_restarts": 0,
    # "send": one thread per outgoing stream, "watch": one per status call waiting for a sink
    # to settle. A stream that waits for a thread here is one its recipients see stall (15
    # unicasts at once from one node failed with 8 of them): as many as an agent drives.
    # "links": re-links and stops, quick, never queued behind "hash" (a big file's manifest
    # can take minutes) or "stream" (opening sinks). "fetch": origins' objects being fetched
    # (minutes too), beside the manifests, not behind them.
    "concurrency_groups": {
        "commit": 4,
        "control": 4,
        "stream": 4,
        "links": 4,
        "hash": 2,
        "fetch": 2,
        "send": 256,
        "watch": 256,
    },
}
EndpointActor: Any = ray.remote(**_ACTOR_OPTIONS)(Endpoint)
