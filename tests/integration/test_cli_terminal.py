"""The CLI in a real 80-column terminal (tmux): no line of ``castray nodes``, ``castray
transfers``, ``castray clusters info`` or a running ``castray send`` breaks a word, and ids are
shown whole. What the terminal shows is read back with ``tmux capture-pane``, row by row."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import transfers as tx
from tests.harness.server import CastRayServer
from tests.harness.waiting import wait_for

pytestmark = pytest.mark.ray

COLUMNS = 80
_UNIT = re.compile(r"^(?:B|KiB|MiB|GiB|TiB)\b")
_PROGRESS = re.compile(r"\d+(?:\.\d+)?/\d+(?:\.\d+)? (?:B|KiB|MiB|GiB)")


class Terminal:
    """A tmux session of 80 columns running one shell."""

    def __init__(self, name: str) -> None:
        self.name = name

    def run(
        self, command: str, shown: re.Pattern[str] | None = None, timeout: float = 120
    ) -> list[str]:
        """Type ``command`` and wait until it has ended (or, with ``shown``, until a row
        matches it); the screen's rows. The end is a marker the command echoes, typed so that
        the command line's own echo does not contain it."""
        if shown is None:
            marker = f"END-{uuid.uuid4().hex[:8]}"
            command += f'; echo "{marker[:4]}""{marker[4:]}"'
            shown = re.compile(re.escape(marker))
        subprocess.run(["tmux", "send-keys", "-t", self.name, "clear", "Enter"], check=True)
        subprocess.run(["tmux", "send-keys", "-t", self.name, command, "Enter"], check=True)
        return wait_for(
            lambda: (rows := self.rows()) and any(shown.search(r) for r in rows) and rows,
            timeout,
            f"{shown.pattern!r} on the terminal",
            interval=0.2,
        )

    def rows(self) -> list[str]:
        """The screen and its scrollback as the terminal shows them (wrapped rows apart)."""
        shown = subprocess.run(
            ["tmux", "capture-pane", "-p", "-t", self.name, "-S", "-200"],
            capture_output=True,
            text=True,
            check=True,
        )
        return shown.stdout.splitlines()


@pytest.fixture
def terminal() -> Iterator[Terminal]:
    if shutil.which("tmux") is None:
        pytest.skip("tmux is not installed ('apt-get install tmux'; scripts/setup test does)")
    name = f"castray-{uuid.uuid4().hex[:8]}"
    subprocess.run(
        ["tmux", "new-session", "-d", "-s", name, "-x", str(COLUMNS), "-y", "50", "bash", "--norc"],
        check=True,
    )
    try:
        yield Terminal(name)
    finally:
        subprocess.run(["tmux", "kill-session", "-t", name], check=False)


def _castray(server: CastRayServer, *args: str) -> str:
    return shlex.join([sys.executable, "-m", "castray", *args, "--server", server.url])


def _whole(rows: list[str], *words: str) -> None:
    for word in words:
        assert any(word in row for row in rows), f"{word!r} is not whole on any row:\n" + "\n".join(
            rows
        )


def test_nodes_transfers_and_clusters_fit_80_columns_without_a_broken_word(
    embedded_server: CastRayServer, terminal: Terminal
) -> None:
    tx.upload_bytes(embedded_server, "eighty.bin", tx.random_bytes(200_000))
    done = tx.send(embedded_server, source_node="node_1", file="eighty.bin", recipients=["node_2"])

    nodes = terminal.run(_castray(embedded_server, "nodes"))
    listed = terminal.run(_castray(embedded_server, "transfers", "--limit", "5"))
    info = terminal.run(_castray(embedded_server, "clusters", "info"))

    for rows in (nodes, listed, info):
        assert all(len(row) <= COLUMNS for row in rows)
    _whole(nodes, "home-127.0.0.1", "node_1", "node_2", "alive")
    _whole(listed, done["id"], "completed")
    assert not any(_UNIT.match(row.strip()) for row in nodes + listed), nodes + listed


def test_a_running_send_shows_its_upload_and_its_transfer_on_whole_rows(
    embedded_server: CastRayServer, terminal: Terminal, tmp_path: Path
) -> None:
    local = tmp_path / "watched.bin"
    local.write_bytes(tx.random_bytes(48 * 1024 * 1024))
    command = _castray(
        embedded_server,
        "send",
        str(local),
        "--from",
        "node_1",
        "--to",
        "node_2",
        "--rate",
        "16MB/s",
    )
    terminal.run(command, _PROGRESS, timeout=60)  # a progress bar is up
    seen: list[list[str]] = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        rows = terminal.rows()
        seen.append(rows)
        if any("completed: watched.bin" in row for row in rows):
            break
        time.sleep(0.3)  # a frame of the animation, not a synchronisation
    final = seen[-1]
    _whole(final, "completed: watched.bin", "node_2")
    assert any("watched.bin" in row and "uploaded" in row for row in final), final
    for rows in seen:
        assert all(len(row) <= COLUMNS for row in rows)
        assert not any(_UNIT.match(row.strip()) for row in rows), rows
        for row in rows:
            if re.search(r"\d+(?:\.\d+)?/\d+(?:\.\d+)?", row) and "/s" not in row:
                assert re.search(r"\d+(?:\.\d+)?/\d+(?:\.\d+)? (?:B|KiB|MiB|GiB)", row), row
