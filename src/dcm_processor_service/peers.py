"""Peers (DICOM nodes, usually a PACS): lookup for services, administration for the
runner and integration engineers.

``get_peer()`` without a name returns the peer the current session's images came from
(``DCM-PROCESSOR-SERVICE-PEER-ID``), or ``None`` when the session has none (as the
original did); with a name, that peer. An unknown name raises :class:`NotFoundError`
listing the known peers. A :class:`Peer` is also a mapping with the platform's peer
record keys (``peer["host"]``, ``peer.get("aet")``).

A peer may also be a DICOMweb endpoint (``add_peer(name, dicomweb=...)``): then
:func:`get_dicom_sender` returns a :class:`~dcm_processor_service.StowSender`, with the
same methods and results as the DIMSE sender.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from ._context import current_context
from ._errors import InvalidInputError
from ._runtime import store_for
from .store.base import Store
from .store.records import Peer
from .store.web_endpoint import DicomWebEndpoint

if TYPE_CHECKING:
    from .net.dicomweb.stow import StowSender
    from .net.sender import DicomSender

__all__ = ["add_peer", "get_dicom_sender", "get_peer", "list_peers", "remove_peer"]

logger = logging.getLogger(__name__)


def _store(store: Store | None) -> Store:
    return store if store is not None else store_for()


def get_peer(name: str | None = None, *, store: Store | None = None) -> Peer | None:
    """The peer named ``name`` (or with that id), or the current session's peer -
    ``None`` when the session has no peer (no ``DCM-PROCESSOR-SERVICE-PEER-ID``; outside
    a job, with no session either, :class:`MissingContextError` says so)."""
    if name is None:
        ctx = current_context()
        if ctx.peer_id is None:
            ctx.require("session_id")
            return None
        name = ctx.peer_id
    return _store(store).get_peer(name)


#: The AE title recorded for a DICOMweb-only peer (the platform's peer record needs one).
DICOMWEB_ONLY_AET = "DICOMWEB"


def add_peer(
    name: str,
    aet: str | None = None,
    host: str | None = None,
    port: int | None = None,
    *,
    dicomweb: DicomWebEndpoint | str | None = None,
    tls: bool = False,
    cert_file: str | None = None,
    key_file: str | None = None,
    ca_file: str | None = None,
    whitelist_aet: list[str] | tuple[str, ...] = (),
    whitelist_ip: list[str] | tuple[str, ...] = (),
    store: Store | None = None,
) -> Peer:
    """Add a peer, or update the peer of that name. Validated: AE title, port, TLS files.

    ``dicomweb``: the peer's DICOMweb endpoint (a :class:`DicomWebEndpoint`, or a base URL
    for one without authentication). A DICOMweb-only peer may leave out ``aet``/``host``/
    ``port``: the record then holds the URL's host and port and the AE title
    ``"DICOMWEB"`` (the platform's peer records need all three).

    Raises:
        InvalidInputError: a bad name, AE title (1-16 characters, no backslash), host,
            port (1-65535), a TLS file that does not exist, or neither ``aet``/``host``/
            ``port`` nor ``dicomweb``.
        StorageError: the store failed (:class:`StoreUnavailableError` when it cannot be reached).
        MissingContextError: no ``store`` given and no store in the job's context.
    """
    if isinstance(dicomweb, str):
        dicomweb = DicomWebEndpoint(dicomweb)
    if dicomweb is not None:
        aet = DICOMWEB_ONLY_AET if aet is None else aet
        host = dicomweb.host if host is None else host
        port = dicomweb.port if port is None else port
    missing = [k for k, v in (("aet", aet), ("host", host), ("port", port)) if v is None]
    if missing:
        raise InvalidInputError(
            f"peer {name!r} needs {', '.join(missing)} (or a DICOMweb endpoint: dicomweb=URL)"
        )
    assert aet is not None and host is not None and port is not None
    peer = Peer(
        name=name,
        aet=aet,
        host=host,
        port=port,
        tls=tls,
        cert_file=cert_file,
        key_file=key_file,
        ca_file=ca_file,
        whitelist_aet=tuple(whitelist_aet),
        whitelist_ip=tuple(whitelist_ip),
        dicomweb=dicomweb,
    )
    saved = _store(store).put_peer(peer)
    logger.info(
        "peer %s saved (%s@%s:%d%s%s)",
        saved.name,
        saved.aet,
        saved.host,
        saved.port,
        ", TLS" if saved.tls else "",
        f", DICOMweb {saved.dicomweb.url} auth {saved.dicomweb.auth}" if saved.dicomweb else "",
    )
    return saved


def list_peers(*, store: Store | None = None) -> list[Peer]:
    """All peers, sorted by name.

    Raises:
        StorageError: the store failed (:class:`StoreUnavailableError` when it cannot be reached).
        MissingContextError: no ``store`` given and no store in the job's context.
    """
    return _store(store).list_peers()


def remove_peer(name: str, *, store: Store | None = None) -> bool:
    """Remove a peer by name or id; ``False`` if there was none.

    Raises:
        StorageError: the store failed (:class:`StoreUnavailableError` when it cannot be reached).
        MissingContextError: no ``store`` given and no store in the job's context.
    """
    return _store(store).remove_peer(name)


def get_dicom_sender(
    peer_name: str | None = None,
    additional_sops: list[str] | None = None,
    additional_syntaxes: list[str] | None = None,
    *,
    protocol: str | None = None,
    store: Store | None = None,
    **options: Any,
) -> DicomSender | StowSender | None:
    """A ready sender for ``peer_name`` (default: the session's peer): a
    :class:`DicomSender` (C-STORE), or for a peer with a DICOMweb endpoint a
    :class:`StowSender` (STOW-RS) - same methods, same :class:`SendReport`.
    ``protocol="dimse"`` asks for the DIMSE sender of a peer that has both.

    Returns ``None`` only when no name is given and the job has no session peer
    (``DCM-PROCESSOR-SERVICE-PEER-ID`` unset); an unknown peer name raises
    :class:`NotFoundError`. ``options``: the chosen sender's keyword-only tuning.
    """
    if peer_name is None and current_context().peer_id is None:
        logger.warning("no peer name given and the session has no peer: no sender")
        return None
    peer = get_peer(peer_name, store=store)
    assert peer is not None  # a name, or the session's peer id
    from .net.peer_sender import sender_for_peer  # late: pynetdicom/httpx only when sending

    return sender_for_peer(
        peer,
        protocol=protocol,
        additional_sops=additional_sops,
        additional_syntaxes=additional_syntaxes,
        **options,
    )
