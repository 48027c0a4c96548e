"""Finding 10: connect-external is no port scanner, reflects nothing, blocks nobody."""

from __future__ import annotations

import concurrent.futures
import time

import httpx
import pytest

from tests.harness.server import CastRayServer
from tests.harness.waiting import free_port, wait_for
from tests.security.conftest import FakeDashboard, SilentPort

pytestmark = pytest.mark.ray


def _connect(server: CastRayServer, address: str) -> httpx.Response:
    with server.client() as client:
        return client.post(
            "/api/cluster/connect-external", json={"cluster_address": address}, timeout=30
        )


def _reason(response: httpx.Response) -> str:
    """The message without the address it names."""
    detail = str(response.json()["detail"])
    return detail.split(": ", 1)[1]


def test_a_silent_port_and_a_closed_one_get_the_same_answer_quickly(
    server: CastRayServer, silent_port: SilentPort
) -> None:
    started = time.monotonic()
    silent = _connect(server, f"127.0.0.1:{silent_port.port}")
    seconds = time.monotonic() - started
    closed = _connect(server, f"127.0.0.1:{free_port()}")

    assert silent.status_code == closed.status_code == 502
    assert _reason(silent) == _reason(closed)
    assert seconds < 10  # a few probe timeouts, not a driver's connect timeout


def test_probing_one_address_does_not_hold_up_another(
    server: CastRayServer, silent_port: SilentPort
) -> None:
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        slow = pool.submit(_connect, server, f"http://127.0.0.1:{silent_port.port}")
        wait_for(lambda: silent_port.accepted, 10, "the first probe to reach the silent port")
        quick = _connect(server, "127.0.0.99:1")
        still_probing = not slow.done()
        slow_answer = slow.result()

    assert quick.status_code == 502
    assert still_probing, "the second connect waited for the first one's probe"
    assert slow_answer.status_code == 502


def test_a_peers_version_string_is_never_reflected(
    server: CastRayServer, fake_dashboard: FakeDashboard
) -> None:
    fake_dashboard.auth_mode = "none"
    fake_dashboard.version = "<img src=x onerror=alert(1)>"

    response = _connect(server, fake_dashboard.url)

    assert response.status_code == 502
    assert "<img" not in response.text
    assert "onerror" not in response.text
