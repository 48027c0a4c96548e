"""Findings 8, 9 and 11: every error is one line of CastRay's own words, never a 500 or a
traceback, whatever is sent."""

from __future__ import annotations

import sys

import pytest

from tests.harness.server import CastRayServer
from tests.security.conftest import library_leftovers, storage_of

pytestmark = pytest.mark.ray


def _upload_raw(server: CastRayServer, body: bytes, content_type: str) -> tuple[int, dict]:  # type: ignore[type-arg]
    with server.client() as client:
        response = client.post("/api/upload", content=body, headers={"content-type": content_type})
    return response.status_code, response.json()


def _part(filename: bytes, data: bytes = b"hello", boundary: bytes = b"b") -> bytes:
    return (
        b"--"
        + boundary
        + b'\r\nContent-Disposition: form-data; name="file"; filename="'
        + filename
        + b'"\r\n\r\n'
        + data
        + b"\r\n--"
        + boundary
        + b"--\r\n"
    )


def _nested(depth: int) -> list[object]:
    value: list[object] = []
    for _ in range(depth - 1):
        value = [value]
    return value


@pytest.mark.parametrize(
    "name",
    [
        "n" * 217,  # its temporary name would pass 255 bytes
        "n" * 255,
        "é" * 130,  # 260 bytes in UTF-8
        "evil\u202egnp.exe",
        "line\u2028break",
        "c1\u0085",
        " ",
    ],
)
def test_odd_and_over_long_file_names_are_refused_with_400(
    server: CastRayServer, name: str
) -> None:
    status, body = _upload_raw(server, _part(name.encode()), "multipart/form-data; boundary=b")

    assert status == 400, body
    assert body["code"] == "bad_file_name"
    assert library_leftovers(server) == []


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (_part(b"a\rb.txt"), "multipart/form-data; boundary=b"),
        (_part(b"ok.txt"), "multipart/form-data; boundary=" + "z" * 300),
        (_part(b"ok.txt", boundary=b"b"), "multipart/form-data; boundary=other"),
        (
            b'--b\r\nContent-Disposition: form-data; name="file"; filename="x"\r\nX: '
            + b"h" * 10_000
            + b"\r\n\r\ndata\r\n--b--\r\n",
            "multipart/form-data; boundary=b",
        ),
        (b"not multipart at all", "multipart/form-data"),
        (b"--b\r\n\r\n", "multipart/form-data; boundary=b"),
    ],
    ids=["cr-in-name", "long-boundary", "wrong-boundary", "10k-header", "no-boundary", "cut"],
)
def test_malformed_multipart_is_a_400_with_a_reason(
    server: CastRayServer, body: bytes, content_type: str
) -> None:
    status, answer = _upload_raw(server, body, content_type)

    assert status == 400, answer
    assert answer["detail"] and "Traceback" not in answer["detail"]
    assert library_leftovers(server) == []


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/api/file-generator/create", {"size": "1" + "0" * 400}),
        ("POST", "/api/file-generator/create", {"size": 10**400}),
        ("GET", f"/api/transfers?offset={2**63}", None),
        ("GET", f"/api/transfers?limit={2**64}", None),
        (
            "POST",
            "/api/send",
            {
                "sender": "node_1",
                "recipients": ["node_2"],
                "message_type": "json",
                "content": _nested(500),
            },
        ),
        ("POST", "/api/nodes", {"node_id": "\u202e" * 10}),
    ],
    ids=["size-400-digits", "size-int", "offset-2^63", "limit-2^64", "json-500-deep", "node-id"],
)
def test_out_of_range_input_is_a_4xx_not_a_500(
    server: CastRayServer, method: str, path: str, body: object
) -> None:
    with server.client() as client:
        response = client.request(method, path, json=body)

    assert 400 <= response.status_code < 500, response.text
    assert isinstance(response.json()["detail"], str)


def test_an_agent_error_reaches_the_client_without_ray_internals(server: CastRayServer) -> None:
    (storage_of(server, "node_1") / "a-directory").mkdir(exist_ok=True)
    with server.client() as client:
        response = client.post(
            "/api/transfers",
            json={"source_node": "node_1", "file": "a-directory", "recipients": ["node_2"]},
        )

    detail = response.json()["detail"]
    assert response.status_code == 422, detail
    assert "directory" in detail.lower()
    for internal in ("Traceback", 'File "', "\x1b[", "pid=", "ActorID", sys.prefix, "ray::"):
        assert internal not in detail, detail
    assert "\n" not in detail
