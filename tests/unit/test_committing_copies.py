"""How a finished copy reaches the disk and its place, on real files: write-back begun while
bytes arrive, and a copy put over an older one without paying for freeing it."""

from __future__ import annotations

import os
from pathlib import Path

from castray.agent.storage import put_in_place
from castray.writeback import start_write_back
from tests.harness.waiting import wait_for


def _deleted_fds_of(name: str) -> int:
    """This process's descriptors still open on a removed file called ``name``."""
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue  # closed meanwhile (listdir's own descriptor)
        count += target.endswith(f"/{name} (deleted)")
    return count


def test_a_copy_put_over_an_older_one_replaces_it_and_the_old_one_is_freed(
    tmp_path: Path,
) -> None:
    final = tmp_path / "weights.bin"
    final.write_bytes(b"old" * 1000)
    temp = tmp_path / ".weights.bin.abc.part"
    temp.write_bytes(b"new" * 2000)
    with final.open("rb") as reader:  # someone reading the old copy keeps reading it
        put_in_place(temp, final)

        assert final.read_bytes() == b"new" * 2000
        assert not temp.exists()
        assert sorted(p.name for p in tmp_path.iterdir()) == ["weights.bin"]
        assert reader.read() == b"old" * 1000
        # The old file is held open only until the thread that frees it has closed it.
        wait_for(lambda: _deleted_fds_of("weights.bin") == 1 or None, 10, "the old copy freed")
    assert _deleted_fds_of("weights.bin") == 0


def test_a_copy_with_nothing_to_replace_is_put_in_place(tmp_path: Path) -> None:
    temp = tmp_path / ".data.bin.abc.part"
    temp.write_bytes(b"x" * 10)
    put_in_place(temp, tmp_path / "data.bin")
    assert (tmp_path / "data.bin").read_bytes() == b"x" * 10 and not temp.exists()


def test_write_back_begins_on_a_file_and_a_refusal_is_ignored(tmp_path: Path) -> None:
    path = tmp_path / "file.bin"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        os.pwrite(fd, b"y" * 65536, 0)
        start_write_back(fd, 0, 65536)
        os.fsync(fd)
    finally:
        os.close(fd)
    assert path.read_bytes() == b"y" * 65536
    read_end, write_end = os.pipe()  # the kernel refuses write-back on a pipe (ESPIPE)
    try:
        start_write_back(write_end, 0, 4096)
    finally:
        os.close(read_end)
        os.close(write_end)


def test_a_copy_put_over_a_fifo_does_not_wait_for_a_writer(tmp_path: Path) -> None:
    """Opening a FIFO for reading waits for a writer: holding the old file open must not."""
    final = tmp_path / "pipe.bin"
    os.mkfifo(final)
    temp = tmp_path / ".pipe.bin.abc.part"
    temp.write_bytes(b"z" * 10)
    put_in_place(temp, final)
    assert final.read_bytes() == b"z" * 10
