"""Garbage of GridFS buckets: the chunks of uploads that never finished.

GridFS writes a file's chunks first and its ``files`` document last, so an upload that
died (kill -9, a lost connection) leaves chunks whose ``files_id`` has no ``files``
document - invisible to readers, but they fill the disk. MongoDB offers no lock that
dies with the writer here, so liveness is judged by time: a chunk's ``_id`` is an
ObjectId stamped when the writer inserted it, and an upload whose newest chunk is older
than ``min_age_s`` is considered dead (default :data:`DEFAULT_MIN_AGE_S`; a live upload
writes a chunk every few milliseconds). Chunks that a replacement journal names (the new
content of a file being swapped in place, see :mod:`.grid`) are never removed: the
journal's roll-forward still needs them.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

from bson import ObjectId

from ..garbage import GarbageReport
from .layout import EXTRA

__all__ = ["DEFAULT_MIN_AGE_S", "STRAY", "collect_stray_chunks"]

#: How long an unfinished upload must have been silent before its chunks are removed.
DEFAULT_MIN_AGE_S = 3600.0
STRAY = "stray chunks"
_BATCH = 1000
#: where a file document's replacement journal names the chunks it swaps in
_JOURNALED = f"metadata.{EXTRA}.swap.chunks"


def collect_stray_chunks(
    db: Any,
    buckets: Iterable[str],
    report: GarbageReport,
    *,
    dry_run: bool = False,
    min_age_s: float = DEFAULT_MIN_AGE_S,
) -> None:
    """Remove (count in ``report``) the chunks of unfinished uploads of ``buckets``
    whose newest chunk is older than ``min_age_s``; younger ones count as in flight."""
    cutoff = time.time() - min_age_s
    for bucket in buckets:
        chunks, files = db[f"{bucket}.chunks"], db[f"{bucket}.files"]
        ids = [g["_id"] for g in chunks.aggregate([{"$group": {"_id": "$files_id"}}])]
        for start in range(0, len(ids), _BATCH):
            batch = ids[start : start + _BATCH]
            known = {d["_id"] for d in files.find({"_id": {"$in": batch}}, {"_id": 1})}
            known.update(
                d["metadata"][EXTRA]["swap"]["chunks"]
                for d in files.find({_JOURNALED: {"$in": batch}}, {_JOURNALED: 1})
            )
            for files_id in batch:
                if files_id in known:
                    continue
                newest = next(
                    iter(chunks.find({"files_id": files_id}, {"_id": 1}).sort("_id", -1).limit(1)),
                    None,
                )
                stamp = newest["_id"] if newest else None
                if not isinstance(stamp, ObjectId) or stamp.generation_time.timestamp() > cutoff:
                    report.in_flight += 1
                    continue
                size = sum(
                    len(c.get("data") or b"")
                    for c in chunks.find({"files_id": files_id}, {"data": 1})
                )
                if files.find_one({_JOURNALED: files_id}, {"_id": 1}) is not None:
                    continue  # journaled meanwhile: a replacement is being finished
                if not dry_run:
                    chunks.delete_many({"files_id": files_id})
                report.add(STRAY, size)
