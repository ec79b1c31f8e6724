"""What a garbage collection of a store removed: :class:`GarbageReport`.

A writer that crashes (kill -9, power loss, OOM) between writing a file's bytes and
committing the record that references them leaves bytes nothing points at: ``.part``
files and unreferenced blob files of a blob folder, incomplete or unreferenced blobs and
stray chunks in PostgreSQL, GridFS chunks without a ``files`` document in MongoDB.
:meth:`Store.collect_garbage <dcm_processor_service.store.Store.collect_garbage>`
(``dcm-service db gc``) removes them, never what a live writer is still committing (see
``docs/storage.md``), and returns this report.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["GarbageReport", "ReferencedKeys"]

#: ``referenced(keys) -> the subset of keys that a record points at``, queried at the
#: time of the call (the blob stores ask again right before removing anything).
ReferencedKeys = Callable[[Sequence[str]], set[str]]


@dataclass
class GarbageReport:
    """Items and bytes removed per kind (with ``dry_run``: that would be removed), and
    how many candidates were left alone because a live writer holds them."""

    store: str
    dry_run: bool = False
    removed: dict[str, int] = field(default_factory=dict)
    """kind (``"partial files"``, ``"unreferenced blobs"``...) -> number of items"""
    freed_bytes: dict[str, int] = field(default_factory=dict)
    """kind -> bytes"""
    in_flight: int = 0
    """candidates skipped: a live writer still holds them (its lock or lease)"""

    def add(self, kind: str, size: int) -> None:
        """Count one removed item of ``kind`` holding ``size`` bytes."""
        self.removed[kind] = self.removed.get(kind, 0) + 1
        self.freed_bytes[kind] = self.freed_bytes.get(kind, 0) + int(size)

    @property
    def items(self) -> int:
        """Items removed, all kinds."""
        return sum(self.removed.values())

    @property
    def bytes(self) -> int:
        """Bytes freed, all kinds."""
        return sum(self.freed_bytes.values())

    def summary(self) -> str:
        """One line, e.g. ``removed 3 partial files (466.0 MB); 1 in-flight item left alone``."""
        verb = "would remove" if self.dry_run else "removed"
        parts = [
            f"{n} {kind} ({_size(self.freed_bytes[kind])})" for kind, n in self.removed.items()
        ]
        text = f"{self.store}: {verb} " + (", ".join(parts) if parts else "nothing")
        if len(parts) > 1:
            text += f" - {_size(self.bytes)} in all"
        if self.in_flight:
            text += f"; {self.in_flight} item(s) of writers still at work left alone"
        return text

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (what ``dcm-service db gc --json`` prints)."""
        return {
            "store": self.store,
            "dry_run": self.dry_run,
            "removed": dict(self.removed),
            "freed_bytes": dict(self.freed_bytes),
            "items": self.items,
            "bytes": self.bytes,
            "in_flight": self.in_flight,
        }


def _size(n: int) -> str:
    if n < 1024 * 1024:
        return f"{n / 1024:.1f} KB"
    return f"{n / 1024 / 1024:.1f} MB"
