"""The CLI client against a live server: what it prints, what it does, its exit codes."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import transfers as tx
from tests.harness.server import CastRayServer, serving

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def faulty_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CastRayServer]:
    """Two demo nodes whose faults the tests can inject (a node damaging what it receives)."""
    root = tmp_path_factory.mktemp("cli-faults")
    env = {"HOME": str(root), "CASTRAY_ENABLE_FAULT_INJECTION": "1"}
    with serving(root / "data", "--demo-nodes", "2", alive=3, env=env) as server:
        yield server


def test_send_uploads_a_local_file_and_follows_it_to_every_copy(
    embedded_server: CastRayServer, tmp_path: Path
) -> None:
    local = tmp_path / "report.pdf"
    local.write_bytes(tx.random_bytes(6_000_000))

    result = embedded_server.cli("send", str(local), "--from", "node_1", "--to", "node_2")

    assert result.returncode == 0, result.stderr
    assert "uploading" in result.stderr
    assert "node_2" in result.stderr  # the progress bar's label
    assert "completed: report.pdf (6000000 bytes) from node_1 by stream" in result.stdout
    # each recipient's own end and rate, not only the transfer's (the slowest one's)
    assert "ended after" in result.stdout and "MB/s" in result.stdout
    row = next(line for line in result.stdout.splitlines() if "node_2" in line and "│" in line)
    assert re.search(r"│ +\d+\.\d s +│ +\d+\.\d +│", row), row
    copy = embedded_server.data_dir / "storage" / "node_2" / "report.pdf"
    assert copy.read_bytes() == local.read_bytes()


def test_send_does_not_upload_what_the_library_has_already(
    embedded_server: CastRayServer, tmp_path: Path
) -> None:
    local = tmp_path / "same.bin"
    local.write_bytes(tx.random_bytes(100_000))
    first = embedded_server.cli("send", str(local), "--from", "node_1", "--to", "node_2")
    again = embedded_server.cli("send", str(local), "--from", "node_2", "--all", "--json")

    assert first.returncode == 0, first.stderr
    assert again.returncode == 0, again.stderr
    assert "uploading" not in again.stderr
    transfer = json.loads(again.stdout)
    assert transfer["status"] == "completed"
    assert transfer["mode"] == "broadcast"
    assert set(transfer["recipients"]) == {"home-127.0.0.1", "node_1"}


def test_send_takes_the_transport_asked_for(embedded_server: CastRayServer) -> None:
    tx.upload_bytes(embedded_server, "by-ray.bin", tx.random_bytes(300_000))

    result = embedded_server.cli(
        "send", "by-ray.bin", "--from", "node_1", "--to", "node_2", "--transport", "object-store"
    )
    wrong = embedded_server.cli(
        "send", "by-ray.bin", "--from", "node_1", "--to", "node_2", "--transport", "pigeon"
    )

    assert result.returncode == 0, result.stderr
    assert "from node_1 by object-store" in result.stdout
    assert wrong.returncode == 2
    assert "pigeon" in wrong.stderr and "stream" in wrong.stderr


def test_groups_and_sending_to_a_group_as_json(embedded_server: CastRayServer) -> None:
    made = embedded_server.cli("generate", "2MB", "--type", "text", "--name", "g.txt", "--json")
    created = embedded_server.cli("groups", "create", "cli-pair", "node_1", "node_2")
    listed = embedded_server.cli("groups", "list", "--json")
    sent = embedded_server.cli("send", "g.txt", "--from", "home-127.0.0.1", "--group", "cli-pair")
    deleted = embedded_server.cli("groups", "delete", "cli-pair")

    assert made.returncode == 0, made.stderr
    assert json.loads(made.stdout)["size"] == 2 * 1024 * 1024
    assert created.returncode == 0, created.stderr
    assert {"name": "cli-pair", "members": ["node_1", "node_2"]} in json.loads(listed.stdout)
    assert sent.returncode == 0, sent.stderr
    assert "completed: g.txt" in sent.stdout
    assert deleted.returncode == 0
    assert "cli-pair" not in embedded_server.cli("groups", "list").stdout


def test_transfers_lists_and_shows_one(embedded_server: CastRayServer) -> None:
    tx.generate(embedded_server, "listed.bin", "1MB", "random")
    detached = embedded_server.cli(
        "send", "listed.bin", "--from", "node_1", "--to", "node_2", "--detach"
    )
    transfer_id = detached.stdout.strip()
    tx.wait_finished(embedded_server, transfer_id)

    listing = embedded_server.cli("transfers", "--limit", "5")
    one = embedded_server.cli("transfers", transfer_id, "--json")

    assert detached.returncode == 0, detached.stderr
    assert transfer_id in listing.stdout
    assert json.loads(one.stdout)["recipients"]["node_2"]["status"] == "completed"


def test_mistakes_exit_non_zero_with_one_readable_line(
    embedded_server: CastRayServer,
) -> None:
    no_recipients = embedded_server.cli("send", "x.bin", "--from", "node_1")
    unknown_node = embedded_server.cli("send", "x.bin", "--from", "node_1", "--to", "nobody")
    missing_file = embedded_server.cli("send", "no-such.bin", "--from", "node_1", "--to", "node_2")
    bad_size = embedded_server.cli("generate", "5 parsecs")

    for result in (no_recipients, unknown_node, missing_file, bad_size):
        assert result.returncode == 1, result
        assert result.stderr.startswith("error: ")
        assert "Traceback" not in result.stderr
    assert "--to, --group or --all" in no_recipients.stderr
    assert "nobody" in unknown_node.stderr
    assert "'castray nodes' lists" in unknown_node.stderr  # the CLI's words, not REST's
    assert "GET /api" not in unknown_node.stderr
    assert "no file 'no-such.bin' on this machine" in missing_file.stderr


def test_send_exits_1_when_a_recipient_fails(embedded_server: CastRayServer) -> None:
    tx.generate(embedded_server, "too-fat.bin", "3MB", "random")
    with tx.tiny_disk_node(embedded_server, "cli-tiny") as tiny:
        result = embedded_server.cli(
            "send", "too-fat.bin", "--from", "node_1", "--to", f"node_2,{tiny}"
        )

    assert result.returncode == 1, result
    assert "partially_failed" in result.stdout
    assert re.search(r"cli-tiny failed: .*not enough free space", result.stdout), result.stdout


def test_send_offers_resume_and_resume_runs_the_same_transfer(
    faulty_server: CastRayServer,
) -> None:
    """A transfer to a node that damages every chunk it receives fails; sending the same file
    there again names the unfinished one and ``--resume`` (and sends it whole, as a new
    transfer); ``send --resume`` runs the newest unfinished one again under its id (and fails
    again); once the node is mended, ``castray resume ID`` completes the first."""
    tx.generate(faulty_server, "mended.bin", "3MB", "random")
    faults = "/api/nodes/node_2/faults"
    assert tx.post(faulty_server, faults, {"corrupt_chunks": 1000}).status_code == 204
    try:
        first = faulty_server.cli(
            "send", "mended.bin", "--from", "node_1", "--to", "node_2", "--json"
        )
        assert first.returncode == 1, first
        earlier = json.loads(first.stdout)
        assert earlier["status"] == "failed" and earlier["resumable"], earlier

        again = faulty_server.cli("send", "mended.bin", "--from", "node_1", "--to", "node_2")
        assert f"transfer {earlier['id']} of mended.bin to node_2 did not finish" in again.stderr
        assert "--resume" in again.stderr
        whole = re.search(r"^transfer ([0-9a-f]{16})$", again.stderr, re.MULTILINE)
        assert whole is not None and whole[1] != earlier["id"], again.stderr

        # The newest unfinished transfer of the file to the node is the one resumed.
        resumed = faulty_server.cli(
            "send", "mended.bin", "--from", "node_1", "--to", "node_2", "--resume"
        )
        assert resumed.returncode == 1, resumed
        assert f"transfer {whole[1]}" in resumed.stderr
        assert "failed its check" in resumed.stdout
    finally:
        assert tx.post(faulty_server, faults, {"corrupt_chunks": 0}).status_code == 204

    by_id = faulty_server.cli("resume", earlier["id"], "--json")
    assert by_id.returncode == 0, by_id
    assert json.loads(by_id.stdout)["id"] == earlier["id"]
    assert json.loads(by_id.stdout)["status"] == "completed"
    assert json.loads(by_id.stdout)["resumes"] == 1

    done = faulty_server.cli("resume", "0123456789abcdef")
    assert done.returncode == 1 and "no transfer" in done.stderr, done


def test_a_refused_transfer_is_not_offered_for_resume(embedded_server: CastRayServer) -> None:
    """A node whose disk is too small refuses before a byte: nothing to resume, so ``send``
    again offers no ``--resume`` and just sends."""
    tx.generate(embedded_server, "roomy.bin", "3MB", "random")
    with tx.tiny_disk_node(embedded_server, "cli-resume") as tiny:
        first = embedded_server.cli("send", "roomy.bin", "--from", "node_1", "--to", tiny, "--json")
        assert first.returncode == 1, first
        earlier = json.loads(first.stdout)
        assert earlier["status"] == "failed" and not earlier["resumable"], earlier
        again = embedded_server.cli("send", "roomy.bin", "--from", "node_1", "--to", tiny)
        assert "--resume" not in again.stderr, again.stderr
        assert "not enough free space" in again.stdout


def test_an_unreachable_server_is_one_line_and_exit_1(tmp_path: Path) -> None:
    unreachable = CastRayServer(
        process=None,  # type: ignore[arg-type]
        url="http://127.0.0.1:9",
        data_dir=tmp_path,
        log=tmp_path / "log",
    )
    listing = unreachable.cli("transfers")
    # send opens the event stream first when the file is a library name
    sending = unreachable.cli("send", "library-name.bin", "--from", "a", "--to", "b")

    for result in (listing, sending):
        assert result.returncode == 1
        assert "no CastRay server at http://127.0.0.1:9" in result.stderr
        assert "start one with 'castray serve'" in result.stderr
