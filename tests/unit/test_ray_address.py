"""The Ray addresses users type, and what answers there."""

from __future__ import annotations

import asyncio
import re

import httpx
import pytest

from castray.errors import InvalidRequest
from castray.ray_address import (
    AddressKind,
    Answer,
    DashboardFacts,
    clean_version,
    parse_address,
    probe_dashboard,
    same_endpoint,
)


@pytest.mark.parametrize(
    ("text", "kind", "host_port"),
    [
        ("127.0.0.1:8265", AddressKind.HOST_PORT, "127.0.0.1:8265"),
        ("http://127.0.0.1:8265", AddressKind.DASHBOARD, "127.0.0.1:8265"),
        ("http://localhost:8265/", AddressKind.DASHBOARD, "localhost:8265"),
        ("ray://head.example.org:10001", AddressKind.CLIENT, "head.example.org:10001"),
        (" 10.1.2.3:6379 ", AddressKind.HOST_PORT, "10.1.2.3:6379"),
        ("[::1]:6379", AddressKind.HOST_PORT, "[::1]:6379"),
    ],
)
def test_addresses_users_type(text: str, kind: AddressKind, host_port: str) -> None:
    address = parse_address(text)

    assert address.kind is kind
    assert address.host_port == host_port


@pytest.mark.parametrize(
    "text",
    [
        "",
        "not an address",
        "127.0.0.1",
        "127.0.0.1:",
        ":8265",
        "host:port",
        "host:70000",
        "ftp://h:21",
        "http://h:8265/api",
        "h:0",
        "a b:1",
        "-bad-:80",
    ],
)
def test_bogus_addresses_are_refused_with_examples(text: str) -> None:
    with pytest.raises(InvalidRequest, match=re.escape("127.0.0.1:8265")):
        parse_address(text)


@pytest.mark.parametrize(
    ("a", "b", "same"),
    [
        ("127.0.0.1:6379", "127.0.0.1:6379", True),
        ("127.0.0.1:6379", "127.0.0.5:6379", True),  # both this machine
        ("127.0.0.1:6379", "127.0.0.1:6380", False),
        ("192.0.2.77:6379", "127.0.0.1:6379", False),
        ("0.0.0.0:8265", "127.0.0.3:8265", True),
    ],
)
def test_one_listener_by_any_of_this_machines_addresses(a: str, b: str, same: bool) -> None:
    assert same_endpoint(a, b) is same


@pytest.mark.parametrize(
    ("reported", "kept"),
    [
        ("2.60.0", "2.60.0"),
        ("2.40.0", "2.40.0"),
        ("3.0.0rc1", "3.0.0rc1"),
        ("2.61.0.dev0", "2.61.0.dev0"),
        ("<script>alert(1)</script>", None),
        ("2.60.0; rm -rf /", None),
        (260, None),
    ],
)
def test_a_peers_version_is_kept_only_when_it_looks_like_one(reported: object, kept: str) -> None:
    assert clean_version(reported) == kept


def _dashboard(
    routes: dict[str, tuple[int, object]], seen: list[httpx.Request]
) -> httpx.AsyncClient:
    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        status, body = routes.get(request.url.path, (404, "404: Not Found"))
        if isinstance(body, dict) and "token" in request.headers.get("authorization", ""):
            status = 200
        return (
            httpx.Response(status, json=body)
            if isinstance(body, dict)
            else httpx.Response(status, text=str(body))
        )

    return httpx.AsyncClient(transport=httpx.MockTransport(answer))


def test_an_older_ray_dashboard_is_recognised_without_its_newer_endpoints() -> None:
    seen: list[httpx.Request] = []
    routes = {"/api/version": (200, {"ray_version": "2.40.0", "session_name": "session_x"})}

    async def probe() -> DashboardFacts:
        async with _dashboard(routes, seen) as http:
            return await probe_dashboard(http, "http://h:8265", "secret")

    facts = asyncio.run(probe())

    assert facts == DashboardFacts(Answer.RAY, ray_version="2.40.0", session_name="session_x")
    assert all("authorization" not in r.headers for r in seen)  # never asked, never sent


def test_the_token_goes_only_to_a_dashboard_that_asks_for_one() -> None:
    seen: list[httpx.Request] = []
    routes = {
        "/api/version": (401, {"ray_version": "2.60.0"}),
        "/api/authentication_mode": (200, {"authentication_mode": "token"}),
    }

    async def probe(token: str | None) -> DashboardFacts:
        async with _dashboard(routes, seen) as http:
            return await probe_dashboard(http, "http://h:8265", token)

    without = asyncio.run(probe(None))
    with_token = asyncio.run(probe("token-123"))

    assert without.needs_token and without.ray_version is None
    assert with_token.ray_version == "2.60.0" and with_token.auth_required
    sent = [r.headers.get("authorization") for r in seen if "authorization" in r.headers]
    assert sent == ["Bearer token-123"]


def test_http_that_is_not_a_ray_dashboard_is_told_apart() -> None:
    async def probe() -> DashboardFacts:
        async with _dashboard({"/api/version": (200, {"hello": "world"})}, []) as http:
            return await probe_dashboard(http, "http://h:80", None)

    assert asyncio.run(probe()).answer is Answer.NOT_RAY
