"""The SSRF guard and the masking of URLs: which URLs a transfer may fetch, and how one is
shown (no credentials, no presigned query)."""

from __future__ import annotations

import pytest

from castray.errors import Forbidden, InvalidRequest
from castray.sources import policy


@pytest.mark.parametrize(
    "url",
    ["file:///etc/passwd", "ftp://example.com/x", "gopher://x/", "/just/a/path", "s3://"],
)
def test_only_s3_https_and_http_urls_are_taken(url: str) -> None:
    with pytest.raises(InvalidRequest):
        policy.parse(url)


def test_an_s3_url_names_a_bucket_and_a_key() -> None:
    parsed = policy.parse("s3://models-bucket/llama/weights.safetensors")
    assert (parsed.host, parsed.key, parsed.name) == (
        "models-bucket",
        "llama/weights.safetensors",
        "weights.safetensors",
    )
    assert policy.guard(parsed, []) is None  # no host to judge: the node's configured store
    for bad in ("s3://Bad_Bucket/k", "s3://bucket", "s3://bucket/", "s3://user@bucket/k"):
        with pytest.raises(InvalidRequest):
            policy.parse(bad)


@pytest.mark.parametrize(
    "url",
    [
        "https://127.0.0.1/x",
        "https://localhost/x",
        "https://10.1.2.3/x",
        "https://192.168.0.1/x",
        "https://169.254.169.254/latest/meta-data/",
        "https://[::1]/x",
        "https://[::ffff:127.0.0.1]/x",
        "https://198.18.0.5/x",
    ],
)
def test_inner_addresses_are_refused_unless_listed(url: str) -> None:
    parsed = policy.parse(url)
    with pytest.raises(Forbidden, match="origin_allowed_hosts"):
        policy.guard(parsed, [])
    listed = ["localhost", "127.0.0.0/8", "10.0.0.0/8", "192.168.0.1", "169.254.169.254"]
    listed += ["::1", "::ffff:127.0.0.1", "198.18.0.0/15"]
    resolved = policy.guard(parsed, listed)
    assert resolved is not None and resolved.host == parsed.host


def test_plain_http_goes_only_to_listed_hosts() -> None:
    parsed = policy.parse("http://127.0.0.1:8080/file.bin")
    with pytest.raises(Forbidden, match="plain http"):
        policy.guard(parsed, [])
    with pytest.raises(Forbidden, match="plain http"):
        policy.guard(parsed, ["10.0.0.0/8"])
    resolved = policy.guard(parsed, ["127.0.0.1"])
    assert resolved is not None and (resolved.address, resolved.port) == ("127.0.0.1", 8080)


def test_a_public_https_address_is_allowed() -> None:
    resolved = policy.guard(policy.parse("https://93.184.215.14/x.bin"), [])
    assert resolved is not None and resolved.address == "93.184.215.14"


def test_a_url_is_shown_without_credentials_or_query() -> None:
    shown = policy.mask(
        "https://user:pa55@bucket.example.com:8443/a%20b/c.bin?X-Amz-Signature=SECRET&x=1"
    )
    assert shown == "https://bucket.example.com:8443/a%20b/c.bin?<hidden>"
    assert "SECRET" not in shown and "pa55" not in shown
    parsed = policy.parse("https://h.example.com/dir/model.bin?sig=abc")
    assert parsed.shown == "https://h.example.com/dir/model.bin?<hidden>"
    assert parsed.name == "model.bin"
    with pytest.raises(InvalidRequest, match="names no file"):
        _ = policy.parse("https://h.example.com/").name
