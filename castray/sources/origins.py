"""Reading an object from its origin, S3 or HTTP(S), behind one small interface: what the
object is (``info``: size, version, the checksum the origin offers) and its bytes by range
(``read``), each range pinned to that version.

A failure that passes (a connection cut, a 5xx, a timeout) is ``OriginCut``: the fetch asks
again for the rest of its range. One that does not is a ``CastRayError`` with the origin's
reason in words: no such object, access refused, the object changed.

S3 goes through boto3: it measured as fast as obstore against the same S3 server and spent a
third of the CPU (README, "Origins"), and its credential chain is the standard one.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import httpx

from castray.errors import CastRayError, OriginFailed, OriginMissing, SourceChanged
from castray.sources.policy import OriginUrl, Resolved, guard, parse

S3_PIECE = 64 * 1024
"""Bytes read from an S3 answer at a time: what a cut read loses and asks for again."""
REDIRECTS = 5
CONNECT_TIMEOUT = 10.0
READ_TIMEOUT = 30.0


class OriginCut(Exception):
    """A read stopped for a reason that passes (cut, timeout, 5xx): ask again for the rest."""


@dataclass(frozen=True)
class Checksum:
    """What the origin says the whole object's digest is: ``algorithm`` is a hashlib name
    (or ``crc32``), ``digest`` its bytes."""

    algorithm: str
    digest: bytes
    said_by: str
    """Where it came from, for messages: a header's name."""


@dataclass(frozen=True)
class ObjectInfo:
    size: int
    version: str | None
    """ETag (or Last-Modified when there is none): a range of another version is refused."""
    checksum: Checksum | None
    ranges: bool
    """The origin answers ranges: the fetch reads in parallel and resumes a cut read."""


class Origin(Protocol):
    def info(self) -> ObjectInfo: ...

    def read(self, start: int, end: int, out: Callable[[bytes], None]) -> None:
        """Hand ``out`` the bytes ``[start, end)`` as they arrive."""
        ...

    def close(self) -> None: ...


def open_origin(url: str, allowed_hosts: Sequence[str], where: str) -> Origin:
    """The origin of ``url``, checked against the policy again here (``where``: the node
    that fetches, for messages)."""
    parsed = parse(url)
    if parsed.scheme == "s3":
        return S3Origin(parsed, where)
    return HttpOrigin(parsed, allowed_hosts, where)


def _b64(value: str) -> bytes | None:
    try:
        return base64.b64decode(value.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None


def _md5_etag(etag: str | None) -> bytes | None:
    """A single-part upload's ETag is the object's MD5 (a multipart one has a ``-N``)."""
    value = (etag or "").strip('"')
    if len(value) != 32:
        return None
    try:
        return bytes.fromhex(value)
    except ValueError:
        return None


# ---- HTTP ----------------------------------------------------------------------------


def _http_checksum(headers: httpx.Headers, whole: bool) -> Checksum | None:
    """The whole representation's digest, from ``Repr-Digest`` (RFC 9530), ``Digest``
    (RFC 3230) or, of an answer with the ``whole`` object, ``Content-MD5`` (of a range's
    answer, it is the range's)."""
    for header, separator in (("repr-digest", "=:"), ("digest", "=")):
        for item in headers.get(header, "").split(","):
            name, _, value = item.strip().partition(separator)
            algorithm = {"sha-256": "sha256", "sha-512": "sha512", "md5": "md5"}.get(
                name.strip().lower()
            )
            digest = _b64(value.strip(":")) if algorithm else None
            if algorithm and digest:
                return Checksum(algorithm, digest, header)
    md5 = _b64(headers.get("content-md5", "")) if whole else None
    return Checksum("md5", md5, "content-md5") if md5 else None


class HttpOrigin:
    """An object behind HTTP(S), read with Range requests. Every connection goes to the
    address the policy checked; a redirect is followed only to a host the policy allows."""

    def __init__(self, url: OriginUrl, allowed_hosts: Sequence[str], where: str) -> None:
        self._url = url
        self._allowed = list(allowed_hosts)
        self._where = where
        self._client = httpx.Client(
            follow_redirects=False,
            trust_env=False,
            timeout=httpx.Timeout(READ_TIMEOUT, connect=CONNECT_TIMEOUT),
            headers={"Accept-Encoding": "identity"},
        )
        self._target: tuple[OriginUrl, Resolved] | None = None
        self._version: tuple[str, str] | None = None
        """The validator every range is asked with: ("If-Match", ETag) or
        ("If-Unmodified-Since", Last-Modified)."""

    def close(self) -> None:
        self._client.close()

    def _request(self, url: OriginUrl, headers: dict[str, str]) -> httpx.Response:
        resolved = self._checked(url)
        # Connect to the address that was checked; the host name goes in Host and in TLS.
        target = httpx.URL(url.raw).copy_with(host=resolved.address)
        request = self._client.build_request(
            "GET",
            target,
            headers={**headers, "Host": httpx.URL(url.raw).netloc.decode()},
            extensions={"sni_hostname": resolved.host},
        )
        try:
            return self._client.send(request, stream=True)
        except httpx.TransportError as exc:
            raise OriginCut(f"{url.shown} did not answer ({type(exc).__name__}: {exc})") from exc

    def _checked(self, url: OriginUrl) -> Resolved:
        try:
            resolved = guard(url, self._allowed)
        except OSError as exc:
            raise OriginFailed(
                f"{url.shown}: {url.host!r} does not resolve from {self._where} ({exc})"
            ) from exc
        assert resolved is not None  # an http(s) URL always resolves to an address
        return resolved

    def _open(self, headers: dict[str, str]) -> httpx.Response:
        """GET the object, following redirects to allowed hosts only."""
        url = self._target[0] if self._target else self._url
        for _ in range(REDIRECTS + 1):
            response = self._request(url, headers)
            location = response.headers.get("location")
            if response.is_redirect and location:
                response.close()
                url = parse(str(httpx.URL(url.raw).join(location)))
                if url.scheme == "s3":
                    raise OriginFailed(f"{self._url.shown} redirects to a non-HTTP URL")
                continue
            if self._target is None:
                self._target = (url, self._checked(url))
            return response
        raise OriginFailed(f"{self._url.shown} redirects more than {REDIRECTS} times")

    def _fail(self, response: httpx.Response) -> CastRayError | OriginCut:
        status = f"{response.status_code} {response.reason_phrase}".strip()
        shown = self._url.shown
        if response.status_code == 404 or response.status_code == 410:
            return OriginMissing(f"{shown}: the origin has no such object ({status})")
        if response.status_code in (401, 403):
            return OriginFailed(
                f"{shown}: the origin refused access ({status}); check the URL's credentials "
                "or signature (a presigned URL may have expired)"
            )
        if response.status_code == 412:
            return SourceChanged(f"{shown} changed on the origin during the fetch ({status})")
        if response.status_code >= 500 or response.status_code == 429:
            return OriginCut(f"{shown}: the origin answered {status}")
        return OriginFailed(f"{shown}: the origin answered {status}")

    def info(self) -> ObjectInfo:
        response = self._open({"Range": "bytes=0-0"})
        try:
            if response.status_code == 206:
                total = response.headers.get("content-range", "").rpartition("/")[2]
                if not total.isdigit():
                    raise OriginFailed(f"{self._url.shown}: the origin does not say its size")
                size, ranges = int(total), True
            elif response.status_code == 200 and "content-length" in response.headers:
                size, ranges = int(response.headers["content-length"]), False
            elif response.status_code == 416:  # an empty object has no byte 0
                size, ranges = 0, True
            else:
                raise self._fail(response)
            whole = response.status_code == 200 or size == 1
            checksum = _http_checksum(response.headers, whole)
            etag = response.headers.get("etag")
            modified = response.headers.get("last-modified")
        finally:
            response.close()
        if etag and not etag.startswith("W/"):
            self._version = ("If-Match", etag)
        elif modified:
            self._version = ("If-Unmodified-Since", modified)
        return ObjectInfo(size, etag or modified, checksum, ranges)

    def read(self, start: int, end: int, out: Callable[[bytes], None]) -> None:
        headers = {"Range": f"bytes={start}-{end - 1}"}
        if self._version is not None:
            headers[self._version[0]] = self._version[1]
        response = self._open(headers)
        try:
            whole = response.status_code == 200 and start == 0
            if response.status_code != 206 and not whole:
                raise self._fail(response)
            self._check_version(response)
            # As received: a piece held back to fill a buffer would be lost in a cut.
            for piece in response.iter_raw():
                out(piece)
        except httpx.TransportError as exc:
            raise OriginCut(f"{self._url.shown}: the read broke ({exc})") from exc
        finally:
            response.close()

    def _check_version(self, response: httpx.Response) -> None:
        """A server that ignores If-Match still says which version it sent."""
        if self._version is None:
            return
        name = "etag" if self._version[0] == "If-Match" else "last-modified"
        said = response.headers.get(name)
        if said is not None and said != self._version[1]:
            raise SourceChanged(
                f"{self._url.shown} changed on the origin during the fetch ({name} was "
                f"{self._version[1]}, is {said})"
            )


# ---- S3 ------------------------------------------------------------------------------

_MISSING = {"NoSuchKey", "NoSuchBucket", "404", "NotFound"}
_DENIED = {
    "AccessDenied",
    "403",
    "Forbidden",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "ExpiredToken",
    "InvalidToken",
}
_CHANGED = {"PreconditionFailed", "412"}


class S3Origin:
    """An object in S3 or an S3-compatible store. Credentials, region and endpoint come from
    the fetching node's standard chain (environment, profile files, ``AWS_ENDPOINT_URL_S3``
    or ``AWS_ENDPOINT_URL``); they are never passed around nor shown."""

    def __init__(self, url: OriginUrl, where: str) -> None:
        import boto3
        from botocore.config import Config

        self._url = url
        self._where = where
        config = Config(
            retries={"max_attempts": 3, "mode": "standard"},
            max_pool_connections=32,
            connect_timeout=CONNECT_TIMEOUT,
            read_timeout=READ_TIMEOUT,
        )
        self._client: Any = boto3.session.Session().client("s3", config=config)
        self._etag: str | None = None

    def close(self) -> None:
        self._client.close()

    def _call(self, operation: str, **arguments: Any) -> Any:
        from botocore import exceptions as boto

        try:
            return getattr(self._client, operation)(
                Bucket=self._url.host, Key=self._url.key, **arguments
            )
        except boto.NoCredentialsError as exc:
            raise OriginFailed(
                f"{self._url.shown}: {self._where} has no AWS credentials (set them in its "
                "environment or an AWS profile file)"
            ) from exc
        except boto.ClientError as exc:
            raise self._fail(exc) from exc
        except (boto.EndpointConnectionError, boto.ConnectionError) as exc:
            raise OriginCut(f"{self._url.shown}: the S3 endpoint did not answer ({exc})") from exc
        except (boto.ReadTimeoutError, boto.ResponseStreamingError) as exc:
            raise OriginCut(f"{self._url.shown}: the read broke ({exc})") from exc

    def _fail(self, exc: Any) -> CastRayError | OriginCut:
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        said = f"{code or status}: {error.get('Message') or 'no message'}"
        shown = self._url.shown
        if code in _MISSING:
            return OriginMissing(f"{shown}: no such object ({said})")
        if code in _DENIED:
            return OriginFailed(
                f"{shown}: S3 refused access ({said}); check the credentials of {self._where}"
            )
        if code in _CHANGED:
            return SourceChanged(f"{shown} changed in S3 during the fetch ({said})")
        if status >= 500 or code in ("SlowDown", "RequestTimeout"):
            return OriginCut(f"{shown}: S3 answered {said}")
        return OriginFailed(f"{shown}: S3 answered {said}")

    def info(self) -> ObjectInfo:
        head = self._call("head_object", ChecksumMode="ENABLED")
        self._etag = head.get("ETag")
        return ObjectInfo(int(head["ContentLength"]), self._etag, self._checksum(head), True)

    @staticmethod
    def _checksum(head: dict[str, Any]) -> Checksum | None:
        """A full-object checksum S3 keeps (not a multipart one's checksum of checksums),
        else a single-part ETag, which is the MD5 unless KMS encrypted the object."""
        for field, algorithm in (("ChecksumSHA256", "sha256"), ("ChecksumSHA1", "sha1")):
            value = str(head.get(field) or "")
            digest = _b64(value) if value and "-" not in value else None
            if digest and head.get("ChecksumType", "FULL_OBJECT") == "FULL_OBJECT":
                return Checksum(algorithm, digest, f"x-amz-checksum-{algorithm}")
        if head.get("ServerSideEncryption") == "aws:kms" or head.get("SSECustomerAlgorithm"):
            return None
        md5 = _md5_etag(head.get("ETag"))
        return Checksum("md5", md5, "ETag") if md5 else None

    def read(self, start: int, end: int, out: Callable[[bytes], None]) -> None:
        from botocore import exceptions as boto

        extra = {"IfMatch": self._etag} if self._etag else {}
        answer = self._call("get_object", Range=f"bytes={start}-{end - 1}", **extra)
        body = answer["Body"]
        try:
            for piece in body.iter_chunks(S3_PIECE):
                out(piece)
        except (boto.ReadTimeoutError, boto.ResponseStreamingError, OSError) as exc:
            raise OriginCut(f"{self._url.shown}: the read broke ({exc})") from exc
        finally:
            body.close()
