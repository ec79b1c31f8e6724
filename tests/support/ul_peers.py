"""DICOM peers that misbehave on request, for the upper-layer conformance tests.

* :class:`ScriptedSCP` - a real pynetdicom AE (every storage SOP class and Verification,
  every transfer syntax) serving on an ephemeral 127.0.0.1 port in this process. It
  can be told to announce a small maximum PDU, write a C-STORE to disk and then never
  answer it, block on C-ECHO, insist on its called AE title, or accept only one
  association at a time. It records every PDU it received and sent, and every file it
  stored.
* :class:`RawPeer` - a DICOM UL peer written on raw sockets in the test, running a
  script per connection, for behaviour pynetdicom cannot be made to show: trickling a
  PDU one byte at a time, rejecting with any (result, source, reason), colliding on
  release, never answering, reading slowly, and an A-ABORT that lands while a dataset
  is still streaming in (pynetdicom's own A-ABORT goes out only after it has read what
  is already buffered, i.e. after the request is complete). Its PDUs are encoded with pynetdicom's PDU
  and DIMSE classes (or written byte for byte from PS3.8 where that is the point).
* :class:`ChoppingProxy` - relays TCP to an upstream peer and writes what the upstream
  sends a few bytes per write (``TCP_NODELAY``), so each of its PDUs reaches the client
  in many TCP segments.

Everything listens on 127.0.0.1 and is stopped when its ``with`` block ends.
"""

from __future__ import annotations

import contextlib
import io
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset
from pydicom.filereader import read_dataset
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, evt
from pynetdicom.dimse_messages import C_ECHO_RSP, C_STORE_RSP
from pynetdicom.dimse_primitives import C_ECHO, C_STORE
from pynetdicom.pdu import A_ASSOCIATE_AC, A_ASSOCIATE_RQ, P_DATA_TF
from pynetdicom.pdu_primitives import (
    A_ASSOCIATE,
    ImplementationClassUIDNotification,
    MaximumLengthNotification,
)
from pynetdicom.presentation import AllStoragePresentationContexts, PresentationContext
from pynetdicom.sop_class import Verification

__all__ = [
    "A_RELEASE_RP",
    "A_RELEASE_RQ",
    "ChoppingProxy",
    "RawConnection",
    "RawPeer",
    "ScriptedSCP",
    "associate_ac",
    "pdu_types",
    "response_to",
    "timed",
]

LOOPBACK = "127.0.0.1"

A_RELEASE_RQ = 0x05
A_RELEASE_RP = 0x06
_PDU_NAMES = {
    0x01: "A-ASSOCIATE-RQ",
    0x02: "A-ASSOCIATE-AC",
    0x03: "A-ASSOCIATE-RJ",
    0x04: "P-DATA-TF",
    0x05: "A-RELEASE-RQ",
    0x06: "A-RELEASE-RP",
    0x07: "A-ABORT",
}


def pdu_types(pdus: list[tuple[int, bytes]]) -> list[str]:
    """The PS3.8 names of the PDU types in ``pdus``."""
    return [_PDU_NAMES.get(t, f"0x{t:02X}") for t, _ in pdus]


# -- pynetdicom SCP --------------------------------------------------------------------------
@dataclass
class StoredFile:
    """One C-STORE the SCP wrote to disk, in arrival order."""

    sop_instance_uid: str
    path: Path


@dataclass
class ScriptedSCP:
    """A pynetdicom storage/verification SCP that misbehaves as configured.

    ``hang_stores``: the first N C-STOREs (``-1``: all) are written to disk and then
    never answered (the handler blocks until the SCP stops). ``hang_echo``: never
    answer C-ECHO. ``store_status``: the status of answered C-STOREs. ``max_pdu``: the
    maximum PDU length the SCP announces. ``require_called_aet``: reject other called
    AE titles. ``max_associations``: reject associations beyond that many at once.
    """

    out_dir: Path
    ae_title: str = "SCRIPTED"
    max_pdu: int = 16382
    hang_stores: int = 0
    hang_echo: bool = False
    store_status: int = 0x0000
    require_called_aet: bool = False
    max_associations: int = 10

    port: int = 0
    stored: list[StoredFile] = field(default_factory=list)
    pdus_received: list[tuple[str, int]] = field(default_factory=list)  # (class, length)
    pdus_sent: list[tuple[str, int]] = field(default_factory=list)  # (class, length)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _unblock: threading.Event = field(default_factory=threading.Event)
    _server: Any = None

    def __enter__(self) -> ScriptedSCP:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        ae = AE(ae_title=self.ae_title)
        for cx in AllStoragePresentationContexts:
            ae.add_supported_context(cx.abstract_syntax, ALL_TRANSFER_SYNTAXES)
        ae.add_supported_context(Verification, ALL_TRANSFER_SYNTAXES)
        ae.maximum_pdu_size = self.max_pdu
        ae.require_called_aet = self.require_called_aet
        ae.maximum_associations = self.max_associations
        ae.network_timeout = 30
        ae.dimse_timeout = 30
        handlers = [
            (evt.EVT_CONN_OPEN, self._on_open),
            (evt.EVT_C_STORE, self._on_store),
            (evt.EVT_C_ECHO, self._on_echo),
            (evt.EVT_PDU_RECV, self._on_pdu_recv),
            (evt.EVT_PDU_SENT, self._on_pdu_sent),
        ]
        self._server = ae.start_server((LOOPBACK, 0), block=False, evt_handlers=handlers)
        self.port = int(self._server.server_address[1])
        return self

    def __exit__(self, *exc: object) -> None:
        self._unblock.set()
        self._server.shutdown()

    # handlers (pynetdicom's threads) --------------------------------------------------------
    def _on_open(self, event: Any) -> None:
        # pynetdicom leaves Nagle on: every response would wait ~40 ms for an ACK
        event.assoc.dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def _on_store(self, event: Any) -> int:
        uid = str(event.request.AffectedSOPInstanceUID)
        with self._lock:
            index = len(self.stored)
            path = self.out_dir / f"{index:04d}_{uid}.dcm"
            path.write_bytes(event.encoded_dataset(include_meta=True))
            self.stored.append(StoredFile(uid, path))
        if self.hang_stores < 0 or index < self.hang_stores:
            self._unblock.wait(60)  # never answer (until the SCP stops)
        return self.store_status

    def _on_echo(self, event: Any) -> int:
        if self.hang_echo:
            self._unblock.wait(60)
        return 0x0000

    def _on_pdu_recv(self, event: Any) -> None:
        with self._lock:
            self.pdus_received.append((type(event.pdu).__name__, int(event.pdu.pdu_length)))

    def _on_pdu_sent(self, event: Any) -> None:
        with self._lock:
            self.pdus_sent.append((type(event.pdu).__name__, int(event.pdu.pdu_length)))

    def pdata_received(self) -> list[int]:
        """Variable-field lengths of the P-DATA-TF PDUs received, in order."""
        with self._lock:
            return [n for name, n in self.pdus_received if name == "P_DATA_TF"]

    def stored_uids(self) -> list[str]:
        """SOP Instance UIDs of the stored C-STOREs, in arrival order (repeats kept)."""
        with self._lock:
            return [s.sop_instance_uid for s in self.stored]


# -- raw-socket peer -------------------------------------------------------------------------
class RawConnection:
    """One accepted connection of a :class:`RawPeer`, with PS3.8 helpers."""

    def __init__(self, sock: socket.socket, stop: threading.Event) -> None:
        self.sock = sock
        self.stop = stop
        self.received: list[tuple[int, bytes]] = []  # every PDU read, in order
        self.events: list[tuple[float, str]] = []  # (monotonic time, what happened)

    def note(self, what: str) -> None:
        """Record an event with its time."""
        self.events.append((time.monotonic(), what))

    def read_exact(self, n: int, timeout: float = 10.0) -> bytes | None:
        """``n`` bytes, or None when the peer closed the connection first."""
        self.sock.settimeout(timeout)
        buf = bytearray()
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                return None
            buf += chunk
        return bytes(buf)

    def read_pdu(self, timeout: float = 10.0) -> tuple[int, bytes] | None:
        """The next PDU (type, whole PDU), or None at end of stream."""
        header = self.read_exact(6, timeout)
        if header is None:
            return None
        pdu_type, _, length = struct.unpack(">BBI", header)
        body = self.read_exact(length, timeout)
        if body is None:
            return None
        self.received.append((pdu_type, header + body))
        return pdu_type, header + body

    def read_message(self, timeout: float = 10.0) -> tuple[int, Dataset, int]:
        """Read P-DATA-TF PDUs up to the end of one DIMSE message (command, plus its
        dataset when it has one); return (presentation context id, command set,
        dataset bytes received)."""
        command, data, ctx = bytearray(), 0, 0
        command_done = has_data = False
        while True:
            pdu = self.read_pdu(timeout)
            if pdu is None or pdu[0] != 0x04:
                raise ConnectionError(f"expected P-DATA-TF, got {pdu and pdu_types([pdu])}")
            body, pos = pdu[1][6:], 0
            while pos < len(body):
                (length,) = struct.unpack_from(">I", body, pos)
                ctx, ctrl = body[pos + 4], body[pos + 5]
                fragment = body[pos + 6 : pos + 4 + length]
                pos += 4 + length
                if ctrl & 0x01:
                    command += fragment
                    if ctrl & 0x02:
                        command_done = True
                        cmd = read_dataset(io.BytesIO(bytes(command)), True, True)
                        has_data = int(cmd.CommandDataSetType) != 0x0101
                        if not has_data:
                            return ctx, cmd, 0
                else:
                    data += len(fragment)
                    if ctrl & 0x02 and command_done:
                        return ctx, cmd, data

    def send(self, data: bytes) -> None:
        """Send ``data`` at once."""
        self.sock.sendall(data)

    def trickle(self, data: bytes, interval: float) -> int:
        """Send ``data`` one byte every ``interval`` seconds until done, the peer stops
        reading or the RawPeer stops; return the bytes sent."""
        for i in range(len(data)):
            if self.stop.wait(interval):
                return i
            try:
                self.sock.sendall(data[i : i + 1])
            except OSError:
                return i
        return len(data)

    def accept_association(self, max_pdu: int = 16382) -> A_ASSOCIATE:
        """Read the A-ASSOCIATE-RQ and accept every proposed context with its first
        transfer syntax (encoded by pynetdicom); return the request primitive."""
        pdu = self.read_pdu()
        if pdu is None or pdu[0] != 0x01:
            raise ConnectionError(f"expected A-ASSOCIATE-RQ, got {pdu and pdu_types([pdu])}")
        self.send(associate_ac(pdu[1], max_pdu))
        rq = A_ASSOCIATE_RQ()
        rq.decode(pdu[1])
        return rq.to_primitive()

    def closed_within(self, timeout: float) -> bool:
        """True when the other side closes the connection within ``timeout`` seconds
        (anything it sends meanwhile is read and kept)."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            try:
                if self.read_pdu(left) is None:
                    return True
            except TimeoutError:
                return False
            except OSError:
                return True


def associate_ac(rq_pdu: bytes, max_pdu: int) -> bytes:
    """An A-ASSOCIATE-AC (pynetdicom's encoding) accepting every context of the
    A-ASSOCIATE-RQ ``rq_pdu`` with its first proposed transfer syntax."""
    rq = A_ASSOCIATE_RQ()
    rq.decode(rq_pdu)
    request = rq.to_primitive()
    prim = A_ASSOCIATE()
    prim.application_context_name = request.application_context_name
    prim.calling_ae_title = request.calling_ae_title
    prim.called_ae_title = request.called_ae_title
    prim.result = 0x00
    results = []
    for proposed in request.presentation_context_definition_list:
        cx = PresentationContext()
        cx.context_id = proposed.context_id
        cx.abstract_syntax = proposed.abstract_syntax
        cx.transfer_syntax = [proposed.transfer_syntax[0]]
        cx.result = 0x00
        results.append(cx)
    prim.presentation_context_definition_results_list = results
    max_length = MaximumLengthNotification()
    max_length.maximum_length_received = max_pdu
    impl = ImplementationClassUIDNotification()
    impl.implementation_class_uid = "1.2.826.0.1.3680043.9.7433.1.1"
    prim.user_information = [max_length, impl]
    ac = A_ASSOCIATE_AC()
    ac.from_primitive(prim)
    return bytes(ac.encode())


def response_to(context_id: int, command: Dataset, status: int = 0x0000) -> bytes:
    """The P-DATA-TF PDU(s) of pynetdicom's C-STORE-RSP / C-ECHO-RSP to ``command``."""
    if int(command.CommandField) == 0x0001:
        prim: Any = C_STORE()
        prim.AffectedSOPInstanceUID = command.AffectedSOPInstanceUID
        msg: Any = C_STORE_RSP()
    else:
        prim = C_ECHO()
        msg = C_ECHO_RSP()
    prim.MessageIDBeingRespondedTo = int(command.MessageID)
    prim.AffectedSOPClassUID = command.AffectedSOPClassUID
    prim.Status = status
    msg.primitive_to_message(prim)
    out = b""
    for p_data in msg.encode_msg(context_id, 16382):
        pdu = P_DATA_TF()
        pdu.from_primitive(p_data)
        out += pdu.encode()
    return out


class _LoopbackServer:
    """Accepts connections on an ephemeral 127.0.0.1 port on a thread and hands each to
    :meth:`_handle`; ``stop`` is set and every thread joined when the ``with`` block
    ends."""

    def __init__(self) -> None:
        self.port = 0
        self.stop = threading.Event()
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._threads: list[threading.Thread] = []

    def _start(self) -> None:
        self._listener.bind((LOOPBACK, 0))
        self._listener.listen(8)
        self._listener.settimeout(0.1)
        self.port = int(self._listener.getsockname()[1])
        self._spawn(self._accept_loop)

    def _stop(self, join_timeout: float) -> None:
        self.stop.set()
        for thread in list(self._threads):
            thread.join(join_timeout)
        self._listener.close()

    def _spawn(self, target: Callable[..., None], *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        self._threads.append(thread)
        thread.start()

    def _accept_loop(self) -> None:
        while not self.stop.is_set():
            try:
                sock, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._handle(sock)

    def _handle(self, sock: socket.socket) -> None:
        raise NotImplementedError


class RawPeer(_LoopbackServer):
    """A raw-socket DICOM UL peer: ``script(connection)`` runs on its own thread for
    every accepted connection (optionally inside TLS with ``ssl_context``). Errors of a
    script other than connection errors are raised when the ``with`` block ends."""

    def __init__(
        self,
        script: Callable[[RawConnection], None],
        *,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        super().__init__()
        self.script = script
        self.ssl_context = ssl_context
        self.connections: list[RawConnection] = []
        self.errors: list[BaseException] = []

    def __enter__(self) -> RawPeer:
        self._start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop(15)
        for conn in self.connections:
            with contextlib.suppress(OSError):
                conn.sock.close()
        unexpected = [e for e in self.errors if not isinstance(e, OSError)]
        if unexpected and exc[0] is None:
            raise unexpected[0]

    def _handle(self, sock: socket.socket) -> None:
        self._spawn(self._serve, sock)

    def _serve(self, sock: socket.socket) -> None:
        try:
            if self.ssl_context is not None:
                sock.settimeout(10)
                sock = self.ssl_context.wrap_socket(sock, server_side=True)
            conn = RawConnection(sock, self.stop)
            self.connections.append(conn)
            self.script(conn)
        except BaseException as exc:  # recorded, raised at the end of the with block
            self.errors.append(exc)
        finally:
            with contextlib.suppress(OSError):
                sock.close()


# -- TCP proxy -------------------------------------------------------------------------------
class ChoppingProxy(_LoopbackServer):
    """Relays connections to ``127.0.0.1:upstream_port``; what the upstream sends is
    written to the client ``chunk`` bytes per ``send`` with ``TCP_NODELAY`` (so every
    PDU arrives in many TCP segments). ``writes`` counts those sends."""

    def __init__(self, upstream_port: int, chunk: int = 3) -> None:
        super().__init__()
        self.upstream_port = upstream_port
        self.chunk = chunk
        self.writes = 0
        self._sockets: list[socket.socket] = []

    def __enter__(self) -> ChoppingProxy:
        self._start()
        return self

    def __exit__(self, *exc: object) -> None:
        for s in self._sockets:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
        self._stop(10)
        for s in self._sockets:
            s.close()

    def _handle(self, client: socket.socket) -> None:
        upstream = socket.create_connection((LOOPBACK, self.upstream_port), timeout=10)
        upstream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for s in (client, upstream):
            s.settimeout(None)
            self._sockets.append(s)
        self._spawn(self._pump, client, upstream, 0)
        self._spawn(self._pump, upstream, client, self.chunk)

    def _pump(self, src: socket.socket, dst: socket.socket, chunk: int) -> None:
        with contextlib.suppress(OSError):
            while True:
                data = src.recv(65536)
                if not data:
                    break
                step = chunk or len(data)
                for pos in range(0, len(data), step):
                    dst.sendall(data[pos : pos + step])
                    self.writes += 1 if chunk else 0
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)


@contextlib.contextmanager
def timed() -> Iterator[list[float]]:
    """``with timed() as t: ...`` - afterwards ``t[0]`` holds the elapsed seconds."""
    out: list[float] = []
    start = time.monotonic()
    try:
        yield out
    finally:
        out.append(time.monotonic() - start)
