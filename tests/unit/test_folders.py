"""Folder bundles on real files: packed with relative paths, refused when they would climb
out, unpacked with every file in place and nothing half-written."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from castray import folders
from castray.errors import BadUpload


def _tree(root: Path) -> dict[str, bytes]:
    files = {
        "a.txt": b"alpha",
        "sub/b.bin": bytes(range(256)) * 40,
        "sub/deeper/c": b"",
    }
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    (root / "empty").mkdir()
    (root / "sub" / "link-to-a").symlink_to("../a.txt")
    return files


def test_a_tree_survives_pack_index_and_unpack(tmp_path: Path) -> None:
    files = _tree(tmp_path / "src")
    bundle = tmp_path / "bundle.tar"
    folders.pack(tmp_path / "src", bundle)

    indexed = folders.index(bundle)
    assert (indexed.files, indexed.bytes) == (3, sum(len(d) for d in files.values()))
    assert indexed.files_within(0) == 0 and indexed.files_within(bundle.stat().st_size) == 3

    target = tmp_path / "storage" / "src"
    count = folders.unpack(bundle, target, tmp_path / "storage" / ".src.t1.unpack")
    assert count == 3
    for name, data in files.items():
        assert (target / name).read_bytes() == data
    assert (target / "empty").is_dir()
    assert (target / "sub" / "link-to-a").read_bytes() == b"alpha"
    assert not (tmp_path / "storage" / ".src.t1.unpack").exists()


def _tar_with(tmp_path: Path, info: tarfile.TarInfo, data: bytes = b"") -> Path:
    bundle = tmp_path / "bad.tar"
    with tarfile.open(bundle, "w") as tar:
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data) if info.isfile() else None)
    return bundle


@pytest.mark.parametrize(
    ("name", "kind", "link", "why"),
    [
        ("../escape.txt", tarfile.REGTYPE, "", "'..'"),
        ("/etc/passwd", tarfile.REGTYPE, "", "absolute"),
        ("sneaky", tarfile.SYMTYPE, "/etc/passwd", "outside the folder"),
        ("sub/sneaky", tarfile.SYMTYPE, "../../etc", "outside the folder"),
        ("device", tarfile.CHRTYPE, "", "neither a file"),
    ],
)
def test_what_would_leave_the_tree_is_refused_everywhere(
    tmp_path: Path, name: str, kind: bytes, link: str, why: str
) -> None:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = link
    bundle = _tar_with(tmp_path, info, b"x" if kind == tarfile.REGTYPE else b"")

    with pytest.raises(BadUpload, match=why):
        folders.index(bundle)
    with pytest.raises(BadUpload, match=why):
        folders.unpack(bundle, tmp_path / "target", tmp_path / ".staging")
    assert not (tmp_path / "target").exists()
    assert not (tmp_path / "escape.txt").exists()


def test_packing_refuses_a_link_out_of_the_folder(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "out").symlink_to("/etc/hostname")
    with pytest.raises(BadUpload, match="outside the folder"):
        folders.pack(tmp_path / "src", tmp_path / "bundle.tar")
