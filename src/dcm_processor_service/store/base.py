"""The storage interface every provider implements.

A :class:`Store` persists sessions, jobs, session data, session files, peers and the
DICOM index (patients → studies → series → instances). Callers above ``store/`` only
talk to this interface; providers are chosen by name through
:mod:`dcm_processor_service.store.registry`.

Ownership of session data and files: a value belongs to a job of a session. Writes
name the owner with a full :class:`JobRef`. Reads select the owner either by
``job_id`` (the current job) or, when ``job_id`` is ``None``, by ``job_name`` (and
``event`` when given) — that is how one job reads what another job of the same session
and event stored.

Files are streamed: ``put_file`` reads its source in chunks, hashes while writing, and
makes the new version visible atomically only once it is complete; ``open_file`` returns
a reader that verifies size and sha256 when it reaches the end and raises
:class:`~dcm_processor_service.IntegrityError` on a mismatch.
"""

from __future__ import annotations

import abc
import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, BinaryIO, ClassVar

from .._errors import NotFoundError, StorageError
from .garbage import GarbageReport
from .instance_batch import InstanceBatch, OneByOneBatch
from .records import (
    DataRecord,
    FileRecord,
    InstanceInput,
    InstanceRecord,
    JobRecord,
    PatientRecord,
    Peer,
    SeriesRecord,
    SessionRecord,
    SessionStatus,
    StudyRecord,
)

if TYPE_CHECKING:
    from .instance_read import StoredBytes

__all__ = ["CHUNK_SIZE", "JobRef", "Store"]

#: Streaming chunk size for files (1 MiB keeps memory bounded and syscalls few).
CHUNK_SIZE = 1024 * 1024


@dataclass(frozen=True)
class JobRef:
    """Names the owner (on write) or selects it (on read) of session data and files."""

    session_id: str
    job_id: str | None = None
    job_name: str | None = None
    event: str | None = None


class Store(abc.ABC):
    """Abstract store. Implementations must be safe for concurrent use by many
    processes (and by threads, each using its own connection)."""

    #: provider name this class is registered under
    provider: ClassVar[str] = ""

    # ---------------------------------------------------------------- lifecycle
    @abc.abstractmethod
    def migrate(self) -> int:
        """Create or upgrade the schema; return the schema version. Safe to call from
        several processes at once. Providers create the schema on first use by
        themselves; an explicit call also collects garbage where that is cheap enough
        to do on demand (SQLite, PostgreSQL: :meth:`collect_garbage`)."""

    def collect_garbage(
        self, *, dry_run: bool = False, min_age_s: float | None = None
    ) -> GarbageReport:
        """Remove stored bytes no record references - what writers that crashed between
        writing a file's bytes and committing its record left behind - and return what
        was freed (with ``dry_run``: what would be). Never touches data a live writer is
        still committing (SQL providers: the writer's lock or lease; see
        ``docs/storage.md``). ``min_age_s`` (MongoDB, which has no such lock): how long
        an unfinished upload must have been silent; ``None`` = the provider's default.
        The SQL providers' ``migrate()`` runs it too."""
        raise StorageError(f"{self.describe()}: this provider has no garbage collection")

    @abc.abstractmethod
    def close(self) -> None:
        """Release connections and handles. The store is unusable afterwards."""

    @abc.abstractmethod
    def describe(self) -> str:
        """Where the store lives, for messages (never includes a password)."""

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _not_found(self, kind: str, key: str) -> NotFoundError:
        """``<kind> '<key>' not found in <this store>`` (for providers)."""
        return NotFoundError(f"{kind} {key!r} not found in {self.describe()}")

    def _peer_not_found(self, name_or_id: str) -> NotFoundError:
        """A :class:`NotFoundError` for an unknown peer that lists the known ones."""
        known = ", ".join(p.name for p in self.list_peers()) or "none"
        return NotFoundError(
            f"peer {name_or_id!r} not found in {self.describe()} (known peers: {known})"
        )

    # ----------------------------------------------------------------- sessions
    @abc.abstractmethod
    def ensure_session(
        self,
        session_id: str | None = None,
        *,
        peer_id: str | None = None,
        patient_uid: str | None = None,
        meta: dict[str, Any] | None = None,
    ) -> SessionRecord:
        """Return the session ``session_id``, creating it (with a new id when ``None``)."""

    @abc.abstractmethod
    def get_session(self, session_id: str) -> SessionRecord:
        """The session, or :class:`NotFoundError`."""

    @abc.abstractmethod
    def list_sessions(self) -> list[SessionRecord]:
        """All sessions, oldest first."""

    @abc.abstractmethod
    def update_session(
        self,
        session_id: str,
        *,
        status: SessionStatus | str | None = None,
        meta: dict[str, Any] | None = None,
        owner: str | None = None,
        heartbeat_at: datetime | None = None,
    ) -> SessionRecord:
        """Change a session's status, ``owner`` (``PID@HOST`` of the runner working on
        it) and/or ``heartbeat_at``, and/or merge ``meta`` into its meta (``None``
        leaves a field as it is). ``status`` is a :class:`SessionStatus` or its text;
        another word raises :class:`InvalidInputError`."""

    @abc.abstractmethod
    def delete_session(self, session_id: str) -> bool:
        """Delete the session record and its jobs; ``False`` if it did not exist.
        (Callers remove data, files and images first; see the post-services hook.)"""

    # --------------------------------------------------------------------- jobs
    @abc.abstractmethod
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
        """Create a job (status ``pending``) or return the existing one with ``job_id``."""

    @abc.abstractmethod
    def get_job(self, job_id: str) -> JobRecord:
        """The job, or :class:`NotFoundError`."""

    @abc.abstractmethod
    def find_job(self, session_id: str, name: str, event: str | None = None) -> JobRecord | None:
        """The newest job of the session with that name (and event when given)."""

    @abc.abstractmethod
    def list_jobs(self, session_id: str) -> list[JobRecord]:
        """The session's jobs in creation order."""

    @abc.abstractmethod
    def update_job(self, job_id: str, **changes: Any) -> JobRecord:
        """Set any of ``status`` (a :class:`JobStatus` or its text), ``progress``
        (merged), ``error``, ``started_at``, ``finished_at``, ``params``,
        ``service_name``, ``owner``, ``heartbeat_at`` (:data:`JOB_FIELDS`); another field
        name or status word raises :class:`InvalidInputError`."""

    # ------------------------------------------------------------- session data
    @abc.abstractmethod
    def set_data(self, owner: JobRef, name: str, value_json: str) -> None:
        """Store JSON text under (session, job, name), replacing any previous value."""

    @abc.abstractmethod
    def get_data(self, ref: JobRef, name: str) -> str | None:
        """The stored JSON text, or ``None`` when absent."""

    @abc.abstractmethod
    def remove_data(self, ref: JobRef, name: str) -> bool:
        """Remove a value; ``False`` if there was none."""

    @abc.abstractmethod
    def list_data(self, session_id: str) -> list[DataRecord]:
        """Every value of the session with its owner job, by job name then name."""

    @abc.abstractmethod
    def delete_session_data(self, session_id: str) -> int:
        """Remove every value of the session; return how many."""

    # ------------------------------------------------------------ session files
    @abc.abstractmethod
    def put_file(
        self,
        owner: JobRef,
        name: str,
        source: BinaryIO,
        *,
        content_type: str,
        meta: dict[str, Any] | None = None,
    ) -> FileRecord:
        """Stream ``source`` into a new file version; replace the previous version of
        (session, job, name) atomically once complete."""

    @abc.abstractmethod
    def get_file(self, ref: JobRef, name: str) -> FileRecord | None:
        """The file's record, or ``None`` when absent."""

    @abc.abstractmethod
    def open_file(self, record: FileRecord) -> BinaryIO:
        """A reader of the file's bytes that verifies size and sha256 at the end."""

    @abc.abstractmethod
    def remove_file(self, ref: JobRef, name: str) -> bool:
        """Remove a file; ``False`` if there was none."""

    @abc.abstractmethod
    def list_files(self, session_id: str) -> list[FileRecord]:
        """The session's files."""

    @abc.abstractmethod
    def delete_session_files(self, session_id: str) -> int:
        """Remove every file of the session; return how many."""

    # -------------------------------------------------------------------- peers
    @abc.abstractmethod
    def put_peer(self, peer: Peer) -> Peer:
        """Add or update (by name) a peer; returns it with its id."""

    @abc.abstractmethod
    def get_peer(self, name_or_id: str) -> Peer:
        """The peer with that name or id, or :class:`NotFoundError`."""

    @abc.abstractmethod
    def list_peers(self) -> list[Peer]:
        """All peers sorted by name."""

    @abc.abstractmethod
    def remove_peer(self, name_or_id: str) -> bool:
        """Remove a peer; ``False`` if there was none."""

    # ------------------------------------------------------------- DICOM index
    @abc.abstractmethod
    def put_instance(self, instance: InstanceInput, source: BinaryIO) -> InstanceRecord:
        """Store the instance's bytes and file it under patient → study → series in
        one transaction. The same SOPInstanceUID again replaces (never duplicates).
        Returns the instance record."""

    @contextlib.contextmanager
    def instance_batch(self) -> Iterator[InstanceBatch]:
        """A batch that files many instances with one flush and one transaction
        (group commit, see :mod:`.instance_batch`); what was not committed when the
        block ends is discarded. This default files each instance as it is added."""
        yield OneByOneBatch(self)

    @abc.abstractmethod
    def get_instance(self, instance_id: str) -> InstanceRecord:
        """The instance record by ``_id`` or SOPInstanceUID, or :class:`NotFoundError`."""

    @abc.abstractmethod
    def list_instances(self, series_id: str) -> list[InstanceRecord]:
        """The instance records of a series (by ``_id`` or SeriesInstanceUID), in slice
        order (:func:`~dcm_processor_service.store.slice_order.sort_instances`)."""

    @abc.abstractmethod
    def open_instance(self, instance: InstanceRecord) -> BinaryIO:
        """A verifying reader of the instance's stored bytes."""

    def read_instance(self, instance: InstanceRecord) -> StoredBytes:
        """The instance's stored bytes whole, to be checked with
        :meth:`~dcm_processor_service.store.instance_read.StoredBytes.verify` before any
        use but decoding (SQL providers read a blob file in one system call and leave
        the sha256 to the caller, who can overlap it with decoding). This default reads
        through :meth:`open_instance`, which verifies as it streams."""
        from .instance_read import StoredBytes, instance_blob

        info, what = instance_blob(instance)
        with self.open_instance(instance) as reader:
            data = reader.read(info.size + 1)
            while chunk := reader.read(info.size + 1):
                data += chunk
        return StoredBytes(data, info, what, verified=True)

    @abc.abstractmethod
    def get_series(self, series_id: str) -> SeriesRecord:
        """The series record (SPEC §4) by ``_id`` or SeriesInstanceUID."""

    @abc.abstractmethod
    def get_study(self, study_id: str) -> StudyRecord:
        """The study record by ``_id`` or StudyInstanceUID."""

    @abc.abstractmethod
    def get_patient(self, patient_id: str) -> PatientRecord:
        """The patient record by ``_id`` or PatientUID."""

    @abc.abstractmethod
    def list_series(
        self,
        *,
        study_id: str | None = None,
        patient_id: str | None = None,
        session_id: str | None = None,
    ) -> list[SeriesRecord]:
        """Series records, filtered by study, patient (``_id`` or PatientUID) and/or
        the session whose ingest filed them."""

    @abc.abstractmethod
    def list_studies(
        self, *, patient_id: str | None = None, session_id: str | None = None
    ) -> list[StudyRecord]:
        """Study records, filtered by patient and/or session."""

    @abc.abstractmethod
    def list_patients(self, *, session_id: str | None = None) -> list[PatientRecord]:
        """Patient records, filtered by session."""

    @abc.abstractmethod
    def delete_session_instances(self, session_id: str) -> int:
        """Remove the instances (and bytes) the session's ingest filed, then series,
        studies and patients left empty; return how many instances."""

    # ---------------------------------------------------------------- helpers
    def iter_file(self, record: FileRecord) -> Iterator[bytes]:
        """Yield a file's bytes chunk by chunk, verified at the end."""
        with self.open_file(record) as reader:
            while chunk := reader.read(CHUNK_SIZE):
                yield chunk
