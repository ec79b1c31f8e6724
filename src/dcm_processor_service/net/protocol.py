"""Which protocol to talk to a peer: DICOMweb when it has an endpoint, else DIMSE.

Kept apart from the DICOMweb and DIMSE modules so that choosing (what every send and
query does first) loads neither httpx nor pynetdicom.
"""

from __future__ import annotations

from typing import Final

from .._errors import InvalidInputError
from ..store.records import Peer

__all__ = ["PROTOCOLS", "use_dicomweb"]

#: the values of a ``protocol`` argument: ``None`` (DICOMweb when the peer has an
#: endpoint, else DIMSE), ``"dicomweb"`` or ``"dimse"``
PROTOCOLS: Final = (None, "dicomweb", "dimse")


def use_dicomweb(peer: Peer, protocol: str | None) -> bool:
    """Whether to talk DICOMweb to ``peer`` (``protocol``: one of :data:`PROTOCOLS`)."""
    if protocol not in PROTOCOLS:
        raise InvalidInputError(
            f"invalid 'protocol' value {protocol!r} - must be 'dicomweb', 'dimse' or None"
        )
    if protocol == "dicomweb" and peer.dicomweb is None:
        raise InvalidInputError(f"peer {peer.name!r} has no DICOMweb endpoint")
    return peer.dicomweb is not None and protocol != "dimse"
