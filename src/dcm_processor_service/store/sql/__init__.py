"""The store logic shared by the SQL providers (SQLite, PostgreSQL).

One class per part, each building on the one before, as in the ``mongodb`` provider:

* :mod:`.core` - :class:`Tx` (a transaction with ``?`` placeholders), the retried unit
  of work, and how values are stored (JSON text, ISO-8601 UTC time);
* :mod:`.schema` - the versioned schema and its migrations;
* :mod:`.record_blobs` - records that point at blobs: writes held until the record
  commits, reads across a concurrent replace, garbage collection;
* :mod:`.session_state` - sessions, jobs, session data and files, peers;
* :mod:`.index_records` and :mod:`.dicom_index` - the DICOM index.

A dialect (:class:`~dcm_processor_service.store.sqlite.SQLiteStore`,
:class:`~dcm_processor_service.store.postgresql.PostgreSQLStore`) subclasses
:class:`SQLStore` and supplies connections, transactions, which errors are transient,
and its blob store.
"""

from .core import Tx
from .dicom_index import SQLDicomIndex
from .schema import CORE, SCHEMA, SCHEMA_VERSION, apply_versions

__all__ = ["SCHEMA", "SCHEMA_VERSION", "SQLStore", "Tx"]


class SQLStore(SQLDicomIndex):
    """Shared implementation of :class:`~dcm_processor_service.store.Store` over a
    dialect's :class:`Tx`."""

    def _apply_schema(self, tx: Tx) -> int:
        """Apply missing schema versions inside ``tx`` (the caller holds the lock that
        serialises migrations); return the resulting version."""
        return apply_versions(tx, CORE, SCHEMA, self.describe())
