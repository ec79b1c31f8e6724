"""Ingest: file DICOM instances into the store's index (patient → study → series → instance).

The platform's DICOM server normally does this filing; :func:`ingest` does the same so
the local runner and tests can load a folder of DICOM, and so
:func:`~dcm_processor_service.get_series_dicom` works on it.

Sources (:data:`IngestSource`): a folder (walked recursively), a file, a DICOMDIR file
(its referenced files are followed), a pydicom ``Dataset``, a pydicom ``FileSet``, or
any iterable mixing those - expanded by :mod:`dcm_processor_service.sources`, the one
reader of DICOM input (hidden entries skipped, DICOMDIR references contained). ::

    import dcm_processor_service as dps

    report = dps.ingest("/data/incoming", session_id=session.id, peer_id="PACS")
    print(report.summary())           # stored 312 instance(s) in 4 series; 1 failed
    for path, reason in report.failed:
        print(path, reason)

What gets stored, per instance:

- the **exact bytes** of the file, streamed (a file is never loaded whole); a pydicom
  dataset, or a file holding a bare dataset without the Part 10 header, is encoded as a
  DICOM Part 10 file with ``dcmwrite(..., enforce_file_format=True)``;
- the records (SPEC §4), built by :func:`~dcm_processor_service.index.metadata.instance_input`
  (the metadata schema), the peer and the session.

Re-ingesting the same SOPInstanceUID replaces the stored instance (never duplicates), so
re-running an interrupted ingest is safe.

Two patients are never merged: an instance whose series or study is already filed under
another patient (by :func:`~dcm_processor_service.index.metadata.patient_key`), or a
re-ingest that would move a stored SOPInstanceUID to another patient, is refused with a
per-file :class:`IngestConflict` naming both patients and the UID
(:attr:`IngestReport.conflicts`); what is stored stays untouched. The store checks this
in the filing transaction, so it holds for concurrent ingests too.

Bad input never stops an ingest half-way: non-DICOM, truncated
(:mod:`~dcm_processor_service.index.verify`) or unreadable files, files missing a
required UID, FIFOs and broken links each become one ``(path, reason)`` entry of
:attr:`IngestReport.failed` while every good file is stored. DICOMDIR files met while
walking a folder and hidden entries (names starting with ``.``) are *skipped*
(:attr:`IngestReport.skipped`), not failures. Errors of the *store* itself (disk
full, database down) are not per-file problems: they propagate.

Group commit: instances are filed in batches (``batch_size``, default
:data:`BATCH_SIZE`): the bytes of each instance are written as it is read, then the
whole batch is flushed to disk at once and its records are committed in one
transaction (:meth:`Store.instance_batch
<dcm_processor_service.store.Store.instance_batch>`) by a helper thread, while the next
batch is read. An instance is reported stored
only once its batch is committed, so a crash at any moment - even during the call -
loses nothing that was reported stored, and leaves whole instances only (an
uncommitted batch's bytes are garbage the store's collection removes).

Headers: a common Part 10 file's header is walked and its record tags decoded without
pydicom's reader (:func:`~dcm_processor_service.index.fast_input.fast_instance_input`,
the same records, ~0.4 ms a file instead of ~5 ms); any other file is read by pydicom
(:func:`~dcm_processor_service.sources.read_header`).

Memory does not grow with the number of files: files are read one at a time (header
only, then streamed), and no dataset is kept. The report keeps one small
entry per file; use :func:`iter_ingest` to consume outcomes one by one instead.
"""

from __future__ import annotations

import copy
import dataclasses
import io
import logging
import os
import stat
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, BinaryIO, NamedTuple, cast

from pydicom import dcmread, dcmwrite
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.fileset import FileSet
from pydicom.uid import UID, ExplicitVRLittleEndian

from .._errors import DicomInputError, InvalidInputError, PatientConflictError
from .._runtime import store_for
from ..dicom_values import is_encapsulated, transfer_syntax_of
from ..sources import (
    DICOMDIR_SKIPPED,
    Failed,
    InputFile,
    Inputs,
    Skipped,
    is_dicomdir,
    pydicom_warnings,
    read_header,
)
from ..store.base import Store
from ..store.instance_batch import BatchResult, InstanceBatch
from ..store.records import InstanceInput, InstanceRecord
from .fast_input import fast_instance_input
from .metadata import HEADER_KEYWORDS, instance_input
from .verify import check_structure

__all__ = [
    "BATCH_BYTES",
    "BATCH_SIZE",
    "IngestConflict",
    "IngestFailure",
    "IngestOutcome",
    "IngestReport",
    "IngestSkip",
    "IngestSource",
    "StoredInstance",
    "ingest",
    "iter_ingest",
]

logger = logging.getLogger(__name__)

#: Instances per group commit (``batch_size`` of :func:`ingest`): large enough that
#: one flush and one transaction cost little per instance, small enough that progress
#: is reported often.
BATCH_SIZE = 64
#: A batch also ends once this many bytes were added to it.
BATCH_BYTES = 64 * 1024 * 1024


# ----------------------------------------------------------------------- outcomes
@dataclass(frozen=True)
class StoredInstance:
    """One instance filed by the ingest."""

    path: str
    """The file (or ``<dataset #n>``) it came from."""
    instance_id: str
    sop_instance_uid: str
    series_instance_uid: str
    series_id: str
    """The series record ``_id``."""
    size: int
    """Bytes stored."""


class IngestFailure(NamedTuple):
    """A file that could not be ingested: unpacks as ``(path, reason)``."""

    path: str
    reason: str


class IngestConflict(IngestFailure):
    """A file refused because its series, study or SOP instance is already filed under
    another patient (see :class:`~dcm_processor_service.PatientConflictError`): unpacks
    as ``(path, reason)``, the reason naming both patients and the UID."""

    __slots__ = ()


class IngestSkip(NamedTuple):
    """An entry deliberately not ingested (DICOMDIR, hidden file): ``(path, reason)``."""

    path: str
    reason: str


IngestOutcome = StoredInstance | IngestFailure | IngestSkip

#: What :func:`ingest` accepts: a path (folder, file or DICOMDIR), a pydicom dataset or
#: file-set, or an iterable of those.
IngestSource = str | os.PathLike[str] | Dataset | FileSet | Iterable[Any]


@dataclass
class IngestReport:
    """What an :func:`ingest` did.

    ``stored``: one :class:`StoredInstance` per filed instance; ``failed``: ``(path,
    reason)`` per file that could not be filed; ``skipped``: ``(path, reason)`` per entry
    deliberately left out (DICOMDIR files met in a folder, hidden files); ``series_ids``:
    the record ``_id`` of each series that received instances, in first-seen order.
    """

    stored: list[StoredInstance] = field(default_factory=list)
    failed: list[IngestFailure] = field(default_factory=list)
    skipped: list[IngestSkip] = field(default_factory=list)
    series_ids: list[str] = field(default_factory=list)
    bytes_stored: int = 0
    elapsed_s: float = 0.0
    _series_seen: set[str] = field(default_factory=set, init=False, repr=False, compare=False)

    @property
    def ok(self) -> bool:
        """``True`` when no file failed."""
        return not self.failed

    @property
    def conflicts(self) -> list[IngestConflict]:
        """The failures that are patient conflicts (also in :attr:`failed`)."""
        return [f for f in self.failed if isinstance(f, IngestConflict)]

    @property
    def n_stored(self) -> int:
        """Number of instances stored."""
        return len(self.stored)

    @property
    def n_failed(self) -> int:
        """Number of files that failed."""
        return len(self.failed)

    @property
    def n_skipped(self) -> int:
        """Number of entries skipped."""
        return len(self.skipped)

    def add(self, outcome: IngestOutcome) -> None:
        """Record one outcome of :func:`iter_ingest`."""
        if isinstance(outcome, StoredInstance):
            self.stored.append(outcome)
            self.bytes_stored += outcome.size
            if outcome.series_id not in self._series_seen:
                self._series_seen.add(outcome.series_id)
                self.series_ids.append(outcome.series_id)
        elif isinstance(outcome, IngestFailure):
            self.failed.append(outcome)
        else:
            self.skipped.append(outcome)

    def summary(self) -> str:
        """One line: counts of stored, failed and skipped entries."""
        text = f"stored {self.n_stored} instance(s) in {len(self.series_ids)} series"
        if self.failed:
            text += f"; {self.n_failed} failed"
            if self.conflicts:
                text += f" ({len(self.conflicts)} patient conflict(s))"
        if self.skipped:
            text += f"; {self.n_skipped} skipped"
        return text

    def raise_for_failures(self) -> None:
        """Raise :class:`DicomInputError` listing the failures (the first 20), if any."""
        if not self.failed:
            return
        lines = [f"  {path}: {reason}" for path, reason in self.failed[:20]]
        if self.n_failed > 20:
            lines.append(f"  ... and {self.n_failed - 20} more")
        raise DicomInputError(
            f"{self.n_failed} file(s) could not be ingested:\n" + "\n".join(lines)
        )


# ------------------------------------------------------------------- metadata


# ---------------------------------------------------------------------- reading
def _encode(ds: Dataset) -> tuple[io.BytesIO, str]:
    """Encode a dataset as a Part 10 file (without changing the caller's dataset)."""
    meta = getattr(ds, "file_meta", None)
    target = ds
    ts = meta.get("TransferSyntaxUID") if meta is not None else None
    if not ts:
        if is_encapsulated(ds):
            raise DicomInputError(
                "the dataset has encapsulated (compressed) Pixel Data but no file_meta "
                "TransferSyntaxUID - set ds.file_meta.TransferSyntaxUID to its transfer syntax"
            )
        target = copy.copy(ds)
        new_meta = FileMetaDataset()
        if meta is not None:
            for element in meta:
                new_meta.add(element)
        ts = UID(transfer_syntax_of(ds) or ExplicitVRLittleEndian)
        new_meta.TransferSyntaxUID = ts
        target.file_meta = new_meta
    buffer = io.BytesIO()
    dcmwrite(buffer, target, enforce_file_format=True)
    buffer.seek(0)
    return buffer, str(ts)


class _SourceReadError(Exception):
    """Reading the *source* file failed while streaming it to the store."""


class _SourceReader:
    """Passes ``read`` through, marking source I/O errors so they are not mistaken for
    store errors."""

    def __init__(self, fh: BinaryIO) -> None:
        self._fh = fh

    def read(self, n: int = -1) -> bytes:
        try:
            return self._fh.read(n)
        except OSError as exc:
            raise _SourceReadError(exc.strerror or str(exc)) from exc


# ---------------------------------------------------------------------- ingest
class _Added(NamedTuple):
    """An instance added to the open batch: its outcome is known once the batch commits."""

    path: str
    expected_size: int | None
    """The source file's size when it was read (``None`` for an encoded dataset)."""
    size: int


class _Commit(NamedTuple):
    """A batch handed to the committing thread and the outcomes waiting for it."""

    results: Future[list[BatchResult]] | None
    waiting: list[IngestOutcome | _Added]


class _Ingestor:
    """Reads the entries and adds the instances to two batches in turn: while one batch
    is committed (flushed, filed) in a helper thread, the next one is read and written -
    the disk's flush overlaps the decoding of headers."""

    def __init__(
        self,
        batches: tuple[InstanceBatch, InstanceBatch],
        peer_id: str | None,
        session_id: str | None,
        batch_size: int,
    ) -> None:
        self.batch, self._other = batches
        self.peer_id = peer_id
        self.session_id = session_id
        self.batch_size = batch_size
        self.inputs = Inputs()
        self.n_datasets = 0
        self._waiting: list[IngestOutcome | _Added] = []  # in input order
        self._batch_bytes = 0

    def run(self, source: Any) -> Iterator[IngestOutcome]:
        """The outcomes in input order; a stored instance is reported once its batch is
        committed (so every :class:`StoredInstance` seen is durably stored)."""
        with ThreadPoolExecutor(1, thread_name_prefix="dcm-ingest-commit") as committer:
            in_flight: _Commit | None = None
            for outcome in self._entries(self.inputs.expand(source)):
                self._waiting.append(outcome)
                if isinstance(outcome, _Added):
                    self._batch_bytes += outcome.size
                    if self.batch.pending >= self.batch_size or self._batch_bytes >= BATCH_BYTES:
                        if in_flight is not None:  # at most one batch committing
                            yield from self._report(in_flight)
                        in_flight = _Commit(committer.submit(self.batch.commit), self._waiting)
                        self.batch, self._other = self._other, self.batch
                        self._waiting, self._batch_bytes = [], 0
                elif in_flight is None and not self.batch.pending:
                    yield from self._report(_Commit(None, self._waiting))  # nothing before it
                    self._waiting = []
            if in_flight is not None:
                yield from self._report(in_flight)
            last = _Commit(committer.submit(self.batch.commit), self._waiting)
            self._waiting = []
            yield from self._report(last)

    def _report(self, commit: _Commit) -> Iterator[IngestOutcome]:
        """The outcomes of a committed batch (waits for its commit) in input order."""
        results = iter(commit.results.result() if commit.results is not None else [])
        for item in commit.waiting:
            if not isinstance(item, _Added):
                yield item
                continue
            result = next(results)
            if isinstance(result, PatientConflictError):
                yield IngestConflict(item.path, str(result))
                continue
            if item.expected_size is not None and int(result["Size"]) != item.expected_size:
                logger.warning(
                    "%s changed while it was ingested (%d -> %d bytes)",
                    item.path,
                    item.expected_size,
                    result["Size"],
                )
            yield self._stored(item.path, result)

    def _entries(self, entries: Iterable[Any]) -> Iterator[IngestOutcome | _Added]:
        for entry in entries:
            if isinstance(entry, Skipped):
                yield IngestSkip(entry.path, entry.reason)
            elif isinstance(entry, Failed):
                yield IngestFailure(entry.path, entry.reason)
            elif isinstance(entry, Dataset):
                yield self.dataset(entry)
            else:
                yield from self.file(entry)

    def _stored(self, source: str, record: InstanceRecord) -> StoredInstance:
        stored = StoredInstance(
            path=source,
            instance_id=str(record["_id"]),
            sop_instance_uid=str(record["SOPInstanceUID"]),
            series_instance_uid=str(record["SeriesInstanceUID"]),
            series_id=str(record["SeriesUID"]),
            size=int(record["Size"]),
        )
        logger.debug(
            "stored %s as instance %s of series %s", source, stored.instance_id, stored.series_id
        )
        return stored

    def dataset(self, ds: Dataset) -> IngestOutcome | _Added:
        self.n_datasets += 1
        filename = getattr(ds, "filename", None)
        label = f"<dataset #{self.n_datasets}" + (
            f" {filename}>" if isinstance(filename, str) else ">"
        )
        if is_dicomdir(ds):
            return IngestSkip(label, DICOMDIR_SKIPPED)
        try:
            with pydicom_warnings(label):
                inp = instance_input(ds, peer_id=self.peer_id, session_id=self.session_id)
                buffer, ts = _encode(ds)
        except DicomInputError as exc:
            return IngestFailure(label, str(exc))
        except Exception as exc:  # pydicom encoding errors: reported, never half-stored
            return IngestFailure(label, f"cannot encode the dataset ({type(exc).__name__}: {exc})")
        if ts != inp.transfer_syntax_uid:
            inp = _replace_ts(inp, ts)
        size = buffer.getbuffer().nbytes
        self.batch.add(inp, cast(BinaryIO, buffer))
        return _Added(label, None, size)

    def file(self, item: InputFile) -> Iterator[IngestOutcome | _Added]:
        try:
            fh = open(item.path, "rb")  # noqa: SIM115 - closed below
        except PermissionError:
            yield IngestFailure(item.path, "permission denied")
            return
        except OSError as exc:
            yield IngestFailure(item.path, f"cannot open: {exc.strerror or exc}")
            return
        with fh:
            outcome = self._file(item, fh)
        if isinstance(outcome, Dataset):  # a DICOMDIR: followed when named, else skipped
            yield from self._entries(self.inputs.dicomdir(item, outcome))
        else:
            yield outcome

    def _file(self, item: InputFile, fh: BinaryIO) -> IngestOutcome | _Added | Dataset:
        path = item.path
        try:
            st = os.fstat(fh.fileno())
            if not stat.S_ISREG(st.st_mode):
                return IngestFailure(path, "not a regular file")
            fast = fast_instance_input(
                fh, st.st_size, peer_id=self.peer_id, session_id=self.session_id
            )
            if fast is not None:
                inp, part10 = fast, True
            else:  # not the common case: pydicom reads it
                with pydicom_warnings(path):
                    header, part10 = read_header(fh, HEADER_KEYWORDS)
                    if is_dicomdir(header):
                        fh.seek(0)
                        return dcmread(fh) if item.explicit else header
                    check_structure(fh, st.st_size, header, 132 if part10 else 0)
                    inp = instance_input(header, peer_id=self.peer_id, session_id=self.session_id)
            fh.seek(0)
            source: Any = _SourceReader(fh)
            if not part10:
                # a bare dataset without the Part 10 header: store it as a Part 10 file
                with pydicom_warnings(path):
                    source, ts = _encode(dcmread(fh, force=True))
                inp = _replace_ts(inp, ts)
                logger.info(
                    "%s has no DICOM file header; storing it as a Part 10 file (%s)", path, ts
                )
        except DicomInputError as exc:
            return IngestFailure(path, str(exc))
        except OSError as exc:
            return IngestFailure(path, f"read error: {exc.strerror or exc}")
        except Exception as exc:  # pydicom errors on a damaged file: reported, not raised
            return IngestFailure(path, f"unreadable DICOM ({type(exc).__name__}: {exc})")
        # Errors of the store (disk full, database down) are not about this file: they
        # propagate. Only failures to read the source are reported for the file.
        try:
            self.batch.add(inp, cast(BinaryIO, source))
        except _SourceReadError as exc:
            return IngestFailure(path, f"read error: {exc}")
        return _Added(path, st.st_size if part10 else None, st.st_size)


def _replace_ts(inp: InstanceInput, ts: str) -> InstanceInput:
    return dataclasses.replace(inp, transfer_syntax_uid=ts)


def _check_id(value: str | None, what: str) -> str | None:
    if value is not None and (not isinstance(value, str) or not value.strip()):
        raise InvalidInputError(
            f"invalid '{what}' value {value!r} - must be a non-empty str or None"
        )
    return value


def iter_ingest(
    source: IngestSource,
    *,
    store: Store | None = None,
    peer_id: str | None = None,
    session_id: str | None = None,
    batch_size: int = BATCH_SIZE,
) -> Iterator[IngestOutcome]:
    """Ingest ``source`` lazily, yielding one outcome per entry: a
    :class:`StoredInstance`, an :class:`IngestFailure` or an :class:`IngestSkip`.

    Same arguments and rules as :func:`ingest` (the arguments are checked at once, the
    files as the iterator is consumed); use it to show progress, or to ingest millions of
    files without keeping a report. Outcomes come in input order, a batch at a time: a
    :class:`StoredInstance` is yielded once its batch is committed, so what was yielded
    is stored durably; stopping the iteration early discards the open batch (up to
    ``batch_size`` instances that were never reported stored).
    """
    _check_id(peer_id, "peer_id")
    _check_id(session_id, "session_id")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InvalidInputError(
            f"invalid batch_size {batch_size!r} - must be a whole number of instances, at least 1"
        )
    if isinstance(source, (str, os.PathLike)):
        if not os.path.lexists(source):
            raise InvalidInputError(f"cannot ingest {os.fspath(source)!r}: no such file or folder")
    elif not isinstance(source, (Dataset, FileSet, Iterable)) or isinstance(
        source, (bytes, bytearray)
    ):
        raise InvalidInputError(
            f"invalid ingest source {source!r:.80} - give a folder, a file, a DICOMDIR, a pydicom "
            "Dataset or FileSet, or a list of those"
        )
    store = store if store is not None else store_for()
    return _run(source, store, peer_id, session_id, batch_size)


def _run(
    source: Any, store: Store, peer_id: str | None, session_id: str | None, batch_size: int
) -> Iterator[IngestOutcome]:
    with store.instance_batch() as first, store.instance_batch() as second:
        for outcome in _Ingestor((first, second), peer_id, session_id, batch_size).run(source):
            if isinstance(outcome, IngestFailure):
                logger.warning("not ingested: %s: %s", outcome.path, outcome.reason)
            yield outcome


def ingest(
    source: IngestSource,
    *,
    store: Store | None = None,
    peer_id: str | None = None,
    session_id: str | None = None,
    batch_size: int = BATCH_SIZE,
) -> IngestReport:
    """File DICOM instances into the store's index and return an :class:`IngestReport`.

    ``source``: a folder (recursive), a file, a DICOMDIR (its referenced files are
    followed), a pydicom ``Dataset`` or ``FileSet``, or an iterable of those.
    ``store``: default the job's store from the runtime context
    (:func:`~dcm_processor_service.store_for`). ``peer_id``: the peer the data came from
    (the records' ``PeerUID``). ``session_id``: the session the instances belong to —
    :meth:`Store.delete_session_instances` removes them again (the post-services hook).

    Per-file problems are reported, never raised (see the module docs); a source path
    that does not exist raises :class:`InvalidInputError`, and store errors propagate.
    The same file reached twice in one call (e.g. a DICOMDIR and its folder) is ingested
    once.

    ``batch_size``: instances filed together (group commit: their bytes flushed to disk
    together and their records committed in one transaction, which is what makes an
    ingest fast); a batch also ends at :data:`BATCH_BYTES`. When this returns, every
    instance in :attr:`IngestReport.stored` is stored durably.
    """
    started = time.perf_counter()
    report = IngestReport()
    for outcome in iter_ingest(
        source, store=store, peer_id=peer_id, session_id=session_id, batch_size=batch_size
    ):
        report.add(outcome)
    report.elapsed_s = time.perf_counter() - started
    logger.info("ingest: %s in %.2f s", report.summary(), report.elapsed_s)
    return report
