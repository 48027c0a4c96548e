"""A transfer being received on an endpoint's data port: each piece written into the file as
it arrives, every chunk checked against the manifest, and the stream passed on to the next
receiver at that receiver's own pace.

The receiving thread reads each piece (``SO_RCVLOWAT``: a piece is at least a few hundred KiB
when bytes trickle in, not one packet) into one of a few reusable buffers and hashes it at
once, while it is in the CPU's cache: into its chunk's BLAKE3 and, while bytes come in order,
the whole file's. A writer thread writes each piece at its offset (so receiving and writing
overlap), and a chunk whose hash matched is marked verified once all of it is written. What
is written is what a forwarder (``forwarding``) sends on, from the file: the next receiver is
fed cut-through while it keeps up and from the page cache when it falls behind, and never
holds this one back. A chunk that fails its check, or never came, is listed as missing for
the agent to have it sent again.

A file sent while its source still fetches it from an origin has a manifest that grows: a
chunk whose BLAKE3 is not known yet when it arrives is written and passed on, and kept
"unchecked" with the BLAKE3 it arrived with until ``learn`` brings the one it must have.

``StreamSink`` opens and closes a sink; its state is declared once, in ``sink_state``, and
each of its parts has a module: ``sink_receiving`` (a stream's frames read and hashed),
``sink_writing`` (the writer, the checks, the resume journal), ``sink_links`` (streams passed
on: forwarders started, moved, stopped), ``sink_status`` (what the agent is told).
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading

import blake3

from castray.agent.dataplane.sink_links import SinkLinks
from castray.agent.dataplane.sink_receiving import SinkReceiving
from castray.agent.dataplane.sink_status import SinkReporting, SinkStatus
from castray.agent.dataplane.sink_writing import PIECE, SinkWriting
from castray.agent.dataplane.wire import all_chunks
from castray.agent.journal import Journal, journal_path

log = logging.getLogger(__name__)

__all__ = ["PIECE", "SinkStatus", "StreamSink"]

BUFFERS = 8
"""Piece buffers per sink: what a sink holds in memory, whatever the file's size."""


class StreamSink(SinkReceiving, SinkWriting, SinkLinks, SinkReporting):
    """One transfer being received here: written as it comes, verified, passed on."""

    def open(self, resume: bool = False, await_stream: bool = False) -> None:
        """Create the temporary file and start the writer (the file is filled by offset).

        ``resume``: take up what an earlier run of the transfer left, as its journal lists it
        (nothing if there is no journal of this very file), and count as a sink whose stream
        has ended: every chunk it lacks is missing, and the agent has them sent; with
        ``await_stream``, not before a stream from upstream brought what it could.
        """
        self._verified = bytearray(len(self.manifest))
        journal = Journal.read(journal_path(self.temp)) if resume else None
        if journal is not None and not journal.matches(self.size, self.chunk_size, self.blake3):
            journal = None
        if journal is not None and self.temp.exists():
            self.fd = os.open(self.temp, os.O_RDWR)
            self._verified[:] = journal.verified
            self.verified_bytes = self.resumed_bytes = sum(
                length
                for index, _, length in all_chunks(self.size, self.chunk_size)
                if self._verified[index]
            )
        else:
            # Read too: forwarders send from it.
            self.fd = os.open(self.temp, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
            journal_path(self.temp).unlink(missing_ok=True)
        if resume and not await_stream:
            self._ended_streams = self._finished_streams = 1
        self._synced = bytes(self._verified)
        self._whole = blake3.blake3()  # fed on the receiving thread, from the CPU's cache
        self._buffers = min(BUFFERS, max(1, -(-self.size // PIECE)))
        for _ in range(self._buffers):
            self._free.put(bytearray(min(PIECE, max(self.size, 1))))  # small files, small
        self._writer = threading.Thread(
            target=self._write_loop, name=f"sink-{self.transfer_id}", daemon=True
        )
        self._writer.start()

    # ---- closing ------------------------------------------------------------------

    def close(self, keep_fd: bool = False, journal: bool = False, forwarding: bool = False) -> None:
        """Stop the writer (what is queued is written first) and close the file, unless
        ``keep_fd`` (a commit fsyncs and closes it); with ``journal``, record what the file
        holds for a resume first. Forwarders stop too, unless ``forwarding`` (a commit: a
        slower next receiver is still fed, from the forwarder's own descriptor)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            for conn in self._conns:  # streams still arriving end now
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)
        if not forwarding:
            self.sever(upstream=False, downstream=True)
        self._work.put(None)
        if self._writer is not None:
            self._writer.join(timeout=self.stall_timeout)
        self._journal_due.set()
        if self._journaler is not None:
            self._journaler.join(timeout=self.stall_timeout)
        stuck = any(t is not None and t.is_alive() for t in (self._writer, self._journaler))
        if stuck:  # a write hangs on the disk: its descriptor must not be reused under it
            self.error = self.error or "its disk stopped taking writes"
            log.warning("transfer %s: %s; its file is left open", self.transfer_id, self.error)
            return
        if journal and self.error is None:
            self.write_journal()
        if not keep_fd:
            with contextlib.suppress(OSError):
                os.close(self.fd)
