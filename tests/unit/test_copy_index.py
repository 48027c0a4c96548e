"""The index of verified copies as a journal: a commit appends one line (it does not rewrite
every copy held), the journal stays bounded, and what a crash or an older release left on
disk is read (pure: real files, no Ray)."""

from __future__ import annotations

import json
from pathlib import Path

from castray.agent.copies import COMPACT_SLACK, INDEX, CopyIndex


def _copies(root: Path, count: int) -> list[Path]:
    paths = []
    for i in range(count):
        path = root / f"shard-{i:04d}.bin"
        path.write_bytes(i.to_bytes(4, "big"))
        paths.append(path)
    return paths


def test_a_commit_appends_to_the_journal_instead_of_rewriting_it(tmp_path: Path) -> None:
    index = CopyIndex(tmp_path)
    paths = _copies(tmp_path, 20)
    index.record(paths[0], "00")
    journal = tmp_path / INDEX
    inode, size = journal.stat().st_ino, journal.stat().st_size
    for path in paths[1:]:
        index.record(path, "aa")
    # Rewritten, it would be a new file (written aside, then renamed over the old one).
    assert journal.stat().st_ino == inode
    assert journal.stat().st_size > size
    assert len(journal.read_text().splitlines()) == 20


def test_the_journal_stays_bounded_and_a_restart_reads_what_it_says(tmp_path: Path) -> None:
    index = CopyIndex(tmp_path)
    paths = _copies(tmp_path, 10)
    for round_ in range(30):  # the same ten copies sent again and again
        for path in paths:
            index.record(path, f"{round_:02x}")
    assert index.forget([paths[0].name, paths[1].name]) == 2
    lines = (tmp_path / INDEX).read_text().splitlines()
    assert len(lines) <= 2 * 8 + COMPACT_SLACK
    again = CopyIndex(tmp_path)
    assert again.current(paths[0].name) is None and again.current(paths[1].name) is None
    kept = again.current(paths[9].name)
    assert kept is not None and kept.blake3 == f"{29:02x}"


def test_a_line_a_crash_cut_short_costs_that_line_only(tmp_path: Path) -> None:
    index = CopyIndex(tmp_path)
    first, second, third = _copies(tmp_path, 3)
    index.record(first, "01")
    index.record(second, "02")
    journal = tmp_path / INDEX
    journal.write_text(journal.read_text()[:-7])  # the second line lost its end
    reopened = CopyIndex(tmp_path)
    assert reopened.current(first.name) is not None
    assert reopened.current(second.name) is None
    reopened.record(third, "03")  # starts a line of its own, not glued to the torn one
    assert CopyIndex(tmp_path).current(third.name) is not None


def test_an_index_written_before_the_journal_is_read_and_converted(tmp_path: Path) -> None:
    (path,) = _copies(tmp_path, 1)
    stat = path.stat()
    entry = {
        "name": path.name,
        "blake3": "f00d",
        "size": stat.st_size,
        "mtime_ns": stat.st_mtime_ns,
    }
    (tmp_path / INDEX).write_text(json.dumps([entry]))
    index = CopyIndex(tmp_path)
    found = index.current(path.name)
    assert found is not None and found.blake3 == "f00d"
    assert [json.loads(line) for line in (tmp_path / INDEX).read_text().splitlines()] == [entry]
