"""One 3-host lab for the module's tests: separate network stacks, 50 Mbit/s links."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.harness.lab import LabServer, require_lab_powers, running_lab

HOSTS = 3
RATE = "50mbit"


def lab_name(tag: str) -> str:
    return f"t{os.getpid()}{tag}"


def lab_subnet(offset: int) -> str:
    """A /24 of 198.18.0.0/15 of this test run's own (runs of other sessions may be up)."""
    return f"198.18.{100 + (os.getpid() + offset) % 150}.0/24"


@pytest.fixture(scope="session")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabServer]:
    """The lab's CastRay resumes by itself what a fault cut short (``auto_resume``)."""
    require_lab_powers()
    config = tmp_path_factory.mktemp("lab-config") / "castray.toml"
    config.write_text("auto_resume = true\n")
    extra = ("--server-config", str(config))
    with running_lab(lab_name("a"), HOSTS, RATE, lab_subnet(0), *extra) as server:
        yield server
