"""Generated requests over every operation (schemathesis): no server error, no answer that is
not what the OpenAPI schema says. Bounded in time (``CASTRAY_FUZZ_SECONDS``, default 100)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.harness.server import serving

pytestmark = [pytest.mark.ray, pytest.mark.slow]

CHECKS = ",".join(
    [
        "not_a_server_error",
        "response_schema_conformance",
        "status_code_conformance",
        "content_type_conformance",
    ]
)


def test_generated_requests_find_no_server_error_and_no_schema_violation(tmp_path: Path) -> None:
    env = {
        "HOME": str(tmp_path),
        # The fuzzer may ask for anything: keep what it can make small.
        "CASTRAY_GENERATOR_MAX_BYTES": str(1024 * 1024),
        "CASTRAY_MAX_ENDPOINTS": "8",
        "CASTRAY_CONNECT_TIMEOUT": "5",
    }
    seconds = os.environ.get("CASTRAY_FUZZ_SECONDS", "100")
    with serving(tmp_path / "data", "--demo-nodes", "2", alive=3, env=env) as server:
        run = subprocess.run(
            [
                str(Path(sys.executable).with_name("st")),
                "run",
                f"{server.url}/openapi.json",
                "--checks",
                CHECKS,
                "--max-time",
                seconds,
                "--request-timeout",
                "30",
                "--generation-database",
                "none",
                "--no-color",
            ],
            capture_output=True,
            text=True,
            cwd=tmp_path,
            timeout=int(seconds) + 240,
        )
        log = server.log.read_text()

    summary = re.search(r"Test cases:\s*\n\s*(.+)", run.stdout)
    print(f"schemathesis: {summary[1] if summary else '(no summary)'}")  # for the record
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
    assert summary is not None and "failed" not in summary[1], run.stdout[-3000:]
    assert "Traceback" not in log
