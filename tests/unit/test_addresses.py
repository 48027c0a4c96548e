"""The Ray addresses users type, and the ones that get a clear 422."""

from __future__ import annotations

import re

import pytest

from castray.addresses import AddressKind, parse_address
from castray.errors import InvalidRequest


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
