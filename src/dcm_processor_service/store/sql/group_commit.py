"""Group commit for the SQL providers: a batch of instances, one flush, one transaction.

:class:`SQLInstanceBatch` writes each added instance's bytes as a blob at once, without
flushing it (``durable=False``) and keeps holding it (its writer's lock or lease, so a
garbage collection leaves it alone). :meth:`SQLInstanceBatch.commit` then

1. makes every blob of the batch durable together (:meth:`BlobStore.make_durable
   <dcm_processor_service.store.blobs.BlobStore.make_durable>`: the files, then their
   folders),
2. files every instance in one transaction, committed durably
   (``SQLCore._run_durable``) - a patient conflict refuses only its own instance,
3. releases the blobs, and deletes the blobs the records pointed at before and those
   of refused instances.

A batch that is discarded (the block ends without a commit, or step 1 or 2 fails)
deletes its blobs; a process killed mid-batch leaves blobs no record references, which
the garbage collection removes once their writer is gone. So records only ever point at
complete, durable bytes, and an instance reported stored stays stored.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, BinaryIO, Protocol

from ..._errors import PatientConflictError
from ..blobs import BlobInfo, BlobStore
from ..instance_batch import BatchResult, InstanceBatch
from ..records import InstanceInput

__all__ = ["FLUSH_THREADS", "SQLInstanceBatch"]

#: Threads that flush a batch's blobs together (see :func:`_flush_together`).
FLUSH_THREADS = 16

if TYPE_CHECKING:

    class _Filer(Protocol):
        blobs: BlobStore

        def _before_first_write(self) -> None: ...

        def _file_batch(
            self, items: Sequence[tuple[InstanceInput, BlobInfo]]
        ) -> tuple[list[BatchResult], list[str]]: ...


class BatchDiscarded(Exception):
    """Thrown into the blob writers of a batch that is left without a commit, so each
    deletes its blob."""


def _flush_together(blobs: BlobStore, keys: Sequence[str]) -> None:
    """:meth:`BlobStore.make_durable` of ``keys``, split over :data:`FLUSH_THREADS`
    threads: flushes issued together are merged by the file system into few journal
    commits, where one after another each waits for its own."""
    n = min(FLUSH_THREADS, len(keys))
    if n <= 1 or type(blobs).make_durable is BlobStore.make_durable:  # nothing to flush
        blobs.make_durable(keys)
        return
    with ThreadPoolExecutor(n, thread_name_prefix="dcm-flush") as pool:
        flushes = [pool.submit(blobs.make_durable, keys[i::n]) for i in range(n)]
    for flush in flushes:
        flush.result()  # the first error, once every flush has ended


class SQLInstanceBatch(InstanceBatch):
    """See the module docs; made by ``SQLStore.instance_batch()``."""

    def __init__(self, store: _Filer) -> None:
        self._store = store
        self._writers = contextlib.ExitStack()  # the held blobs of the pending instances
        self._items: list[tuple[InstanceInput, BlobInfo]] = []

    @property
    def pending(self) -> int:
        return len(self._items)

    def add(self, instance: InstanceInput, source: BinaryIO) -> None:
        if not self._items:
            self._store._before_first_write()
        # a source that fails raises here; its writer has removed its partial blob
        blob = self._writers.enter_context(self._store.blobs.writing(source, durable=False))
        self._items.append((instance, blob))

    def commit(self) -> list[BatchResult]:
        items, self._items = self._items, []
        writers, self._writers = self._writers, contextlib.ExitStack()
        if not items:
            return []
        with writers:  # an error below makes each writer delete its blob
            _flush_together(self._store.blobs, [blob.key for _, blob in items])
            results, replaced = self._store._file_batch(items)
        # committed, and the blobs released: now the obsolete bytes can go
        for key in replaced:
            self._store.blobs.delete(key)
        for (_, blob), result in zip(items, results, strict=True):
            if isinstance(result, PatientConflictError):
                self._store.blobs.delete(blob.key)
        return results

    def discard(self) -> None:
        """Delete the blobs of instances added since the last commit (nothing of them
        was filed)."""
        self._items = []
        writers, self._writers = self._writers, contextlib.ExitStack()
        reason = BatchDiscarded("the batch ended without a commit")
        writers.__exit__(BatchDiscarded, reason, None)
