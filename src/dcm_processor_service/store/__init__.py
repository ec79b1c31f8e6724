"""Storage: one interface (:class:`Store`), providers chosen by name.

``open_store("sqlite", "/var/lib/dcm/store")`` gives the embedded store;
``postgresql`` and ``mongodb`` are optional extras. See ``docs/storage.md``.
"""

from .base import CHUNK_SIZE, JobRef, Store
from .records import FileRecord, InstanceInput, JobRecord, Peer, SessionRecord
from .registry import ProviderSpec, known_providers, open_store, register_provider

__all__ = [
    "CHUNK_SIZE",
    "FileRecord",
    "InstanceInput",
    "JobRecord",
    "JobRef",
    "Peer",
    "ProviderSpec",
    "SessionRecord",
    "Store",
    "known_providers",
    "open_store",
    "register_provider",
]
