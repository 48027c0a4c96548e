"""A sink's writer: each piece written at its offset as it comes off the receiving thread,
each chunk marked verified once it is whole on disk, and the resume journal kept.

The writer thread is the only one that writes to the file, in the order the receiving
threads queued the pieces; the kernel is asked to begin writing them to disk at once
(``castray.writeback``), so the commit's fsync waits for the last ones only. A chunk whose
manifest entry is not known yet (a file still fetched from an origin) is held "unchecked"
until ``learn`` brings it. Once a second the journal thread syncs the file and records the
chunks that are on disk for sure, so a resumed transfer takes them up.
"""

from __future__ import annotations

import errno
import logging
import os
import threading
import time
from dataclasses import replace

import blake3

from castray.agent.dataplane.sink_state import ChunkEnd, Learn, Piece, SinkState
from castray.agent.dataplane.wire import all_chunks
from castray.agent.journal import Journal, journal_path
from castray.writeback import start_write_back

log = logging.getLogger(__name__)

PIECE = 1024 * 1024
"""Bytes received at a time, at most: what a buffer holds."""
JOURNAL_INTERVAL = 1.0
"""Seconds between a sink's journal writes (each after an fdatasync of its partial file)."""


class SinkWriting(SinkState):
    """The writer's half of ``StreamSink`` (its state: ``SinkState``)."""

    def _write_loop(self) -> None:
        while True:
            item = self._work.get()
            if item is None:
                return
            if isinstance(item, ChunkEnd):
                self._chunk_ended(item)
            elif isinstance(item, Learn):
                self._learned(item)
            else:
                try:
                    self._write_piece(item)
                finally:
                    self._free.put(item.buffer)
            if self._work.empty():
                with self._lock:
                    self._changed.notify_all()

    def _write_piece(self, piece: Piece) -> None:
        """Write a piece at its offset, unless its chunk is verified already (the file holds
        it: what a forwarder sends of it is the same); then it may be passed on."""
        if not self._verified[piece.index] and self.error is None:
            self._unchecked.pop(piece.index, None)  # its bytes change: what it came with goes
            view = memoryview(piece.buffer)[: piece.length]
            count = self._writes.get(piece.index, 0)
            self._first_write.setdefault((id(piece.incoming), piece.position), count)
            self._writes[piece.index] = count + 1
            try:
                written = 0
                while written < piece.length:
                    written += os.pwrite(self.fd, view[written:], piece.offset + written)
                start_write_back(self.fd, piece.offset, piece.length)
            except OSError as exc:
                self.error = f"could not write its file to disk: {exc.strerror or exc}"
                self.sever(upstream=False, downstream=True)  # nothing to pass on from here
                return
        with self._lock:
            piece.incoming.written[piece.position] += piece.length
            self._changed.notify_all()

    def _chunk_ended(self, end: ChunkEnd) -> None:
        """Mark a chunk verified: it arrived intact, and its pieces were the last ones
        written of it, one after the other, or else the file holds the right bytes of it when
        read back (a piece of the same chunk from another stream, written among them, may
        have left other bytes; the chunk then comes again)."""
        first = self._first_write.pop((id(end.incoming), end.position), None)
        alone = first is not None and self._writes.get(end.index, 0) - first == end.pieces
        known = self.manifest[end.index]
        if end.intact and known and end.digest != known:
            end = replace(end, intact=False)  # its entry came while it arrived: it differs
        if not end.intact:
            self._damage(end.index)
            return
        if self._verified[end.index] or self.error is not None:
            return
        if not alone and not self._holds(end.index, known or end.digest):
            log.info(
                "transfer %s: chunk %d arrived by two streams at once and the file holds "
                "other bytes of it; it comes again",
                self.transfer_id,
                end.index,
            )
            return
        if not known:
            self._unchecked[end.index] = end.digest
            return
        self._mark_verified(end.index, end.length)

    def _holds(self, index: int, digest: bytes) -> bool:
        """Whether the file holds chunk ``index`` with this BLAKE3, read back (on the writer
        thread: nothing writes to it meanwhile). A chain re-linked mid-way brings the chunk
        in flight by the old stream and the new at once: when both bring the right bytes,
        it needs no repair (the lab repaired it from the source, for every host after a
        moved one). Read a piece at a time: a chunk may be 256 MiB, a sink holds 8 MiB."""
        at = index * self.chunk_size
        end = min(at + self.chunk_size, self.size)
        hasher = blake3.blake3()
        try:
            while at < end:
                data = os.pread(self.fd, min(PIECE, end - at), at)
                if not data:
                    return False  # the file ends before the chunk does
                hasher.update(data)
                at += len(data)
        except OSError:
            return False
        return hasher.digest() == digest

    def _learned(self, learn: Learn) -> None:
        """Manifest entries became known: chunks that came before them are checked now."""
        for index, digest in enumerate(learn.digests, learn.start):
            if index >= len(self.manifest) or self.manifest[index]:
                continue
            self.manifest[index] = digest
            came_with = self._unchecked.pop(index, None)
            if came_with is None or self._verified[index] or self.error is not None:
                continue
            if came_with == digest:
                length = min(self.chunk_size, self.size - index * self.chunk_size)
                self._mark_verified(index, length)
                continue
            self._damage(index)

    def _damage(self, index: int) -> None:
        self.corrupt_chunks += 1
        self._damaged[index] = self._damaged.get(index, 0) + 1
        with self._lock:
            self._whole_valid = False  # the file is read back and hashed at its commit
        log.info("transfer %s: chunk %d arrived damaged", self.transfer_id, index)

    def learn(self, start: int, digests: list[bytes], blake3: str | None) -> None:
        """The manifest entries from chunk ``start`` on, and (once known) the file's BLAKE3:
        checked in turn with what the writer has (status waits for it)."""
        if blake3:
            self.blake3 = blake3
        if digests:
            self._work.put(Learn(start, list(digests)))

    def _mark_verified(self, index: int, length: int) -> None:
        self._verified[index] = 1
        self.verified_bytes += length
        # Once every chunk is here the commit comes next and syncs the file itself: a
        # journal then would only cost a small file's transfer two syncs and a thread.
        whole = self.verified_bytes >= self.size
        if not whole and time.monotonic() - self._journaled_at >= JOURNAL_INTERVAL:
            self._journaled_at = time.monotonic()
            self._journal_soon()

    def _journal_soon(self) -> None:
        """Have the journal thread sync the file and write the journal; the thread starts
        with the first one (runs on the writer thread, which ``close`` joins first)."""
        with self._lock:
            if self._closed:
                return
            if self._journaler is None:
                self._journaler = threading.Thread(
                    target=self._journal_loop, name=f"journal-{self.transfer_id}", daemon=True
                )
                self._journaler.start()
        self._journal_due.set()

    def _journal_loop(self) -> None:
        while True:
            self._journal_due.wait()
            self._journal_due.clear()
            if self._closed:
                return
            self.write_journal()

    def write_journal(self) -> None:
        """Record the chunks verified so far, once they are on disk (on the journal thread, or
        at the close): a resume takes them as they are.

        A failed sync fails the sink with its reason: Linux reports a write-back error once
        per open file, so a later fsync would succeed and a file with lost pages would be
        committed. Every chunk not known synced before is then missing again."""
        verified = bytes(self._verified)  # chunks written before the sync below: on disk
        try:
            if self.sync_fails():
                raise OSError(errno.EIO, os.strerror(errno.EIO))
            os.fdatasync(self.fd)
        except OSError as exc:
            self._sync_failed(exc)
            return
        self._synced = verified
        try:
            Journal(self.size, self.chunk_size, self.blake3, verified).write(
                journal_path(self.temp)
            )
        except OSError as exc:
            log.warning(
                "transfer %s: could not write its resume journal: %s", self.transfer_id, exc
            )

    def _sync_failed(self, exc: OSError) -> None:
        self.error = f"could not write its file to disk: {exc.strerror or exc}"
        log.warning("transfer %s: %s", self.transfer_id, self.error)
        with self._lock:
            unsynced = [i for i, ok in enumerate(self._verified) if ok and not self._synced[i]]
            for index in unsynced:
                self._verified[index] = 0
            self.verified_bytes = sum(
                length
                for index, _, length in all_chunks(self.size, self.chunk_size)
                if self._verified[index]
            )
