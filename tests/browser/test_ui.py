"""The web UI in a real browser, over a real server, its embedded Ray and an external cluster."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path

import blake3
import pytest
from playwright.sync_api import Page, expect

from castray.client import Client
from tests.harness import transfers as tx
from tests.harness.origins import RangeServer
from tests.harness.raycluster import RayCluster, running_cluster
from tests.harness.server import CastRayServer, serving

pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.browser]

EXTERNAL_HEAD = "127.0.0.60"


@pytest.fixture(scope="module")
def external(tmp_path_factory: pytest.TempPathFactory, ray_tmpdir: Path) -> Iterator[RayCluster]:
    """Started as the manual starts one: Ray records it as the last 'ray start'."""
    root = tmp_path_factory.mktemp("ui-ext")
    with running_cluster(root, EXTERNAL_HEAD, ray_tmpdir=ray_tmpdir) as ray:
        yield ray


@pytest.fixture(scope="module")
def server(
    external: RayCluster, ray_tmpdir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[CastRayServer]:
    root = tmp_path_factory.mktemp("ui-server")
    (root / "home").mkdir()
    env = {
        "HOME": str(root / "home"),
        "CASTRAY_ENABLE_FAULT_INJECTION": "1",
        "RAY_TMPDIR": str(ray_tmpdir),
        "CASTRAY_ORIGIN_ALLOWED_HOSTS": '["127.0.0.1"]',  # the page's URL test's HTTP origin
    }
    with serving(root / "data", "--demo-nodes", "2", alive=3, env=env) as server:
        yield server


def _open(page: Page, server: CastRayServer) -> None:
    page.goto(server.url + "/")
    expect(page).to_have_url(re.compile(r"/ui$"))
    expect(page.locator("#live")).to_have_text("live")


def _cluster_name(external: RayCluster) -> str:
    return f"ext-{external.address.replace(':', '-')}"


def _send_library_file(
    page: Page,
    server: CastRayServer,
    name: str,
    source: str,
    recipients: list[str],
    rate: str | None = None,
) -> str:
    """Open the page, pick library file ``name`` and send it (at ``rate`` at most, typed in
    the form); the new transfer's id."""
    _open(page, server)
    page.click("#files-refresh")
    page.select_option("#send-file", name)
    if rate is not None:
        page.fill("#send-rate", rate)
    return _send(page, source, recipients)


def _send(page: Page, source: str, recipients: list[str]) -> str:
    """Fill the Send form with the selected library file; the new transfer's id."""
    page.select_option("#send-source", source)
    for recipient in recipients:
        page.check(f"#send-recipients input[value='{recipient}']")
    page.click("#send-start")
    card = page.locator(".transfer").first
    expect(card.locator("code")).to_have_text(re.compile(r"^[0-9a-f]{16}$"))
    return card.locator("code").inner_text()


def test_the_page_shows_home_and_its_nodes_live(page: Page, server: CastRayServer) -> None:
    _open(page, server)

    expect(page.locator("#home-cluster")).to_contain_text("connected")
    expect(page.locator("#home-cluster")).to_contain_text("Ray 2.")
    for node in ("home-127.0.0.1", "node_1", "node_2"):
        expect(page.locator(f"#nodes tr[data-node='{node}']")).to_contain_text("alive")

    with server.client() as client:
        assert client.post("/api/nodes", json={"node_id": "late-comer"}).status_code == 201
    expect(page.locator("#nodes tr[data-node='late-comer']")).to_contain_text("alive")
    with server.client() as client:
        client.delete("/api/nodes/late-comer")
    expect(page.locator("#nodes tr[data-node='late-comer']")).to_have_count(0)

    tx.upload_bytes(server, "from-elsewhere.txt", b"uploaded by another client")
    expect(page.locator("#send-file option[value='from-elsewhere.txt']")).to_have_count(1)
    with server.client() as client:
        client.delete("/api/files/from-elsewhere.txt")
    expect(page.locator("#send-file option[value='from-elsewhere.txt']")).to_have_count(0)


def test_discover_send_to_an_external_node_then_disconnect(
    page: Page,
    server: CastRayServer,
    external: RayCluster,
    screenshot: Callable[[Page, str], None],
) -> None:
    _open(page, server)
    name = _cluster_name(external)
    external_node = f"{name}-{EXTERNAL_HEAD}"

    # Discover connects the cluster Ray recorded for the last 'ray start', whatever else runs.
    page.click("#discover")
    expect(page.locator("#discover")).to_be_enabled()
    row = page.locator(f"#nodes tr[data-node='{external_node}']")
    expect(row).to_contain_text("alive")
    expect(row).to_contain_text(name)
    expect(row).to_contain_text(EXTERNAL_HEAD)
    expect(page.locator(f"#clusters tr[data-cluster='{name}'] button.disconnect")).to_be_visible()

    page.fill("#generate-size", "24MB")
    page.fill("#generate-name", "for-external.bin")
    page.click("#generate-start")
    expect(page.locator("#send-file")).to_have_value("for-external.bin")
    transfer_id = _send(page, "node_1", [external_node])

    card = page.locator(f".transfer[data-transfer='{transfer_id}']")
    bar = card.locator(f".recipient[data-recipient='{external_node}'] [role=progressbar]")
    expect(bar).to_have_attribute("aria-valuenow", "100", timeout=120_000)
    expect(card).to_have_attribute("data-status", "completed")
    expect(card.locator(f".recipient[data-recipient='{external_node}']")).to_contain_text(
        "completed"
    )
    expect(page.locator(f"#history tr[data-transfer='{transfer_id}']")).to_contain_text("completed")
    screenshot(page, "sent-to-an-external-node")
    done = tx.get(server, transfer_id)
    assert done["recipients"][external_node]["status"] == "completed"
    copy = Path(done["recipients"][external_node]["path"])
    original = server.data_dir / "library" / "for-external.bin"
    assert copy.read_bytes() == original.read_bytes()

    page.click(f"#clusters tr[data-cluster='{name}'] button.disconnect")
    expect(row).to_have_count(0)
    discovered = page.locator(f"#clusters tr[data-discovered='{external.address}']")
    expect(discovered.locator("button.connect")).to_be_visible()

    discovered.locator("button.connect").click()
    expect(page.locator(f"#nodes tr[data-node='{external_node}']")).to_contain_text("alive")


def test_upload_with_progress_then_multicast_to_a_group(
    page: Page, server: CastRayServer, tmp_path: Path
) -> None:
    local = tmp_path / "holiday-photos.tar"
    local.write_bytes(tx.random_bytes(12_000_000))
    _open(page, server)

    page.set_input_files("#upload-input", str(local))
    page.click("#upload-start")
    expect(page.locator("#upload-status")).to_contain_text("holiday-photos.tar stored")
    expect(page.locator("#send-file")).to_have_value("holiday-photos.tar")

    page.select_option("#send-source", "node_1")
    page.check("#send-recipients input[value='node_2']")
    page.check("#send-recipients input[value='home-127.0.0.1']")
    page.locator("#groups-box summary").click()
    page.fill("#group-name", "pair")
    page.click("#group-form button[type=submit]")
    expect(page.locator("#groups")).to_contain_text("pair: home-127.0.0.1, node_2")
    for recipient in ("node_2", "home-127.0.0.1"):
        page.uncheck(f"#send-recipients input[value='{recipient}']")
    page.select_option("#send-group", "pair")
    page.check("input[name=mode][value=multicast]")
    page.select_option("#send-transport", "object-store")
    page.click("#send-start")

    card = page.locator(".transfer").first
    expect(card).to_have_attribute("data-status", "completed", timeout=120_000)
    expect(card.locator(".transfer-head")).to_contain_text("multicast from node_1 by object-store")
    for recipient in ("node_2", "home-127.0.0.1"):
        bar = card.locator(f".recipient[data-recipient='{recipient}'] [role=progressbar]")
        expect(bar).to_have_attribute("aria-valuenow", "100")
        copy = server.data_dir / "storage" / recipient / "holiday-photos.tar"
        assert copy.read_bytes() == local.read_bytes()


def test_a_transfer_can_be_cancelled_from_its_card(page: Page, server: CastRayServer) -> None:
    tx.generate(server, "too-big.bin", "3GB", "pattern")
    transfer_id = _send_library_file(page, server, "too-big.bin", "node_1", ["node_2"])

    card = page.locator(f".transfer[data-transfer='{transfer_id}']")
    card.locator("button.cancel").click()

    expect(card).to_have_attribute("data-status", "cancelled", timeout=60_000)
    expect(card.locator("button.cancel")).to_have_count(0)
    assert not (server.data_dir / "storage" / "node_2" / "too-big.bin").exists()
    with server.client() as client:
        client.delete("/api/files/too-big.bin")


def test_a_rate_limit_typed_in_the_form_holds_and_shows_on_the_card(
    page: Page, server: CastRayServer
) -> None:
    tx.generate(server, "paced.bin", "8MiB", "random")
    transfer_id = _send_library_file(page, server, "paced.bin", "node_1", ["node_2"], "4MiB/s")

    card = page.locator(f".transfer[data-transfer='{transfer_id}']")
    expect(card.locator(".rate-limit")).to_have_text("≤ 4.0 MiB/s")
    expect(card).to_have_attribute("data-status", "completed", timeout=60_000)
    done = tx.get(server, transfer_id)
    assert done["rate_limit"] == 4 * 1024 * 1024, done
    seconds = (
        datetime.fromisoformat(done["finished_at"]) - datetime.fromisoformat(done["started_at"])
    ).total_seconds()
    assert seconds >= 2.0 * 0.8, f"8 MiB at 4 MiB/s took {seconds:.1f} s"


def test_a_folder_is_one_card_with_its_file_count(
    page: Page, server: CastRayServer, tmp_path: Path
) -> None:
    for n in range(40):
        (tmp_path / "trip" / ("day-2" if n % 2 else "day-1")).mkdir(parents=True, exist_ok=True)
        (tmp_path / "trip" / ("day-2" if n % 2 else "day-1") / f"{n}.txt").write_text(f"note {n}")
    with Client(server.url) as client:
        assert client.upload_folder(tmp_path / "trip").file == "trip/"
    transfer_id = _send_library_file(page, server, "trip/", "node_1", ["node_2"])

    card = page.locator(f".transfer[data-transfer='{transfer_id}']")
    expect(card).to_have_count(1)
    expect(card.locator(".folder-files")).to_have_text("folder of 40 files")
    expect(card).to_have_attribute("data-status", "completed", timeout=60_000)
    expect(card.locator(".recipient .percent")).to_have_text("100% · 40 files")
    landed = server.data_dir / "storage" / "node_2" / "trip"
    assert sorted(p.name for p in landed.iterdir()) == ["day-1", "day-2"]
    assert (landed / "day-2" / "39.txt").read_text() == "note 39"


def test_a_failed_transfer_is_resumed_from_its_card(page: Page, server: CastRayServer) -> None:
    """node_2 damages every chunk it receives, so the transfer fails once its retries are
    spent; mended, a click on Resume completes it under the same id."""
    tx.generate(server, "mend.bin", "12MiB", "random")
    assert tx.post(server, "/api/nodes/node_2/faults", {"corrupt_chunks": 1000}).status_code == 204
    transfer_id = _send_library_file(page, server, "mend.bin", "node_1", ["node_2"])

    card = page.locator(f"#finished .transfer[data-transfer='{transfer_id}']")
    expect(card).to_have_attribute("data-status", "failed", timeout=120_000)
    assert tx.post(server, "/api/nodes/node_2/faults", {"corrupt_chunks": 0}).status_code == 204
    card.locator("button.resume").click()

    expect(card).to_have_attribute("data-status", "completed", timeout=120_000)
    expect(card.locator("button.resume")).to_have_count(0)
    done = tx.get(server, transfer_id)
    assert done["resumes"] == 1, done
    copy = server.data_dir / "storage" / "node_2" / "mend.bin"
    assert blake3.blake3(copy.read_bytes()).hexdigest() == done["file"]["blake3"]


def test_messages_sent_from_the_page_show_as_received(page: Page, server: CastRayServer) -> None:
    _open(page, server)

    page.select_option("#message-sender", "node_1")
    page.select_option("#message-to", ["node_2"])
    page.select_option("#message-type", "json")
    page.fill("#message-content", '{"hello": "node 2"}')
    page.click("#message-form button[type=submit]")

    expect(page.locator(".notice.info")).to_contain_text("delivered to node_2")
    received = page.locator("#messages li[data-recipient='node_2']").first
    expect(received).to_contain_text("received from node_1")
    expect(received).to_contain_text('"hello": "node 2"')


def test_mistakes_become_readable_notices(page: Page, server: CastRayServer) -> None:
    _open(page, server)

    page.fill("#connect-address", "not a cluster::")
    page.click("#connect-form button[type=submit]")
    notice = page.locator(".notice.error").last
    expect(notice).to_be_visible()
    assert "Traceback" not in notice.inner_text()
    assert len(notice.inner_text()) > 20

    page.select_option("#message-sender", "node_1")
    page.select_option("#message-type", "json")
    page.fill("#message-content", "{not json")
    page.select_option("#message-to", ["node_2"])
    page.click("#message-form button[type=submit]")
    expect(page.locator(".notice.error").last).to_contain_text("not valid JSON")

    page.fill("#generate-size", "5 parsecs")
    page.click("#generate-start")
    expect(page.locator(".notice.error").last).to_contain_text("cannot read size")


def test_a_finished_transfer_moves_from_in_flight_to_recently_finished(
    page: Page, server: CastRayServer
) -> None:
    tx.generate(server, "quick.bin", "2MB", "random")
    transfer_id = _send_library_file(page, server, "quick.bin", "node_1", ["node_2"])

    finished = page.locator(f"#finished .transfer[data-transfer='{transfer_id}']")
    expect(finished).to_have_attribute("data-status", "completed", timeout=60_000)
    expect(page.locator(f"#transfers .transfer[data-transfer='{transfer_id}']")).to_have_count(0)
    expect(page.locator("#transfers")).to_contain_text("No transfers in flight.")


def test_without_live_updates_the_page_shows_what_the_rest_api_says(
    page: Page, server: CastRayServer
) -> None:
    # Every /ws connection is refused, as by a proxy that does not pass WebSockets.
    page.route_web_socket(re.compile(r"/ws"), lambda socket: socket.close())
    page.goto(server.url + "/ui")

    expect(page.locator("#live")).to_have_text("live updates unavailable")
    expect(page.locator("#home-cluster")).to_contain_text("connected")
    for node in ("home-127.0.0.1", "node_1", "node_2"):
        expect(page.locator(f"#nodes tr[data-node='{node}']")).to_contain_text("alive")
    with server.client() as client:
        assert client.post("/api/nodes", json={"node_id": "seen-by-polling"}).status_code == 201
    try:
        expect(page.locator("#nodes tr[data-node='seen-by-polling']")).to_contain_text("alive")
    finally:
        with server.client() as client:
            client.delete("/api/nodes/seen-by-polling")


def test_a_file_pinned_from_the_page_shows_every_nodes_copy_live(
    page: Page, server: CastRayServer, screenshot: Callable[[Page, str], None]
) -> None:
    made = tx.generate(server, "pinned.bin", "2MiB", "random")
    with Client(server.url) as client:
        nodes = [n.id for n in client.nodes() if n.status.value == "alive"]
    _open(page, server)
    page.select_option("#pin-file", "pinned.bin")
    page.click("#pin-start")

    card = page.locator(".pin").filter(has_text="pinned.bin")
    expect(card.locator(".coverage")).to_have_text(
        f"{len(nodes)} of {len(nodes)} nodes verified", timeout=120_000
    )
    card.locator("summary").click()
    for node in nodes:
        row = card.locator(f"tr[data-node='{node}']")
        expect(row.locator(".badge")).to_have_text("verified")
        copy = server.data_dir / "storage" / node / "pinned.bin"
        expect(row).to_contain_text(str(copy))
        assert blake3.blake3(copy.read_bytes()).hexdigest() == made["blake3"]
    screenshot(page, "a-pinned-file")

    card.locator("button.unpin").click()
    expect(card).to_have_count(0)
    expect(page.locator("#pins")).to_contain_text("Nothing pinned yet.")


def test_a_url_typed_in_the_form_is_fetched_once_and_sent_on(
    page: Page, server: CastRayServer, tmp_path: Path
) -> None:
    origin = tmp_path / "origin"
    origin.mkdir()
    data = tx.random_bytes(6_000_000)
    (origin / "dataset-shard.bin").write_bytes(data)
    with RangeServer(origin) as http:
        _open(page, server)
        page.fill("#send-url", http.url("dataset-shard.bin", "sig=SECRET"))
        page.check("#send-keep")
        _send(page, "node_1", ["node_2"])
        card = page.locator(".transfer").first
        expect(card).to_have_attribute("data-status", "completed", timeout=120_000)
        expect(card.locator(".origin")).to_have_text(
            f"fetched once from http://127.0.0.1:{http.port}/dataset-shard.bin?<hidden> by "
            "node_1, which keeps a copy"
        )
        expect(card.locator(".library")).to_have_text("kept in the library as dataset-shard.bin")
        expect(page.locator("#send-url")).to_have_value("")
        expect(page.locator("#send-keep")).not_to_be_checked()
    for node in ("node_1", "node_2"):
        assert (server.data_dir / "storage" / node / "dataset-shard.bin").read_bytes() == data
    assert (server.data_dir / "library" / "dataset-shard.bin").read_bytes() == data
    assert "SECRET" not in page.content()
