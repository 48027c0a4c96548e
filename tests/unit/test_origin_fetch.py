"""Fetching from real origin servers on loopback ports (an HTTP server with Range support and
moto's S3 server), without Ray: every byte range read once, a cut read taken up from where it
stopped, the origin's checksum checked, and each failure told in words."""

from __future__ import annotations

import os
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import blake3
import pytest

from castray.agent.origin_copy import LiveFetch, OriginCopy
from castray.agent.space import Room
from castray.errors import Forbidden, OriginFailed, OriginMissing, SourceChanged
from castray.sources import fetch as fetching
from castray.sources.origins import ObjectInfo
from tests.harness.origins import RangeServer, S3Server, aws_env
from tests.harness.waiting import wait_for

CHUNK = 256 * 1024
SIZE = 5 * 1024 * 1024 + 12345
BUCKET = "castray-origin-test"


@pytest.fixture
def storage() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="castray-fetch-"))
    yield path
    for child in path.iterdir():
        child.unlink()
    path.rmdir()


@pytest.fixture
def http(storage: Path) -> Iterator[RangeServer]:
    root = storage.parent / f"{storage.name}-origin"
    root.mkdir()
    (root / "model.bin").write_bytes(os.urandom(SIZE))
    with RangeServer(root) as server:
        yield server
    for child in root.iterdir():
        child.unlink()
    root.rmdir()


@pytest.fixture(autouse=True)
def small_parts(monkeypatch: pytest.MonkeyPatch) -> None:
    """Parts of 1 MiB and quick retries: several parts in flight for a few MiB."""
    monkeypatch.setattr(fetching, "PART", 1024 * 1024)
    monkeypatch.setattr(fetching, "FIRST_BACKOFF", 0.01)


def _fetch(
    storage: Path,
    url: str,
    name: str = "copy.bin",
    allowed: tuple[str, ...] = ("127.0.0.1",),
    chunk: int = CHUNK,
) -> OriginCopy:
    """Fetch as an endpoint does: the origin asked first, then the bytes on a thread."""
    fetch = LiveFetch(
        storage, Room(storage), "f1", url, name, chunk, list(allowed), "test", time.monotonic
    )
    fetch.open()
    fetch.start()
    return fetch.result(timeout=60)


def _expect_copy(storage: Path, source: bytes, copy: object, chunk: int = CHUNK) -> None:
    data = (storage / "copy.bin").read_bytes()
    assert data == source
    chunks = [blake3.blake3(source[i : i + chunk]).digest() for i in range(0, len(source), chunk)]
    assert copy.chunks == chunks  # type: ignore[attr-defined]
    assert copy.whole == blake3.blake3(source).hexdigest()  # type: ignore[attr-defined]
    assert [p.name for p in storage.iterdir()] == ["copy.bin"]  # no partial file left


def test_an_http_object_is_read_once_in_parallel_ranges(http: RangeServer, storage: Path) -> None:
    copy = _fetch(storage, http.url("model.bin"))
    _expect_copy(storage, (http.root / "model.bin").read_bytes(), copy)
    ranges = fetching.plan_ranges(SIZE, 1024 * 1024, fetching.PARALLEL)
    assert [r for r in ranges if r[1] - r[0] < 1024 * 1024][:3] == ranges[:3]  # staggered
    assert len(http.log.ranges) == 1 + len(ranges) and http.log.overlaps(probe=True) == []
    assert http.log.bytes_served() == SIZE + 1  # the first byte once more: the size probe


def test_a_cut_read_resumes_where_it_stopped(http: RangeServer, storage: Path) -> None:
    http.faults.cut_after = 300_000
    copy = _fetch(storage, http.url("model.bin"))
    _expect_copy(storage, (http.root / "model.bin").read_bytes(), copy)
    assert copy.resumed_reads >= 1  # type: ignore[attr-defined]
    assert http.log.overlaps(probe=True) == [] and http.log.bytes_served() == SIZE + 1


def test_an_object_that_changes_during_the_fetch_fails_it(http: RangeServer, storage: Path) -> None:
    http.faults.change_after = 3
    with pytest.raises(SourceChanged, match="changed on the origin during the fetch"):
        _fetch(storage, http.url("model.bin"))
    assert list(storage.iterdir()) == []


def test_origin_errors_are_told_in_words_and_leave_nothing(
    http: RangeServer, storage: Path
) -> None:
    with pytest.raises(OriginMissing, match="no such object"):
        _fetch(storage, http.url("absent.bin"))
    http.faults.require_query = "X-Amz-Signature=right"
    with pytest.raises(OriginFailed, match="refused access") as refused:
        _fetch(storage, http.url("model.bin", "X-Amz-Signature=wrong"))
    assert "wrong" not in refused.value.message
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    with pytest.raises(OriginFailed, match="cannot reach"):
        _fetch(storage, f"http://127.0.0.1:{port}/model.bin")
    assert list(storage.iterdir()) == []


def test_s3_objects_are_checked_against_the_checksum_s3_keeps(storage: Path) -> None:
    data = os.urandom(SIZE)
    with S3Server() as s3, aws_env(s3.env()):
        client = s3.client()
        client.create_bucket(Bucket=BUCKET)
        client.put_object(Bucket=BUCKET, Key="with-sha.bin", Body=data, ChecksumAlgorithm="SHA256")
        client.put_object(Bucket=BUCKET, Key="plain.bin", Body=data)
        copy = _fetch(storage, f"s3://{BUCKET}/with-sha.bin")
        _expect_copy(storage, data, copy)
        assert copy.checked == "sha256 (x-amz-checksum-sha256)"  # type: ignore[attr-defined]
        assert s3.log.overlaps() == [] and s3.log.bytes_served() == SIZE
        (storage / "copy.bin").unlink()
        copy = _fetch(storage, f"s3://{BUCKET}/plain.bin")
        assert copy.checked == "md5 (ETag)"  # type: ignore[attr-defined]
        (storage / "copy.bin").unlink()
        with pytest.raises(OriginMissing, match="no such object"):
            _fetch(storage, f"s3://{BUCKET}/absent.bin")
        with pytest.raises(OriginMissing, match="no such object"):
            _fetch(storage, "s3://no-such-bucket-here/x.bin")
    assert list(storage.iterdir()) == []


def test_a_digest_that_does_not_match_fails_the_fetch(http: RangeServer, storage: Path) -> None:
    copy = _fetch(storage, http.url("model.bin"))
    assert copy.checked == "sha256 (repr-digest)"  # type: ignore[attr-defined]
    (storage / "copy.bin").unlink()
    http.faults.wrong_digest = True
    with pytest.raises(OriginFailed, match="arrived damaged"):
        _fetch(storage, http.url("model.bin"))
    assert list(storage.iterdir()) == []


def test_a_redirect_is_followed_only_to_an_allowed_host(http: RangeServer, storage: Path) -> None:
    http.faults.redirects["/moved.bin"] = "/model.bin"
    http.faults.redirects["/to-metadata.bin"] = "http://169.254.169.254/latest/meta-data/"
    copy = _fetch(storage, http.url("moved.bin"))
    _expect_copy(storage, (http.root / "model.bin").read_bytes(), copy)
    (storage / "copy.bin").unlink()
    with pytest.raises(Forbidden, match=r"169\.254\.169\.254"):
        _fetch(storage, http.url("to-metadata.bin"))
    assert list(storage.iterdir()) == []


def test_an_origin_on_an_ipv6_address_is_fetched_once_listed(storage: Path) -> None:
    """An IPv6 literal in the URL: refused as loopback unless listed, then read once."""
    root = storage.parent / f"{storage.name}-origin6"
    root.mkdir()
    (root / "model.bin").write_bytes(os.urandom(SIZE))
    try:
        with RangeServer(root, host="::1") as server:
            url = server.url("model.bin")
            assert url.startswith("http://[::1]:")
            with pytest.raises(Forbidden, match="plain http"):
                _fetch(storage, url)
            copy = _fetch(storage, url, allowed=("::1",))
            _expect_copy(storage, (root / "model.bin").read_bytes(), copy)
            assert server.log.overlaps(probe=True) == [] and server.log.bytes_served() == SIZE + 1
    finally:
        for child in root.iterdir():
            child.unlink()
        root.rmdir()


def test_chunks_that_straddle_the_ranges_read_are_hashed_whole(
    http: RangeServer, storage: Path
) -> None:
    """Chunks of 384 KiB over ranges of 256, 512, 768 KiB and 1 MiB: each chunk's BLAKE3 is
    made of its bytes, whichever ranges brought them."""
    chunk = 384 * 1024
    copy = _fetch(storage, http.url("model.bin"), chunk=chunk)
    _expect_copy(storage, (http.root / "model.bin").read_bytes(), copy, chunk)


def test_an_empty_object_is_fetched_as_an_empty_copy(http: RangeServer, storage: Path) -> None:
    (http.root / "empty.bin").write_bytes(b"")
    try:
        copy = _fetch(storage, http.url("empty.bin"))
    finally:
        (http.root / "empty.bin").unlink()
    _expect_copy(storage, b"", copy)


class _HeldOrigin:
    """An in-memory origin (the fetch's ``Origin`` interface) whose first range waits for
    ``release``; it counts what each read handed over, and which reads wait in ``out``."""

    def __init__(self, data: bytes, piece: int) -> None:
        self.data, self.piece = data, piece
        self.release = threading.Event()
        self.handed = 0
        self.waiting_in_out: set[int] = set()
        self._lock = threading.Lock()

    def info(self) -> ObjectInfo:
        return ObjectInfo(len(self.data), None, None, True)

    def read(self, start: int, end: int, out: Callable[[bytes], None]) -> None:
        if start == 0:
            assert self.release.wait(30), "the test never released the first range"
        for at in range(start, end, self.piece):
            piece = self.data[at : min(at + self.piece, end)]
            with self._lock:
                self.handed += len(piece)
                self.waiting_in_out.add(start)
            out(piece)
            with self._lock:
                self.waiting_in_out.discard(start)

    def close(self) -> None:
        self.release.set()


def test_younger_ranges_wait_while_the_oldest_lags(
    storage: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Reads ahead of a lagging oldest range stop at ``AHEAD`` bytes (the link is left to
    it), and the fetch goes on whole once it comes."""
    monkeypatch.setattr(fetching, "AHEAD", 512 * 1024)
    data = os.urandom(SIZE)
    origin = _HeldOrigin(data, 64 * 1024)
    path = storage / "held.bin"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    fetched: list[fetching.Fetched] = []
    runner = threading.Thread(
        target=lambda: fetched.append(fetching.fetch(origin, origin.info(), fd, CHUNK, parallel=2))
    )
    runner.start()
    try:
        # Two reads at once: [0, 512 KiB) held, [512 KiB, 1.5 MiB) stopped half-way.
        younger = 512 * 1024
        wait_for(lambda: younger in origin.waiting_in_out, 30, "the younger read to wait")
        assert younger <= origin.handed <= younger + 64 * 1024
    finally:
        origin.release.set()
        runner.join(60)
        os.close(fd)
    assert fetched and fetched[0].whole == blake3.blake3(data).hexdigest()
    assert path.read_bytes() == data
