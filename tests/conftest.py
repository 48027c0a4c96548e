"""Session-wide fixtures: real Ray clusters and real CastRay servers, started once."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness.raycluster import RayCluster, running_cluster
from tests.harness.server import CastRayServer, serving

DEMO_NODES = 2
THREE_NODES = ("127.0.0.7", "127.0.0.8", "127.0.0.9")
"""The head and two workers of the shared multi-node cluster, each on its own loopback IP."""


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


@pytest.fixture(scope="module")
def ray_tmpdir() -> Iterator[Path]:
    """Ray's default temp dir for one test module (``RAY_TMPDIR``): where a cluster started as
    the user's manual starts one (``ray start --head``, no ``--temp-dir``) records itself as the
    last one ``ray start`` started; give a server the same ``RAY_TMPDIR`` and its discovery
    reads that record, not the machine's. Short: Ray's socket paths must stay below 108 bytes."""
    path = Path(tempfile.mkdtemp(prefix="castray-rt-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def three_nodes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RayCluster]:
    """A ``ray start`` cluster of three raylets that look like three hosts (the tests that
    need one share it; each starts its own CastRay over it)."""
    with running_cluster(tmp_path_factory.mktemp("three-nodes"), *THREE_NODES) as cluster:
        yield cluster
