"""Real origin servers on loopback ports, each keeping a log of the byte ranges it served:
an HTTP server with Range, ETag and If-Match support (and faults to order), and moto's S3
server (its WSGI app, as ``moto_server`` runs it) behind a recording layer."""

from __future__ import annotations

import base64
import hashlib
import itertools
import re
import socket
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from typing_extensions import Self

_RANGE = re.compile(r"bytes=(\d+)-(\d*)")
UPLOAD = """
import sys, time, boto3
from botocore.exceptions import EndpointConnectionError
s3 = boto3.client("s3")
for _ in range(300):
    try:
        s3.create_bucket(Bucket=sys.argv[1])
        break
    except EndpointConnectionError:
        time.sleep(0.2)
s3.upload_file(sys.argv[3], sys.argv[1], sys.argv[2])
"""
"""``python -c UPLOAD BUCKET KEY FILE``: upload FILE once the S3 server (just started) answers."""


def _span(header: str | None, size: int) -> tuple[int, int] | None:
    """``[start, end)`` of a Range header, or None for the whole."""
    found = _RANGE.fullmatch(header or "")
    if found is None:
        return None
    start = int(found[1])
    end = int(found[2]) + 1 if found[2] else size
    return start, min(end, size)


@dataclass
class RangeLog:
    """Byte ranges served, as ``(start, end)`` pairs of whole bodies sent (a cut one counts
    for the bytes it sent)."""

    ranges: list[tuple[int, int]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    file: Path | None = None
    """Also written here, one ``start end`` line per range (a server in another process)."""

    def add(self, start: int, end: int) -> None:
        with self.lock:
            self.ranges.append((start, end))
            if self.file is not None:
                with self.file.open("a") as out:
                    out.write(f"{start} {end}\n")

    @classmethod
    def read(cls, file: Path) -> RangeLog:
        """The log a server in another process kept in ``file``."""
        lines = file.read_text().split() if file.exists() else []
        pairs = [(int(a), int(b)) for a, b in zip(lines[::2], lines[1::2], strict=True)]
        return cls(ranges=pairs)

    def bytes_served(self) -> int:
        return sum(end - start for start, end in self.ranges)

    def overlaps(self, probe: bool = False) -> list[tuple[int, int]]:
        """Ranges that overlap an earlier one: bytes read twice (``probe``: but for the first
        range, one byte that an HTTP fetch asks for to learn the size)."""
        ranges = self.ranges[1:] if probe and self.ranges[:1] == [(0, 1)] else self.ranges
        seen = sorted(r for r in ranges if r[1] > r[0])
        return [b for a, b in itertools.pairwise(seen) if b[0] < a[1]]


HOLD_TIMEOUT = 120.0
"""Seconds a held answer waits at most (a test that failed never leaves it hanging)."""


@dataclass
class HttpFaults:
    cut_after: int | None = None
    """Close the connection once this many bytes of one answer went out (once)."""
    change_after: int | None = None
    """After this many answers with a body, the object's content (and ETag) changes."""
    wrong_digest: bool = False
    """Say a ``Repr-Digest`` (RFC 9530) that is not the object's."""
    redirects: dict[str, str] = field(default_factory=dict)
    """Paths answered with a 302 to a URL."""
    require_query: str | None = None
    """Answer 403 unless the query string is exactly this (a presigned URL's signature)."""
    hold_from: int | None = None
    """Answers for a range from this byte on wait for ``release`` before their body."""
    release: threading.Event = field(default_factory=threading.Event)


class _Served:
    """A server object on a thread of its own, stopped when the block ends."""

    _server: Any
    _thread: threading.Thread

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()


class _HttpServer(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that hangs up mid-body (a cancelled fetch, a cut the test made) is what
        the tests do on purpose: not a traceback in the log. Anything else still prints."""
        if isinstance(sys.exc_info()[1], ConnectionError):
            return
        super().handle_error(request, client_address)


class _Http6Server(_HttpServer):
    address_family = socket.AF_INET6


class RangeServer(_Served):
    """Serves the files of ``root`` with Range requests, a strong ETag and If-Match."""

    def __init__(self, root: Path, host: str = "127.0.0.1") -> None:
        self.root = root
        self.host = host
        self.log = RangeLog()
        self.faults = HttpFaults()
        self.answers = 0
        self.queries: list[str] = []
        server_class = _Http6Server if ":" in host else _HttpServer
        self._server = server_class((host, 0), self._handler())
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def url(self, name: str, query: str = "") -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/{name}" + (f"?{query}" if query else "")

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                path, _, query = self.path.partition("?")
                server.queries.append(query)
                if path in server.faults.redirects:
                    self._answer(302, b"", {"Location": server.faults.redirects[path]})
                    return
                if server.faults.require_query is not None and (
                    query != server.faults.require_query
                ):
                    self._answer(403, b"signature does not match")
                    return
                file = server.root / path.lstrip("/")
                if not file.is_file():
                    self._answer(404, b"no such file")
                    return
                server._maybe_change(file)
                data = file.read_bytes()
                etag = '"' + hashlib.sha256(data).hexdigest()[:32] + '"'
                if self.headers.get("If-Match") not in (None, etag):
                    self._answer(412, b"changed")
                    return
                span = _span(self.headers.get("Range"), len(data))
                if span is not None and span[0] >= len(data):
                    self._answer(416, b"", {"Content-Range": f"bytes */{len(data)}"})
                    return
                start, end = span or (0, len(data))
                digest = hashlib.sha256(data + b"x" * server.faults.wrong_digest).digest()
                headers = {
                    "ETag": etag,
                    "Accept-Ranges": "bytes",
                    "Repr-Digest": f"sha-256=:{base64.b64encode(digest).decode()}:",
                }
                if span is not None:
                    headers["Content-Range"] = f"bytes {start}-{end - 1}/{len(data)}"
                self._answer(206 if span else 200, data[start:end], headers, start)

            def _answer(
                self, status: int, body: bytes, headers: dict[str, str] | None = None, at: int = 0
            ) -> None:
                self.send_response(status)
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if status >= 300:
                    self.wfile.write(body)
                    return
                server.answers += 1
                hold = server.faults.hold_from
                if hold is not None and at >= hold:
                    server.faults.release.wait(HOLD_TIMEOUT)
                cut = server.faults.cut_after
                if cut is not None and cut < len(body):
                    server.faults.cut_after = None
                    self.wfile.write(body[:cut])
                    self.wfile.flush()
                    server.log.add(at, at + cut)
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return
                self.wfile.write(body)
                server.log.add(at, at + len(body))

        return Handler

    def _maybe_change(self, file: Path) -> None:
        if self.faults.change_after is not None and self.answers >= self.faults.change_after:
            self.faults.change_after = None
            data = bytearray(file.read_bytes())
            data[0] ^= 0xFF
            file.write_bytes(data)


class S3Server(_Served):
    """moto's S3 server on a loopback port (or ``host``:``port``); ``log`` has the ranges of
    every object GET."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        from moto.moto_server.werkzeug_app import (
            DomainDispatcherApplication,
            MotoRequestHandler,
            create_backend_app,
        )
        from werkzeug.serving import make_server

        self.log = RangeLog()
        app = DomainDispatcherApplication(create_backend_app)
        self._server = make_server(
            host, port, self._recording(app), True, request_handler=MotoRequestHandler
        )
        self.port = self._server.server_address[1]
        self.endpoint = f"http://{host}:{self.port}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def _recording(self, app: Callable[..., Any]) -> Callable[..., Any]:
        def recording(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
            """Each ranged GET answered, as the bytes its answer holds (``bytes=N-`` too)."""
            found = _RANGE.fullmatch(environ.get("HTTP_RANGE") or "")
            if environ["REQUEST_METHOD"] != "GET" or found is None:
                return app(environ, start_response)

            def starting(status: str, headers: list[tuple[str, str]], *rest: Any) -> Any:
                length = dict((k.lower(), v) for k, v in headers).get("content-length")
                if status.startswith("206") and length is not None:
                    self.log.add(int(found[1]), int(found[1]) + int(length))
                return start_response(status, headers, *rest)

            return app(environ, starting)

        return recording

    def env(self) -> dict[str, str]:
        """What a process needs to use this server through the standard AWS chain."""
        return {
            "AWS_ACCESS_KEY_ID": "castray-test",
            "AWS_SECRET_ACCESS_KEY": "castray-test-secret",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ENDPOINT_URL_S3": self.endpoint,
        }

    def client(self) -> Any:
        import boto3

        env = self.env()
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name=env["AWS_DEFAULT_REGION"],
            aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
        )


@contextmanager
def aws_env(values: dict[str, str]) -> Iterator[None]:
    """This process's environment with ``values`` for the duration (boto3 reads it)."""
    import os

    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def main() -> None:
    """``python -m tests.harness.origins HOST PORT LOG``: an S3 server (inside a lab host, say)
    until it is stopped, writing the range of every GET to LOG."""
    import signal
    import sys

    host, port, log = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3])
    server = S3Server(host, port)
    server.log.file = log
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with server:
        print(f"S3 server at {server.endpoint}", flush=True)
        stop.wait()


if __name__ == "__main__":
    main()
