"""The web UI of a server started with ``--token``: it asks once, then works as usual."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from playwright.sync_api import Dialog, Page, expect

from tests.harness.server import CastRayServer, serving

pytestmark = [pytest.mark.ray, pytest.mark.browser]

TOKEN = "ui-s3cret"


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CastRayServer]:
    root = tmp_path_factory.mktemp("ui-token")
    (root / "home").mkdir()
    with serving(root / "data", alive=1, env={"HOME": str(root / "home")}, token=TOKEN) as server:
        yield server


def test_the_page_asks_for_the_token_then_goes_live(page: Page, guarded: CastRayServer) -> None:
    asked: list[str] = []

    def answer(dialog: Dialog) -> None:
        asked.append(dialog.message)
        dialog.accept("wrong" if len(asked) == 1 else TOKEN)

    sockets: list[str] = []
    page.on("dialog", answer)
    page.on("websocket", lambda socket: sockets.append(socket.url))
    page.goto(guarded.url + "/ui")

    expect(page.locator("#live")).to_have_text("live")
    # The token travels in the socket's first message, never in its URL (URLs get logged).
    assert sockets and not [url for url in sockets if "token" in url]
    expect(page.locator("#nodes tr[data-node='home-127.0.0.1']")).to_contain_text("alive")
    assert asked == [
        "This CastRay server needs its API token:",
        "That token was refused. The CastRay API token:",
    ]
    assert page.evaluate("localStorage.getItem('castray-token')") == TOKEN
