"""Socket I/O for an association: connect (+TLS), send and receive whole PDUs, each
step against one deadline.

Every wait has a deadline for the whole step, not for each read or write (see
:func:`deadline`): a peer that trickles one byte at a time cannot stretch a timeout
(PS3.8 ARTIM and the DIMSE timeout are meant as bounds on the step).

Plain TCP: the association's socket is non-blocking and waited on with one
:class:`select.poll` (each wait then costs no more system calls than a timeout
socket's, and a send can watch for the peer's input at the same time). Data goes out
with scatter/gather ``sendmsg``, so a file's dataset bytes go from the page cache to the
socket without being copied into Python objects. Before the association and over TLS
(whose records do not map to readiness, and which has no ``sendmsg``) the socket is a
timeout socket, given what is left of the deadline before each call.

``TCP_NODELAY`` is set on the socket, and ``TCP_QUICKACK`` (Linux) before and after
every read of a response: peers that leave Nagle on (Orthanc, dcmtk without
``TCP_NODELAY=1``) hold the end of each response back until we ACK its start, which
Linux delays by up to 40 ms - 13.3 s instead of 0.8 s for 300 slices to Orthanc.

Socket and :mod:`ssl` exceptions are translated to the package's error tree by
:func:`as_network_error`.
"""

from __future__ import annotations

import contextlib
import select
import socket
import sys
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Final

from .._errors import NetworkError, PeerUnreachableError, TLSError
from .failures import aborted, mark
from .pdu import A_ABORT_PDU, PDU_HEADER, PduType, ProtocolError, abort_reason, check_pdu_length

if TYPE_CHECKING:
    import ssl

__all__ = [
    "ConnectionClosed",
    "PeerSpoke",
    "abort_connection",
    "as_network_error",
    "close",
    "deadline",
    "nonblocking_poller",
    "open_connection",
    "pending_abort",
    "quickack",
    "read_pdu",
    "send_all",
    "start_tls",
    "supports_quickack",
]

_IOV_MAX: Final = 512  # buffers per sendmsg() call (Linux allows 1024)
_TCP_QUICKACK: Final[int | None] = getattr(socket, "TCP_QUICKACK", None)  # Linux only
_POLL_IN: Final = select.POLLIN
_POLL_OUT: Final = select.POLLOUT


class ConnectionClosed(Exception):
    """The peer closed the connection (``before_association``: while we waited for the
    answer to our A-ASSOCIATE-RQ)."""

    def __init__(self, before_association: bool = False) -> None:
        super().__init__("connection closed by peer")
        self.before_association = before_association


class PeerSpoke(Exception):
    """The peer sent something (or closed) while our request was still going out."""


def supports_quickack() -> bool:
    """True where ``TCP_QUICKACK`` exists (Linux)."""
    return _TCP_QUICKACK is not None


# -- connecting --------------------------------------------------------------------------------
def open_connection(host: str, port: int, *, label: str, timeout: float | None) -> socket.socket:
    """A TCP connection to ``host:port`` within ``timeout`` seconds.

    Raises:
        PeerUnreachableError: unresolvable host (permanent), refused, timed out, other
            connect failures (transient).
    """
    try:
        return socket.create_connection((host, port), timeout=timeout)
    except socket.gaierror as exc:
        raise mark(
            PeerUnreachableError(
                f"cannot resolve DICOM peer host {host!r} (port {port}): {exc.strerror}"
            ),
            False,
        ) from exc
    except ConnectionRefusedError as exc:
        raise mark(
            PeerUnreachableError(
                f"connection to DICOM peer {label} refused - is it running and "
                f"listening on port {port}?"
            ),
            True,
        ) from exc
    except TimeoutError as exc:
        raise mark(
            PeerUnreachableError(f"connecting to DICOM peer {label} timed out after {timeout} s"),
            True,
        ) from exc
    except OSError as exc:
        raise mark(
            PeerUnreachableError(f"cannot connect to DICOM peer {label}: {exc.strerror or exc}"),
            True,
        ) from exc


def start_tls(
    sock: socket.socket,
    ssl_context: ssl.SSLContext,
    *,
    server_hostname: str,
    where: str,
    timeout: float | None,
) -> ssl.SSLSocket:
    """The TLS handshake on ``sock`` (a timeout socket), verifying the peer's
    certificate against ``server_hostname``; ``where`` (``host:port``) names the peer.

    Raises:
        TLSError: handshake or certificate failure, connection closed or reset.
        PeerUnreachableError: the handshake timed out (after ``timeout`` s).
    """
    import ssl

    from .tls import describe_ssl_error

    try:
        return ssl_context.wrap_socket(sock, server_hostname=server_hostname)
    except ssl.SSLError as exc:
        raise mark(
            TLSError(
                f"TLS handshake with DICOM peer {where} failed (checking the certificate "
                f"for {server_hostname!r}): {describe_ssl_error(exc)}"
            ),
            False,
        ) from exc
    except TimeoutError as exc:
        raise mark(
            PeerUnreachableError(
                f"TLS handshake with DICOM peer {where} timed out after {timeout} s"
            ),
            True,
        ) from exc
    except OSError as exc:
        raise mark(
            TLSError(
                f"TLS handshake with DICOM peer {where} failed: the connection was closed "
                f"or reset ({exc.strerror or type(exc).__name__}) - is the peer configured "
                f"for TLS on this port?"
            ),
            False,
        ) from exc


def _is_ssl_error(exc: BaseException) -> bool:
    """Whether ``exc`` is an :class:`ssl.SSLError` - without importing :mod:`ssl` (loaded
    only for TLS peers: without it, no such error can have been raised)."""
    loaded = sys.modules.get("ssl")
    return loaded is not None and isinstance(exc, loaded.SSLError)


def as_network_error(
    exc: BaseException,
    where: str,
    *,
    peer: str,
    tls: bool,
    timed_out: NetworkError | None = None,
) -> NetworkError:
    """Translate an exception of socket I/O with ``peer`` raised ``where`` (``"while
    sending to X"``) into the error tree: ``timed_out`` for a :class:`TimeoutError` when
    given; a transient :class:`AssociationAbortedError` for timeouts, closed or lost
    connections and protocol errors; a permanent :class:`TLSError` for TLS failures.
    Anything else (a bug, KeyboardInterrupt) is re-raised unchanged."""
    if isinstance(exc, TimeoutError) and timed_out is not None:
        return timed_out
    if isinstance(exc, ProtocolError):
        return aborted(f"protocol error from {peer}: {exc}")
    if _is_ssl_error(exc):
        from .tls import describe_ssl_error

        return mark(TLSError(f"TLS failure {where}: {describe_ssl_error(exc)}"), False)
    if isinstance(exc, TimeoutError):
        return aborted(f"timed out {where}")
    if isinstance(exc, ConnectionClosed):
        hint = (
            " - over TLS this usually means the peer refused our client certificate "
            "(mutual TLS) or does not trust its CA"
            if tls and exc.before_association
            else ""
        )
        return aborted(f"the peer closed the connection {where}{hint}")
    if isinstance(exc, OSError):
        return aborted(f"connection lost {where}: {exc.strerror or type(exc).__name__}")
    raise exc  # not a network problem: a bug - let it surface


def nonblocking_poller(sock: socket.socket) -> select.poll:
    """Make ``sock`` non-blocking and return the poller every wait on it uses."""
    sock.setblocking(False)
    poller = select.poll()
    poller.register(sock, _POLL_IN)
    return poller


# -- deadlines ---------------------------------------------------------------------------------
def deadline(timeout: float | None) -> float | None:
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


# -- sending -----------------------------------------------------------------------------------
def send_all(
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
    raises :class:`PeerSpoke` as soon as the peer sent something or closed (checked
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
        poller.modify(sock, _POLL_IN)
        if poller.poll(0):
            raise PeerSpoke()
    pending = list(bufs)
    i = 0
    blocked = False
    while i < len(pending):
        if blocked:
            events = _wait_for(sock, poller, _POLL_OUT | (_POLL_IN if watch else 0), deadline)
            if watch and events & (_POLL_IN | select.POLLHUP | select.POLLERR):
                raise PeerSpoke()
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


# -- receiving ---------------------------------------------------------------------------------
def quickack(sock: socket.socket) -> None:
    """ACK what has arrived now. A peer that leaves Nagle on (Orthanc, dcmtk without
    TCP_NODELAY=1) holds the rest of a response back until its first segment is ACKed,
    and Linux delays that ACK up to 40 ms. TCP_QUICKACK is not sticky, so it is set
    again after every read."""
    if _TCP_QUICKACK is not None:
        sock.setsockopt(socket.IPPROTO_TCP, _TCP_QUICKACK, 1)


def _recv_exact(
    sock: socket.socket,
    n: int,
    deadline: float | None,
    *,
    poller: select.poll | None = None,
    ready: bool = False,
    before_association: bool = False,
    quickack_reads: bool = False,
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
            _wait_for(sock, poller, _POLL_IN, deadline)
        try:
            k = sock.recv_into(view[got:], n - got)
        except BlockingIOError:
            ready = False
            continue
        if not k:
            raise ConnectionClosed(before_association)
        got += k
        ready = False  # the socket is drained: wait before reading again
        if quickack_reads:
            quickack(sock)
    return buf


def read_pdu(
    sock: socket.socket,
    deadline: float | None,
    max_pdu: int,
    *,
    poller: select.poll | None = None,
    before_association: bool = False,
    quickack_reads: bool = False,
) -> tuple[int, bytes]:
    """Read one whole PDU before ``deadline``; return (type, the PDU with its 6-byte
    header). ``max_pdu``: the largest we accept (0: unlimited), see
    :func:`~.pdu.check_pdu_length`."""
    header = _recv_exact(
        sock,
        6,
        deadline,
        poller=poller,
        before_association=before_association,
        quickack_reads=quickack_reads,
    )
    pdu_type, _reserved, length = PDU_HEADER.unpack(header)
    check_pdu_length(length, max_pdu)
    body = _recv_exact(
        sock,
        length,
        deadline,
        poller=poller,
        ready=True,  # the body usually arrived with its header
        before_association=before_association,
        quickack_reads=quickack_reads,
    )
    return pdu_type, bytes(header + body)


def pending_abort(sock: socket.socket) -> str | None:
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
        pdu_type, _reserved, length = PDU_HEADER.unpack_from(data, pos)
        if pdu_type == PduType.A_ABORT:
            return abort_reason(data[pos : pos + 10])
        pos += 6 + length
    return None


# -- closing -----------------------------------------------------------------------------------
def close(sock: socket.socket) -> None:
    """Close ``sock``; never raises."""
    with contextlib.suppress(OSError):
        sock.close()


def abort_connection(sock: socket.socket) -> None:
    """Send A-ABORT (best effort, 1 s at most) and close ``sock``; never raises."""
    try:
        sock.settimeout(1.0)
        sock.sendall(A_ABORT_PDU)
    except (OSError, ValueError):
        pass
    close(sock)
