"""The sender for a peer record: STOW-RS for a DICOMweb peer, C-STORE otherwise."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from .._errors import InvalidInputError
from ..store.records import Peer
from .protocol import use_dicomweb
from .sender import DicomSender

if TYPE_CHECKING:  # imported when a DICOMweb peer is used: a DIMSE send never loads httpx
    from .dicomweb.stow import StowSender

__all__ = ["sender_for_peer"]


def sender_for_peer(
    peer: Peer,
    *,
    protocol: str | None = None,
    additional_sops: Iterable[str] | None = None,
    additional_syntaxes: Iterable[str] | None = None,
    **options: Any,
) -> DicomSender | StowSender:
    """A :class:`StowSender` for a peer with a DICOMweb endpoint (unless ``protocol`` is
    ``"dimse"``), else a :class:`DicomSender`; ``options`` are the chosen sender's
    keyword-only tuning parameters."""
    if use_dicomweb(peer, protocol):
        if additional_sops or additional_syntaxes:
            raise InvalidInputError(
                f"peer {peer.name!r} is a DICOMweb peer: 'additional_sops'/"
                "'additional_syntaxes' are DIMSE negotiation settings (pass protocol='dimse' "
                "to send by DIMSE)"
            )
        from .dicomweb.stow import StowSender

        return StowSender.for_peer(peer, **options)
    return DicomSender.for_peer(
        peer, additional_sops=additional_sops, additional_syntaxes=additional_syntaxes, **options
    )
