"""A multipart upload streamed into the library: only the part named ``file`` is kept.

The body is parsed as it arrives (python-multipart), straight into a ``LibraryWriter``, so an
upload of any size needs little memory and nothing partial is ever listed. Whatever makes the
body unreadable (a bad boundary, an over-long header, a part without a file name) is one
``BadUpload`` or ``BadFileName`` (400) with what was wrong. Every method does disk I/O: call
them from a worker thread.
"""

from __future__ import annotations

from typing import Any

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header

from castray.errors import BadUpload
from castray.models import UploadResult
from castray.server.library import Library, LibraryWriter, check_file_name

MAX_PART_HEADER_BYTES = 8 * 1024
"""Longest header line a part may have (a file name is far shorter)."""


def boundary_of(content_type: str) -> bytes:
    """The multipart boundary of a ``Content-Type`` header; 400 when it is not multipart."""
    kind, params = parse_options_header(content_type)
    boundary = params.get(b"boundary")
    if kind != b"multipart/form-data" or not boundary or len(boundary) > 200:
        raise BadUpload(
            "send the file as multipart/form-data (with a boundary) in a field named 'file'"
        )
    return boundary


class MultipartUpload:
    """Parser callbacks that write the ``file`` part into the library as it arrives."""

    def __init__(self, library: Library, boundary: bytes, limit: int) -> None:
        self._library = library
        self._limit = limit
        self._headers: dict[bytes, bytes] = {}
        self._field = b""
        self._value = b""
        self._writer: LibraryWriter | None = None
        self._result: UploadResult | None = None
        self._parser = MultipartParser(boundary, self._callbacks())

    def write(self, data: bytes) -> None:
        try:
            self._parser.write(data)
        except FormParserError as exc:
            raise BadUpload(f"the multipart body cannot be read: {_first_line(exc)}") from None

    def finish(self) -> UploadResult:
        """The stored file, once the body has ended with a complete ``file`` part."""
        try:
            self._parser.finalize()
        except FormParserError as exc:
            raise BadUpload(f"the multipart body cannot be read: {_first_line(exc)}") from None
        if self._result is None:
            raise BadUpload("no complete 'file' part in the upload")
        return self._result

    def abort(self) -> None:
        """Drop what was written (nothing, after a finish)."""
        if self._writer is not None:
            self._writer.discard()

    def _callbacks(self) -> Any:
        return {
            "on_header_field": self._on_header_field,
            "on_header_value": self._on_header_value,
            "on_header_end": self._on_header_end,
            "on_headers_finished": self._on_headers_finished,
            "on_part_data": self._on_part_data,
            "on_part_end": self._on_part_end,
        }

    def _on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._field += data[start:end]
        self._check_header()

    def _on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]
        self._check_header()

    def _check_header(self) -> None:
        if len(self._field) + len(self._value) > MAX_PART_HEADER_BYTES:
            raise BadUpload(f"a part header is longer than {MAX_PART_HEADER_BYTES} bytes")

    def _on_header_end(self) -> None:
        self._headers[self._field.lower()] = self._value
        self._field, self._value = b"", b""

    def _on_headers_finished(self) -> None:
        _, params = parse_options_header(self._headers.get(b"content-disposition", b""))
        self._headers = {}
        if params.get(b"name") != b"file" or self._writer is not None:
            return
        raw = params.get(b"filename")
        if not raw:
            raise BadUpload("the 'file' part has no filename")
        try:
            name = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise BadUpload("the file name is not UTF-8") from None
        self._writer = self._library.create(check_file_name(name), self._limit)

    def _on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self._writer is not None and self._result is None:
            self._writer.write(memoryview(data)[start:end])

    def _on_part_end(self) -> None:
        if self._writer is not None and self._result is None:
            writer = self._writer
            digest = writer.commit()
            self._result = UploadResult(
                file=writer.name, size=writer.size, blake3=digest, replaced=writer.replaced
            )


def _first_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__
