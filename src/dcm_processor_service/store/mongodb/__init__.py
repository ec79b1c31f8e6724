"""The ``mongodb`` provider: the dcm-processor platform's own MongoDB layout.

A service running inside a platform deployment reads and writes the platform's database
the way the platform does, as a guest: the platform's collections (``sessions``,
``jobs``, ``sessiondata``, ``peers``, ``series``, ``studies``, ``patients``) and GridFS
buckets (``sessionfiles``, ``dicomfiles``) with the platform's field names and id types,
this package's own bookkeeping in one ``dcmProcessorService`` sub-document the platform
never reads, no constraint the platform's writes could violate, and no deletion of the
platform's documents beyond what the platform's own clean-up deletes.

Modules: :mod:`.url` (URLs and the ``layout`` option), :mod:`.layout` (names, id and
value conventions, indexes), :mod:`.grid` (GridFS files: checksums, in-place
replacement), :mod:`.connection` (client, retries, errors), :mod:`.peers`,
:mod:`.session_state` (sessions, jobs, data), :mod:`.session_files`,
:mod:`.index_records` (reading instances and records), :mod:`.dicom_index` (filing
instances, clean-up), :mod:`.garbage`, :mod:`.store` (``MongoStore``, migration plan);
each part's class builds on the one before. ``docs/storage.md`` documents the
layout field by field and where it deliberately differs from the platform.
"""

from .connection import DEFAULT_DB_NAME, DEFAULT_SERVER_SELECTION_TIMEOUT_MS
from .grid import GridBucket
from .layout import BUCKETS, COLLECTIONS, EXTRA, SCHEMA_VERSION
from .store import MigrationStep, MongoStore
from .url import EXCLUSIVE, LAYOUTS, PLATFORM, MongoURL, parse_mongo_url

__all__ = [
    "BUCKETS",
    "COLLECTIONS",
    "DEFAULT_DB_NAME",
    "DEFAULT_SERVER_SELECTION_TIMEOUT_MS",
    "EXCLUSIVE",
    "EXTRA",
    "LAYOUTS",
    "PLATFORM",
    "SCHEMA_VERSION",
    "GridBucket",
    "MigrationStep",
    "MongoStore",
    "MongoURL",
    "parse_mongo_url",
]
