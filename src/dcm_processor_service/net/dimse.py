"""DIMSE messages over P-DATA-TF (PS3.7, PS3.8 9.3.5): the C-STORE and C-ECHO command
sets, a message split into PDUs no longer than the peer accepts, and the response
command read back into a status dataset.

A response's status is kept as a plain :class:`DimseStatus` (no pydicom on the send
path); :meth:`DimseStatus.as_dataset` makes it the status dataset pynetdicom would return.

A message is its command set, then (C-STORE) the encoded dataset; each goes out as
PDVs of at most the peer's maximum PDU length, one PDV per P-DATA-TF PDU.
:class:`MessageWriter` yields them in batches of at most 4 MiB of data: the dataset is
read from its file into one reused buffer (the same "send the raw dataset from the
file" idea as pynetdicom's ``STORE_SEND_CHUNKED_DATASET``), never parsed.

Pure functions over bytes: no socket here (that is :mod:`.transport`).
"""

from __future__ import annotations

import io
import struct
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Final, NamedTuple

from .pdu import P_DATA_HEADER, PduType, ProtocolError, iter_pdvs

if TYPE_CHECKING:
    from pathlib import Path

    from pydicom.dataset import Dataset

__all__ = [
    "C_ECHO_RSP",
    "C_STORE_RSP",
    "READ_BLOCK",
    "VERIFICATION_SOP_CLASS",
    "DimseStatus",
    "FileRegion",
    "MessageWriter",
    "PayloadError",
    "Response",
    "add_command_fragments",
    "c_echo_rq",
    "c_store_rq",
    "parse_response",
    "status_dataset",
]

VERIFICATION_SOP_CLASS: Final = "1.2.840.10008.1.1"
#: Command Field (0000,0100) values.
C_STORE_RQ: Final = 0x0001
C_STORE_RSP: Final = 0x8001
C_ECHO_RQ: Final = 0x0030
C_ECHO_RSP: Final = 0x8030
#: Bytes of a file read and sent per batch (one ``sendmsg`` run).
READ_BLOCK: Final = 4 * 1024 * 1024
_P_DATA_TF: Final = int(PduType.P_DATA_TF)
_NO_DATASET: Final = 0x0101  # Command Data Set Type (0000,0800): no dataset follows
_HAS_DATASET: Final = 0x0000

# Command set elements (group 0000).
_AFFECTED_SOP_CLASS: Final = 0x00000002
_COMMAND_FIELD: Final = 0x00000100
_MESSAGE_ID: Final = 0x00000110
_RESPONDED_MESSAGE_ID: Final = 0x00000120
_PRIORITY: Final = 0x00000700
_DATA_SET_TYPE: Final = 0x00000800
_STATUS: Final = 0x00000900
_OFFENDING_ELEMENT: Final = 0x00000901
_ERROR_COMMENT: Final = 0x00000902
_ERROR_ID: Final = 0x00000903
_AFFECTED_SOP_INSTANCE: Final = 0x00001000
_US_ELEMENTS: Final = frozenset(
    {_COMMAND_FIELD, _RESPONDED_MESSAGE_ID, _STATUS, _ERROR_ID, _DATA_SET_TYPE}
)


class PayloadError(Exception):
    """The instance's bytes could not be read while its C-STORE was being sent (the
    association had to be aborted); a local problem of this one instance."""


class FileRegion(NamedTuple):
    """The encoded dataset inside a DICOM file: bytes from ``offset`` to the end."""

    path: Path
    offset: int


# -- command sets ------------------------------------------------------------------------------
def _encode_element(tag: int, value: bytes) -> bytes:
    if len(value) % 2:
        value += b"\x00"
    return struct.pack("<HHI", tag >> 16, tag & 0xFFFF, len(value)) + value


def _encode_command(elements: Sequence[tuple[int, bytes]]) -> bytes:
    """Encode a command set (group 0000, Implicit VR Little Endian) with its group length."""
    body = b"".join(_encode_element(tag, value) for tag, value in elements)
    return _encode_element(0x00000000, struct.pack("<I", len(body))) + body


def _us(value: int) -> bytes:
    return struct.pack("<H", value)


def _ui(value: str) -> bytes:
    return value.encode("ascii")


def c_store_rq(message_id: int, sop_class: str, sop_instance: str, priority: int = 0) -> bytes:
    """The command set of a C-STORE-RQ (a dataset follows it)."""
    return _encode_command(
        [
            (_AFFECTED_SOP_CLASS, _ui(sop_class)),
            (_COMMAND_FIELD, _us(C_STORE_RQ)),
            (_MESSAGE_ID, _us(message_id)),
            (_PRIORITY, _us(priority)),
            (_DATA_SET_TYPE, _us(_HAS_DATASET)),
            (_AFFECTED_SOP_INSTANCE, _ui(sop_instance)),
        ]
    )


def c_echo_rq(message_id: int) -> bytes:
    """The command set of a C-ECHO-RQ (no dataset)."""
    return _encode_command(
        [
            (_AFFECTED_SOP_CLASS, _ui(VERIFICATION_SOP_CLASS)),
            (_COMMAND_FIELD, _us(C_ECHO_RQ)),
            (_MESSAGE_ID, _us(message_id)),
            (_DATA_SET_TYPE, _us(_NO_DATASET)),
        ]
    )


# -- responses ---------------------------------------------------------------------------------
class DimseStatus(NamedTuple):
    """The status part of a DIMSE response (PS3.7 C.4): ``status`` plus the optional
    Error Comment (made a valid LO), Error ID and Offending Element tags."""

    status: int
    error_comment: str | None = None
    error_id: int | None = None
    offending: tuple[int, ...] = ()

    @classmethod
    def of(
        cls,
        status: int,
        *,
        error_comment: object = None,
        error_id: object = None,
        offending: object = None,
    ) -> DimseStatus:
        """The status from a response's values: ``offending`` as (group, element) pairs;
        an empty comment, a non-integer error id and an empty list are left out."""
        return cls(
            int(status),
            _clean_lo(str(error_comment)) if error_comment else None,
            error_id if isinstance(error_id, int) else None,
            tuple((g << 16) | e for g, e in offending) if isinstance(offending, list) else (),
        )

    @property
    def Status(self) -> int:
        """``status``, named as on the status dataset (``rsp.Status`` reads the same on
        both)."""
        return self.status

    def as_dataset(self) -> Dataset:
        """The status dataset as pynetdicom returns it: ``Status`` plus ``ErrorComment``,
        ``ErrorID`` and ``OffendingElement`` when present (imports pydicom)."""
        from pydicom.dataset import Dataset

        ds = Dataset()
        ds.Status = self.status
        if self.error_comment:
            ds.ErrorComment = self.error_comment
        if self.error_id is not None:
            ds.ErrorID = self.error_id
        if self.offending:
            ds.OffendingElement = list(self.offending)
        return ds


class Response(NamedTuple):
    """A DIMSE response: its command field, the message id it answers, and its status."""

    command_field: int | None
    message_id: int | None
    status: DimseStatus


def add_command_fragments(pdu: bytes, fragments: list[bytes]) -> bool:
    """Append the command-set fragments of a P-DATA-TF ``pdu`` (with its header) to
    ``fragments``; True when the last fragment of the command came. Dataset fragments
    (C-STORE and C-ECHO responses have none) are ignored."""
    done = False
    for _ctx, ctrl, data in iter_pdvs(memoryview(pdu)[6:]):
        if ctrl & 0x01:
            fragments.append(bytes(data))
            done = done or bool(ctrl & 0x02)
    return done


def parse_response(data: bytes) -> Response:
    """Decode a C-STORE/C-ECHO response command set (Implicit VR Little Endian); unknown
    elements are skipped. :class:`~.pdu.ProtocolError` when it is truncated or has no
    Status."""
    out: dict[int, object] = {}
    pos = 0
    while pos + 8 <= len(data):
        group, elem, length = struct.unpack_from("<HHI", data, pos)
        value = data[pos + 8 : pos + 8 + length]
        if len(value) != length:
            raise ProtocolError("truncated command set")
        tag = (group << 16) | elem
        if tag in _US_ELEMENTS and length == 2:
            out[tag] = struct.unpack("<H", value)[0]
        elif tag == _ERROR_COMMENT:
            out[tag] = value.decode("latin-1").rstrip("\x00 ")
        elif tag == _OFFENDING_ELEMENT:
            out[tag] = [
                struct.unpack_from("<HH", value, i) for i in range(0, length - length % 4, 4)
            ]
        pos += 8 + length
    status = out.get(_STATUS)
    if not isinstance(status, int):
        raise ProtocolError("the response has no Status (0000,0900)")
    field, answered = out.get(_COMMAND_FIELD), out.get(_RESPONDED_MESSAGE_ID)
    return Response(
        field if isinstance(field, int) else None,
        answered if isinstance(answered, int) else None,
        DimseStatus.of(
            status,
            error_comment=out.get(_ERROR_COMMENT),
            error_id=out.get(_ERROR_ID),
            offending=out.get(_OFFENDING_ELEMENT),
        ),
    )


def _clean_lo(text: str) -> str:
    """``text`` made a valid LO value (no backslash/control characters, <= 64 chars)."""
    cleaned = "".join(" " if (c == "\\" or ord(c) < 32 or ord(c) == 127) else c for c in text)
    cleaned = " ".join(cleaned.split())
    return cleaned if len(cleaned) <= 64 else cleaned[:61] + "..."


def status_dataset(
    status: int,
    *,
    error_comment: object = None,
    error_id: object = None,
    offending: object = None,
) -> Dataset:
    """A status dataset as pynetdicom returns it: ``Status`` plus the optional
    ``ErrorComment`` (made a valid LO), ``ErrorID`` and ``OffendingElement``."""
    return DimseStatus.of(
        status, error_comment=error_comment, error_id=error_id, offending=offending
    ).as_dataset()


# -- fragmentation -----------------------------------------------------------------------------
class MessageWriter:
    """Splits the messages of one association into P-DATA-TF PDUs of at most
    ``peer_max_pdu`` bytes (0: unlimited), as scatter/gather buffer lists."""

    def __init__(self, peer_max_pdu: int) -> None:
        self.fragment = (peer_max_pdu - 6) if peer_max_pdu > 6 else 0
        self._buffer = bytearray()  # reused for file payloads: no page faults per instance

    def batches(
        self,
        context_id: int,
        command: bytes,
        *,
        data: memoryview | None = None,
        fh: io.RawIOBase | None = None,
        length: int = 0,
        offset: int = 0,
    ) -> Iterator[list[bytes | memoryview]]:
        """The PDUs of a command and its dataset (``data`` in memory, or ``length``
        bytes of ``fh`` from ``offset``), in batches of at most 4 MiB of data: the first
        holds the command too. Send each batch before asking for the next (file batches
        share one buffer). :class:`PayloadError` at once when the file holds no
        dataset, or from the iterator when the file is shorter than ``length``."""
        if fh is not None and length <= 0:
            raise PayloadError("the file holds no dataset after its File Meta Information")
        return self._batches(context_id, command, data, fh, length, offset)

    def _batches(
        self,
        context_id: int,
        command: bytes,
        data: memoryview | None,
        fh: io.RawIOBase | None,
        length: int,
        offset: int,
    ) -> Iterator[list[bytes | memoryview]]:
        frag = self.fragment
        bufs: list[bytes | memoryview] = []
        _frame(bufs, context_id, memoryview(command), frag, last=True, command=True)
        block = READ_BLOCK if not frag else max(frag, READ_BLOCK // frag * frag)
        blocks: Iterator[tuple[memoryview, bool]] = iter(())
        if fh is not None:
            blocks = self._file_blocks(fh, offset, length, block)
        elif data is not None:
            blocks = (
                (data[pos : pos + block], pos + block >= len(data))
                for pos in range(0, len(data), block)
            )
        for piece, last in blocks:
            _frame(bufs, context_id, piece, frag, last=last)
            yield bufs
            bufs = []
        if bufs:
            yield bufs

    def _file_blocks(
        self, fh: io.RawIOBase, offset: int, length: int, block: int
    ) -> Iterator[tuple[memoryview, bool]]:
        """Yield (bytes, is the last block) of ``length`` bytes of ``fh`` from
        ``offset``, read into one reused buffer."""
        fh.seek(offset)
        block = min(block, length)
        if len(self._buffer) < block:
            self._buffer = bytearray(block)
        view = memoryview(self._buffer)
        remaining = length
        while remaining > 0:
            want = min(block, remaining)
            got = 0
            while got < want:
                n = fh.readinto(view[got:want])
                if not n:
                    raise PayloadError(
                        f"file changed while being sent: expected {length} dataset "
                        f"bytes, got {length - remaining + got}"
                    )
                got += n
            remaining -= want
            yield view[:want], remaining == 0


def _frame(
    bufs: list[bytes | memoryview],
    ctx: int,
    data: memoryview,
    frag: int,
    *,
    last: bool,
    command: bool = False,
) -> None:
    """Append the PDU headers and fragments of ``data`` (one PDV per P-DATA-TF PDU, each
    at most ``frag`` data bytes, 0: unlimited); ``command`` sets the command bit of the
    message control header, ``last`` the last-fragment bit on the final piece."""
    n = len(data)
    step = frag or n
    kind = 0x01 if command else 0x00
    for pos in range(0, n, step):
        piece = data[pos : pos + step]
        ctrl = kind | (0x02 if (last and pos + step >= n) else 0x00)
        bufs.append(P_DATA_HEADER.pack(_P_DATA_TF, 0, len(piece) + 6, len(piece) + 2, ctx, ctrl))
        bufs.append(piece)
