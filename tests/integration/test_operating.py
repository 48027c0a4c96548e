"""What an operator relies on, through real servers over their embedded Ray: Prometheus
metrics that agree with the transfers' own numbers, behind the API token or public; TLS for
the API, the CLI and ``/ws``; logs as JSON lines."""

from __future__ import annotations

import io
import json
import os
import socket
import ssl
import tarfile
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from castray.agent.copies import INDEX as COPY_INDEX
from castray.client import Client
from tests.harness import transfers as tx
from tests.harness.certs import Certs, make_certs
from tests.harness.server import CastRayServer, serving, start_server
from tests.harness.waiting import wait_for

pytestmark = [pytest.mark.ray, pytest.mark.slow]

TOKEN = "operator-token-0123456789"
MIB = 1024 * 1024
TOLERANCE = 0.2
"""A rate limit is kept within 20 % (a token bucket of 0.1 s; the rest is start and commit)."""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CastRayServer]:
    data = tmp_path_factory.mktemp("operating") / "data"
    env = {
        "CASTRAY_ENDPOINT_EGRESS_LIMIT": "20MiB/s",
        "CASTRAY_RECEIVED_RETENTION": "1h",
        "CASTRAY_STORAGE_QUOTA_BYTES": "30MiB",
        "CASTRAY_STORAGE_SWEEP_INTERVAL": "3600",  # this module sweeps when it asks
    }
    with serving(data, "--demo-nodes", "2", alive=3, token=TOKEN, env=env) as server:
        tx.generate(server, "forty.bin", "40MiB", "random")
        yield server


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(server: CastRayServer) -> Samples:
    """``GET /metrics``, parsed by Prometheus' own parser: every sample by name and labels."""
    with server.client() as client:
        response = client.get("/metrics")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(response.text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def test_metrics_need_the_token(server: CastRayServer) -> None:
    refused = httpx.get(f"{server.url}/metrics", timeout=10)
    assert refused.status_code == 401
    assert "token" in refused.json()["detail"]


def test_metrics_agree_with_a_transfer_and_the_status(server: CastRayServer) -> None:
    before = scrape(server)
    data = tx.random_bytes(3_000_000)
    tx.upload_bytes(server, "metered.bin", data)
    done = tx.send(server, source_node="node_1", file="metered.bin", recipients=["node_2"])
    assert done["status"] == "completed", done

    nodes = server.nodes()
    after = wait_for(
        lambda: (
            (s := scrape(server))
            and value(s, "castray_endpoint_bytes_received_total", endpoint="node_2", cluster="home")
            == nodes["node_2"]["counters"]["bytes_received"]
            and s
        ),
        30,
        "the endpoint counters in /metrics",
    )

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("castray_transfers_total", mode="unicast", status="completed") == 1
    assert delta("castray_endpoint_bytes_sent_total", endpoint="node_1", cluster="home") == len(
        data
    )
    assert delta("castray_endpoint_bytes_received_total", endpoint="node_2", cluster="home") == len(
        data
    )
    assert delta("castray_transfer_duration_seconds_count", mode="unicast") == 1
    assert delta("castray_transfer_throughput_bytes_per_second_count", mode="unicast") == 1
    assert delta(
        "castray_transfer_throughput_bytes_per_second_sum", mode="unicast"
    ) == pytest.approx(done["throughput_bps"])
    assert delta("castray_chunks_resent_total") == done["chunks_resent"]
    alive = sum(1 for n in nodes.values() if n["status"] == "alive")
    assert value(after, "castray_endpoints", cluster="home", state="alive") == alive
    assert value(after, "castray_clusters", state="connected", external="false") == 1


def _seconds(transfer: dict[str, Any]) -> float:
    started = datetime.fromisoformat(transfer["started_at"])
    return (datetime.fromisoformat(transfer["finished_at"]) - started).total_seconds()


@pytest.mark.parametrize("transport", ["stream", "object-store"])
def test_a_rate_limit_holds_on_every_transport(server: CastRayServer, transport: str) -> None:
    """40 MiB at 10 MiB/s takes 4 s, whichever way the bytes go (the endpoints' own limit
    here is 20 MiB/s, so the transfer's is the one that binds)."""
    done = tx.send(
        server,
        source_node="node_1",
        file="forty.bin",
        recipients=["node_2"],
        transport=transport,
        rate_limit="10MiB/s",
    )
    assert done["status"] == "completed", done
    assert done["transport"] == transport and done["rate_limit"] == 10 * MIB
    assert 4.0 * (1 - TOLERANCE) <= _seconds(done) <= 4.0 * (1 + TOLERANCE), _seconds(done)


def test_an_endpoint_limit_is_shared_by_its_transfers(server: CastRayServer) -> None:
    """Two 40 MiB transfers at once from one endpoint limited to 20 MiB/s: 80 MiB in 4 s
    (each alone at the limit would be done in 2 s)."""
    ids = [
        tx.start(server, source_node="node_1", file="forty.bin", recipients=[to])
        for to in ("node_2", "home-127.0.0.1")
    ]
    done = [tx.wait_finished(server, tid, 120) for tid in ids]
    assert [d["status"] for d in done] == ["completed"] * 2, done
    first = min(datetime.fromisoformat(d["started_at"]) for d in done)
    last = max(datetime.fromisoformat(d["finished_at"]) for d in done)
    seconds = (last - first).total_seconds()
    assert 4.0 * (1 - TOLERANCE) <= seconds <= 4.0 * (1 + TOLERANCE), seconds


def test_a_rate_that_cannot_be_read_is_refused_and_starts_nothing(server: CastRayServer) -> None:
    with server.client() as client:
        before = client.get("/api/transfers").json()["total"]
        refused = client.post(
            "/api/transfers",
            json={
                "source_node": "node_1",
                "file": "forty.bin",
                "recipients": ["node_2"],
                "rate_limit": "fast",
            },
        )
        after = client.get("/api/transfers").json()["total"]
    assert refused.status_code == 422, refused.text
    assert "50MB/s" in refused.json()["detail"]
    assert after == before


def _album(root: Path, count: int) -> dict[str, bytes]:
    """A tree of small files, some in sub-folders, and one of 3 MiB (a folder is bigger
    than the limit of a JSON body)."""
    files = {
        f"{'raw/' if n % 3 == 0 else ''}{'2026/' if n % 5 == 0 else ''}img-{n:04}.jpg": (
            f"photo {n} ".encode() * (n % 50 + 1)
        )
        for n in range(count)
    }
    files["clips/trip.mp4"] = tx.random_bytes(3 * MIB)
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return files


def test_a_folder_goes_as_one_transfer_and_arrives_as_the_same_tree(
    server: CastRayServer, tmp_path: Path
) -> None:
    files = _album(tmp_path / "album", 300)
    sent = server.cli(
        "send", str(tmp_path / "album"), "--from", "node_1", "--to", "node_2", "--json"
    )

    assert sent.returncode == 0, sent.stderr
    done = json.loads(sent.stdout)
    assert done["status"] == "completed", done
    assert (done["file"]["name"], done["folder_files"]) == ("album/", 301)
    recipient = done["recipients"]["node_2"]
    assert recipient["files_done"] == 301
    landed = Path(recipient["path"])
    assert landed == server.data_dir / "storage" / "node_2" / "album"
    for name, data in files.items():
        assert (landed / name).read_bytes() == data, name
    assert sorted(str(p.relative_to(landed)) for p in landed.rglob("*") if p.is_file()) == sorted(
        files
    )
    hidden = [p.name for p in landed.parent.iterdir() if p.name.startswith(".")]
    assert hidden == [COPY_INDEX], "no bundle, staging or partial file is left"
    with server.client() as client:
        listed = {f["name"]: f for f in client.get("/api/files").json()}
    assert listed["album/"]["files"] == 301


def test_a_folder_that_would_leave_its_tree_is_refused_and_nothing_is_kept(
    server: CastRayServer, tmp_path: Path
) -> None:
    bundle = io.BytesIO()
    with tarfile.open(fileobj=bundle, mode="w") as tar:
        info = tarfile.TarInfo("../../outside.txt")
        info.size = 4
        tar.addfile(info, io.BytesIO(b"evil"))
    with server.client() as client:
        refused = client.post(
            "/api/upload-folder", params={"name": "evil"}, content=bundle.getvalue()
        )
        listed = {f["name"] for f in client.get("/api/files").json()}
    (tmp_path / "linked").mkdir()
    (tmp_path / "linked" / "secret").symlink_to("/etc/hostname")
    by_cli = server.cli("send", str(tmp_path / "linked"), "--from", "node_1", "--to", "node_2")

    assert refused.status_code == 400, refused.text
    assert "'..'" in refused.json()["detail"]
    assert "evil/" not in listed
    assert list((server.data_dir / "library" / ".folders").glob(".*")) == []
    assert by_cli.returncode == 1
    (error,) = [line for line in by_cli.stderr.splitlines() if line.startswith("error:")]
    assert "outside the folder" in error, by_cli.stderr


def _age(path: Path, hours: float) -> None:
    then = time.time() - hours * 3600
    os.utime(path, (then, then))


def test_a_sweep_removes_by_age_then_by_quota_and_spares_a_copy_being_sent(
    server: CastRayServer,
) -> None:
    """Endpoint ``keeper`` holds three 20 MiB copies; retention is 1 h, the quota 30 MiB. The
    oldest copy is past the retention; of the other two, the older is being sent on, so the
    quota takes the newer one. Each removal is an event and a history row."""
    assert tx.post(server, "/api/nodes", {"node_id": "keeper"}).status_code == 201
    for name in ("k1.bin", "k2.bin", "k3.bin"):
        tx.generate(server, name, "20MiB", "random")
        done = tx.send(server, source_node="node_1", file=name, recipients=["keeper"])
        assert done["status"] == "completed", done
    store = server.data_dir / "storage" / "keeper"
    for name, hours in (("k1.bin", 3), ("k2.bin", 0.5), ("k3.bin", 0.3)):
        _age(store / name, hours)
    # "./k2.bin": keeper's own copy (a bare "k2.bin" names the library's file).
    sending = tx.start(
        server,
        source_node="keeper",
        file="./k2.bin",
        recipients=["node_2"],
        rate_limit="1MiB/s",
    )
    tx.wait_under_way(server, sending, "node_2")

    with Client(server.url, TOKEN) as client, client.events() as events:
        swept = client.sweep_storage()
        seen = [events.next(timeout=10) for _ in swept.removals]
    with server.client() as http:
        http.delete(f"/api/transfers/{sending}")
    report = server.cli("storage", "--json")
    printed = server.cli("storage", env={"COLUMNS": "120"})

    mine = {r.name: r.reason for r in swept.removals if r.endpoint == "keeper"}
    assert set(mine) == {"k1.bin", "k3.bin"}, mine
    assert "received_retention" in mine["k1.bin"] and "storage_quota_bytes" in mine["k3.bin"]
    assert sorted(p.name for p in store.iterdir() if not p.name.startswith(".")) == ["k2.bin"]
    removed_events = {
        (e.data.removal.endpoint, e.data.removal.name)
        for e in seen
        if e is not None and e.type == "copy_removed"
    }
    assert {("keeper", "k1.bin"), ("keeper", "k3.bin")} <= removed_events
    assert report.returncode == 0, report.stderr
    listed = json.loads(report.stdout)
    keeper = next(e for e in listed["endpoints"] if e["endpoint"] == "keeper")
    assert (keeper["files"], keeper["bytes"]) == (1, 20 * MIB)
    assert {(r["endpoint"], r["name"]) for r in listed["removals"]} >= {
        ("keeper", "k1.bin"),
        ("keeper", "k3.bin"),
    }
    assert listed["storage_quota_bytes"] == 30 * MIB and listed["received_retention"] == 3600
    assert "keeper" in printed.stdout and "20.0 MiB" in printed.stdout, printed.stdout


def test_websocket_clients_are_counted(server: CastRayServer) -> None:
    from websockets.sync.client import connect

    url = server.url.replace("http://", "ws://") + "/ws"
    with connect(url, additional_headers={"Authorization": f"Bearer {TOKEN}"}) as ws:
        ws.recv(timeout=10)  # the snapshot: subscribed
        during = scrape(server)
    assert value(during, "castray_websocket_clients") >= 1
    after = wait_for(
        lambda: (s := scrape(server)) and value(s, "castray_websocket_clients") == 0 and s,
        10,
        "the closed WebSocket to be forgotten",
    )
    assert value(after, "castray_events_dropped_total") == 0


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[CastRayServer, Certs]]:
    """Over https with a certificate of a private CA, metrics public, logs as JSON lines."""
    root = tmp_path_factory.mktemp("tls")
    certs = make_certs(root / "certs")
    server = start_server(
        root / "data",
        "--demo-nodes",
        "2",
        "--tls-cert",
        str(certs.cert),
        "--tls-key",
        str(certs.key),
        "--log-format",
        "json",
        env={
            "CASTRAY_METRICS_PUBLIC": "true",
            "CASTRAY_RECEIVED_RETENTION": "1h",
            "CASTRAY_STORAGE_SWEEP_INTERVAL": "0.5",
            "CASTRAY_ENDPOINT_INGRESS_LIMIT": "5MiB/s",
        },
        token=TOKEN,
        ca_cert=certs.ca,
    )
    try:
        server.wait_alive(3)
        yield server, certs
    finally:
        server.stop()
    server.check_log_clean()


def test_tls_serves_the_api_the_cli_and_wss_to_who_trusts_its_ca(
    tls_server: tuple[CastRayServer, Certs],
) -> None:
    server, certs = tls_server
    assert server.url.startswith("https://")
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(f"{server.url}/api/health", timeout=10)  # the system store does not know it
    with pytest.raises(httpx.HTTPError):
        httpx.get(server.url.replace("https://", "http://") + "/api/health", timeout=10)

    trusted = server.cli("--ca-cert", str(certs.ca), "status", "--json")
    untrusted = server.cli("status")
    with Client(server.url, TOKEN, ca_cert=certs.ca) as client, client.events() as events:
        snapshot = events.snapshot  # the stream opened over wss:// and began as it should

    assert trusted.returncode == 0, trusted.stderr
    assert json.loads(trusted.stdout)["active_nodes"] >= 3
    assert untrusted.returncode == 1
    assert "certificate" in untrusted.stderr.lower(), untrusted.stderr
    assert len(untrusted.stderr.strip().splitlines()) == 1, untrusted.stderr
    assert {n.id for n in snapshot.nodes} >= {"node_1", "node_2"}


def test_tls_refuses_old_cbc_suites_and_the_schema_needs_the_token(
    tls_server: tuple[CastRayServer, Certs],
) -> None:
    server, certs = tls_server
    host, port = server.url.removeprefix("https://").split(":")
    old = ssl.create_default_context(cafile=str(certs.ca))
    old.maximum_version = ssl.TLSVersion.TLSv1_2
    old.set_ciphers("ECDHE-RSA-AES128-SHA:ECDHE-ECDSA-AES128-SHA:AES128-SHA")
    with pytest.raises(ssl.SSLError), socket.create_connection((host, int(port)), 10) as raw:
        old.wrap_socket(raw, server_hostname=host)

    with server.client() as client:
        schema = client.get("/openapi.json")
        client.headers.pop("Authorization")
        anonymous = client.get("/openapi.json")
        docs = client.get("/docs")
    assert schema.status_code == 200 and "paths" in schema.json()
    assert anonymous.status_code == 401
    assert docs.status_code == 404


def test_metrics_can_be_public_and_logs_are_json_lines_with_ids(
    tls_server: tuple[CastRayServer, Certs],
) -> None:
    server, _ = tls_server
    with server.client() as client:
        client.headers.pop("Authorization")  # no token: an anonymous scraper
        public = client.get("/metrics")
        api = client.get("/api/status")
    assert public.status_code == 200 and "castray_transfers" in public.text
    assert api.status_code == 401, "metrics_public opens /metrics only"

    tx.upload_bytes(server, "logged.bin", b"a line per transfer")
    done = tx.send(server, source_node="node_1", file="logged.bin", recipients=["node_2"])
    lines = [line for line in server.log.read_text().splitlines() if line.strip()]
    records = [json.loads(line) for line in lines]  # every line is one JSON object
    assert {"time", "level", "logger", "message"} <= set(records[0])
    about = [r for r in records if r.get("transfer_id") == done["id"]]
    assert any("completed" in r["message"] for r in about), about


def test_the_periodic_sweep_removes_an_expired_copy_by_itself(
    tls_server: tuple[CastRayServer, Certs],
) -> None:
    server, _ = tls_server
    tx.upload_bytes(server, "aging.bin", b"kept for an hour")
    done = tx.send(server, source_node="node_1", file="aging.bin", recipients=["node_2"])
    copy = Path(done["recipients"]["node_2"]["path"])
    _age(copy, 2)

    wait_for(lambda: not copy.exists(), 30, "the expired copy to be swept")
    logged = wait_for(
        lambda: [
            r
            for r in map(json.loads, server.log.read_text().splitlines())
            if r.get("endpoint") == "node_2" and "aging.bin" in r["message"]
        ],
        10,
        "the removal in the log",
    )
    assert "received_retention" in logged[0]["message"]
    assert (server.data_dir / "library" / "aging.bin").exists(), "the library is not swept"


@pytest.mark.parametrize("transport", ["stream", "object-store"])
def test_an_ingress_limit_paces_what_an_endpoint_receives(
    tls_server: tuple[CastRayServer, Certs], transport: str
) -> None:
    """Every endpoint of this server receives at most 5 MiB/s: 10 MiB take 2 s."""
    server, _ = tls_server
    tx.generate(server, f"inbound-{transport}.bin", "10MiB", "random")
    done = tx.send(
        server,
        source_node="node_1",
        file=f"inbound-{transport}.bin",
        recipients=["node_2"],
        transport=transport,
    )
    assert done["status"] == "completed", done
    assert 2.0 * (1 - TOLERANCE) <= _seconds(done) <= 2.0 * (1 + TOLERANCE), _seconds(done)
