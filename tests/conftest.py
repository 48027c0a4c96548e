"""Session-wide fixtures: real Ray clusters and real CastRay servers, started once."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.server import CastRayServer, serving

DEMO_NODES = 2


@pytest.fixture(scope="session")
def embedded_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CastRayServer]:
    """``castray serve --demo-nodes 2`` over its embedded Ray, with a private HOME.

    The private HOME shows what the embedded cluster does (and does not) write to ``~/.ray``.
    """
    root = tmp_path_factory.mktemp("embedded")
    home = root / "home"
    home.mkdir()
    args = ("--demo-nodes", str(DEMO_NODES))
    with serving(root / "data", *args, alive=1 + DEMO_NODES, env={"HOME": str(home)}) as server:
        yield server
