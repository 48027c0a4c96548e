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


def _timed(server: CastRayServer, address: str) -> tuple[httpx.Response, float]:
    started = time.monotonic()
    answer = _connect(server, address)
    return answer, time.monotonic() - started


def test_a_silent_port_a_closed_one_and_a_stranger_get_the_same_answer_in_the_same_time(
    server: CastRayServer, silent_port: SilentPort
) -> None:
    """Before, a closed port answered in 0.04 s and an open one in 2 s: a port scanner."""
    answers = {
        "silent": _timed(server, f"127.0.0.1:{silent_port.port}"),
        "closed": _timed(server, f"127.0.0.1:{free_port()}"),
        "not ray": _timed(server, server.url.removeprefix("http://")),  # HTTP, not Ray
    }

    assert {a.status_code for a, _ in answers.values()} == {502}
    assert len({_reason(a) for a, _ in answers.values()}) == 1
    seconds = [s for _, s in answers.values()]
    assert max(seconds) < 10  # a few probe timeouts, not a driver's connect timeout
    assert max(seconds) - min(seconds) < 1.0, answers


def test_probing_one_address_does_not_hold_up_another(
    server: CastRayServer, silent_port: SilentPort
) -> None:
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        slow = pool.submit(_timed, server, f"http://127.0.0.1:{silent_port.port}")
        wait_for(lambda: silent_port.accepted, 10, "the first probe to reach the silent port")
        quick, quick_seconds = _timed(server, "127.0.0.99:1")
        slow_answer, slow_seconds = slow.result()

    assert quick.status_code == slow_answer.status_code == 502
    # The second answered in its own time, not after the first one's probe plus its own.
    assert quick_seconds < slow_seconds + 1.0


def test_a_peers_version_string_is_never_reflected(
    server: CastRayServer, fake_dashboard: FakeDashboard
) -> None:
    fake_dashboard.auth_mode = "none"
    fake_dashboard.version = "<img src=x onerror=alert(1)>"

    response = _connect(server, fake_dashboard.url)

    assert response.status_code == 502
    assert "<img" not in response.text
    assert "onerror" not in response.text
