"""Transfers whose source is a URL, against a real server over embedded Ray with two demo
nodes, and real origins on loopback ports (an HTTP server with Range support, moto's S3
server): the object is read from its origin once, every node gets a verified copy, failures
say why and leave nothing, and a presigned URL's query is never shown."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import blake3
import pytest

from tests.harness import transfers as tx
from tests.harness.origins import RangeServer, S3Server
from tests.harness.server import CastRayServer, serving
from tests.harness.waiting import wait_for

pytestmark = [pytest.mark.ray, pytest.mark.slow]

SIZE = 24 * 1024 * 1024 + 777
BUCKET = "castray-origins"
SIGNATURE = "X-Amz-Signature=0123456789abcdefSECRET"
CHUNK = 8 * 1024 * 1024


@pytest.fixture(scope="module")
def origin_root() -> Iterator[Path]:
    root = Path(tempfile.mkdtemp(prefix="castray-origin-"))
    (root / "weights.bin").write_bytes(os.urandom(SIZE))
    yield root
    for child in root.iterdir():
        child.unlink()
    root.rmdir()


@pytest.fixture(scope="module")
def http(origin_root: Path) -> Iterator[RangeServer]:
    with RangeServer(origin_root) as server:
        yield server


@pytest.fixture(scope="module")
def s3(origin_root: Path) -> Iterator[S3Server]:
    with S3Server() as server:
        client = server.client()
        client.create_bucket(Bucket=BUCKET)
        client.upload_file(str(origin_root / "weights.bin"), BUCKET, "models/weights.bin")
        yield server


@pytest.fixture(scope="module")
def server(s3: S3Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[CastRayServer]:
    """The S3 server's endpoint and credentials reach the nodes through the standard chain
    (the embedded Ray's workers inherit the server's environment)."""
    root = tmp_path_factory.mktemp("origins")
    env = {
        "HOME": str(root),
        **s3.env(),
        "CASTRAY_ORIGIN_ALLOWED_HOSTS": json.dumps(["127.0.0.1"]),
        "CASTRAY_ENABLE_FAULT_INJECTION": "1",
    }
    with serving(root / "data", "--demo-nodes", "2", alive=3, env=env) as started:
        yield started


def _copies(server: CastRayServer, name: str) -> dict[str, str]:
    """Each node's copy of ``name``, by its BLAKE3."""
    found = {}
    for node, info in server.nodes().items():
        path = Path(info["storage_dir"]) / name
        if path.exists():
            found[node] = blake3.blake3(path.read_bytes()).hexdigest()
    return found


def _no_partials(server: CastRayServer) -> None:
    for info in server.nodes().values():
        assert tx.leftovers(Path(info["storage_dir"])) == []


def test_an_http_object_reaches_every_node_read_once_with_its_query_hidden(
    server: CastRayServer, http: RangeServer, origin_root: Path
) -> None:
    http.log.ranges.clear()
    http.faults.require_query = SIGNATURE
    url = http.url("weights.bin", SIGNATURE)
    done = tx.send(server, source_url=url, file="from-http.bin", mode="broadcast")
    http.faults.require_query = None
    assert done["status"] == "completed", done
    expected = blake3.blake3((origin_root / "weights.bin").read_bytes()).hexdigest()
    assert done["file"]["blake3"] == expected and done["file"]["size"] == SIZE
    assert done["origin"] == f"http://127.0.0.1:{http.port}/weights.bin?<hidden>"
    copies = _copies(server, "from-http.bin")
    assert len(copies) == 3 and set(copies.values()) == {expected}, copies
    assert http.log.overlaps(probe=True) == [] and http.log.bytes_served() == SIZE + 1
    with server.client() as client:
        history = client.get("/api/transfers").text
    assert "SECRET" not in history and "SECRET" not in server.log.read_text()
    _no_partials(server)


def test_cli_sends_an_s3_object_to_all_nodes_read_once(
    server: CastRayServer, s3: S3Server, origin_root: Path
) -> None:
    s3.log.ranges.clear()
    run = server.cli("send", f"s3://{BUCKET}/models/weights.bin", "--all", "--json")
    assert run.returncode == 0, run.stdout + run.stderr
    done = json.loads(run.stdout)
    assert done["status"] == "completed" and done["origin"] == f"s3://{BUCKET}/models/weights.bin"
    expected = blake3.blake3((origin_root / "weights.bin").read_bytes()).hexdigest()
    copies = _copies(server, "weights.bin")
    assert len(copies) == 3 and set(copies.values()) == {expected}, copies
    assert s3.log.overlaps() == [] and s3.log.bytes_served() == SIZE
    _no_partials(server)


def test_origin_failures_are_clear_and_leave_nothing(
    server: CastRayServer, http: RangeServer
) -> None:
    cases = [
        ({"source_url": f"s3://{BUCKET}/absent.bin"}, 404, "no such object"),
        ({"source_url": http.url("absent.bin")}, 404, "no such object"),
        ({"source_url": "file:///etc/passwd"}, 422, "is not allowed"),
        ({"source_url": "https://169.254.169.254/latest/"}, 403, "metadata"),
        ({"source_url": "http://10.255.255.1/x.bin"}, 403, "plain http"),
        ({"source_url": "http://localhost:1/x.bin"}, 502, "cannot reach the origin"),
        (
            {"source_url": f"s3://{BUCKET}/models/weights.bin", "group": "nobody"},
            404,
            "no group 'nobody'",
        ),
    ]
    for body, status, words in cases:
        mode = "multicast" if "group" in body else "broadcast"
        answer = tx.post(server, "/api/transfers", {"mode": mode, **body})
        assert answer.status_code == status, (body, answer.text)
        assert words in answer.json()["detail"], answer.text
        assert "Traceback" not in answer.text
    http.faults.require_query = "X-Amz-Signature=right"
    answer = tx.post(
        server, "/api/transfers", {"source_url": http.url("weights.bin"), "mode": "broadcast"}
    )
    http.faults.require_query = None
    assert answer.status_code == 502 and "refused access" in answer.json()["detail"]
    _no_partials(server)


def test_a_url_transfer_resumes_from_the_fetched_copy_not_the_origin(
    server: CastRayServer, s3: S3Server, origin_root: Path
) -> None:
    with server.client() as client:
        broken = client.post("/api/nodes/node_2/faults", json={"fail_syncs": 1})
    assert broken.status_code == 204, broken.text
    s3.log.ranges.clear()
    first = tx.send(
        server,
        source_url=f"s3://{BUCKET}/models/weights.bin",
        file="resumed.bin",
        source_node="node_1",
        mode="multicast",
        recipients=["node_2", "home-127.0.0.1"],
    )
    assert first["status"] == "partially_failed", first
    assert first["recipients"]["node_2"]["status"] == "failed"
    read = s3.log.bytes_served()
    assert read == SIZE
    with server.client() as client:
        resumed = client.post(f"/api/transfers/{first['id']}/resume")
    assert resumed.status_code == 202, resumed.text
    done = tx.wait_finished(server, first["id"])
    assert done["status"] == "completed", done
    assert done["origin"] == f"s3://{BUCKET}/models/weights.bin"
    expected = blake3.blake3((origin_root / "weights.bin").read_bytes()).hexdigest()
    copies = _copies(server, "resumed.bin")
    assert len(copies) == 3 and set(copies.values()) == {expected}, copies
    assert s3.log.bytes_served() == read  # the origin was not read again
    _no_partials(server)


def test_a_broadcast_is_fed_while_the_object_arrives(
    server: CastRayServer, http: RangeServer, origin_root: Path
) -> None:
    """Cut-through: the POST answers once the fetch has begun; while the origin holds back the
    object's second half, every recipient already has chunks of the first half verified, and
    none commits a copy before the fetch is whole and checked."""
    http.log.ranges.clear()
    half = 16 * 1024 * 1024  # ranges from here on wait: the fetch has 20 MiB, two whole chunks
    http.faults.release.clear()
    http.faults.hold_from = half
    try:
        transfer_id = tx.start(
            server, source_url=http.url("weights.bin"), file="fed.bin", mode="broadcast"
        )

        seen: list[Any] = []

        def fed_everywhere() -> dict[str, Any] | None:
            now = tx.get(server, transfer_id)
            seen[:] = [{k: r["bytes_done"] for k, r in now["recipients"].items()}]
            return now if min(seen[0].values()) >= CHUNK else None

        try:
            fed = wait_for(fed_everywhere, 60, "a chunk verified at every recipient")
        except AssertionError as exc:
            raise AssertionError(f"{exc}: verified {seen}, served {http.log.ranges}") from None
        assert fed["status"] == "running", fed
        assert max(r["bytes_done"] for r in fed["recipients"].values()) <= half
        assert len(fed["recipients"]) == 2 and fed["bytes_total"] == SIZE
        assert _copies(server, "fed.bin") == {}  # nothing committed before the fetch is whole
    finally:
        http.faults.release.set()
        http.faults.hold_from = None
    done = tx.wait_finished(server, transfer_id)
    assert done["status"] == "completed", done
    expected = blake3.blake3((origin_root / "weights.bin").read_bytes()).hexdigest()
    assert done["file"]["blake3"] == expected
    copies = _copies(server, "fed.bin")
    assert len(copies) == 3 and set(copies.values()) == {expected}, copies  # the fetcher too
    assert http.log.overlaps(probe=True) == [] and http.log.bytes_served() == SIZE + 1
    _no_partials(server)


def test_an_object_changed_while_fed_fails_the_transfer_and_leaves_nothing(
    server: CastRayServer, http: RangeServer, origin_root: Path
) -> None:
    # Six ranges: those asked for once the first ones came find the object changed.
    (origin_root / "changing.bin").write_bytes(os.urandom(2 * SIZE))
    http.faults.change_after = http.answers + 2  # the size probe and one range
    transfer_id = tx.start(
        server,
        source_url=http.url("changing.bin"),
        file="changing.bin",
        mode="broadcast",
        keep_in_library=True,
    )
    done = tx.wait_finished(server, transfer_id)
    http.faults.change_after = None
    assert done["status"] == "failed", done
    errors = {r["error"] for r in done["recipients"].values()}
    assert all("changed on the origin during the fetch" in (e or "") for e in errors), errors
    assert _copies(server, "changing.bin") == {}
    assert done["library_file"] is None
    assert done["library_note"] == "not kept: the object was not fetched whole", done
    with server.client() as client:
        assert client.get("/api/files/changing.bin").status_code == 404
    _no_partials(server)


def test_a_read_cut_while_fed_goes_on_from_where_it_stopped(
    server: CastRayServer, http: RangeServer, origin_root: Path
) -> None:
    http.log.ranges.clear()
    http.faults.cut_after = 3 * 1024 * 1024
    done = tx.send(server, source_url=http.url("weights.bin"), file="cut.bin", mode="broadcast")
    assert http.faults.cut_after is None  # the cut happened
    assert done["status"] == "completed", done
    expected = blake3.blake3((origin_root / "weights.bin").read_bytes()).hexdigest()
    assert set(_copies(server, "cut.bin").values()) == {expected}
    assert http.log.overlaps(probe=True) == [] and http.log.bytes_served() == SIZE + 1
    _no_partials(server)


def test_cancelling_while_the_origin_stalls_leaves_nothing_anywhere(
    server: CastRayServer, http: RangeServer
) -> None:
    """The origin stops sending half-way; a cancel then ends the transfer at once: the
    fetch stops without waiting on the origin, and no node keeps a partial file or a copy."""
    half = 16 * 1024 * 1024
    http.faults.release.clear()
    http.faults.hold_from = half
    try:
        transfer_id = tx.start(
            server, source_url=http.url("weights.bin"), file="stalled.bin", mode="broadcast"
        )
        tx.wait_under_way(server, transfer_id, "node_1")
        with server.client() as client:
            cancelled = client.delete(f"/api/transfers/{transfer_id}")
        assert cancelled.status_code == 200, cancelled.text
        assert tx.wait_finished(server, transfer_id, timeout=30)["status"] == "cancelled"
        storages = [Path(info["storage_dir"]) for info in server.nodes().values()]
        wait_for(
            lambda: all(tx.leftovers(s) == [] for s in storages) or None,
            30,
            "every partial file, the fetcher's too, removed while the origin still stalls",
        )
        assert not http.faults.release.is_set()  # the origin never let go meanwhile
        assert _copies(server, "stalled.bin") == {}
    finally:
        http.faults.release.set()
        http.faults.hold_from = None


def test_a_url_sent_through_the_object_store_is_fetched_whole_first(
    server: CastRayServer, s3: S3Server, origin_root: Path
) -> None:
    """Where the stream cannot be fed as the object arrives (here: the object-store transport
    asked for), the object is fetched whole first, then sent: read once all the same."""
    s3.log.ranges.clear()
    done = tx.send(
        server,
        source_url=f"s3://{BUCKET}/models/weights.bin",
        file="through-store.bin",
        mode="broadcast",
        transport="object-store",
    )
    assert done["status"] == "completed" and done["transport"] == "object-store", done
    expected = blake3.blake3((origin_root / "weights.bin").read_bytes()).hexdigest()
    copies = _copies(server, "through-store.bin")
    assert len(copies) == 3 and set(copies.values()) == {expected}, copies
    assert s3.log.overlaps() == [] and s3.log.bytes_served() == SIZE
    _no_partials(server)


def test_the_library_keeps_the_fetched_object_read_once(
    server: CastRayServer, s3: S3Server, origin_root: Path
) -> None:
    """``--keep-in-library``: every node and the library get a verified copy, from one read
    of the origin; the library's name is then taken, and a second keep says so before a
    byte is fetched."""
    s3.log.ranges.clear()
    url = f"s3://{BUCKET}/models/weights.bin"
    expected = blake3.blake3((origin_root / "weights.bin").read_bytes()).hexdigest()
    run = server.cli("send", url, "--all", "--keep-in-library", "--json")
    assert run.returncode == 0, run.stdout + run.stderr
    done = json.loads(run.stdout)
    assert done["status"] == "completed", done
    assert done["library_file"] == "weights.bin" and done["library_note"] is None, done
    assert s3.log.bytes_served() == SIZE
    with server.client() as client:
        listed = {f["name"]: f for f in client.get("/api/files").json()}
        kept = client.get("/api/files/weights.bin")
    assert listed["weights.bin"]["blake3"] == expected and listed["weights.bin"]["size"] == SIZE
    assert kept.status_code == 200 and blake3.blake3(kept.content).hexdigest() == expected
    copies = _copies(server, "weights.bin")
    assert len(copies) == 3 and set(copies.values()) == {expected}, copies

    again = tx.post(
        server,
        "/api/transfers",
        {"source_url": url, "mode": "broadcast", "keep_in_library": True},
    )
    assert again.status_code == 409, again.text
    assert "library has a file named 'weights.bin'" in again.json()["detail"], again.text
    assert s3.log.bytes_served() == SIZE  # refused before a byte was fetched
    renamed = server.cli("send", url, "--to", "node_2", "--as", "w2.bin", "--json")
    assert renamed.returncode == 0, renamed.stdout + renamed.stderr
    assert json.loads(renamed.stdout)["file"]["name"] == "w2.bin"
    assert _copies(server, "w2.bin")["node_2"] == expected
    with server.client() as client:
        assert client.delete("/api/files/weights.bin").status_code == 204
    _no_partials(server)


def test_keep_in_library_is_refused_clearly_where_it_cannot_be(server: CastRayServer) -> None:
    """A file that is not fetched cannot be kept; the CLI says so before anything moves."""
    answer = tx.post(
        server,
        "/api/transfers",
        {"source_node": "node_1", "file": "x.bin", "mode": "broadcast", "keep_in_library": True},
    )
    assert answer.status_code == 422, answer.text
    assert "keep_in_library keeps what a source_url fetched" in answer.text
    local = server.cli("send", "x.bin", "--from", "node_1", "--all", "--keep-in-library")
    assert local.returncode != 0 and "--keep-in-library keeps what a URL fetched" in (
        local.stdout + local.stderr
    )
