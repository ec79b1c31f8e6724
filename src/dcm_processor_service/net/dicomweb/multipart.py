"""``multipart/related`` bodies in bounded memory (PS3.18 8.6: STOW-RS requests, WADO-RS
responses).

:class:`MultipartWriter` is a request body made of files and byte strings: it knows its
exact length up front (so no chunked encoding is needed - some archives refuse it) and
yields the files in 1 MiB blocks, so memory does not grow with the study.
:func:`read_parts` splits a response stream into its parts, writing each body to a
file as the bytes arrive; a part never has to fit in memory either.
"""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from ..._errors import DicomInputError

__all__ = ["BLOCK", "MultipartWriter", "ReceivedPart", "boundary_of", "read_parts"]

#: Bytes read from a file per block of a request body.
BLOCK = 1 << 20


@dataclass(frozen=True)
class _Part:
    path: Path | None
    data: bytes | None
    size: int


class MultipartWriter:
    """A ``multipart/related; type="application/dicom"`` request body.

    Add parts with :meth:`add_file` / :meth:`add_bytes`, then hand the writer to the
    HTTP client as its content (with :attr:`content_type` and :attr:`content_length`).
    :attr:`finished` turns True once the last byte was handed over: a failure after that
    means the peer got the whole request (the send is in doubt).
    """

    def __init__(self, media_type: str = "application/dicom") -> None:
        self.boundary = "dcmps-" + secrets.token_hex(16)
        self.media_type = media_type
        self._parts: list[_Part] = []
        self.finished = False

    @property
    def content_type(self) -> str:
        """The request's Content-Type header."""
        return f'multipart/related; type="{self.media_type}"; boundary={self.boundary}'

    def _head(self) -> bytes:
        return f"--{self.boundary}\r\nContent-Type: {self.media_type}\r\n\r\n".encode("ascii")

    def _tail(self) -> bytes:
        return f"\r\n--{self.boundary}--\r\n".encode("ascii")

    def add_file(self, path: Path) -> None:
        """A part holding the file's bytes (read when the body is sent)."""
        self._parts.append(_Part(path, None, path.stat().st_size))

    def add_bytes(self, data: bytes) -> None:
        """A part holding ``data``."""
        self._parts.append(_Part(None, data, len(data)))

    @property
    def content_length(self) -> int:
        """The exact length of the body."""
        head = len(self._head())
        separators = 2 * max(0, len(self._parts) - 1)
        return sum(head + p.size for p in self._parts) + separators + len(self._tail())

    def __iter__(self) -> Iterator[bytes]:
        self.finished = False
        for number, part in enumerate(self._parts):
            yield (b"\r\n" if number else b"") + self._head()
            if part.data is not None:
                yield part.data
                continue
            assert part.path is not None
            sent = 0
            with open(part.path, "rb") as fh:
                while block := fh.read(BLOCK):
                    sent += len(block)
                    yield block
            if sent != part.size:
                raise DicomInputError(
                    f"{part.path}: the file changed size while it was being sent "
                    f"({part.size} -> {sent} bytes)"
                )
        yield self._tail()
        self.finished = True


_BOUNDARY = re.compile(r'boundary="?([^";,]+)"?', re.IGNORECASE)


def boundary_of(content_type: str) -> str:
    """The boundary of a ``multipart/related`` Content-Type header."""
    found = _BOUNDARY.search(content_type or "")
    if not content_type.lower().startswith("multipart/") or found is None:
        raise DicomInputError(f"expected a multipart/related answer, got {content_type!r}")
    return found.group(1)


@dataclass(frozen=True)
class ReceivedPart:
    """One body part written to ``path``: its Content-Type and size."""

    path: Path
    content_type: str
    size: int


class _Stream:
    """A byte stream read through a buffer that never holds more than one chunk plus a
    delimiter's length (beyond what the caller asked to keep)."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self.buffer = b"\r\n"  # so a boundary on the first line matches the delimiter
        self._chunks = iter(chunks)

    def fill(self) -> bool:
        """Append the next non-empty chunk; False at the end of the stream."""
        for chunk in self._chunks:
            if chunk:
                self.buffer += chunk
                return True
        return False

    def skip_to(self, delimiter: bytes) -> bool:
        """Drop everything up to and including ``delimiter``; False if it never comes."""
        while (at := self.buffer.find(delimiter)) < 0:
            self.buffer = self.buffer[-len(delimiter) :]
            if not self.fill():
                return False
        self.buffer = self.buffer[at + len(delimiter) :]
        return True

    def copy_to(self, delimiter: bytes, out: BinaryIO) -> int | None:
        """Write everything before ``delimiter`` to ``out`` and drop the delimiter;
        the bytes written, or None when the stream ends first."""
        written = 0
        keep = len(delimiter) - 1
        while (at := self.buffer.find(delimiter)) < 0:
            if len(self.buffer) > keep:
                out.write(self.buffer[:-keep])
                written += len(self.buffer) - keep
                self.buffer = self.buffer[-keep:]
            if not self.fill():
                return None
        out.write(self.buffer[:at])
        self.buffer = self.buffer[at + len(delimiter) :]
        return written + at


def read_parts(
    chunks: Iterable[bytes],
    boundary: str,
    new_file: Callable[[int], Path],
) -> Iterator[ReceivedPart]:
    """Split a multipart stream into files: yields each part once it is complete.

    ``new_file(n)`` names the file for part ``n`` (0-based). Memory: one chunk plus the
    boundary length. A stream that ends before the closing boundary raises
    :class:`DicomInputError` (the parts completed before it were yielded; the file of
    the incomplete part is removed).
    """
    delimiter = b"\r\n--" + boundary.encode("ascii")
    stream = _Stream(chunks)
    if not stream.skip_to(delimiter):
        raise DicomInputError("the multipart answer holds no part (no boundary found)")
    number = 0
    while True:
        while len(stream.buffer) < 2 and stream.fill():
            pass
        if stream.buffer.startswith(b"--"):
            return  # the closing boundary
        while (end := stream.buffer.find(b"\r\n\r\n")) < 0:
            if not stream.fill():
                raise DicomInputError(
                    f"the multipart answer ends inside the headers of part {number}"
                )
        headers = stream.buffer[:end].decode("latin-1").split("\r\n")
        stream.buffer = stream.buffer[end + 4 :]
        content_type = next(
            (h.split(":", 1)[1].strip() for h in headers if h.lower().startswith("content-type:")),
            "",
        )
        path = new_file(number)
        with open(path, "wb") as out:
            size = stream.copy_to(delimiter, out)
        if size is None:
            os.unlink(path)
            raise DicomInputError(f"the multipart answer ends inside part {number} (truncated)")
        yield ReceivedPart(path, content_type, size)
        number += 1
