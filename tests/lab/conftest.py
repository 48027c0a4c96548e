"""One 3-host lab for the module's tests: separate network stacks, 50 Mbit/s links."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from castray.lab.state import host_addresses
from tests.harness.lab import LabServer, require_lab_powers, running_lab

HOSTS = 3
RATE = "50mbit"


def lab_name(tag: str) -> str:
    return f"t{os.getpid()}{tag}"


def lab_subnet(offset: int) -> str:
    """A /24 of 198.18.0.0/15 of this test run's own (runs of other sessions may be up)."""
    return f"198.18.{100 + (os.getpid() + offset) % 150}.0/24"


S3_PORT = 9000
"""Of an S3 server in host 1 (its own network namespace: no other process holds the port)."""
AWS = {
    "AWS_ACCESS_KEY_ID": "lab",
    "AWS_SECRET_ACCESS_KEY": "lab-secret",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def s3_env(lab: LabServer) -> dict[str, str]:
    """The standard AWS chain's settings for the S3 store in host 1."""
    return AWS | {"AWS_ENDPOINT_URL_S3": f"http://{lab.state.hosts[0].address}:{S3_PORT}"}


@pytest.fixture(scope="session")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabServer]:
    """The lab's CastRay resumes by itself what a fault cut short (``auto_resume``); its
    nodes find an S3 store in host 1 through the standard AWS chain (when one runs there)."""
    require_lab_powers()
    config = tmp_path_factory.mktemp("lab-config") / "castray.toml"
    config.write_text("auto_resume = true\n")
    extra = ("--server-config", str(config))
    subnet = lab_subnet(0)
    head = host_addresses(subnet, HOSTS)[0][0]
    env = AWS | {"AWS_ENDPOINT_URL_S3": f"http://{head}:{S3_PORT}"}
    with running_lab(lab_name("a"), HOSTS, RATE, subnet, *extra, env=env) as server:
        yield server
