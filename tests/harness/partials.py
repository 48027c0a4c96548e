"""What a recipient keeps of an unfinished transfer: its partial files and their journals."""

from __future__ import annotations

from pathlib import Path

from castray.agent.journal import Journal, journal_path
from castray.chunks import plan_chunks


def partials(data: Path) -> list[Path]:
    """``find DATA -name '.*.part'``."""
    return sorted(data.rglob(".*.part"))


def journals(data: Path) -> list[Path]:
    return sorted(data.rglob(".*.resume"))


def kept_bytes(data: Path, transfer_id: str = "") -> int:
    """The bytes the partial files' journals (of one transfer, if given) list as verified and
    on disk: what a resume need not send."""
    total = 0
    for part in partials(data):
        if transfer_id not in part.name:
            continue
        kept = Journal.read(journal_path(part))
        assert kept is not None, f"{part.name} has no resume journal"
        chunks = plan_chunks(kept.size, kept.chunk_size)
        total += sum(c.length for c in chunks if kept.verified[c.index])
    return total
