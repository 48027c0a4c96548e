"""Sizes users type, generated content, and the history across restarts."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import pytest

from castray.errors import InvalidRequest
from castray.models import (
    ContentType,
    FileInfo,
    Group,
    RecipientState,
    RecipientStatus,
    Transfer,
    TransferMode,
    TransferStatus,
)
from castray.server.generator import generate, parse_size
from castray.server.history import History
from castray.server.library import Library


@pytest.mark.parametrize(
    ("text", "size"),
    [
        (0, 0),
        (123, 123),
        ("10KB", 10240),
        ("55.5MB", int(55.5 * 1024**2)),
        ("1GiB", 1024**3),
        ("7", 7),
        ("2 mb", 2 * 1024**2),
    ],
)
def test_sizes_are_read_in_powers_of_1024(text: str | int, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "MB", "1.2.3MB", "5 parsecs", "-1", -5])
def test_unreadable_sizes_are_refused(text: str | int) -> None:
    with pytest.raises(InvalidRequest):
        parse_size(text)


@pytest.mark.parametrize("kind", list(ContentType))
def test_generated_files_have_the_exact_size(tmp_path: Path, kind: ContentType) -> None:
    made = generate(Library(tmp_path), 3 * 1024 * 1024 + 17, kind, None)

    assert (tmp_path / made.file).stat().st_size == 3 * 1024 * 1024 + 17


def _transfer(transfer_id: str, status: TransferStatus, minute: int) -> Transfer:
    return Transfer(
        id=transfer_id,
        status=status,
        mode=TransferMode.UNICAST,
        source_node="a",
        file=FileInfo(name="f", size=1, blake3=None),
        recipients={"b": RecipientState(status=RecipientStatus.RUNNING)},
        bytes_total=1,
        created_at=datetime(2026, 1, 1, 0, minute, tzinfo=timezone.utc),
    )


def test_history_survives_reopening_and_marks_unfinished_as_interrupted(tmp_path: Path) -> None:
    history = History(tmp_path / "h.sqlite3")
    history.save(_transfer("done", TransferStatus.COMPLETED, 1))
    history.save(_transfer("flying", TransferStatus.RUNNING, 2))
    history.save_group(Group(name="g", members=["a", "b"]))
    history.close()

    reopened = History(tmp_path / "h.sqlite3")
    assert reopened.interrupt_unfinished() == ["flying"]

    page, total = reopened.page(10, 0)
    assert total == 2
    assert [t.id for t in page] == ["flying", "done"]
    assert page[0].status is TransferStatus.INTERRUPTED
    assert page[0].resumable, "a stream transfer cut short keeps what it verified"
    assert reopened.resumable_interrupted() == ["flying"]
    assert reopened.get("done").status is TransferStatus.COMPLETED  # type: ignore[union-attr]
    assert reopened.groups() == [Group(name="g", members=["a", "b"])]
