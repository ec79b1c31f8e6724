"""Peers (DICOM nodes, usually a PACS): lookup for services, administration for the
runner and integration engineers.

``get_peer()`` without a name returns the peer the current session's images came from
(``DCM-PROCESSOR-SERVICE-PEER-ID``), or ``None`` when the session has none (as the
original did); with a name, that peer. An unknown name raises :class:`NotFoundError`
listing the known peers. A :class:`Peer` is also a mapping with the platform's peer
record keys (``peer["host"]``, ``peer.get("aet")``).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from ._context import current_context
from ._runtime import store_for
from .store.base import Store
from .store.records import Peer

if TYPE_CHECKING:
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


def add_peer(
    name: str,
    aet: str,
    host: str,
    port: int,
    *,
    tls: bool = False,
    cert_file: str | None = None,
    key_file: str | None = None,
    ca_file: str | None = None,
    whitelist_aet: list[str] | tuple[str, ...] = (),
    whitelist_ip: list[str] | tuple[str, ...] = (),
    store: Store | None = None,
) -> Peer:
    """Add a peer, or update the peer of that name. Validated: AE title, port, TLS files."""
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
    )
    saved = _store(store).put_peer(peer)
    logger.info(
        "peer %s saved (%s@%s:%d%s)",
        saved.name,
        saved.aet,
        saved.host,
        saved.port,
        ", TLS" if saved.tls else "",
    )
    return saved


def list_peers(*, store: Store | None = None) -> list[Peer]:
    """All peers, sorted by name."""
    return _store(store).list_peers()


def remove_peer(name: str, *, store: Store | None = None) -> bool:
    """Remove a peer by name or id; ``False`` if there was none."""
    return _store(store).remove_peer(name)


def get_dicom_sender(
    peer_name: str | None = None,
    additional_sops: list[str] | None = None,
    additional_syntaxes: list[str] | None = None,
    *,
    store: Store | None = None,
    **options: Any,
) -> DicomSender | None:
    """A ready :class:`DicomSender` for ``peer_name`` (default: the session's peer).

    Returns ``None`` only when no name is given and the job has no session peer
    (``DCM-PROCESSOR-SERVICE-PEER-ID`` unset); an unknown peer name raises
    :class:`NotFoundError`.
    """
    if peer_name is None and current_context().peer_id is None:
        logger.warning("no peer name given and the session has no peer: no sender")
        return None
    peer = get_peer(peer_name, store=store)
    assert peer is not None  # a name, or the session's peer id
    from .net.sender import DicomSender  # imported late: pynetdicom is only needed here

    return DicomSender.for_peer(
        peer, additional_sops=additional_sops, additional_syntaxes=additional_syntaxes, **options
    )
