"""Finding 5: the API token is neither logged nor visible to other local users."""

from __future__ import annotations

import json

import psutil
import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from tests.harness.server import CastRayServer
from tests.security.conftest import TOKEN

pytestmark = pytest.mark.ray


def test_a_token_given_in_a_file_is_not_on_the_command_line(token_server: CastRayServer) -> None:
    command = " ".join(psutil.Process(token_server.process.pid).cmdline())

    assert "--token-file" in command
    assert TOKEN not in command


def test_tokens_in_websocket_urls_never_reach_the_log(token_server: CastRayServer) -> None:
    base = token_server.url.replace("http", "ws") + "/ws"
    with connect(f"{base}?token={TOKEN}", open_timeout=10) as socket:
        assert '"snapshot"' in socket.recv(timeout=10)
    with pytest.raises(InvalidStatus), connect(f"{base}?token=a-wrong-guess", open_timeout=10):
        pass

    log = token_server.log.read_text()
    assert "/ws?token=***" in log  # the connection is logged, its token masked
    assert TOKEN not in log
    assert "a-wrong-guess" not in log
    assert "ERROR" not in log  # a refused handshake is no error of the server's


def test_the_page_authenticates_with_its_first_message(token_server: CastRayServer) -> None:
    base = token_server.url.replace("http", "ws") + "/ws"
    with connect(base, open_timeout=10) as socket:
        socket.send(json.dumps({"type": "auth", "token": TOKEN}))
        assert '"snapshot"' in socket.recv(timeout=10)
    with connect(base, open_timeout=10) as socket:
        socket.send('{"type": "auth", "token": "nope"}')
        with pytest.raises(Exception) as closed:
            socket.recv(timeout=15)
    assert "4401" in str(closed.value)
