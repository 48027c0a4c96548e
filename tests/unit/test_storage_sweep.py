"""An endpoint's storage sweep on real files: by age, then by quota oldest first, sparing
partial files, journals and the files being sent."""

from __future__ import annotations

import os
from pathlib import Path

from castray.agent.storage import sweep

NOW = 1_800_000_000.0
HOUR = 3600.0


def _copy(root: Path, name: str, size: int, age: float) -> Path:
    path = root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x" * size)
    os.utime(path, (NOW - age, NOW - age))
    return path


def test_retention_then_quota_remove_the_oldest_and_spare_what_is_in_use(tmp_path: Path) -> None:
    ancient = _copy(tmp_path, "ancient.bin", 100, 3 * HOUR)
    older = _copy(tmp_path, "older.bin", 100, 0.5 * HOUR)
    busy = _copy(tmp_path, "busy.bin", 100, 0.75 * HOUR)  # the oldest left, but being sent
    newest = _copy(tmp_path, "tree/deep/newest.bin", 100, 60)
    partial = _copy(tmp_path, ".big.bin.0123.part", 5000, 5 * HOUR)
    journal = _copy(tmp_path, ".big.bin.0123.resume", 10, 5 * HOUR)

    kept = sweep(tmp_path, retention=HOUR, quota=250, in_use={busy}, now=NOW)

    assert [(r.name, r.size) for r in kept.removed] == [("ancient.bin", 100), ("older.bin", 100)]
    assert "received_retention" in kept.removed[0].reason
    assert "storage_quota_bytes" in kept.removed[1].reason
    assert not ancient.exists() and not older.exists()
    assert busy.exists() and newest.exists() and partial.exists() and journal.exists()
    assert (kept.files, kept.bytes) == (2, 200)
    assert kept.oldest == NOW - 0.75 * HOUR


def test_counting_removes_nothing_and_emptied_folders_go(tmp_path: Path) -> None:
    _copy(tmp_path, "a/b/old.bin", 10, 2 * HOUR)
    counted = sweep(tmp_path, retention=HOUR, quota=0, in_use=set(), remove=False, now=NOW)
    assert (counted.files, counted.bytes, counted.removed) == (1, 10, [])

    swept = sweep(tmp_path, retention=HOUR, quota=0, in_use=set(), now=NOW)
    assert [r.name for r in swept.removed] == ["a/b/old.bin"]
    assert list(tmp_path.iterdir()) == []


def test_no_limits_remove_nothing(tmp_path: Path) -> None:
    _copy(tmp_path, "old.bin", 10, 1000 * HOUR)
    assert sweep(tmp_path, retention=0, quota=0, in_use=set(), now=NOW).removed == []


def test_pinned_copies_and_pinned_folders_are_never_swept(tmp_path: Path) -> None:
    pinned = _copy(tmp_path, "model.bin", 100, 5 * HOUR)
    in_folder = _copy(tmp_path, "dataset/part-0.bin", 100, 5 * HOUR)
    loose = _copy(tmp_path, "old.bin", 100, 5 * HOUR)

    kept = sweep(
        tmp_path,
        retention=HOUR,
        quota=0,
        in_use=set(),
        now=NOW,
        pinned={tmp_path / "model.bin", tmp_path / "dataset"},
    )

    assert [r.name for r in kept.removed] == ["old.bin"]
    assert pinned.exists() and in_folder.exists() and not loose.exists()
