"""What a network failure means for the sender: may a retry cure it, and may the peer
have performed the request although it never answered.

Every :class:`~dcm_processor_service._errors.NetworkError` the association raises
carries ``transient`` (bool): whether a retry on a new association may succeed
(refused/reset/aborted/timeouts: yes; unknown host, TLS failures, permanent
rejections: no). One raised after a request went out in full also carries
``in_doubt`` = True: no valid response came (timeout, abort, closed connection,
garbage), so the peer may have performed it - e.g. stored the instance - without
telling us.
"""

from __future__ import annotations

from .._errors import AssociationAbortedError, NetworkError

__all__ = ["aborted", "is_in_doubt", "is_transient", "mark", "mark_in_doubt"]


def mark(exc: NetworkError, transient: bool) -> NetworkError:
    """``exc``, marked as ``transient`` (a retry may cure it) or not."""
    exc.transient = transient
    return exc


def aborted(message: str) -> NetworkError:
    """An :class:`AssociationAbortedError` (transient: a new association may work)."""
    return mark(AssociationAbortedError(message), True)


def mark_in_doubt(exc: NetworkError) -> NetworkError:
    """``exc``, marked as ending a request that had been sent in full."""
    exc.in_doubt = True
    return exc


def is_transient(exc: BaseException) -> bool:
    """Whether ``exc`` is a network failure a retry on a new association may cure."""
    return isinstance(exc, NetworkError) and exc.transient


def is_in_doubt(exc: BaseException) -> bool:
    """Whether ``exc`` ended a request that had been sent in full: no valid response
    came (timeout, abort, closed connection, garbage), so the peer may have performed it
    - e.g. stored the instance - without telling us."""
    return isinstance(exc, NetworkError) and exc.in_doubt
