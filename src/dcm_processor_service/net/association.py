"""A synchronous DICOM Upper Layer association, requestor (SCU) side - PS3.8.

Why not :class:`pynetdicom.association.Association`: pynetdicom runs every association on
two helper threads (a DUL reactor that polls the socket with 1 ms sleeps and an
association reactor) and hands each PDU between them through queues. For C-STORE that
costs about 3 ms per instance on loopback: 300 CT slices of 512x512 take 1.0 s with
``send_c_store`` at its best settings against 0.23 s for dcmtk's storescu and 0.14 s
with this module (``benchmarks/bench_send.py``). This module does the same protocol work
on the caller's thread with one socket (non-blocking, waited on with ``poll``; over TLS
a timeout socket):

* A-ASSOCIATE-RQ/-AC are encoded/decoded with pynetdicom's PDU classes
  (:mod:`pynetdicom.pdu`), so the negotiation is pynetdicom's, byte for byte;
* P-DATA-TF framing is done here, with scatter/gather ``sendmsg`` so a file's dataset
  bytes go from the page cache to the socket without being parsed or copied into
  Python objects (the same "send the raw dataset from the file" idea as pynetdicom's
  ``STORE_SEND_CHUNKED_DATASET``, without the per-PDU thread hand-off);
* ``TCP_NODELAY`` is set on the socket, and ``TCP_QUICKACK`` (Linux) before and after
  every read of a response: peers that leave Nagle on (Orthanc, dcmtk without
  ``TCP_NODELAY=1``) hold the end of each response back until we ACK its start, which
  Linux delays by up to 40 ms - 13.3 s instead of 0.8 s for 300 slices to Orthanc.

Every wait has a deadline for the whole step, not for each read or write: the
A-ASSOCIATE-AC must arrive in full within the ACSE timeout, a whole DIMSE response
(all its PDUs) within the DIMSE timeout, the release within the ACSE timeout, and each
block of at most 4 MiB we send must be taken by the peer within the network timeout.
A peer that trickles one byte at a time cannot stretch a timeout (PS3.8 ARTIM and the
DIMSE timeout are meant as bounds on the step). While a request goes out we also watch
for input: a peer's A-ABORT stops the send at once instead of after the whole dataset.

The requestor side follows the state machine of PS3.8 9.2 (:class:`State`): release
collisions are answered as Sta9 -> Sta11 prescribe, and anything unexpected aborts.

Errors are translated to the package tree here. Each carries ``transient`` (bool):
whether a retry on a new association may succeed (refused/reset/aborted/timeouts: yes;
unknown host, TLS failures, permanent rejections: no), and ``in_doubt`` (bool): whether
the request was sent in full before the failure, so that the peer may have performed it
although it never answered (see :func:`is_in_doubt`).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import select
import socket
import ssl
import struct
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Final, NamedTuple, NoReturn

from pydicom.dataset import Dataset
from pydicom.uid import UID
from pynetdicom import PYNETDICOM_IMPLEMENTATION_UID
from pynetdicom.pdu import A_ASSOCIATE_AC, A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import (
    A_ASSOCIATE,
    ImplementationClassUIDNotification,
    ImplementationVersionNameNotification,
    MaximumLengthNotification,
)
from pynetdicom.presentation import build_context

from .._errors import (
    AssociationAbortedError,
    AssociationRejectedError,
    NetworkError,
    PeerUnreachableError,
    TLSError,
)
from .tls import describe_ssl_error

__all__ = [
    "VERIFICATION_SOP_CLASS",
    "Association",
    "FileRegion",
    "NegotiatedContext",
    "PayloadError",
    "ProposedContext",
    "State",
    "Timeouts",
    "is_in_doubt",
    "is_transient",
    "status_dataset",
]

logger = logging.getLogger(__name__)

APPLICATION_CONTEXT: Final = "1.2.840.10008.3.1.1.1"
VERIFICATION_SOP_CLASS: Final = "1.2.840.10008.1.1"
IMPLEMENTATION_VERSION_NAME: Final = "DCMPROC_SERVICE"

_P_DATA: Final = 0x04
_PDV_HEADER = struct.Struct(">BBIIBB")  # PDU type, reserved, PDU length, item length, ctx, ctrl
_PDU_HEADER = struct.Struct(">BBI")
_A_RELEASE_RQ: Final = b"\x05\x00\x00\x00\x00\x04\x00\x00\x00\x00"
_A_RELEASE_RP: Final = b"\x06\x00\x00\x00\x00\x04\x00\x00\x00\x00"
_A_ABORT_RQ: Final = b"\x07\x00\x00\x00\x00\x04\x00\x00\x00\x00"  # source 0 = service user
_IOV_MAX: Final = 512  # buffers per sendmsg() call (Linux allows 1024)
_READ_BLOCK: Final = 4 * 1024 * 1024  # bytes of a file read and sent per sendmsg() batch
_UNLIMITED_PDU_CAP: Final = 256 * 1024 * 1024  # refuse absurd PDUs even when "unlimited"
_TCP_QUICKACK: Final[int | None] = getattr(socket, "TCP_QUICKACK", None)  # Linux only
_IN: Final = select.POLLIN
_OUT: Final = select.POLLOUT

# A-ASSOCIATE-RJ and A-ABORT fields in words (PS3.8 9.3.4, 9.3.8).
_RJ_RESULT = {1: "rejected-permanent", 2: "rejected-transient"}
_RJ_SOURCE = {
    1: "DICOM UL service-user",
    2: "DICOM UL service-provider (ACSE)",
    3: "DICOM UL service-provider (presentation)",
}
_RJ_REASON = {
    (1, 1): "no reason given",
    (1, 2): "application context name not supported",
    (1, 3): "calling AE title not recognized",
    (1, 7): "called AE title not recognized",
    (2, 1): "no reason given",
    (2, 2): "protocol version not supported",
    (3, 1): "temporary congestion",
    (3, 2): "local limit exceeded",
}
_ABORT_SOURCE = {
    0: "the peer (service user)",
    1: "reserved source",
    2: "the peer's DICOM UL provider",
}
_ABORT_REASON = {
    0: "no reason given",
    1: "unrecognized PDU",
    2: "unexpected PDU",
    4: "unrecognized PDU parameter",
    5: "unexpected PDU parameter",
    6: "invalid PDU parameter value",
}
_CONTEXT_RESULT = {
    0: "accepted",
    1: "user rejection",
    2: "no reason (provider rejection)",
    3: "abstract syntax (SOP class) not supported",
    4: "transfer syntaxes not supported",
}


def _mark(exc: NetworkError, transient: bool) -> NetworkError:
    exc.transient = transient  # type: ignore[attr-defined]
    return exc


def is_transient(exc: BaseException) -> bool:
    """Whether ``exc`` is a network failure a retry on a new association may cure."""
    return bool(getattr(exc, "transient", False))


def is_in_doubt(exc: BaseException) -> bool:
    """Whether ``exc`` ended a request that had been sent in full: no valid response
    came (timeout, abort, closed connection, garbage), so the peer may have performed it
    - e.g. stored the instance - without telling us."""
    return bool(getattr(exc, "in_doubt", False))


class State(str, Enum):
    """The states of PS3.8 Table 9-10 an established association passes through on
    the requestor side (negotiation, Sta4/Sta5, happens inside
    :meth:`Association.request`)."""

    IDLE = "Sta1"  # no transport connection (released or aborted)
    ESTABLISHED = "Sta6"  # data transfer
    AWAITING_RELEASE_RP = "Sta7"  # A-RELEASE-RQ sent
    RELEASE_COLLISION = "Sta9"  # A-RELEASE-RQ received in Sta7: answer it (requestor)
    COLLISION_AWAITING_RP = "Sta11"  # our A-RELEASE-RP sent, awaiting the peer's


class PayloadError(Exception):
    """The instance's bytes could not be read while its C-STORE was being sent (the
    association had to be aborted); a local problem of this one instance."""


@dataclass(frozen=True)
class Timeouts:
    """Seconds to wait (``None`` = forever), each a deadline for a whole step: TCP
    connect (+TLS handshake); the whole A-ASSOCIATE-AC and the whole release (ACSE);
    a whole C-STORE/C-ECHO response, all its PDUs, from the end of the request (DIMSE);
    the peer taking each block of at most 4 MiB we send (network)."""

    connect: float | None = 10.0
    acse: float | None = 30.0
    dimse: float | None = 120.0
    network: float | None = 60.0


@dataclass(frozen=True)
class ProposedContext:
    """One presentation context of an A-ASSOCIATE-RQ."""

    context_id: int
    abstract_syntax: str
    transfer_syntaxes: tuple[str, ...]


@dataclass(frozen=True)
class NegotiatedContext:
    """The peer's answer to one proposed context."""

    context_id: int
    abstract_syntax: str
    transfer_syntax: str | None
    result: int

    @property
    def accepted(self) -> bool:
        """True when the peer accepted the context."""
        return self.result == 0 and self.transfer_syntax is not None

    @property
    def result_text(self) -> str:
        """The result in words."""
        return _CONTEXT_RESULT.get(self.result, f"result code {self.result}")


class FileRegion(NamedTuple):
    """The encoded dataset inside a DICOM file: bytes from ``offset`` to the end."""

    path: Path
    offset: int


def _mapped(exc: BaseException, where: str, *, tls: bool) -> NetworkError:
    """Translate a socket/ssl exception raised while ``where`` into the error tree."""
    if isinstance(exc, NetworkError):
        return exc
    if isinstance(exc, ssl.SSLError):
        return _mark(TLSError(f"TLS failure {where}: {describe_ssl_error(exc)}"), False)
    if isinstance(exc, TimeoutError):
        return _mark(AssociationAbortedError(f"timed out {where}"), True)
    if isinstance(exc, _Closed):
        hint = (
            " - over TLS this usually means the peer refused our client certificate "
            "(mutual TLS) or does not trust its CA"
            if tls and exc.before_association
            else ""
        )
        return _mark(AssociationAbortedError(f"the peer closed the connection {where}{hint}"), True)
    if isinstance(exc, OSError):
        reason = exc.strerror or type(exc).__name__
        return _mark(AssociationAbortedError(f"connection lost {where}: {reason}"), True)
    raise exc  # not a network problem: a bug - let it surface


class _ProtocolError(ValueError):
    """The peer sent bytes that are not valid DICOM UL."""


class _PeerSpoke(Exception):
    """The peer sent something while our request was still going out."""


class _Closed(Exception):
    def __init__(self, before_association: bool = False) -> None:
        super().__init__("connection closed by peer")
        self.before_association = before_association


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


def _iter_pdvs(body: memoryview) -> Iterable[tuple[int, int, memoryview]]:
    """Yield (context id, message control header, data) of each PDV in a P-DATA-TF."""
    pos = 0
    while pos + 6 <= len(body):
        (length,) = struct.unpack_from(">I", body, pos)
        if length < 2 or pos + 4 + length > len(body):
            raise _ProtocolError("malformed PDV item in P-DATA-TF")
        yield body[pos + 4], body[pos + 5], body[pos + 6 : pos + 4 + length]
        pos += 4 + length


def _parse_command(data: bytes) -> dict[int, object]:
    """Decode the elements of a response command set (Implicit VR Little Endian) that a
    C-STORE/C-ECHO response carries; unknown elements are skipped."""
    out: dict[int, object] = {}
    pos = 0
    while pos + 8 <= len(data):
        group, elem, length = struct.unpack_from("<HHI", data, pos)
        value = data[pos + 8 : pos + 8 + length]
        if len(value) != length:
            raise _ProtocolError("truncated command set")
        tag = (group << 16) | elem
        if tag in (0x00000100, 0x00000120, 0x00000900, 0x00000903, 0x00000800) and length == 2:
            out[tag] = struct.unpack("<H", value)[0]
        elif tag == 0x00000902:
            out[tag] = value.decode("latin-1").rstrip("\x00 ")
        elif tag == 0x00000901:
            out[tag] = [
                struct.unpack_from("<HH", value, i) for i in range(0, length - length % 4, 4)
            ]
        pos += 8 + length
    if 0x00000900 not in out:
        raise _ProtocolError("the response has no Status (0000,0900)")
    return out


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
    ds = Dataset()
    ds.Status = int(status)
    if error_comment:
        ds.ErrorComment = _clean_lo(str(error_comment))
    if isinstance(error_id, int):
        ds.ErrorID = error_id
    if isinstance(offending, list) and offending:
        ds.OffendingElement = [(g << 16) | e for g, e in offending]
    return ds


class Association:
    """An established association; create it with :meth:`request`.

    Not thread-safe: one association per thread. Always end it with :meth:`release`
    or :meth:`abort` (both close the socket and never raise).
    """

    def __init__(
        self,
        sock: socket.socket,
        *,
        label: str,
        tls: bool,
        contexts: dict[int, NegotiatedContext],
        peer_max_pdu: int,
        max_pdu: int,
        timeouts: Timeouts,
        quickack: bool,
    ) -> None:
        self._sock: socket.socket | None = sock
        self.label = label
        self.tls = tls
        self.contexts = contexts
        self.peer_max_pdu = peer_max_pdu
        self._max_pdu = max_pdu
        self._timeouts = timeouts
        self._quickack = quickack and _TCP_QUICKACK is not None
        self._msg_id = 0
        self._buffer = bytearray()
        self.bytes_sent = 0
        self.state = State.ESTABLISHED
        # Plain TCP: a non-blocking socket and one poller for every wait (each wait then
        # costs no more system calls than a timeout socket's, and a send can watch for
        # an A-ABORT at the same time). TLS: a timeout socket (its records do not map
        # to readiness), given what is left of the deadline before each call.
        self._poller: select.poll | None = None
        if not tls:
            sock.setblocking(False)
            self._poller = select.poll()
            self._poller.register(sock, _IN)

    # -- opening ---------------------------------------------------------------------
    @classmethod
    def request(
        cls,
        host: str,
        port: int,
        *,
        calling_ae_title: str,
        called_ae_title: str,
        contexts: Sequence[ProposedContext],
        ssl_context: ssl.SSLContext | None = None,
        server_hostname: str | None = None,
        max_pdu: int = 0,
        timeouts: Timeouts = Timeouts(),
        tcp_nodelay: bool = True,
        tcp_quickack: bool = True,
    ) -> Association:
        """Connect to ``host:port`` (TLS when ``ssl_context`` is given, verifying the
        certificate against ``server_hostname`` or else ``host``), propose ``contexts``
        and return the established association.

        Raises:
            PeerUnreachableError: refused, unresolvable host, connect timeout.
            TLSError: handshake / certificate failure.
            AssociationRejectedError: A-ASSOCIATE-RJ (``reason`` holds the words).
            AssociationAbortedError: aborted or dropped during negotiation.
        """
        label = f"{called_ae_title}@{host}:{port}"
        try:
            sock = socket.create_connection((host, port), timeout=timeouts.connect)
        except socket.gaierror as exc:
            raise _mark(
                PeerUnreachableError(
                    f"cannot resolve DICOM peer host {host!r} (port {port}): {exc.strerror}"
                ),
                False,
            ) from exc
        except ConnectionRefusedError as exc:
            raise _mark(
                PeerUnreachableError(
                    f"connection to DICOM peer {label} refused - is it running and "
                    f"listening on port {port}?"
                ),
                True,
            ) from exc
        except TimeoutError as exc:
            raise _mark(
                PeerUnreachableError(
                    f"connecting to DICOM peer {label} timed out after {timeouts.connect} s"
                ),
                True,
            ) from exc
        except OSError as exc:
            raise _mark(
                PeerUnreachableError(
                    f"cannot connect to DICOM peer {label}: {exc.strerror or exc}"
                ),
                True,
            ) from exc

        answering = False  # Sta5 once the request is out: awaiting A-ASSOCIATE-AC/RJ
        try:
            if tcp_nodelay:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if ssl_context is not None:
                name = server_hostname or host
                try:
                    sock = ssl_context.wrap_socket(sock, server_hostname=name)
                except ssl.SSLError as exc:
                    raise _mark(
                        TLSError(
                            f"TLS handshake with DICOM peer {host}:{port} failed "
                            f"(checking the certificate for {name!r}): {describe_ssl_error(exc)}"
                        ),
                        False,
                    ) from exc
                except TimeoutError as exc:
                    raise _mark(
                        PeerUnreachableError(
                            f"TLS handshake with DICOM peer {host}:{port} timed out after "
                            f"{timeouts.connect} s"
                        ),
                        True,
                    ) from exc
                except OSError as exc:
                    raise _mark(
                        TLSError(
                            f"TLS handshake with DICOM peer {host}:{port} failed: the connection "
                            f"was closed or reset ({exc.strerror or type(exc).__name__}) - is "
                            f"the peer configured for TLS on this port?"
                        ),
                        False,
                    ) from exc
            rq = _build_associate_rq(calling_ae_title, called_ae_title, contexts, max_pdu)
            _send_all(sock, [rq], _deadline(timeouts.network))
            answering = True
            pdu_type, pdu = _recv_pdu(
                sock, _deadline(timeouts.acse), max_pdu, before_association=True
            )
        except BaseException as exc:
            _close(sock)
            if isinstance(exc, TimeoutError) and answering:
                raise _mark(
                    PeerUnreachableError(
                        f"DICOM peer {label} did not answer the association request within "
                        f"{timeouts.acse} s"
                    ),
                    True,
                ) from exc
            if isinstance(exc, TimeoutError):
                raise _mark(
                    PeerUnreachableError(
                        f"DICOM peer {label} did not take the association request within "
                        f"{timeouts.network} s"
                    ),
                    True,
                ) from exc
            if isinstance(exc, (OSError, _Closed)):
                where = f"during association negotiation with {label}"
                raise _mapped(exc, where, tls=ssl_context is not None) from exc
            if isinstance(exc, _ProtocolError):
                raise _mark(
                    AssociationAbortedError(f"protocol error from {label}: {exc}"), True
                ) from exc
            raise

        if pdu_type == 0x02:
            try:
                negotiated, peer_max = _decode_associate_ac(pdu, contexts)
            except Exception as exc:
                _abort_socket(sock)
                raise _mark(
                    AssociationAbortedError(f"malformed A-ASSOCIATE-AC from {label}: {exc}"), True
                ) from exc
            assoc = cls(
                sock,
                label=label,
                tls=ssl_context is not None,
                contexts=negotiated,
                peer_max_pdu=peer_max,
                max_pdu=max_pdu,
                timeouts=timeouts,
                quickack=tcp_quickack,
            )
            logger.debug(
                "association with %s accepted: %d/%d contexts, peer max PDU %s",
                label,
                sum(c.accepted for c in negotiated.values()),
                len(negotiated),
                peer_max or "unlimited",
            )
            return assoc
        _close(sock)
        if pdu_type == 0x03 and len(pdu) >= 10:
            result, source, reason = pdu[7], pdu[8], pdu[9]
            words = _RJ_REASON.get((source, reason), f"reason code {reason}")
            result_words = _RJ_RESULT.get(result, f"result code {result}")
            source_words = _RJ_SOURCE.get(source, f"source code {source}")
            hint = ""
            if (source, reason) == (1, 3):
                hint = f" - our calling AE title {calling_ae_title!r} is not allowed by the peer"
            elif (source, reason) == (1, 7):
                hint = f" - the peer does not answer to called AE title {called_ae_title!r}"
            raise _mark(
                AssociationRejectedError(
                    f"association rejected by DICOM peer {label}: {words} "
                    f"({result_words}, source: {source_words}){hint}",
                    reason=f"{result_words}: {words} (source: {source_words})",
                ),
                result == 2,
            )
        if pdu_type == 0x07:
            raise _mark(
                AssociationAbortedError(
                    f"DICOM peer {label} aborted the association request: {_abort_words(pdu)}"
                ),
                True,
            )
        raise _mark(
            AssociationAbortedError(
                f"unexpected PDU type 0x{pdu_type:02X} from {label} in reply to A-ASSOCIATE-RQ"
            ),
            True,
        )

    # -- DIMSE -----------------------------------------------------------------------
    def accepted_for(self, abstract_syntax: str) -> list[NegotiatedContext]:
        """The accepted contexts for one SOP class, in proposal order."""
        return [
            c for c in self.contexts.values() if c.abstract_syntax == abstract_syntax and c.accepted
        ]

    def _next_message_id(self) -> int:
        self._msg_id = self._msg_id % 0xFFFF + 1
        return self._msg_id

    def c_store(
        self,
        context_id: int,
        sop_class_uid: str,
        sop_instance_uid: str,
        payload: bytes | memoryview | FileRegion,
        *,
        priority: int = 0,
    ) -> Dataset:
        """Send one C-STORE-RQ and return the response status dataset (``Status`` plus
        ``ErrorComment``/``OffendingElement``... when the peer sent them).

        ``payload`` is the encoded dataset in the context's transfer syntax: bytes, or a
        :class:`FileRegion` streamed from the file.

        Raises:
            AssociationAbortedError: the association was lost (it is closed).
            TLSError: TLS failure mid-transfer (closed).
            PayloadError: the file could not be read completely (association aborted).
        """
        msg_id = self._next_message_id()
        command = _encode_command(
            [
                (0x00000002, _ui(sop_class_uid)),
                (0x00000100, _us(0x0001)),
                (0x00000110, _us(msg_id)),
                (0x00000700, _us(priority)),
                (0x00000800, _us(0x0000)),
                (0x00001000, _ui(sop_instance_uid)),
            ]
        )
        if isinstance(payload, FileRegion):
            try:
                fh = open(payload.path, "rb", buffering=0)  # noqa: SIM115 - closed below
                size = os.fstat(fh.fileno()).st_size
            except OSError as exc:
                raise PayloadError(f"cannot open {payload.path}: {exc.strerror or exc}") from exc
            try:
                self._send_message(
                    context_id, command, fh=fh, length=size - payload.offset, offset=payload.offset
                )
            finally:
                fh.close()
        else:
            if not len(payload):
                raise PayloadError("the encoded dataset is empty")
            self._send_message(context_id, command, data=memoryview(payload))
        return self._await_response(msg_id, 0x8001)

    def c_echo(self) -> Dataset:
        """Send a C-ECHO-RQ on the Verification context; return the status dataset."""
        ctx = next(
            (
                c
                for c in self.contexts.values()
                if c.abstract_syntax == VERIFICATION_SOP_CLASS and c.accepted
            ),
            None,
        )
        if ctx is None:
            raise ValueError(f"{self.label} did not accept the Verification SOP class")
        msg_id = self._next_message_id()
        command = _encode_command(
            [
                (0x00000002, _ui(VERIFICATION_SOP_CLASS)),
                (0x00000100, _us(0x0030)),
                (0x00000110, _us(msg_id)),
                (0x00000800, _us(0x0101)),
            ]
        )
        self._send_message(ctx.context_id, command)
        return self._await_response(msg_id, 0x8030)

    def _send_message(
        self,
        context_id: int,
        command: bytes,
        *,
        data: memoryview | None = None,
        fh: io.RawIOBase | None = None,
        length: int = 0,
        offset: int = 0,
    ) -> None:
        """Send a command and its dataset (``data`` in memory, or ``length`` bytes of
        ``fh`` from ``offset``) as P-DATA-TF PDUs no longer than the peer's maximum PDU
        length - the command set too - in blocks of at most 4 MiB, each of which the
        peer must take within the network timeout."""
        sock = self._require_socket()
        frag = (self.peer_max_pdu - 6) if self.peer_max_pdu > 6 else 0
        bufs: list[bytes | memoryview] = []
        self._frame(bufs, context_id, memoryview(command), frag, last=True, command=True)
        if fh is not None and length <= 0:
            raise PayloadError("the file holds no dataset after its File Meta Information")
        block = _READ_BLOCK if not frag else max(frag, _READ_BLOCK // frag * frag)
        blocks: Iterable[tuple[memoryview, bool]] = ()
        if fh is not None:
            blocks = self._file_blocks(fh, offset, length, block)
        elif data is not None:
            blocks = (
                (data[pos : pos + block], pos + block >= len(data))
                for pos in range(0, len(data), block)
            )
        try:
            for piece, last in blocks:
                self._frame(bufs, context_id, piece, frag, last=last)
                self._send_buffers(sock, bufs)
                bufs = []
            if bufs:
                self._send_buffers(sock, bufs)
        except PayloadError:
            self.abort()  # the peer holds part of a message it can never complete
            raise
        except _PeerSpoke:
            self._interrupted(sock)
        except BaseException as exc:
            words = _pending_abort(sock) if isinstance(exc, OSError) and not self.tls else None
            self.abort()
            if words is not None:
                raise _mark(
                    AssociationAbortedError(
                        f"{self.label} aborted the association while we were sending: {words}"
                    ),
                    True,
                ) from exc
            if isinstance(exc, TimeoutError):
                raise _mark(
                    AssociationAbortedError(
                        f"{self.label} did not take the data we sent within "
                        f"{self._timeouts.network} s (association aborted)"
                    ),
                    True,
                ) from exc
            if isinstance(exc, (OSError, _Closed)):
                raise _mapped(exc, f"while sending to {self.label}", tls=self.tls) from exc
            raise

    def _interrupted(self, sock: socket.socket) -> NoReturn:
        """The peer sent something while our request was going out: an A-ABORT (PS3.8
        Sta13 peers keep reading, so we would otherwise send on for nothing), or it
        closed the connection. The request is incomplete: the peer cannot have
        performed it."""
        try:
            pdu_type, pdu = _recv_pdu(
                sock, _deadline(self._timeouts.network), self._max_pdu, poller=self._poller
            )
        except BaseException as exc:
            self.abort()
            if isinstance(exc, (OSError, _Closed)):
                raise _mapped(exc, f"while sending to {self.label}", tls=self.tls) from exc
            if isinstance(exc, _ProtocolError):
                raise _mark(
                    AssociationAbortedError(f"protocol error from {self.label}: {exc}"), True
                ) from exc
            raise
        if pdu_type == 0x07:
            self._close()
            raise _mark(
                AssociationAbortedError(
                    f"{self.label} aborted the association while we were sending: "
                    f"{_abort_words(pdu)}"
                ),
                True,
            )
        self.abort()
        raise _mark(
            AssociationAbortedError(
                f"unexpected PDU type 0x{pdu_type:02X} from {self.label} while we were "
                f"sending a request"
            ),
            True,
        )

    def _file_blocks(
        self, fh: io.RawIOBase, offset: int, length: int, block: int
    ) -> Iterable[tuple[memoryview, bool]]:
        """Yield (bytes, is the last block) of ``length`` bytes of ``fh`` from
        ``offset``, read into one reused buffer (no page faults per instance)."""
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

    @staticmethod
    def _frame(
        bufs: list[bytes | memoryview],
        ctx: int,
        data: memoryview,
        frag: int,
        *,
        last: bool,
        command: bool = False,
    ) -> None:
        """Append the PDU headers and fragments of ``data`` (one PDV per P-DATA-TF PDU,
        each at most the peer's maximum PDU length); ``command`` sets the command bit of
        the message control header, ``last`` the last-fragment bit on the final piece."""
        n = len(data)
        step = frag or n
        kind = 0x01 if command else 0x00
        for pos in range(0, n, step):
            piece = data[pos : pos + step]
            ctrl = kind | (0x02 if (last and pos + step >= n) else 0x00)
            bufs.append(_PDV_HEADER.pack(_P_DATA, 0, len(piece) + 6, len(piece) + 2, ctx, ctrl))
            bufs.append(piece)

    def _send_buffers(self, sock: socket.socket, bufs: list[bytes | memoryview]) -> None:
        self.bytes_sent += _send_all(
            sock, bufs, _deadline(self._timeouts.network), poller=self._poller, watch=True
        )

    def _await_response(self, msg_id: int, command_field: int) -> Dataset:
        """The response to request ``msg_id``, which was sent in full: whatever goes
        wrong now leaves its outcome in doubt (the error is marked ``in_doubt``)."""
        try:
            return self._read_response(msg_id, command_field)
        except NetworkError as exc:
            exc.in_doubt = True  # type: ignore[attr-defined]
            raise

    def _read_response(self, msg_id: int, command_field: int) -> Dataset:
        sock = self._require_socket()
        fragments: list[bytes] = []
        deadline = _deadline(self._timeouts.dimse)  # for the whole response, all its PDUs
        try:
            while True:
                if self._quickack:
                    _quickack(sock)
                pdu_type, pdu = _recv_pdu(
                    sock, deadline, self._max_pdu, poller=self._poller, quickack=self._quickack
                )
                if pdu_type == _P_DATA:
                    done = False
                    for _ctx, ctrl, data in _iter_pdvs(memoryview(pdu)[6:]):
                        if ctrl & 0x01:
                            fragments.append(bytes(data))
                            done = done or bool(ctrl & 0x02)
                    if done:
                        break
                    continue
                if pdu_type == 0x07:
                    self._close()
                    raise _mark(
                        AssociationAbortedError(
                            f"{self.label} aborted the association: {_abort_words(pdu)}"
                        ),
                        True,
                    )
                if pdu_type == 0x05:
                    self.abort()
                    raise _mark(
                        AssociationAbortedError(
                            f"{self.label} asked to release the association while a request "
                            f"was outstanding"
                        ),
                        True,
                    )
                self.abort()
                raise _mark(
                    AssociationAbortedError(
                        f"unexpected PDU type 0x{pdu_type:02X} from {self.label}"
                    ),
                    True,
                )
        except NetworkError:
            raise
        except BaseException as exc:
            self.abort()
            if isinstance(exc, TimeoutError):
                raise _mark(
                    AssociationAbortedError(
                        f"no response from {self.label} within {self._timeouts.dimse} s "
                        f"(association aborted)"
                    ),
                    True,
                ) from exc
            if isinstance(exc, (OSError, _Closed)):
                raise _mapped(
                    exc, f"while waiting for a response from {self.label}", tls=self.tls
                ) from exc
            if isinstance(exc, _ProtocolError):
                raise _mark(
                    AssociationAbortedError(f"protocol error from {self.label}: {exc}"), True
                ) from exc
            raise
        try:
            rsp = _parse_command(b"".join(fragments))
            status = int(rsp[0x00000900])  # type: ignore[call-overload]
        except Exception as exc:
            self.abort()
            raise _mark(
                AssociationAbortedError(f"malformed response command from {self.label}: {exc}"),
                True,
            ) from exc
        field = rsp.get(0x00000100)
        answered = rsp.get(0x00000120)
        field_text = f"0x{field:04X}" if isinstance(field, int) else "none"
        if field != command_field or answered != msg_id:
            self.abort()
            raise _mark(
                AssociationAbortedError(
                    f"{self.label} answered message {answered} with command "
                    f"{field_text}; expected message {msg_id}, command "
                    f"0x{command_field:04X}"
                ),
                True,
            )
        return status_dataset(
            status,
            error_comment=rsp.get(0x00000902),
            error_id=rsp.get(0x00000903),
            offending=rsp.get(0x00000901),
        )

    # -- ending ----------------------------------------------------------------------
    @property
    def is_open(self) -> bool:
        """True until the association was released or aborted."""
        return self._sock is not None

    def release(self) -> bool:
        """Release the association and close the socket. Never raises; returns False
        (after aborting) when the peer did not complete the release properly.

        PS3.8 9.2: A-RELEASE-RQ, then (Sta7) wait for A-RELEASE-RP - P-DATA arriving
        meanwhile is ignored. If the peer's own A-RELEASE-RQ arrives instead, that is a
        release collision; as the association-requestor we answer it with A-RELEASE-RP
        (Sta9) and then wait for the peer's A-RELEASE-RP (Sta11) before closing. The
        whole release must be over within the ACSE timeout.
        """
        sock = self._sock
        if sock is None:
            return False
        try:
            _send_all(sock, [_A_RELEASE_RQ], _deadline(self._timeouts.network), poller=self._poller)
            self.state = State.AWAITING_RELEASE_RP
            deadline = _deadline(self._timeouts.acse)
            while True:
                pdu_type, _pdu = _recv_pdu(sock, deadline, self._max_pdu, poller=self._poller)
                if pdu_type == 0x06:  # A-RELEASE-RP (Sta7 or Sta11): done
                    self._close()
                    return True
                if pdu_type == 0x05 and self.state is State.AWAITING_RELEASE_RP:
                    self.state = State.RELEASE_COLLISION
                    logger.debug(
                        "release collision with %s: answering its A-RELEASE-RQ", self.label
                    )
                    _send_all(
                        sock,
                        [_A_RELEASE_RP],
                        _deadline(self._timeouts.network),
                        poller=self._poller,
                    )
                    self.state = State.COLLISION_AWAITING_RP
                    continue
                if pdu_type == 0x07:
                    logger.debug("%s aborted the release: %s", self.label, _abort_words(_pdu))
                    self._close()
                    return False
                if pdu_type == _P_DATA and self.state is State.AWAITING_RELEASE_RP:
                    continue  # a late P-DATA: ignore and keep waiting for the A-RELEASE-RP
                logger.debug(
                    "unexpected PDU type 0x%02X from %s in %s - aborting",
                    pdu_type,
                    self.label,
                    self.state.value,
                )
                self.abort()
                return False
        except Exception as exc:
            logger.debug("release of %s failed (%s) - aborting", self.label, exc)
            self.abort()
            return False

    def abort(self) -> None:
        """Send A-ABORT (best effort) and close the socket. Never raises."""
        sock = self._sock
        if sock is None:
            return
        _abort_socket(sock)
        self._sock = None
        self.state = State.IDLE

    def _close(self) -> None:
        if self._sock is not None:
            _close(self._sock)
            self._sock = None
        self.state = State.IDLE

    def _require_socket(self) -> socket.socket:
        if self._sock is None:
            raise _mark(
                AssociationAbortedError(f"the association with {self.label} is closed"), True
            )
        return self._sock


def _abort_words(pdu: bytes) -> str:
    if len(pdu) < 10:
        return "no reason given"
    source, reason = pdu[8], pdu[9]
    src = _ABORT_SOURCE.get(source, f"source code {source}")
    why = _ABORT_REASON.get(reason, f"reason code {reason}") if source == 2 else "no reason given"
    return f"{why} (abort source: {src})"


def _build_associate_rq(
    calling: str, called: str, contexts: Sequence[ProposedContext], max_pdu: int
) -> bytes:
    prim = A_ASSOCIATE()
    prim.application_context_name = UID(APPLICATION_CONTEXT)
    prim.calling_ae_title = calling
    prim.called_ae_title = called
    items = []
    for proposed in contexts:
        cx = build_context(proposed.abstract_syntax, list(proposed.transfer_syntaxes))
        cx.context_id = proposed.context_id
        items.append(cx)
    prim.presentation_context_definition_list = items
    max_length = MaximumLengthNotification()
    max_length.maximum_length_received = max_pdu
    impl_uid = ImplementationClassUIDNotification()
    impl_uid.implementation_class_uid = PYNETDICOM_IMPLEMENTATION_UID
    impl_name = ImplementationVersionNameNotification()
    impl_name.implementation_version_name = IMPLEMENTATION_VERSION_NAME
    prim.user_information = [max_length, impl_uid, impl_name]
    return bytes(A_ASSOCIATE_RQ(prim).encode())


def _decode_associate_ac(
    pdu: bytes, proposed: Sequence[ProposedContext]
) -> tuple[dict[int, NegotiatedContext], int]:
    ac = A_ASSOCIATE_AC()
    ac.decode(pdu)
    prim = ac.to_primitive()
    by_id = {p.context_id: p for p in proposed}
    negotiated: dict[int, NegotiatedContext] = {}
    for cx in prim.presentation_context_definition_results_list:
        ours = by_id.get(cx.context_id or -1)
        if ours is None:
            continue
        ts = cx.transfer_syntax[0] if cx.transfer_syntax else None
        result = int(cx.result) if cx.result is not None else 2
        if result == 0 and ts is not None and ts not in ours.transfer_syntaxes:
            result = 4  # accepted a syntax we never proposed: unusable
        negotiated[ours.context_id] = NegotiatedContext(
            ours.context_id, ours.abstract_syntax, str(ts) if ts else None, result
        )
    for ours in proposed:  # contexts the AC does not mention count as rejected
        negotiated.setdefault(
            ours.context_id, NegotiatedContext(ours.context_id, ours.abstract_syntax, None, 2)
        )
    return negotiated, int(prim.maximum_length_received or 0)


def _quickack(sock: socket.socket) -> None:
    """ACK what has arrived now. A peer that leaves Nagle on (Orthanc, dcmtk without
    TCP_NODELAY=1) holds the rest of a response back until its first segment is ACKed,
    and Linux delays that ACK up to 40 ms. TCP_QUICKACK is not sticky, so it is set
    again after every read."""
    if _TCP_QUICKACK is not None:
        sock.setsockopt(socket.IPPROTO_TCP, _TCP_QUICKACK, 1)


def _deadline(timeout: float | None) -> float | None:
    """The :func:`time.monotonic` instant ``timeout`` seconds from now (None: never)."""
    return None if timeout is None else time.monotonic() + timeout


def _wait_until(sock: socket.socket, deadline: float | None) -> None:
    """Timeout sockets (before the association, TLS): give the next blocking call on
    ``sock`` only the time left until ``deadline`` (so a peer that trickles bytes cannot
    restart the clock with every read); :class:`TimeoutError` when nothing is left."""
    if deadline is None:
        sock.settimeout(None)
        return
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("deadline passed")
    sock.settimeout(left)


def _wait_for(sock: socket.socket, poller: select.poll, events: int, deadline: float | None) -> int:
    """Non-blocking sockets: wait until ``sock`` has one of ``events`` (or an error or
    hang-up, always reported); return what it has. :class:`TimeoutError` at
    ``deadline``."""
    poller.modify(sock, events)
    if deadline is None:
        ready = poller.poll()
    else:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("deadline passed")
        ready = poller.poll(left * 1000.0)
    if not ready:
        raise TimeoutError("deadline passed")
    return int(ready[0][1])


def _send_all(
    sock: socket.socket,
    bufs: Sequence[bytes | memoryview],
    deadline: float | None,
    *,
    poller: select.poll | None = None,
    watch: bool = False,
) -> int:
    """Send every byte of ``bufs`` before ``deadline``; return how many were sent.

    With ``poller`` (a non-blocking plain socket): one ``sendmsg`` per up to 512
    buffers, no copy, waiting on the poller only when the socket is full; ``watch``
    raises :class:`_PeerSpoke` as soon as the peer sent something or closed (checked
    before the first call and during every wait). Without (a timeout socket: before
    the association, or TLS, which has no ``sendmsg`` and whose ``sendall`` restarts
    the timeout on every record): the buffers are joined and sent with ``send``."""
    total = sum(len(b) for b in bufs)
    if poller is None:
        data = memoryview(b"".join(bufs))
        while data:
            _wait_until(sock, deadline)
            data = data[sock.send(data) :]
        return total
    if watch:
        poller.modify(sock, _IN)
        if poller.poll(0):
            raise _PeerSpoke()
    pending = list(bufs)
    i = 0
    blocked = False
    while i < len(pending):
        if blocked:
            events = _wait_for(sock, poller, _OUT | (_IN if watch else 0), deadline)
            if watch and events & (_IN | select.POLLHUP | select.POLLERR):
                raise _PeerSpoke()
        end = min(i + _IOV_MAX, len(pending))
        try:
            sent = sock.sendmsg(pending[i:end])
        except BlockingIOError:
            blocked = True
            continue
        while sent and i < end:
            size = len(pending[i])
            if sent >= size:
                sent -= size
                i += 1
            else:
                pending[i] = memoryview(pending[i])[sent:]
                sent = 0
        blocked = i < end  # the socket took less than offered: it is full
    return total


def _recv_exact(
    sock: socket.socket,
    n: int,
    deadline: float | None,
    *,
    poller: select.poll | None = None,
    ready: bool = False,
    before_association: bool = False,
    quickack: bool = False,
) -> bytearray:
    """``n`` bytes from ``sock`` before ``deadline``. With ``poller`` (non-blocking
    socket) ``ready`` says the bytes are probably there already: read before waiting."""
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        if poller is None:
            _wait_until(sock, deadline)
        elif not ready:
            _wait_for(sock, poller, _IN, deadline)
        try:
            k = sock.recv_into(view[got:], n - got)
        except BlockingIOError:
            ready = False
            continue
        if not k:
            raise _Closed(before_association)
        got += k
        ready = False  # the socket is drained: wait before reading again
        if quickack:
            _quickack(sock)
    return buf


def _recv_pdu(
    sock: socket.socket,
    deadline: float | None,
    max_pdu: int,
    *,
    poller: select.poll | None = None,
    before_association: bool = False,
    quickack: bool = False,
) -> tuple[int, bytes]:
    """Read one whole PDU before ``deadline``; return (type, the PDU with its 6-byte
    header)."""
    header = _recv_exact(
        sock,
        6,
        deadline,
        poller=poller,
        before_association=before_association,
        quickack=quickack,
    )
    pdu_type, _reserved, length = _PDU_HEADER.unpack(header)
    limit = _UNLIMITED_PDU_CAP if max_pdu == 0 else max(max_pdu, 64 * 1024) + 6
    if length > limit:
        raise _ProtocolError(f"PDU of {length} bytes exceeds the negotiated maximum")
    body = _recv_exact(
        sock,
        length,
        deadline,
        poller=poller,
        ready=True,  # the body usually arrived with its header
        before_association=before_association,
        quickack=quickack,
    )
    return pdu_type, bytes(header + body)


def _pending_abort(sock: socket.socket) -> str | None:
    """The reason of an A-ABORT that already arrived, in words, or None. Used when a
    send failed: a peer that aborts mid-transfer closes the connection, and our send
    then fails with a reset although the A-ABORT (and its reason) is waiting to be
    read. Plain sockets only; never blocks."""
    try:
        sock.setblocking(False)
        data = sock.recv(64 * 1024)
    except (OSError, ValueError):
        return None
    pos = 0
    while pos + 6 <= len(data):
        pdu_type, _reserved, length = _PDU_HEADER.unpack_from(data, pos)
        if pdu_type == 0x07:
            return _abort_words(data[pos : pos + 10])
        pos += 6 + length
    return None


def _close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.close()


def _abort_socket(sock: socket.socket) -> None:
    try:
        sock.settimeout(1.0)
        sock.sendall(_A_ABORT_RQ)
    except (OSError, ValueError):
        pass
    _close(sock)
