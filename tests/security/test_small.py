"""Finding 11: the smaller things — the schema of errors, links in the library."""

from __future__ import annotations

import os

import pytest

from tests.harness.server import CastRayServer

pytestmark = pytest.mark.ray


def test_422_answers_are_what_the_schema_says(server: CastRayServer) -> None:
    with server.client() as client:
        schema = client.get("/openapi.json").json()
        answer = client.post("/api/nodes", json={"node_id": "not valid!"})

    declared = schema["paths"]["/api/nodes"]["post"]["responses"]["422"]
    ref = declared["content"]["application/json"]["schema"]["$ref"]
    error = schema["components"]["schemas"][ref.rsplit("/", 1)[1]]
    assert "HTTPValidationError" not in schema["components"]["schemas"]
    assert answer.status_code == 422
    assert set(answer.json()) == set(error["properties"]) == {"detail", "code"}
    assert isinstance(answer.json()["detail"], str)


def test_a_symlink_put_in_the_library_is_neither_listed_nor_served_nor_sent(
    server: CastRayServer,
) -> None:
    link = server.data_dir / "library" / "passwd-link.txt"
    os.symlink("/etc/passwd", link)
    try:
        with server.client() as client:
            listed = [f["name"] for f in client.get("/api/files").json()]
            served = client.get("/api/files/passwd-link.txt")
            sent = client.post(
                "/api/transfers",
                json={"source_node": "node_1", "file": "passwd-link.txt", "recipients": ["node_2"]},
            )
    finally:
        link.unlink()

    assert "passwd-link.txt" not in listed
    assert served.status_code == 404
    assert "root:" not in served.text
    assert sent.status_code == 404, sent.text
