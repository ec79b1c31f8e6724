"""The ``mongodb`` provider: the dcm-processor platform's own MongoDB layout.

A service that runs inside an existing platform deployment reads and writes the
platform's database directly:

=================  ==========================================================
collection         holds
=================  ==========================================================
``sessions``       one document per session (``_id`` = session id)
``jobs``           one document per job (``_id`` = job id, ``sessionId``...)
``sessiondata``    session data: ``sessionId``, ``jobId``, ``jobName``,
                   ``event``, ``name``, ``value`` (the JSON value as native BSON;
                   ``valueJson`` text instead for the rare value BSON cannot
                   hold: integers beyond 64 bits, keys starting with ``$``)
``peers``          DICOM peers (``name`` unique)
``series``         series records, exactly the SPEC §4 shape
``studies``        study records, exactly the SPEC §4 shape
``patients``       patient records, exactly the SPEC §4 shape
``sessionfiles``   GridFS bucket of session files
``dicomfiles``     GridFS bucket of the ingested DICOM instances
``schema_version`` one document ``{_id: "core", version}`` (added by this SDK)
=================  ==========================================================

Files are GridFS files. GridFS inserts a file's ``files`` document only after all its
chunks are written, so a file becomes visible only once complete. Replacing a session
file (or re-ingesting an instance) uploads a new GridFS file, then deletes the older
versions; readers always pick the newest complete version. The record id stays stable
across replaces (``metadata.fileId`` / ``metadata.instanceId``), while
:attr:`FileRecord.blob_key` is the GridFS ``_id`` of the version. sha256 is computed
while uploading and verified when a reader reaches the end. Memory stays bounded:
reads go chunk by chunk, and pymongo batches chunk inserts (at most ~32 MiB buffered).

MongoDB has no multi-document transactions on a standalone server, so every write is a
single-document atomic operation, ordered bytes first, then the records that reference
them; readers skip ids whose bytes are gone (a crash while a session's images are being
removed). Unique indexes make concurrent upserts converge on one document; an upsert
that loses the race (``DuplicateKeyError``) is retried and then updates the winner.
Read-modify-write updates (session meta, job progress) use a ``rev`` counter and redo
the change when another writer got there first.

URL forms: ``mongodb://[user:password@]host[:port][,host2...]/[db][?options]`` and
``mongodb+srv://...``. The database is the ``name`` argument, else the URL's path, else
``dcm-processor``. Server selection times out after
:data:`DEFAULT_SERVER_SELECTION_TIMEOUT_MS` unless the URL sets
``serverSelectionTimeoutMS``; an unreachable server raises
:class:`~dcm_processor_service.StoreUnavailableError` naming host, port and database,
never the password.

Test hook: ``mongomock://<label>[/db]`` runs the provider against mongomock, an
in-process fake (pip install mongomock). It exists because no MongoDB server can run on
the machines this SDK is tested on; the fake lives in one process, so it cannot be shared
by the job processes of a real deployment. Stores in one process opening the same label
share one fake server.
"""

from __future__ import annotations

import io
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable
from datetime import datetime, timezone
from typing import Any, BinaryIO, TypeVar
from urllib.parse import parse_qsl, quote, unquote

import bson
import bson.errors
import gridfs
import gridfs.errors
import pymongo
import pymongo.errors
from bson import ObjectId

from .._errors import (
    ConflictError,
    DcmProcessorError,
    IntegrityError,
    InvalidInputError,
    MissingDependencyError,
    NotFoundError,
    StorageError,
    StoreUnavailableError,
)
from ._sql import _instance_order
from .base import CHUNK_SIZE, JobRef, Store
from .blobs import BlobInfo, BlobStore, VerifyingReader, copy_stream
from .records import FileRecord, InstanceInput, JobRecord, Peer, SessionRecord, utcnow

__all__ = [
    "BUCKETS",
    "COLLECTIONS",
    "DEFAULT_DB_NAME",
    "DEFAULT_SERVER_SELECTION_TIMEOUT_MS",
    "SCHEMA_VERSION",
    "GridFSBlobStore",
    "MongoStore",
    "MongoURL",
    "drop_mongomock_database",
    "parse_mongo_url",
]

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: Version of the layout this module writes (stored in ``schema_version``).
SCHEMA_VERSION = 1
#: Database used when neither the ``name`` argument nor the URL names one.
DEFAULT_DB_NAME = "dcm-processor"
#: How long to look for a server before failing (pymongo's own default is 30 s).
DEFAULT_SERVER_SELECTION_TIMEOUT_MS = 5000
#: The platform's collections (SPEC §3).
COLLECTIONS = ("sessions", "jobs", "sessiondata", "peers", "series", "studies", "patients")
#: The platform's GridFS buckets (SPEC §3).
BUCKETS = ("sessionfiles", "dicomfiles")
SCHEMA_COLLECTION = "schema_version"

_SCHEMES = ("mongodb", "mongodb+srv", "mongomock")
_INT64 = (-(2**63), 2**63 - 1)
_JOB_KEYS = {
    "status": "status",
    "progress": "progress",
    "error": "error",
    "started_at": "startedAt",
    "finished_at": "finishedAt",
    "params": "params",
    "service_name": "serviceName",
    "owner": "owner",
    "heartbeat_at": "heartbeatAt",
}
_NEWEST_FIRST = [("uploadDate", pymongo.DESCENDING), ("_id", pymongo.DESCENDING)]
_CREATION_ORDER = [("createdAt", pymongo.ASCENDING), ("seq", pymongo.ASCENDING)]
_RECORD_ORDER = [("CreatedAt", pymongo.ASCENDING), ("_id", pymongo.ASCENDING)]

#: (collection, keys, unique) created by :meth:`MongoStore.migrate`.
_INDEXES: list[tuple[str, list[tuple[str, int]], bool]] = [
    ("sessions", [("createdAt", 1), ("seq", 1)], False),
    ("jobs", [("sessionId", 1), ("jobName", 1), ("event", 1)], False),
    ("jobs", [("sessionId", 1), ("createdAt", 1)], False),
    ("sessiondata", [("sessionId", 1), ("jobId", 1), ("name", 1)], True),
    ("sessiondata", [("sessionId", 1), ("jobName", 1), ("name", 1)], False),
    ("peers", [("name", 1)], True),
    ("series", [("SeriesInstanceUID", 1)], True),
    ("series", [("StudyInstanceUID", 1)], False),
    ("series", [("PatientUID", 1)], False),
    ("studies", [("StudyInstanceUID", 1)], True),
    ("studies", [("PatientUID", 1)], False),
    ("patients", [("PatientUID", 1)], True),
    # the indexes GridFS drivers create themselves
    ("sessionfiles.files", [("filename", 1), ("uploadDate", 1)], False),
    ("sessionfiles.chunks", [("files_id", 1), ("n", 1)], True),
    ("dicomfiles.files", [("filename", 1), ("uploadDate", 1)], False),
    ("dicomfiles.chunks", [("files_id", 1), ("n", 1)], True),
    # ours
    (
        "sessionfiles.files",
        [("metadata.sessionId", 1), ("metadata.jobId", 1), ("metadata.name", 1)],
        False,
    ),
    (
        "sessionfiles.files",
        [("metadata.sessionId", 1), ("metadata.jobName", 1), ("metadata.name", 1)],
        False,
    ),
    ("dicomfiles.files", [("metadata.SOPInstanceUID", 1)], False),
    ("dicomfiles.files", [("metadata.instanceId", 1)], False),
    ("dicomfiles.files", [("metadata.SessionUID", 1)], False),
]


# ---------------------------------------------------------------------- helpers
def _ms(value: datetime) -> datetime:
    """``value`` at BSON (millisecond) precision, so it reads back unchanged."""
    return value.replace(microsecond=value.microsecond // 1000 * 1000)


def _now() -> datetime:
    """UTC now at BSON (millisecond) precision."""
    return _ms(utcnow())


def _aware(value: Any) -> datetime | None:
    """A stored timestamp as an aware UTC datetime (accepts ISO text and naive values;
    ``None`` when absent or not a date, as in a document another tool wrote)."""
    if isinstance(value, str) and value:
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            return None
    if not isinstance(value, datetime):
        return None
    if value.tzinfo is None:
        return value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc)


def _to_bson_time(value: Any, field: str) -> datetime | None:
    """A timestamp argument as an aware UTC datetime at millisecond precision."""
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            raise InvalidInputError(
                f"invalid {field!r} value {value!r} - must be a datetime or ISO-8601 text"
            ) from None
    if not isinstance(value, datetime):
        raise InvalidInputError(
            f"invalid {field!r} value {value!r} - must be a datetime or ISO-8601 text"
        )
    aware = _aware(value)
    assert aware is not None
    return _ms(aware)


def _iso(value: Any) -> str | None:
    """A stored timestamp as ISO-8601 text (what the SQL providers return in records)."""
    aware = _aware(value)
    return aware.isoformat() if aware else None


def _new_id() -> str:
    """A new record id: an ObjectId as 24 hex digits (time-ordered, platform style)."""
    return str(ObjectId())


def _id_values(value: str) -> list[Any]:
    """Values an ``_id`` written as ``value`` may be stored as: the string, and the
    ObjectId when it is 24 hex digits (documents the platform itself created)."""
    values: list[Any] = [value]
    if isinstance(value, str) and len(value) == 24 and ObjectId.is_valid(value):
        values.append(ObjectId(value))
    return values


def _blob_id(key: str) -> Any:
    """The GridFS ``_id`` a blob key designates."""
    return ObjectId(key) if len(key) == 24 and ObjectId.is_valid(key) else key


def _bson_problem(value: Any, path: str = "value") -> str | None:
    """Why a JSON value cannot be stored natively as BSON, or ``None`` when it can."""
    if isinstance(value, bool) or value is None or isinstance(value, (float, str)):
        return None
    if isinstance(value, int):
        if not _INT64[0] <= value <= _INT64[1]:
            return f"{path} is an integer beyond 64 bits"
        return None
    if isinstance(value, list):
        for i, item in enumerate(value):
            problem = _bson_problem(item, f"{path}[{i}]")
            if problem:
                return problem
        return None
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                return f"{path} has a non-text key {key!r}"
            if key.startswith("$") or "\x00" in key:
                return f"{path} has the key {key!r} (starts with '$' or contains NUL)"
            problem = _bson_problem(item, f"{path}.{key}")
            if problem:
                return problem
        return None
    return f"{path} is a {type(value).__name__}"


def _plain(value: Any, what: str) -> Any:
    """``value`` as plain JSON data storable as BSON (the SQL providers keep the same
    data as JSON text, so both read back alike)."""
    data = json.loads(json.dumps(value, default=str))
    problem = _bson_problem(data)
    if problem:
        raise InvalidInputError(f"{what} cannot be stored in MongoDB: {problem}")
    return data


def _dump_json(value: Any) -> str:
    """Compact JSON text of a stored value."""
    return json.dumps(value, separators=(",", ":"), default=str)


def _file_key(doc: dict[str, Any]) -> tuple[Any, Any]:
    """(job id, name): what identifies a session file across its versions."""
    meta = doc.get("metadata") or {}
    return meta.get("jobId"), meta.get("name")


# -------------------------------------------------------------------------- URL
class MongoURL:
    """A MongoDB URL split into the parts this provider needs, parsed without DNS
    look-ups (``mongodb+srv`` is resolved by pymongo when it connects)."""

    def __init__(self, url: str) -> None:
        if not isinstance(url, str) or not url.strip():
            raise InvalidInputError(
                "invalid mongodb store 'url' value '' - give mongodb://host:port/db"
            )
        self.url = url.strip()
        scheme, sep, rest = self.url.partition("://")
        self.scheme = scheme.lower()
        if not sep or self.scheme not in _SCHEMES:
            shown = f"scheme {scheme + ':'!r}" if sep else "value (no scheme)"
            raise InvalidInputError(  # the URL itself is not shown: it may hold a password
                f"invalid mongodb store 'url' {shown} - must start with mongodb:// or "
                "mongodb+srv:// (mongomock:// for tests)"
            )
        netloc, _, tail = rest.partition("/")
        if "?" in netloc:
            netloc, _, query = netloc.partition("?")
            path = ""
        else:
            path, _, query = tail.partition("?")
        userinfo, at, hostpart = netloc.rpartition("@")
        self.username: str | None = None
        self.password: str | None = None
        if at:
            user, colon, password = userinfo.partition(":")
            self.username = unquote(user) or None
            self.password = unquote(password) if colon else None
        self._raw_password = userinfo.partition(":")[2] if at else ""
        self.hosts = [h for h in hostpart.split(",") if h]
        if not self.hosts:
            raise InvalidInputError(
                f"invalid mongodb store 'url' value {self.redact(self.url)!r} - no host "
                "given (mongodb://host:port/db)"
            )
        self.database = unquote(path) or None
        self.options = {k.lower(): v for k, v in parse_qsl(query, keep_blank_values=True)}

    @property
    def is_mock(self) -> bool:
        """Whether this is the ``mongomock://`` test hook."""
        return self.scheme == "mongomock"

    def host_list(self) -> str:
        """``host:port`` of every host (default port 27017), comma-separated."""
        if self.scheme != "mongodb":
            return ",".join(self.hosts)
        out = []
        for host in self.hosts:
            if host.startswith("["):  # IPv6 literal
                has_port = "]:" in host
            else:
                has_port = ":" in host or host.lower().endswith(".sock")
            out.append(host if has_port else f"{host}:27017")
        return ",".join(out)

    def redact(self, text: str) -> str:
        """``text`` with the URL's password (raw and decoded) replaced by ``***``."""
        for secret in {getattr(self, "_raw_password", ""), getattr(self, "password", None) or ""}:
            if secret:
                text = text.replace(secret, "***")
                text = text.replace(quote(secret, safe=""), "***")
        return text


def parse_mongo_url(url: str) -> MongoURL:
    """Split a ``mongodb://``, ``mongodb+srv://`` or ``mongomock://`` URL."""
    return MongoURL(url)


# --------------------------------------------------------------- mongomock hook
_mock_lock = threading.Lock()
_mock_clients: dict[str, Any] = {}
_gridfs_patched = False


def _mock_client(label: str) -> Any:
    """The in-process fake server ``label`` (created on first use).

    Test hook only: no MongoDB server can run where this SDK is tested, so the provider
    is exercised against mongomock. mongomock's GridFS support works by patching
    pymongo's ``gridfs`` type checks (``enable_gridfs_integration``), done once here.
    """
    global _gridfs_patched
    try:
        import mongomock
        import mongomock.gridfs
    except ModuleNotFoundError as exc:
        raise MissingDependencyError(
            "the mongomock:// store URL (an in-process fake for tests) needs the "
            "'mongomock' package - pip install 'dcm-processor-service[test]'"
        ) from exc
    with _mock_lock:
        if not _gridfs_patched:
            mongomock.gridfs.enable_gridfs_integration()
            _gridfs_patched = True
        client = _mock_clients.get(label)
        if client is None:
            client = mongomock.MongoClient(tz_aware=True)
            _mock_clients[label] = client
        return client


def drop_mongomock_database(url: str, name: str | None = None) -> None:
    """Drop a database of the in-process fake server (test clean-up).

    Only ``mongomock://`` URLs are accepted, so this can never drop real data.
    """
    parsed = MongoURL(url)
    if not parsed.is_mock:
        raise InvalidInputError(
            f"drop_mongomock_database only drops mongomock:// test databases, not {parsed.redact(url)!r}"
        )
    with _mock_lock:
        client = _mock_clients.get(parsed.hosts[0])
    if client is not None:
        client.drop_database(name or parsed.database or DEFAULT_DB_NAME)


# ------------------------------------------------------------------ GridFS blobs
class _GridReader:
    """A raw reader over a GridFS file that turns driver errors into package errors."""

    def __init__(self, store: MongoStore, bucket: str, grid_out: Any, what: str) -> None:
        self._store = store
        self._bucket = bucket
        self._out = grid_out
        self._what = what

    def read(self, size: int = -1) -> bytes:
        try:
            return bytes(self._out.read(size))
        except gridfs.errors.CorruptGridFile as exc:
            file_id = self._out._id
            exists = self._store._run(
                lambda db: db[f"{self._bucket}.files"].find_one({"_id": file_id}, {"_id": 1})
            )
            if exists is None:
                raise NotFoundError(
                    f"{self._what}: stored bytes were removed while being read (replaced or "
                    "deleted by another job) - read it again"
                ) from exc
            raise IntegrityError(
                f"{self._what}: stored size does not match the recorded {self._out.length} "
                f"bytes ({exc}) - the stored copy is damaged"
            ) from exc
        except DcmProcessorError:
            raise
        except pymongo.errors.PyMongoError as exc:
            raise self._store._translate(exc) from exc

    def close(self) -> None:
        self._out.close()


class GridFSBlobStore(BlobStore):
    """Blobs as GridFS files in one bucket of a :class:`MongoStore`'s database.

    A blob key is the GridFS file ``_id`` as text. Writes stream the source into chunks
    (pymongo batches chunk inserts, so memory stays bounded at a few tens of MiB) and
    insert the ``files`` document last, which makes the file visible only when complete.
    """

    def __init__(self, store: MongoStore, bucket: str) -> None:
        self.store = store
        self.bucket = bucket

    def _bucket(self, db: Any) -> gridfs.GridFSBucket:
        return gridfs.GridFSBucket(db, bucket_name=self.bucket)

    def upload(
        self,
        source: BinaryIO,
        *,
        filename: str,
        metadata: dict[str, Any],
        checksum_field: str = "sha256",
        file_id: ObjectId | None = None,
    ) -> dict[str, Any]:
        """Stream ``source`` into a new GridFS file; return its ``files`` document.

        ``metadata[checksum_field]`` is set to the content's sha256 before the file is
        completed. A failed upload removes the chunks it wrote.
        """

        def work(db: Any) -> dict[str, Any]:
            grid_in = self._bucket(db).open_upload_stream_with_id(
                file_id or ObjectId(), filename, metadata=metadata
            )
            try:
                _size, sha256 = copy_stream(source, lambda view: grid_in.write(bytes(view)))
                grid_in.set("metadata", {**metadata, checksum_field: sha256})
                grid_in.close()
            except BaseException:
                try:
                    grid_in.abort()
                except Exception:  # the original error matters more than the clean-up
                    logger.warning(
                        "could not remove the chunks of an interrupted upload to %s",
                        self.bucket,
                        exc_info=True,
                    )
                raise
            return {
                "_id": grid_in._id,
                "filename": filename,
                "length": grid_in.length,
                "chunkSize": grid_in.chunk_size,
                "uploadDate": _ms(grid_in.upload_date),
                "metadata": {**metadata, checksum_field: sha256},
            }

        return self.store._run(work, retry=False)

    def write(self, source: BinaryIO) -> BlobInfo:
        doc = self.upload(source, filename="", metadata={})
        return BlobInfo(str(doc["_id"]), int(doc["length"]), doc["metadata"]["sha256"])

    def open(self, info: BlobInfo, what: str) -> BinaryIO:
        key = _blob_id(info.key)

        def work(db: Any) -> Any:
            try:
                return self._bucket(db).open_download_stream(key)
            except gridfs.errors.NoFile:
                raise NotFoundError(
                    f"{what}: stored bytes are missing (GridFS file {info.key} in bucket "
                    f"{self.bucket!r} of {self.store.describe()})"
                ) from None

        raw = _GridReader(self.store, self.bucket, self.store._run(work), what)
        if not info.sha256:  # a file written by another tool without a checksum
            logger.debug("%s has no recorded sha256; reading it unverified", what)
            return io.BufferedReader(_RawAdapter(raw), CHUNK_SIZE)
        return io.BufferedReader(
            VerifyingReader(raw, info.size, info.sha256, what),  # type: ignore[arg-type]
            CHUNK_SIZE,
        )

    def delete(self, key: str) -> None:
        self.delete_many([key])

    def delete_many(self, keys: Iterable[Any]) -> None:
        """Delete GridFS files: ``files`` documents first (readers stop finding them),
        then their chunks. Missing files are not an error."""
        ids = [_blob_id(k) if isinstance(k, str) else k for k in keys]
        if not ids:
            return

        def work(db: Any) -> None:
            db[f"{self.bucket}.files"].delete_many({"_id": {"$in": ids}})
            db[f"{self.bucket}.chunks"].delete_many({"files_id": {"$in": ids}})

        self.store._run(work)

    def overwrite_for_test(self, key: str, content: bytes) -> None:
        """Replace a file's stored chunks behind the store's back, keeping its recorded
        length and checksum (simulates damaged storage in tests)."""
        file_id = _blob_id(key)

        def work(db: Any) -> None:
            doc = db[f"{self.bucket}.files"].find_one({"_id": file_id})
            if doc is None:
                raise NotFoundError(f"GridFS file {key} not found in bucket {self.bucket!r}")
            size = int(doc.get("chunkSize") or 255 * 1024)
            chunks = db[f"{self.bucket}.chunks"]
            chunks.delete_many({"files_id": file_id})
            for n, start in enumerate(range(0, len(content), size)):
                chunks.insert_one(
                    {
                        "files_id": file_id,
                        "n": n,
                        "data": bson.Binary(content[start : start + size]),
                    }
                )

        self.store._run(work)


class _RawAdapter(io.RawIOBase):
    """A plain ``RawIOBase`` over :class:`_GridReader` (unverified reads)."""

    def __init__(self, raw: _GridReader) -> None:
        super().__init__()
        self._raw = raw

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview | bytearray) -> int:  # type: ignore[override]
        data = self._raw.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def close(self) -> None:
        self._raw.close()
        super().close()


# ------------------------------------------------------------------------ store
class MongoStore(Store):
    """The platform's MongoDB layout (collections + GridFS buckets, see module doc)."""

    provider = "mongodb"
    #: how many times an operation is retried after a dropped connection / failover
    max_attempts = 5
    #: how many times an upsert that lost a unique-index race is retried
    max_upsert_attempts = 10

    def __init__(self, url: str, name: str | None = None) -> None:
        self.url = MongoURL(url)
        self.db_name = name or self.url.database or DEFAULT_DB_NAME
        self._client: Any = None
        self._pid: int | None = None
        self._lock = threading.Lock()
        self._closed = False
        #: session files (``sessionfiles`` bucket)
        self.blobs = GridFSBlobStore(self, "sessionfiles")
        #: ingested DICOM instances (``dicomfiles`` bucket)
        self.instance_blobs = GridFSBlobStore(self, "dicomfiles")
        self.migrate()

    # ------------------------------------------------------------- connection
    def describe(self) -> str:
        where = self.url.host_list()
        if self.url.is_mock:
            return f"mongodb store {self.db_name!r} at mongomock://{where} (in-process fake)"
        if self.url.scheme == "mongodb+srv":
            where = f"mongodb+srv://{where}"
        return f"mongodb store {self.db_name!r} at {where}"

    def client_options(self) -> dict[str, Any]:
        """Keyword arguments given to :class:`pymongo.MongoClient` besides the URL
        (URL options win: a short server-selection timeout only when the URL sets none)."""
        options: dict[str, Any] = {
            "tz_aware": True,
            "connect": False,
            "appname": "dcm-processor-service",
        }
        if "serverselectiontimeoutms" not in self.url.options:
            options["serverSelectionTimeoutMS"] = DEFAULT_SERVER_SELECTION_TIMEOUT_MS
        if "connecttimeoutms" not in self.url.options:
            options["connectTimeoutMS"] = DEFAULT_SERVER_SELECTION_TIMEOUT_MS
        return options

    def _db(self) -> Any:
        """The database handle of this process (a forked child opens its own client)."""
        if self._closed:
            raise StorageError(f"{self.describe()} is closed")
        with self._lock:
            if self._client is None or self._pid != os.getpid():
                self._client = self._connect()
                self._pid = os.getpid()
            return self._client[self.db_name]

    def _connect(self) -> Any:
        if self.url.is_mock:
            return _mock_client(self.url.hosts[0])
        try:
            return pymongo.MongoClient(self.url.url, **self.client_options())
        except (pymongo.errors.InvalidURI, ValueError, TypeError) as exc:
            # ``from None``: the driver's error may quote the URL with its password
            raise InvalidInputError(
                f"invalid mongodb store 'url' value {self.url.redact(self.url.url)!r} - "
                f"{self.url.redact(str(exc))}"
            ) from None
        except pymongo.errors.ConfigurationError as exc:
            raise StoreUnavailableError(
                f"cannot open {self.describe()}: {self.url.redact(str(exc))}"
            ) from None

    @property
    def database(self) -> Any:
        """The underlying :class:`pymongo.database.Database` (for inspection and admin)."""
        return self._db()

    def _translate(self, exc: BaseException) -> StorageError:
        """A package error for a driver error (messages never include the password)."""
        text = self.url.redact(str(exc))
        if isinstance(exc, pymongo.errors.ServerSelectionTimeoutError):
            reason = text.split(", Timeout:")[0]
            timeout = self.url.options.get(
                "serverselectiontimeoutms", str(DEFAULT_SERVER_SELECTION_TIMEOUT_MS)
            )
            return StoreUnavailableError(
                f"cannot reach {self.describe()}: no server answered within {timeout} ms "
                f"({reason}) - check that MongoDB runs there and the URL's host and port; "
                "a slow network may need a larger serverSelectionTimeoutMS in the URL"
            )
        if isinstance(exc, pymongo.errors.ConnectionFailure):
            return StoreUnavailableError(f"lost the connection to {self.describe()}: {text}")
        if isinstance(exc, pymongo.errors.ConfigurationError):  # e.g. SRV record not found
            return StoreUnavailableError(f"cannot open {self.describe()}: {text}")
        if isinstance(exc, pymongo.errors.OperationFailure) and exc.code in (13, 18):
            user = f"user {self.url.username!r}" if self.url.username else "no user"
            return StoreUnavailableError(
                f"{self.describe()} refused access ({user}; password not shown): {text}"
            )
        return StorageError(f"{self.describe()}: {type(exc).__name__}: {text}")

    def _run(self, work: Callable[[Any], T], *, retry: bool = True) -> T:
        """Run ``work(db)``; retry a dropped connection / primary change (``retry``), and
        translate driver errors into the package's error tree."""
        delay = 0.05
        attempts = self.max_attempts if retry else 1
        for attempt in range(1, attempts + 1):
            try:
                return work(self._db())
            except DcmProcessorError:
                raise
            except pymongo.errors.ServerSelectionTimeoutError as exc:
                raise self._translate(exc) from exc
            except pymongo.errors.AutoReconnect as exc:
                if attempt == attempts:
                    raise self._translate(exc) from exc
                logger.debug("%s: transient error (attempt %d): %s", self.describe(), attempt, exc)
                time.sleep(delay)
                delay = min(delay * 2, 1.0)
            except pymongo.errors.PyMongoError as exc:
                raise self._translate(exc) from exc
            except (bson.errors.InvalidDocument, OverflowError) as exc:
                raise StorageError(
                    f"{self.describe()}: value cannot be stored as BSON: {exc}"
                ) from exc
        raise AssertionError("unreachable")  # pragma: no cover

    def _upsert(
        self,
        collection: str,
        selector: dict[str, Any],
        update: dict[str, Any],
        projection: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Atomic upsert returning the document after it (``projection`` of it); a
        concurrent insert of the same unique key (``DuplicateKeyError``) is retried, which
        then updates the winner."""

        def work(db: Any) -> dict[str, Any]:
            for attempt in range(1, self.max_upsert_attempts + 1):
                try:
                    doc = db[collection].find_one_and_update(
                        selector,
                        update,
                        projection=projection,
                        upsert=True,
                        return_document=pymongo.ReturnDocument.AFTER,
                    )
                    return dict(doc)
                except pymongo.errors.DuplicateKeyError as exc:
                    if attempt == self.max_upsert_attempts:
                        raise ConflictError(
                            f"{self.describe()}: upsert into {collection!r} for {selector} "
                            f"kept colliding with a unique key ({self.url.redact(str(exc))})"
                        ) from exc
                    time.sleep(0.001 * attempt)
            raise AssertionError("unreachable")  # pragma: no cover

        return self._run(work)

    # -------------------------------------------------------------- lifecycle
    def migrate(self) -> int:
        def work(db: Any) -> int:
            doc = db[SCHEMA_COLLECTION].find_one({"_id": "core"})
            current = int(doc["version"]) if doc else 0
            if current > SCHEMA_VERSION:
                raise StorageError(
                    f"{self.describe()}: schema version {current} is newer than this "
                    f"dcm-processor-service supports ({SCHEMA_VERSION}) - upgrade the package"
                )
            if current == SCHEMA_VERSION:
                return current
            for collection, keys, unique in _INDEXES:
                try:
                    db[collection].create_index(keys, unique=unique)
                except pymongo.errors.OperationFailure as exc:
                    # an existing deployment may hold duplicates or an index with other
                    # options on the same keys: keep working, say what is missing
                    logger.warning(
                        "%s: could not create %sindex %s on %r (%s); concurrent writers "
                        "are less protected until it exists",
                        self.describe(),
                        "unique " if unique else "",
                        keys,
                        collection,
                        exc,
                    )
            return -1

        version = self._run(work)
        if version != -1:
            return version
        self._upsert(
            SCHEMA_COLLECTION,
            {"_id": "core"},
            {"$max": {"version": SCHEMA_VERSION}, "$set": {"appliedAt": _now()}},
        )
        logger.info("%s: layout version %d in place", self.describe(), SCHEMA_VERSION)
        return SCHEMA_VERSION

    def close(self) -> None:
        with self._lock:
            if self._client is not None and not self.url.is_mock and self._pid == os.getpid():
                self._client.close()
            self._client = None
            self._closed = True

    # --------------------------------------------------------------- sessions
    @staticmethod
    def _session(doc: dict[str, Any]) -> SessionRecord:
        created = _aware(doc.get("createdAt")) or utcnow()
        return SessionRecord(
            id=str(doc["_id"]),
            peer_id=doc.get("peerId"),
            patient_uid=doc.get("patientUid"),
            status=doc.get("status") or "open",
            meta=dict(doc.get("meta") or {}),
            created_at=created,
            updated_at=_aware(doc.get("updatedAt")) or created,
            owner=doc.get("owner"),
            heartbeat_at=_aware(doc.get("heartbeatAt")),
        )

    def _find_session(self, session_id: str) -> dict[str, Any] | None:
        return self._run(lambda db: db.sessions.find_one({"_id": {"$in": _id_values(session_id)}}))

    def ensure_session(
        self,
        session_id: str | None = None,
        *,
        peer_id: str | None = None,
        patient_uid: str | None = None,
        meta: dict[str, Any] | None = None,
    ) -> SessionRecord:
        if session_id is not None:
            existing = self._find_session(session_id)
            if existing is not None:
                return self._session(existing)
        sid = session_id or _new_id()
        now = _now()
        doc = self._upsert(
            "sessions",
            {"_id": sid},
            {
                "$setOnInsert": {
                    "peerId": peer_id,
                    "patientUid": patient_uid,
                    "status": "open",
                    "meta": _plain(meta or {}, "session meta"),
                    "createdAt": now,
                    "updatedAt": now,
                    "seq": ObjectId(),
                }
            },
        )
        return self._session(doc)

    def get_session(self, session_id: str) -> SessionRecord:
        doc = self._find_session(session_id)
        if doc is None:
            raise NotFoundError(f"session {session_id!r} not found in {self.describe()}")
        return self._session(doc)

    def list_sessions(self) -> list[SessionRecord]:
        docs = self._run(lambda db: list(db.sessions.find().sort(_CREATION_ORDER)))
        return [self._session(d) for d in docs]

    def _modify(
        self,
        collection: str,
        selector: dict[str, Any],
        change: Callable[[dict[str, Any]], dict[str, Any]],
        missing: str,
    ) -> dict[str, Any]:
        """Read-modify-write of one document with optimistic concurrency: the update
        applies only if the document's ``rev`` is still the one read, else it is redone."""

        def work(db: Any) -> dict[str, Any]:
            for _attempt in range(self.max_upsert_attempts * 10):
                doc = db[collection].find_one(selector)
                if doc is None:
                    raise NotFoundError(f"{missing} not found in {self.describe()}")
                result = db[collection].update_one(
                    {"_id": doc["_id"], "rev": doc.get("rev")},
                    {"$set": change(doc), "$inc": {"rev": 1}},
                )
                if result.matched_count:
                    return dict(db[collection].find_one({"_id": doc["_id"]}))
            raise ConflictError(
                f"{self.describe()}: {missing} kept changing while being updated - try again"
            )

        return self._run(work)

    def update_session(
        self,
        session_id: str,
        *,
        status: str | None = None,
        meta: dict[str, Any] | None = None,
        owner: str | None = None,
        heartbeat_at: datetime | None = None,
    ) -> SessionRecord:
        extra = _plain(meta or {}, "session meta")
        beat = _to_bson_time(heartbeat_at, "heartbeat_at")

        def change(doc: dict[str, Any]) -> dict[str, Any]:
            return {
                "status": status or doc.get("status") or "open",
                "meta": {**(doc.get("meta") or {}), **extra},
                "owner": owner or doc.get("owner"),
                "heartbeatAt": beat or doc.get("heartbeatAt"),
                "updatedAt": _now(),
            }

        doc = self._modify(
            "sessions",
            {"_id": {"$in": _id_values(session_id)}},
            change,
            f"session {session_id!r}",
        )
        return self._session(doc)

    def delete_session(self, session_id: str) -> bool:
        def work(db: Any) -> bool:
            db.jobs.delete_many({"sessionId": {"$in": _id_values(session_id)}})
            return bool(
                db.sessions.delete_many({"_id": {"$in": _id_values(session_id)}}).deleted_count
            )

        return self._run(work)

    # ------------------------------------------------------------------- jobs
    @staticmethod
    def _job(doc: dict[str, Any]) -> JobRecord:
        created = _aware(doc.get("createdAt")) or utcnow()
        return JobRecord(
            id=str(doc["_id"]),
            session_id=str(doc.get("sessionId")),
            name=doc.get("jobName") or "",
            event=doc.get("event") or "",
            service_name=doc.get("serviceName"),
            status=doc.get("status") or "pending",
            params=dict(doc.get("params") or {}),
            progress=dict(doc.get("progress") or {}),
            error=doc.get("error"),
            started_at=_aware(doc.get("startedAt")),
            finished_at=_aware(doc.get("finishedAt")),
            created_at=created,
            updated_at=_aware(doc.get("updatedAt")) or created,
            owner=doc.get("owner"),
            heartbeat_at=_aware(doc.get("heartbeatAt")),
        )

    def create_job(
        self,
        session_id: str,
        name: str,
        event: str,
        *,
        job_id: str | None = None,
        service_name: str | None = None,
        params: dict[str, Any] | None = None,
    ) -> JobRecord:
        if job_id is not None:
            existing = self._run(lambda db: db.jobs.find_one({"_id": {"$in": _id_values(job_id)}}))
            if existing is not None:
                return self._job(existing)
        now = _now()
        doc = self._upsert(
            "jobs",
            {"_id": job_id or _new_id()},
            {
                "$setOnInsert": {
                    "sessionId": session_id,
                    "jobName": name,
                    "event": event,
                    "serviceName": service_name,
                    "status": "pending",
                    "params": _plain(params or {}, "job params"),
                    "progress": {},
                    "error": None,
                    "startedAt": None,
                    "finishedAt": None,
                    "createdAt": now,
                    "updatedAt": now,
                    "seq": ObjectId(),
                }
            },
        )
        return self._job(doc)

    def get_job(self, job_id: str) -> JobRecord:
        doc = self._run(lambda db: db.jobs.find_one({"_id": {"$in": _id_values(job_id)}}))
        if doc is None:
            raise NotFoundError(f"job {job_id!r} not found in {self.describe()}")
        return self._job(doc)

    def find_job(self, session_id: str, name: str, event: str | None = None) -> JobRecord | None:
        selector: dict[str, Any] = {"sessionId": {"$in": _id_values(session_id)}, "jobName": name}
        if event is not None:
            selector["event"] = event
        newest = [(k, pymongo.DESCENDING) for k, _ in _CREATION_ORDER]
        docs = self._run(lambda db: list(db.jobs.find(selector).sort(newest).limit(1)))
        return self._job(docs[0]) if docs else None

    def list_jobs(self, session_id: str) -> list[JobRecord]:
        docs = self._run(
            lambda db: list(
                db.jobs.find({"sessionId": {"$in": _id_values(session_id)}}).sort(_CREATION_ORDER)
            )
        )
        return [self._job(d) for d in docs]

    def update_job(self, job_id: str, **changes: Any) -> JobRecord:
        unknown = set(changes) - set(_JOB_KEYS)
        if unknown:
            raise StorageError(
                f"cannot update job field(s) {sorted(unknown)}; allowed: {tuple(_JOB_KEYS)}"
            )
        values: dict[str, Any] = {}
        for key, value in changes.items():
            if key in ("progress", "params"):
                values[key] = _plain(value or {}, f"job {key}")
            elif key in ("started_at", "finished_at", "heartbeat_at"):
                values[key] = _to_bson_time(value, key)
            else:
                values[key] = value

        def change(doc: dict[str, Any]) -> dict[str, Any]:
            out = {"updatedAt": _now()}
            for key, value in values.items():
                if key == "progress":
                    value = {**(doc.get("progress") or {}), **value}
                out[_JOB_KEYS[key]] = value
            return out

        doc = self._modify("jobs", {"_id": {"$in": _id_values(job_id)}}, change, f"job {job_id!r}")
        return self._job(doc)

    # ----------------------------------------------------------- session data
    @staticmethod
    def _owner_selector(ref: JobRef, prefix: str = "") -> dict[str, Any] | None:
        """The query selecting the owner job of ``ref`` (see :class:`JobRef`); ``None``
        when ``ref`` names no job (which selects nothing)."""
        if ref.job_id is not None:
            return {f"{prefix}sessionId": ref.session_id, f"{prefix}jobId": ref.job_id}
        if ref.job_name is None:
            return None
        selector = {f"{prefix}sessionId": ref.session_id, f"{prefix}jobName": ref.job_name}
        if ref.event is not None:
            selector[f"{prefix}event"] = ref.event
        return selector

    @staticmethod
    def _require_job_id(owner: JobRef, what: str) -> str:
        if owner.job_id is None:
            raise InvalidInputError(
                f"{what} needs the id of the job that owns it (JobRef.job_id is None)"
            )
        return owner.job_id

    def set_data(self, owner: JobRef, name: str, value_json: str) -> None:
        job_id = self._require_job_id(owner, f"session data {name!r}")
        try:
            value = json.loads(value_json)
        except (TypeError, ValueError) as exc:
            raise InvalidInputError(
                f"session data {name!r}: 'value_json' is not JSON text ({exc})"
            ) from None
        now = _now()
        fields: dict[str, Any] = {"jobName": owner.job_name, "event": owner.event, "updatedAt": now}
        problem = _bson_problem(value)
        if problem is None:
            fields["value"] = value
            unset = {"valueJson": ""}
        else:  # kept as JSON text so it still reads back exactly
            logger.debug("session data %r kept as JSON text: %s", name, problem)
            fields["valueJson"] = value_json
            unset = {"value": ""}
        self._upsert(
            "sessiondata",
            {"sessionId": owner.session_id, "jobId": job_id, "name": name},
            {"$set": fields, "$unset": unset, "$setOnInsert": {"createdAt": now}},
        )

    @staticmethod
    def _value_json(doc: dict[str, Any]) -> str:
        if isinstance(doc.get("valueJson"), str):
            return str(doc["valueJson"])
        return _dump_json(doc.get("value"))

    def get_data(self, ref: JobRef, name: str) -> str | None:
        selector = self._owner_selector(ref)
        if selector is None:
            return None
        docs = self._run(
            lambda db: list(
                db.sessiondata.find({**selector, "name": name})
                .sort([("updatedAt", pymongo.DESCENDING), ("_id", pymongo.DESCENDING)])
                .limit(1)
            )
        )
        return self._value_json(docs[0]) if docs else None

    def remove_data(self, ref: JobRef, name: str) -> bool:
        selector = self._owner_selector(ref)
        if selector is None:
            return False
        return self._run(
            lambda db: db.sessiondata.delete_many({**selector, "name": name}).deleted_count > 0
        )

    def list_data(self, session_id: str) -> list[dict[str, Any]]:
        docs = self._run(
            lambda db: list(
                db.sessiondata.find({"sessionId": session_id}).sort(
                    [("jobName", pymongo.ASCENDING), ("name", pymongo.ASCENDING)]
                )
            )
        )
        return [
            {
                "job_id": d.get("jobId"),
                "job_name": d.get("jobName"),
                "event": d.get("event"),
                "name": d.get("name"),
                "value_json": self._value_json(d),
            }
            for d in docs
        ]

    def delete_session_data(self, session_id: str) -> int:
        return self._run(
            lambda db: int(db.sessiondata.delete_many({"sessionId": session_id}).deleted_count)
        )

    # ---------------------------------------------------------- session files
    @staticmethod
    def _file(doc: dict[str, Any]) -> FileRecord:
        meta = doc.get("metadata") or {}
        updated = _aware(doc.get("uploadDate")) or utcnow()
        return FileRecord(
            id=str(meta.get("fileId") or doc["_id"]),
            session_id=str(meta.get("sessionId")),
            job_id=str(meta.get("jobId")),
            job_name=meta.get("jobName"),
            event=meta.get("event"),
            name=meta.get("name") or doc.get("filename") or "",
            size=int(doc.get("length") or 0),
            sha256=meta.get("sha256") or "",
            content_type=meta.get("contentType")
            or doc.get("contentType")
            or "application/octet-stream",
            meta=dict(meta.get("meta") or {}),
            blob_key=str(doc["_id"]),
            created_at=_aware(meta.get("createdAt")) or updated,
            updated_at=updated,
        )

    def _file_versions(self, selector: dict[str, Any], limit: int = 0) -> list[dict[str, Any]]:
        """The stored versions of the matching session files, newest first (at most
        ``limit`` when not 0)."""
        return self._run(
            lambda db: list(
                db["sessionfiles.files"].find(selector).sort(_NEWEST_FIRST).limit(limit)
            )
        )

    def _keep_newest(
        self, blobs: GridFSBlobStore, selector: dict[str, Any]
    ) -> list[dict[str, Any]]:
        """Delete every version but the newest of the files matching ``selector``;
        return all versions, newest (the one kept) first. Concurrent writers agree on the
        newest (same ordering), so they delete the same set."""
        versions = self._run(
            lambda db: list(
                db[f"{blobs.bucket}.files"]
                .find(selector, {"_id": 1, "uploadDate": 1, "metadata": 1})
                .sort(_NEWEST_FIRST)
            )
        )
        blobs.delete_many(v["_id"] for v in versions[1:])
        return versions

    def put_file(
        self,
        owner: JobRef,
        name: str,
        source: BinaryIO,
        *,
        content_type: str,
        meta: dict[str, Any] | None = None,
    ) -> FileRecord:
        job_id = self._require_job_id(owner, f"session file {name!r}")
        key = {
            "metadata.sessionId": owner.session_id,
            "metadata.jobId": job_id,
            "metadata.name": name,
        }
        previous = self._file_versions(key, limit=1)
        prev_meta = (previous[0].get("metadata") or {}) if previous else {}
        metadata = {
            "sessionId": owner.session_id,
            "jobId": job_id,
            "jobName": owner.job_name,
            "event": owner.event,
            "name": name,
            "fileId": str(prev_meta.get("fileId") or previous[0]["_id"]) if previous else _new_id(),
            "contentType": content_type,
            "meta": _plain(meta or {}, f"meta of session file {name!r}"),
            "createdAt": _aware(prev_meta.get("createdAt")) or _now(),
        }
        doc = self.blobs.upload(source, filename=name, metadata=metadata)
        self._keep_newest(self.blobs, key)
        logger.debug(
            "%s: stored session file %r as GridFS file %s", self.describe(), name, doc["_id"]
        )
        return self._file(doc)

    def get_file(self, ref: JobRef, name: str) -> FileRecord | None:
        selector = self._owner_selector(ref, "metadata.")
        if selector is None:
            return None
        docs = self._run(
            lambda db: list(
                db["sessionfiles.files"]
                .find({**selector, "metadata.name": name})
                .sort(_NEWEST_FIRST)
                .limit(1)
            )
        )
        return self._file(docs[0]) if docs else None

    def open_file(self, record: FileRecord) -> BinaryIO:
        return self.blobs.open(
            BlobInfo(record.blob_key, record.size, record.sha256),
            f"session file {record.name!r} of session {record.session_id!r}",
        )

    def remove_file(self, ref: JobRef, name: str) -> bool:
        selector = self._owner_selector(ref, "metadata.")
        if selector is None:
            return False
        versions = self._file_versions({**selector, "metadata.name": name})
        self.blobs.delete_many(v["_id"] for v in versions)
        return bool(versions)

    def list_files(self, session_id: str) -> list[FileRecord]:
        newest: dict[tuple[Any, Any], dict[str, Any]] = {}
        for doc in self._file_versions({"metadata.sessionId": session_id}):
            newest.setdefault(_file_key(doc), doc)
        records = [self._file(d) for d in newest.values()]
        records.sort(key=lambda r: (r.job_name is not None, r.job_name or "", r.name))
        return records

    def delete_session_files(self, session_id: str) -> int:
        versions = self._file_versions({"metadata.sessionId": session_id})
        files = {_file_key(v) for v in versions}
        self.blobs.delete_many(v["_id"] for v in versions)
        return len(files)

    # ------------------------------------------------------------------ peers
    @staticmethod
    def _peer(doc: dict[str, Any]) -> Peer:
        return Peer.from_dict({**doc, "_id": str(doc["_id"])})

    def put_peer(self, peer: Peer) -> Peer:
        data = _plain(peer.to_dict(), f"peer {peer.name!r}")
        data.pop("_id", None)
        now = _now()
        doc = self._upsert(
            "peers",
            {"name": peer.name},
            {
                "$set": {**data, "updatedAt": now},
                "$setOnInsert": {"_id": peer.id or _new_id(), "createdAt": now},
            },
        )
        return self._peer(doc)

    def get_peer(self, name_or_id: str) -> Peer:
        doc = self._run(
            lambda db: db.peers.find_one(
                {"$or": [{"name": name_or_id}, {"_id": {"$in": _id_values(name_or_id)}}]}
            )
        )
        if doc is None:
            known = ", ".join(p.name for p in self.list_peers()) or "none"
            raise NotFoundError(
                f"peer {name_or_id!r} not found in {self.describe()} (known peers: {known})"
            )
        return self._peer(doc)

    def list_peers(self) -> list[Peer]:
        docs = self._run(lambda db: list(db.peers.find().sort("name", pymongo.ASCENDING)))
        return [self._peer(d) for d in docs]

    def remove_peer(self, name_or_id: str) -> bool:
        return self._run(
            lambda db: (
                db.peers.delete_many(
                    {"$or": [{"name": name_or_id}, {"_id": {"$in": _id_values(name_or_id)}}]}
                ).deleted_count
                > 0
            )
        )

    # ------------------------------------------------------------- DICOM index
    @staticmethod
    def _instance_id(doc: dict[str, Any]) -> str:
        return str((doc.get("metadata") or {}).get("instanceId") or doc["_id"])

    def _instance(self, doc: dict[str, Any], series_id: str | None) -> dict[str, Any]:
        meta = doc.get("metadata") or {}
        updated = _aware(doc.get("uploadDate"))
        return {
            "_id": self._instance_id(doc),
            "SOPInstanceUID": meta.get("SOPInstanceUID"),
            "SOPClassUID": meta.get("SOPClassUID"),
            "SeriesInstanceUID": meta.get("SeriesInstanceUID"),
            "SeriesUID": series_id,
            "TransferSyntaxUID": meta.get("TransferSyntaxUID"),
            "Metadata": dict(meta.get("Metadata") or {}),
            "Size": int(doc.get("length") or 0),
            "SHA256": meta.get("SHA256") or "",
            "BlobKey": str(doc["_id"]),
            "PeerUID": meta.get("PeerUID"),
            "SessionUID": meta.get("SessionUID"),
            "CreatedAt": _iso(meta.get("CreatedAt") or updated),
            "UpdatedAt": _iso(updated),
        }

    def _modalities(self, db: Any, selector: dict[str, Any], extra: str | None = None) -> list[str]:
        found = db.series.distinct("Metadata.Modality", selector)
        return sorted({m for m in [*found, extra] if isinstance(m, str) and m})

    def put_instance(self, instance: InstanceInput, source: BinaryIO) -> dict[str, Any]:
        inp = instance
        patient_meta = _plain(inp.patient_meta, "patient metadata")
        study_meta = _plain(inp.study_meta, "study metadata")
        series_meta = _plain(inp.series_meta, "series metadata")
        instance_meta = _plain(inp.instance_meta, "instance metadata")
        sop = {"metadata.SOPInstanceUID": inp.sop_instance_uid}
        previous = self._run(
            lambda db: list(db["dicomfiles.files"].find(sop).sort(_NEWEST_FIRST).limit(1))
        )
        prev = previous[0] if previous else None
        prev_meta = (prev.get("metadata") or {}) if prev else {}
        file_id = ObjectId()
        # a new instance's id is its first GridFS file's id; a re-ingest keeps it
        instance_id = self._instance_id(prev) if prev else str(file_id)
        now = _now()
        metadata = {
            "instanceId": instance_id,
            "SOPInstanceUID": inp.sop_instance_uid,
            "SOPClassUID": inp.sop_class_uid,
            "SeriesInstanceUID": inp.series_instance_uid,
            "StudyInstanceUID": inp.study_instance_uid,
            "PatientUID": inp.patient_uid,
            "TransferSyntaxUID": inp.transfer_syntax_uid,
            "Modality": inp.modality,
            "Metadata": instance_meta,
            # a re-ingest without a peer/session keeps the ones already recorded
            "PeerUID": inp.peer_id if inp.peer_id is not None else prev_meta.get("PeerUID"),
            "SessionUID": (
                inp.session_id if inp.session_id is not None else prev_meta.get("SessionUID")
            ),
            "CreatedAt": (_aware(prev_meta.get("CreatedAt")) or now) if prev else now,
        }
        # bytes first, then the records that reference them (bottom-up, so a series
        # never exists empty and a crash leaves at worst an unreferenced file)
        doc = self.instance_blobs.upload(
            source,
            filename=inp.sop_instance_uid,
            metadata=metadata,
            checksum_field="SHA256",
            file_id=file_id,
        )
        try:
            series = self._upsert(
                "series",
                {"SeriesInstanceUID": inp.series_instance_uid},
                {
                    "$set": {
                        "PatientUID": inp.patient_uid,
                        "StudyInstanceUID": inp.study_instance_uid,
                        "PeerUID": inp.peer_id,
                        "Metadata": {**patient_meta, **study_meta, **series_meta},
                        "UpdatedAt": now,
                    },
                    "$setOnInsert": {"_id": _new_id(), "CreatedAt": now},
                    "$addToSet": {"Instances": instance_id},
                },
                projection={"_id": 1},  # not the (long) instance list
            )
            study_modalities = self._run(
                lambda db: self._modalities(
                    db, {"StudyInstanceUID": inp.study_instance_uid}, inp.modality
                )
            )
            study = self._upsert(
                "studies",
                {"StudyInstanceUID": inp.study_instance_uid},
                {
                    "$set": {
                        "PatientUID": inp.patient_uid,
                        "PeerUID": inp.peer_id,
                        "Metadata": {
                            **patient_meta,
                            **study_meta,
                            "ModalitiesInStudy": study_modalities,
                        },
                        "UpdatedAt": now,
                    },
                    "$setOnInsert": {"_id": _new_id(), "CreatedAt": now},
                    "$addToSet": {"Series": series["_id"]},
                },
                projection={"_id": 1},
            )
            patient_modalities = self._run(
                lambda db: self._modalities(db, {"PatientUID": inp.patient_uid}, inp.modality)
            )
            self._upsert(
                "patients",
                {"PatientUID": inp.patient_uid},
                {
                    "$set": {
                        "PeerUID": inp.peer_id,
                        "Metadata": {**patient_meta, "ModalitiesInPatient": patient_modalities},
                        "UpdatedAt": now,
                    },
                    "$setOnInsert": {"_id": _new_id(), "CreatedAt": now},
                    "$addToSet": {"Studies": study["_id"]},
                },
                projection={"_id": 1},
            )
        except BaseException:
            self.instance_blobs.delete_many([file_id])
            raise
        versions = self._keep_newest(self.instance_blobs, sop)
        if len(versions) > 1:
            self._unlink_superseded(versions)
        return self._instance(doc, str(series["_id"]))

    def _unlink_superseded(self, versions: list[dict[str, Any]]) -> None:
        """After a re-ingest (``versions`` newest first, the rest already deleted): drop
        the ids of superseded versions that no longer exist (a concurrent first ingest of
        the same SOPInstanceUID) and the instance's id from a series it left, deleting
        records that this leaves empty."""
        kept_id = self._instance_id(versions[0])
        kept_series = (versions[0].get("metadata") or {}).get("SeriesInstanceUID")
        pulls: dict[str, set[str]] = {}
        for version in versions[1:]:
            iid = self._instance_id(version)
            series_uid = (version.get("metadata") or {}).get("SeriesInstanceUID")
            if series_uid and (iid != kept_id or series_uid != kept_series):
                pulls.setdefault(series_uid, set()).add(iid)

        if pulls:
            self._run(lambda db: self._prune(db, pulls))

    def _resolve_instances(self, db: Any, ids: list[str]) -> dict[str, dict[str, Any]]:
        """The newest GridFS file of each instance id (by ``metadata.instanceId``, or by
        GridFS ``_id`` for files another tool stored)."""
        if not ids:
            return {}
        oids = [ObjectId(i) for i in ids if len(i) == 24 and ObjectId.is_valid(i)]
        found: dict[str, dict[str, Any]] = {}
        wanted = set(ids)
        for doc in (
            db["dicomfiles.files"]
            .find({"$or": [{"metadata.instanceId": {"$in": ids}}, {"_id": {"$in": oids}}]})
            .sort(_NEWEST_FIRST)
        ):
            iid = self._instance_id(doc)
            if iid in wanted:
                found.setdefault(iid, doc)
        return found

    def _ordered_instances(self, db: Any, series: dict[str, Any]) -> list[dict[str, Any]]:
        ids = [str(i) for i in series.get("Instances") or []]
        found = self._resolve_instances(db, ids)
        if len(found) < len(set(ids)):
            logger.debug(
                "%s: series %s lists %d instance(s) without stored bytes",
                self.describe(),
                series["_id"],
                len(set(ids)) - len(found),
            )
        records = [
            self._instance(found[i], str(series["_id"])) for i in dict.fromkeys(ids) if i in found
        ]
        records.sort(key=_instance_order)
        return records

    def get_instance(self, instance_id: str) -> dict[str, Any]:
        def work(db: Any) -> dict[str, Any] | None:
            alternatives: list[dict[str, Any]] = [
                {"metadata.instanceId": instance_id},
                {"metadata.SOPInstanceUID": instance_id},
            ]
            if len(instance_id) == 24 and ObjectId.is_valid(instance_id):
                alternatives.append({"_id": ObjectId(instance_id)})
            docs = list(
                db["dicomfiles.files"].find({"$or": alternatives}).sort(_NEWEST_FIRST).limit(1)
            )
            if not docs:
                return None
            series_uid = (docs[0].get("metadata") or {}).get("SeriesInstanceUID")
            series = db.series.find_one({"SeriesInstanceUID": series_uid}, {"_id": 1})
            return self._instance(docs[0], str(series["_id"]) if series else None)

        record = self._run(work)
        if record is None:
            raise NotFoundError(f"instance {instance_id!r} not found in {self.describe()}")
        return record

    @staticmethod
    def _by_id_or_uid(record_id: str, uid_field: str) -> dict[str, Any]:
        return {"$or": [{"_id": {"$in": _id_values(record_id)}}, {uid_field: record_id}]}

    def list_instances(self, series_id: str) -> list[dict[str, Any]]:
        def work(db: Any) -> list[dict[str, Any]] | None:
            series = db.series.find_one(self._by_id_or_uid(series_id, "SeriesInstanceUID"))
            return None if series is None else self._ordered_instances(db, series)

        records = self._run(work)
        if records is None:
            raise NotFoundError(f"series {series_id!r} not found in {self.describe()}")
        return records

    def open_instance(self, instance: dict[str, Any]) -> BinaryIO:
        return self.instance_blobs.open(
            BlobInfo(str(instance["BlobKey"]), int(instance["Size"]), instance.get("SHA256") or ""),
            f"DICOM instance {instance['SOPInstanceUID']}",
        )

    # records (SPEC §4): stored documents, with the id lists and modalities read fresh
    def _series_record(self, db: Any, doc: dict[str, Any]) -> dict[str, Any]:
        return {
            "_id": str(doc["_id"]),
            "PatientUID": doc.get("PatientUID"),
            "StudyInstanceUID": doc.get("StudyInstanceUID"),
            "SeriesInstanceUID": doc.get("SeriesInstanceUID"),
            "PeerUID": doc.get("PeerUID"),
            "Instances": [r["_id"] for r in self._ordered_instances(db, doc)],
            "Metadata": dict(doc.get("Metadata") or {}),
            "CreatedAt": _iso(doc.get("CreatedAt")),
            "UpdatedAt": _iso(doc.get("UpdatedAt")),
        }

    def _study_record(self, db: Any, doc: dict[str, Any]) -> dict[str, Any]:
        series = list(
            db.series.find(
                {"StudyInstanceUID": doc.get("StudyInstanceUID")},
                {"_id": 1, "Metadata.Modality": 1},
            ).sort(_RECORD_ORDER)
        )
        modalities = {(s.get("Metadata") or {}).get("Modality") for s in series}
        return {
            "_id": str(doc["_id"]),
            "PatientUID": doc.get("PatientUID"),
            "StudyInstanceUID": doc.get("StudyInstanceUID"),
            "PeerUID": doc.get("PeerUID"),
            "Series": [str(s["_id"]) for s in series],
            "Metadata": {
                **(doc.get("Metadata") or {}),
                "ModalitiesInStudy": sorted(m for m in modalities if isinstance(m, str) and m),
            },
            "CreatedAt": _iso(doc.get("CreatedAt")),
            "UpdatedAt": _iso(doc.get("UpdatedAt")),
        }

    def _patient_record(self, db: Any, doc: dict[str, Any]) -> dict[str, Any]:
        uid = doc.get("PatientUID")
        studies = list(db.studies.find({"PatientUID": uid}, {"_id": 1}).sort(_RECORD_ORDER))
        return {
            "_id": str(doc["_id"]),
            "PatientUID": uid,
            "PeerUID": doc.get("PeerUID"),
            "Studies": [str(s["_id"]) for s in studies],
            "Metadata": {
                **(doc.get("Metadata") or {}),
                "ModalitiesInPatient": self._modalities(db, {"PatientUID": uid}),
            },
            "CreatedAt": _iso(doc.get("CreatedAt")),
            "UpdatedAt": _iso(doc.get("UpdatedAt")),
        }

    def _records(
        self,
        collection: str,
        selector: dict[str, Any] | None,
        build: Callable[[Any, dict[str, Any]], dict[str, Any]],
    ) -> list[dict[str, Any]]:
        if selector is None:
            return []
        return self._run(
            lambda db: [build(db, d) for d in db[collection].find(selector).sort(_RECORD_ORDER)]
        )

    def _get_record(
        self,
        kind: str,
        collection: str,
        uid_field: str,
        key: str,
        build: Callable[[Any, dict[str, Any]], dict[str, Any]],
    ) -> dict[str, Any]:
        records = self._records(collection, self._by_id_or_uid(key, uid_field), build)
        if not records:
            raise NotFoundError(f"{kind} {key!r} not found in {self.describe()}")
        return records[0]

    def get_series(self, series_id: str) -> dict[str, Any]:
        return self._get_record(
            "series", "series", "SeriesInstanceUID", series_id, self._series_record
        )

    def get_study(self, study_id: str) -> dict[str, Any]:
        return self._get_record(
            "study", "studies", "StudyInstanceUID", study_id, self._study_record
        )

    def get_patient(self, patient_id: str) -> dict[str, Any]:
        return self._get_record(
            "patient", "patients", "PatientUID", patient_id, self._patient_record
        )

    def _uids(self, collection: str, uid_field: str, record_id: str) -> list[Any]:
        """The UIDs of the records of ``collection`` whose ``_id`` or UID is ``record_id``."""
        return self._run(
            lambda db: db[collection].distinct(uid_field, self._by_id_or_uid(record_id, uid_field))
        )

    def _session_uids(self, field: str, session_id: str) -> list[Any]:
        """The ``field`` UIDs of the instances the session's ingest filed."""
        return self._run(
            lambda db: db["dicomfiles.files"].distinct(
                f"metadata.{field}", {"metadata.SessionUID": session_id}
            )
        )

    def _filter(
        self,
        study_id: str | None = None,
        patient_id: str | None = None,
        session_id: str | None = None,
        session_field: str = "",
        session_key: str = "",
    ) -> dict[str, Any] | None:
        clauses: list[dict[str, Any]] = []
        if study_id is not None:
            clauses.append(
                {"StudyInstanceUID": {"$in": self._uids("studies", "StudyInstanceUID", study_id)}}
            )
        if patient_id is not None:
            clauses.append(
                {"PatientUID": {"$in": self._uids("patients", "PatientUID", patient_id)}}
            )
        if session_id is not None:
            clauses.append({session_key: {"$in": self._session_uids(session_field, session_id)}})
        return {"$and": clauses} if clauses else {}

    def list_series(
        self,
        *,
        study_id: str | None = None,
        patient_id: str | None = None,
        session_id: str | None = None,
    ) -> list[dict[str, Any]]:
        selector = self._filter(
            study_id, patient_id, session_id, "SeriesInstanceUID", "SeriesInstanceUID"
        )
        return self._records("series", selector, self._series_record)

    def list_studies(
        self, *, patient_id: str | None = None, session_id: str | None = None
    ) -> list[dict[str, Any]]:
        selector = self._filter(
            None, patient_id, session_id, "StudyInstanceUID", "StudyInstanceUID"
        )
        return self._records("studies", selector, self._study_record)

    def list_patients(self, *, session_id: str | None = None) -> list[dict[str, Any]]:
        selector = self._filter(None, None, session_id, "PatientUID", "PatientUID")
        return self._records("patients", selector, self._patient_record)

    def delete_session_instances(self, session_id: str) -> int:
        versions = self._run(
            lambda db: list(
                db["dicomfiles.files"].find({"metadata.SessionUID": session_id}, {"metadata": 1})
            )
        )
        by_series: dict[str, set[str]] = {}
        for version in versions:
            series_uid = str((version.get("metadata") or {}).get("SeriesInstanceUID"))
            by_series.setdefault(series_uid, set()).add(self._instance_id(version))
        count = len({self._instance_id(v) for v in versions})
        self.instance_blobs.delete_many(v["_id"] for v in versions)
        if versions:
            self._run(lambda db: self._prune(db, by_series))
        logger.debug("%s: removed %d instance(s) of session %s", self.describe(), count, session_id)
        return count

    def _prune(self, db: Any, by_series: dict[str, set[str]]) -> None:
        """Unlink removed instances, then delete series, studies and patients left empty
        (each delete re-checks emptiness atomically, so a concurrent ingest that just
        added to a record keeps it) and refresh the modality lists of the rest."""
        studies: set[str] = set()
        patients: set[str] = set()
        for series_uid, ids in by_series.items():
            doc = db.series.find_one_and_update(
                {"SeriesInstanceUID": series_uid},
                {"$pull": {"Instances": {"$in": sorted(ids)}}},
                return_document=pymongo.ReturnDocument.AFTER,
            )
            if doc is None:
                continue
            studies.add(doc.get("StudyInstanceUID"))
            patients.add(doc.get("PatientUID"))
            if db.series.delete_one({"_id": doc["_id"], "Instances": {"$size": 0}}).deleted_count:
                db.studies.update_one(
                    {"StudyInstanceUID": doc.get("StudyInstanceUID")},
                    {"$pull": {"Series": doc["_id"]}},
                )
        for study_uid in studies:
            doc = db.studies.find_one({"StudyInstanceUID": study_uid})
            if doc is None:
                continue
            patients.add(doc.get("PatientUID"))
            if db.studies.delete_one({"_id": doc["_id"], "Series": {"$size": 0}}).deleted_count:
                db.patients.update_one(
                    {"PatientUID": doc.get("PatientUID")}, {"$pull": {"Studies": doc["_id"]}}
                )
            else:
                db.studies.update_one(
                    {"_id": doc["_id"]},
                    {
                        "$set": {
                            "Metadata.ModalitiesInStudy": self._modalities(
                                db, {"StudyInstanceUID": study_uid}
                            )
                        }
                    },
                )
        for patient_uid in patients:
            doc = db.patients.find_one({"PatientUID": patient_uid})
            if doc is None:
                continue
            if not db.patients.delete_one(
                {"_id": doc["_id"], "Studies": {"$size": 0}}
            ).deleted_count:
                db.patients.update_one(
                    {"_id": doc["_id"]},
                    {
                        "$set": {
                            "Metadata.ModalitiesInPatient": self._modalities(
                                db, {"PatientUID": patient_uid}
                            )
                        }
                    },
                )
