"""Finding (#22, critical): a folder bundle must never write outside its folder.

Each shape of escape is refused by the upload's check (``index``) and, on its own, by the
recipient's unpack, which trusts no earlier check; and after each, nothing outside the
recipient's folder changed. No Ray here: the server-level tests are in
``test_folder_containment_api``.
"""

from __future__ import annotations

import io
import os
import tarfile
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from castray import folders
from castray.errors import BadUpload

Member = tuple[str, bytes, str, bytes]
"""name, tar type, link target, data."""


def _bundle(path: Path, members: list[Member]) -> Path:
    with tarfile.open(path, "w", format=tarfile.GNU_FORMAT) as tar:
        for name, kind, link, data in members:
            info = tarfile.TarInfo(name)
            info.type = kind
            info.linkname = link
            info.mode = 0o755 if kind == tarfile.DIRTYPE else 0o644
            info.size = len(data) if kind == tarfile.REGTYPE else 0
            tar.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)
    return path


def _file(name: str, data: bytes = b"planted") -> Member:
    return (name, tarfile.REGTYPE, "", data)


def _link(name: str, target: str) -> Member:
    return (name, tarfile.SYMTYPE, target, b"")


def _folder(name: str) -> Member:
    return (name, tarfile.DIRTYPE, "", b"")


def _snapshot(root: Path, skip: Path) -> dict[str, tuple[int, int]]:
    """Every path under ``root`` but ``skip``'s tree, with the size and mtime of each file and
    link (a folder's own mtime moves with the staging folder made and removed in it)."""
    seen = {}
    for folder, dirs, files in os.walk(root):
        if Path(folder) == skip or skip in Path(folder).parents:
            continue
        for name in [*dirs, *files]:
            path = Path(folder) / name
            st = path.lstat()
            seen[str(path)] = (0, 0) if path.is_dir() else (st.st_size, st.st_mtime_ns)
    return seen


CHAIN_OUT = [
    _link("a", "."),
    _link("l0", "a/.."),
    *[_link(f"l{i}", f"l{i - 1}/..") for i in range(1, 8)],
    _file("l7/PLANTED"),
]

ESCAPES: dict[str, tuple[list[Member], str]] = {
    "a chain of links climbing out": (CHAIN_OUT, "lies under 'l7'"),
    "a chain of links alone": (CHAIN_OUT[:-1], "leads outside the folder"),
    "a link to a folder, then a file through it": (
        [_folder("sub"), _link("into", "sub"), _file("into/PLANTED")],
        "lies under 'into'",
    ),
    "a link out, then a file through it": (
        [_link("up", ".."), _file("up/PLANTED")],
        "lies under 'up'",
    ),
    "a link replaced by a later member of the same name": (
        [_link("x", "y"), _file("x")],
        "appears twice",
    ),
    "a file replaced by a later link": ([_file("x"), _link("x", "../../PLANTED")], "twice"),
    "a hard link to a file outside": (
        [("h", tarfile.LNKTYPE, "../../outside.txt", b"")],
        "hard link",
    ),
    "a hard link inside": ([_file("a"), ("h", tarfile.LNKTYPE, "a", b"")], "hard link"),
    "a link to an absolute path": ([_link("abs", "/etc")], "outside the folder"),
    "a folder named like an earlier link": (
        [_link("d", "sub"), _folder("d"), _file("d/PLANTED")],
        "twice",
    ),
    "a link named like an earlier folder": (
        [_folder("d"), _file("d/f"), _link("d", "..")],
        "twice",
    ),
    "a link named like a folder implied by a file": ([_file("d/f"), _link("d", "..")], "twice"),
    "a file under a file": ([_file("f"), _file("f/PLANTED")], "lies under 'f'"),
    "a loop of links": ([_link("p", "q"), _link("q", "p")], "more than 40 links"),
    "a '..' in a name": ([_file("../PLANTED")], "'..'"),
    "an absolute name": ([_file("/tmp/PLANTED")], "absolute"),
    "a newline in a name": ([_file("ok\nINFO: transfer x completed")], "printable"),
    "a device": ([("dev", tarfile.CHRTYPE, "", b"")], "neither a file"),
}


def _check_refused(
    tmp_path: Path, members: list[Member], why: str, check: Callable[[Path, Path], object]
) -> None:
    bundle = _bundle(tmp_path / "bundle.tar", members)
    (tmp_path / "outside.txt").write_text("the recipient's own file")
    storage = tmp_path / "storage" / "node"
    storage.mkdir(parents=True)
    target = storage / "album"
    before = _snapshot(tmp_path, target)
    time.sleep(0.01)  # a change would show in the mtimes
    with pytest.raises(BadUpload, match=why):
        check(bundle, target)
    after = _snapshot(tmp_path, target)
    assert after == before, "something outside the recipient's folder changed"
    assert not target.exists()
    assert not list(storage.iterdir()), "the staging folder was left behind"
    assert not Path("/PLANTED").exists() and not Path("/tmp/PLANTED").exists()


@pytest.mark.parametrize("shape", list(ESCAPES))
def test_the_upload_check_refuses_every_escape(tmp_path: Path, shape: str) -> None:
    members, why = ESCAPES[shape]
    _check_refused(tmp_path, members, why, lambda bundle, _: folders.index(bundle))


@pytest.mark.parametrize("shape", list(ESCAPES))
def test_the_recipient_refuses_every_escape_on_its_own(tmp_path: Path, shape: str) -> None:
    members, why = ESCAPES[shape]
    _check_refused(
        tmp_path,
        members,
        why,
        lambda bundle, target: folders.unpack(bundle, target, target.parent / ".album.t.unpack"),
    )


def test_a_sparse_member_is_refused_with_its_reason(tmp_path: Path) -> None:
    source = tmp_path / "src"
    source.mkdir()
    with (source / "sparse.bin").open("wb") as f:
        f.truncate(1024 * 1024)
    bundle = tmp_path / "sparse.tar"
    with tarfile.open(bundle, "w", format=tarfile.GNU_FORMAT) as tar:
        info = tar.gettarinfo(str(source / "sparse.bin"), arcname="sparse.bin")
        info.sparse = [(0, 0)]  # as GNU tar --sparse records a hole-only file
        info.type = tarfile.GNUTYPE_SPARSE
        tar.addfile(info)
    with pytest.raises(BadUpload, match="sparse"):
        folders.index(bundle)


def test_ten_thousand_links_inside_unpack_and_a_chain_of_them_is_refused(tmp_path: Path) -> None:
    many = [_file("data", b"x"), *[_link(f"links/l{i}", "../data") for i in range(10_000)]]
    bundle = _bundle(tmp_path / "many.tar", many)
    target = tmp_path / "storage" / "album"
    target.parent.mkdir()
    started = time.perf_counter()
    assert folders.unpack(bundle, target, tmp_path / "storage" / ".album.t.unpack") == 1
    assert time.perf_counter() - started < 30
    assert (target / "links" / "l9999").read_bytes() == b"x"
    assert os.readlink(target / "links" / "l0") == "../data"

    chain = [
        _file("data"),
        _link("l0", "data"),
        *[_link(f"l{i}", f"l{i - 1}") for i in range(1, 10_000)],
    ]
    with pytest.raises(BadUpload, match="more than 40 links"):
        folders.index(_bundle(tmp_path / "chain.tar", chain))


def test_links_that_stay_inside_through_other_links_are_kept(tmp_path: Path) -> None:
    members = [
        _folder("sub"),
        _file("sub/a.txt", b"alpha"),
        _link("s", "sub"),
        _link("sub/up", ".."),
        _link("via", "s/up/sub/a.txt"),
    ]
    target = tmp_path / "album"
    folders.unpack(_bundle(tmp_path / "ok.tar", members), target, tmp_path / ".album.t.unpack")
    assert (target / "via").read_bytes() == b"alpha"


def test_an_existing_copy_with_a_link_in_the_way_is_not_written_through(tmp_path: Path) -> None:
    """A copy already at the recipient holds ``sub`` as a link (planted by someone else); the
    new bundle's ``sub/file`` must not be written through it."""
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    target = tmp_path / "storage" / "album"
    target.mkdir(parents=True)
    (target / "sub").symlink_to(outside)
    bundle = _bundle(tmp_path / "b.tar", [_folder("sub"), _file("sub/file")])
    with pytest.raises(OSError, match="not a folder"):
        folders.unpack(bundle, target, tmp_path / "storage" / ".album.t.unpack")
    assert not list(outside.iterdir())


def test_packing_stores_hard_linked_files_as_copies(tmp_path: Path) -> None:
    source = tmp_path / "src"
    source.mkdir()
    (source / "a").write_bytes(b"same bytes")
    os.link(source / "a", source / "b")
    bundle = tmp_path / "b.tar"
    folders.pack(source, bundle)
    assert folders.index(bundle).files == 2
    target = tmp_path / "out"
    folders.unpack(bundle, target, tmp_path / ".out.t.unpack")
    assert (target / "b").read_bytes() == b"same bytes"
