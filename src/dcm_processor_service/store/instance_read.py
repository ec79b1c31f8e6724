"""Reading a stored DICOM instance whole, with its checksum verified where it is cheapest.

:meth:`Store.read_instance <dcm_processor_service.store.base.Store.read_instance>`
returns a :class:`StoredBytes`: the instance's bytes and what its record says they must
be (size, sha256). Bytes kept as a file (the SQLite store's blob folder, a PostgreSQL
``blob_dir``) are read with one system call and **not yet verified**:
:meth:`StoredBytes.verify` checks them - a caller decoding many instances runs it in a
helper thread while it decodes (``hashlib`` releases the GIL on large buffers, so the
check costs little wall time) and hands nothing on before it passed. Other blob stores
verify while they stream (``verified`` is then already true).

Nothing read here is trusted before :meth:`StoredBytes.verify` returned.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .._errors import NotFoundError, StorageError
from .blobs import BlobInfo, BlobStore, DirectoryBlobStore, check_integrity

if TYPE_CHECKING:
    from .records import InstanceRecord

__all__ = ["StoredBytes", "instance_blob", "read_blob"]


@dataclass(frozen=True)
class StoredBytes:
    """The bytes of a stored object and what its record says they must be."""

    data: bytes
    info: BlobInfo
    """the blob read: key, recorded size and sha256"""
    what: str
    """names the object in errors (``DICOM instance <SOPInstanceUID>``)"""
    verified: bool = False
    """whether the reader checked size and sha256 already"""

    def verify(self) -> bytes:
        """The bytes, once their size and sha256 match the record;
        :class:`~dcm_processor_service.IntegrityError` naming the object otherwise."""
        if not self.verified:
            found = BlobInfo(self.info.key, len(self.data), hashlib.sha256(self.data).hexdigest())
            check_integrity(self.what, found, self.info.size, self.info.sha256)
        return self.data


def instance_blob(instance: InstanceRecord) -> tuple[BlobInfo, str]:
    """The blob an instance record points at, and the instance's name for messages."""
    info = BlobInfo(str(instance["BlobKey"]), int(instance["Size"]), instance["SHA256"] or "")
    return info, f"DICOM instance {instance['SOPInstanceUID']}"


def read_blob(blobs: BlobStore, info: BlobInfo, what: str) -> StoredBytes:
    """Blob ``info`` whole: a blob file with one ``read`` (verification left to
    :meth:`StoredBytes.verify`), any other blob through its verifying reader.
    :class:`NotFoundError` when the blob is gone."""
    if isinstance(blobs, DirectoryBlobStore):
        return StoredBytes(_read_file(blobs, info, what), info, what)
    with blobs.open(info, what) as reader:
        # read(n) past the recorded size reaches the end of the stream, where the
        # verifying reader checks size and sha256 (read() would go 8 KiB at a time)
        data = reader.read(info.size + 1)
        while chunk := reader.read(info.size + 1):  # only a stream returning short reads
            data += chunk
    return StoredBytes(data, info, what, verified=True)


def _read_file(blobs: DirectoryBlobStore, info: BlobInfo, what: str) -> bytes:
    """The bytes of a blob file: up to one byte more than recorded (a longer file fails
    verification), in one ``read`` for a regular file."""
    path = blobs.path(info.key)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise NotFoundError(f"{what}: stored bytes are missing ({path})") from None
    except OSError as exc:
        raise StorageError(f"cannot read {what} ({path}): {exc.strerror or exc}") from exc
    try:
        want = info.size + 1
        data = os.read(fd, want)
        if 0 < len(data) < want:  # a short read (not at the end yet?): read on
            parts = [data]
            while want > (got := sum(map(len, parts))) and (chunk := os.read(fd, want - got)):
                parts.append(chunk)
            data = b"".join(parts)
        return data
    except OSError as exc:
        raise StorageError(f"cannot read {what} ({path}): {exc.strerror or exc}") from exc
    finally:
        os.close(fd)
