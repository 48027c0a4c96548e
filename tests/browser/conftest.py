"""A real Chromium (Debian's package) driven by Playwright, and the pages it opens.

Under CI a missing browser fails the tests (``scripts/test`` installs it); elsewhere they
skip with the command that installs it. Every page fails its test on a console error, and
leaves a screenshot in ``test-artifacts/`` whatever happens.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, ConsoleMessage, Page, Response, expect, sync_playwright

CHROMIUM = Path(os.environ.get("CASTRAY_CHROMIUM", "/usr/bin/chromium"))
# Two shared cores run Ray, the server and the browser: give the page time to catch up.
expect.set_options(timeout=20_000)

ANSWERED_4XX = "Failed to load resource: the server responded with a status of 4"
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"


@pytest.fixture(scope="package")
def browser() -> Iterator[Browser]:
    """One Chromium for the browser tests; gone after them, with Playwright's event loop (which
    would otherwise stay the running loop and break asyncio.run in later tests)."""
    if not CHROMIUM.exists():
        message = f"no Chromium at {CHROMIUM}; install it with 'apt-get install chromium'"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=str(CHROMIUM),
            args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
        )
        yield launched
        launched.close()


@pytest.fixture
def screenshot() -> Callable[[Page, str], None]:
    """Keep a picture of a moment of a test in ``test-artifacts/``."""

    def take(page: Page, name: str) -> None:
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)

    return take


@pytest.fixture
def page(browser: Browser, request: pytest.FixtureRequest) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    opened = context.new_page()
    opened.set_default_timeout(30_000)
    problems: list[str] = []

    def on_console(message: ConsoleMessage) -> None:
        # The browser itself logs every 4xx answer; the page shows those as notices.
        if message.type == "error" and not message.text.startswith(ANSWERED_4XX):
            problems.append(f"console error: {message.text}")

    def on_response(response: Response) -> None:
        if response.status >= 500:  # the console's own line does not say which call it was
            problems.append(f"{response.status} from {response.request.method} {response.url}")

    opened.on("console", on_console)
    opened.on("response", on_response)
    opened.on("pageerror", lambda error: problems.append(f"uncaught: {error}"))
    try:
        yield opened
    finally:
        ARTIFACTS.mkdir(exist_ok=True)
        name = re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.name)
        opened.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)
        context.close()
    assert not problems, problems
