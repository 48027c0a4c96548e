"""A stream sink over bytes the test holds: the manifest and hash made from them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import blake3

from castray.agent.dataplane import StreamSink
from castray.chunks import plan_chunks


def open_sink(
    folder: Path, data: bytes, chunk_size: int, transfer_id: str, secret: bytes, **options: Any
) -> StreamSink:
    """An open sink for ``data`` writing ``folder/f`` (``options`` as StreamSink takes them:
    downstream, stall_timeout, connect_timeout, ingress)."""
    chunks = plan_chunks(len(data), chunk_size)
    settings: dict[str, Any] = {"downstream": None, "stall_timeout": 20.0, "connect_timeout": 2.0}
    sink = StreamSink(
        transfer_id=transfer_id,
        temp=folder / ".f.part",
        final=folder / "f",
        size=len(data),
        chunk_size=chunk_size,
        manifest=[blake3.blake3(data[c.offset : c.offset + c.length]).digest() for c in chunks],
        secret=secret,
        blake3=blake3.blake3(data).hexdigest(),
        **(settings | options),
    )
    sink.open()
    return sink
