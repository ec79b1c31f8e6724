"""Group commit: many instances filed by one transaction.

Filing instances one at a time costs, per instance, a flush of its bytes and a commit
of its records. An :class:`InstanceBatch` (from :meth:`Store.instance_batch
<dcm_processor_service.store.Store.instance_batch>`) writes the bytes of each instance
as it is added, then :meth:`InstanceBatch.commit` makes all of them durable with one
flush and files all their records in one transaction - which is what makes
:func:`~dcm_processor_service.ingest` run at about the speed of ``cp -r && sync``.

The guarantee is the per-instance one, per batch: when :meth:`~InstanceBatch.commit`
returns, every instance it returned a record for is stored, durably, whole; when it
raises, or the ``with`` block is left without a commit (an error, a crash, a consumer
that stopped), none of the batch is filed and its bytes are removed (or left for the
garbage collection when the process died).

:class:`OneByOneBatch` is the fallback for a store without group commit: each
:meth:`~InstanceBatch.add` files the instance at once, durably.
"""

from __future__ import annotations

import abc
from typing import TYPE_CHECKING, BinaryIO

from .._errors import PatientConflictError
from .records import InstanceInput, InstanceRecord

if TYPE_CHECKING:
    from .base import Store

__all__ = ["BatchResult", "InstanceBatch", "OneByOneBatch"]

#: What :meth:`InstanceBatch.commit` returns per added instance: its record, or the
#: conflict that refused it (nothing of that instance is stored).
BatchResult = InstanceRecord | PatientConflictError


class InstanceBatch(abc.ABC):
    """Instances to be filed together; use through :meth:`Store.instance_batch`."""

    @abc.abstractmethod
    def add(self, instance: InstanceInput, source: BinaryIO) -> None:
        """Write the instance's bytes from ``source`` now (an error reading ``source``
        propagates, and nothing of this instance is kept); its records are filed by
        :meth:`commit`."""

    @abc.abstractmethod
    def commit(self) -> list[BatchResult]:
        """Make the added instances durable and file them in one transaction; one
        result per :meth:`add`, in order. The batch is empty afterwards."""

    def __len__(self) -> int:
        return self.pending

    @property
    @abc.abstractmethod
    def pending(self) -> int:
        """How many instances were added since the last commit."""


class OneByOneBatch(InstanceBatch):
    """No group commit: each instance is filed by :meth:`Store.put_instance` when it is
    added (a :class:`PatientConflictError` becomes its result)."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._results: list[BatchResult] = []

    def add(self, instance: InstanceInput, source: BinaryIO) -> None:
        try:
            self._results.append(self._store.put_instance(instance, source))
        except PatientConflictError as exc:
            self._results.append(exc)

    def commit(self) -> list[BatchResult]:
        results, self._results = self._results, []
        return results

    @property
    def pending(self) -> int:
        return len(self._results)
