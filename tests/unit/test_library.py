"""The library's file names and its all-or-nothing writes."""

from __future__ import annotations

from pathlib import Path

import blake3
import pytest

from castray.errors import BadFileName, FileMissing, FileTooLarge
from castray.models import EventData, FileAddedEvent, FileRemovedEvent
from castray.server.library import Library, check_file_name


@pytest.mark.parametrize(
    "name", ["report.pdf", "a b.txt", "Ünïcode.bin", "x" * 216, "é" * 108, "v1.2.tar.gz"]
)
def test_plain_names_are_accepted(name: str) -> None:
    assert check_file_name(name) == name


@pytest.mark.parametrize(
    "name",
    [
        "",
        ".",
        "..",
        "../x",
        "a/b",
        "a\\b",
        "nul\x00",
        "tab\t",
        "bell\x07",
        "del\x7f",
        ".hidden",
        "x" * 217,  # its temporary name would exceed 255 bytes
        "é" * 109,  # 218 bytes in UTF-8
        "evil\u202egnp.exe",  # right-to-left override: shows as evilexe.png
        "line\u2028break",
        "c1\u0085control",
        "zero\u200bwidth",
        "no-break\u00a0space",
        " ",
        " leading",
        "trailing ",
        "e\u0301clair",  # decomposed: looks like "éclair", is another name
    ],
)
def test_dangerous_names_are_refused(name: str) -> None:
    with pytest.raises(BadFileName):
        check_file_name(name)


def test_a_committed_file_appears_with_its_hash(tmp_path: Path) -> None:
    library = Library(tmp_path)
    writer = library.create("a.bin")
    writer.write(b"hello ")
    writer.write(b"world")

    digest = writer.commit()

    assert digest == blake3.blake3(b"hello world").hexdigest()
    assert library.describe("a.bin").blake3 == digest
    assert [f.name for f in library.list()] == ["a.bin"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.bin"]


def test_a_discarded_or_oversized_file_leaves_nothing(tmp_path: Path) -> None:
    library = Library(tmp_path)
    writer = library.create("big.bin", limit=4)
    writer.write(b"1234")
    with pytest.raises(FileTooLarge):
        writer.write(b"5")
    writer.discard()

    assert list(tmp_path.iterdir()) == []
    with pytest.raises(FileMissing):
        library.path("big.bin")


def test_a_file_put_there_by_hand_is_hashed_on_first_use(tmp_path: Path) -> None:
    (tmp_path / "manual.txt").write_bytes(b"abc")

    assert Library(tmp_path).describe("manual.txt").blake3 == blake3.blake3(b"abc").hexdigest()


def test_changes_are_told_as_they_happen(tmp_path: Path) -> None:
    told: list[EventData] = []
    library = Library(tmp_path, told.append)
    writer = library.create("told.bin")
    writer.write(b"abc")
    writer.commit()
    library.delete("told.bin")

    added, removed = told
    assert isinstance(added, FileAddedEvent)
    assert added.file.name == "told.bin"
    assert added.file.blake3 == blake3.blake3(b"abc").hexdigest()
    assert removed == FileRemovedEvent(name="told.bin")
