"""Series access: the session's DICOM as datasets or files, and the index records.

:func:`get_series_dicom` is the platform's compatible call (SPEC §2.6)::

    from dcm_processor_service import get_series_dicom

    datasets = get_series_dicom(headers["_id"])              # pydicom datasets
    paths = get_series_dicom(headers["_id"], "/tmp/series")  # files written there

Both come in **slice order** - the one rule of :mod:`~dcm_processor_service.index.order`
(by position along the slice normal, then InstanceNumber, then SOPInstanceUID; series
whose slices are not parallel, and instances without geometry, by InstanceNumber), the
order of the series record's ``Instances`` too. Files are named so that sorting their
names gives the same order (``0001_<SOPInstanceUID>.dcm``), and hold the stored bytes
unchanged (no decode/re-encode), verified against their sha256.

The other functions are thin typed wrappers over the store's index (SPEC §4 records):
:func:`get_series`, :func:`list_series`, :func:`session_series`, :func:`get_study`,
:func:`list_studies`, :func:`get_patient`, :func:`list_patients`, :func:`get_instance`,
:func:`list_instances`, :func:`get_instance_dicom`. Each accepts a record ``_id`` or the
DICOM UID (SeriesInstanceUID, StudyInstanceUID, PatientUID, SOPInstanceUID), and uses the
job's store from the runtime context unless ``store=`` is given.
"""

from __future__ import annotations

import io
import logging
import os
import re
import warnings
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import overload

from pydicom import dcmread
from pydicom.dataset import Dataset

from .._atomic_file import atomic_write
from .._context import current_context
from .._errors import InvalidInputError, NotFoundError
from .._runtime import store_for
from ..store.base import CHUNK_SIZE, Store
from ..store.instance_read import StoredBytes
from ..store.records import InstanceRecord, PatientRecord, SeriesRecord, StudyRecord

__all__ = [
    "get_instance",
    "get_instance_dicom",
    "get_patient",
    "get_series",
    "get_series_dicom",
    "get_study",
    "list_instances",
    "list_patients",
    "list_series",
    "list_studies",
    "read_header",
    "session_series",
]

logger = logging.getLogger(__name__)


def _store(store: Store | None) -> Store:
    return store if store is not None else store_for()


def _check_key(value: object, what: str) -> str:
    # a platform job's headers carry record ids as ObjectIds (the worker decodes its
    # arguments with bson's json_util) or, decoded as plain JSON, as {"$oid": "..."}
    if isinstance(value, dict) and set(value) == {"$oid"}:
        value = value["$oid"]
    elif type(value).__name__ == "ObjectId":
        value = str(value)
    if not isinstance(value, str) or not value.strip():
        raise InvalidInputError(
            f"invalid {what} {value!r} - must be a non-empty str (record _id or UID)"
        )
    return value


# ----------------------------------------------------------------- instances
def list_instances(series_id: str, *, store: Store | None = None) -> list[InstanceRecord]:
    """The instance records of a series (``_id`` or SeriesInstanceUID) in slice order
    (every store lists them so: :mod:`~dcm_processor_service.index.order`);
    :class:`NotFoundError` for an unknown series."""
    series_id = _check_key(series_id, "series id")
    return _store(store).list_instances(series_id)


def get_instance(instance_id: str, *, store: Store | None = None) -> InstanceRecord:
    """An instance record by ``_id`` or SOPInstanceUID."""
    instance_id = _check_key(instance_id, "instance id")
    return _store(store).get_instance(instance_id)


def _read_instance(store: Store, record: InstanceRecord) -> StoredBytes:
    """The stored bytes of an instance (not verified yet: see
    :meth:`StoredBytes.verify`); re-reads the record once when the instance was
    replaced (or removed and filed again) between listing and reading."""
    for attempt in range(2):
        try:
            return store.read_instance(record)
        except NotFoundError:
            if attempt:
                raise
            record = store.get_instance(record["SOPInstanceUID"])
    raise AssertionError("unreachable")  # pragma: no cover


def _check(stored: StoredBytes) -> None:
    """Verify ``stored`` (in the helper thread), keeping nothing of it."""
    stored.verify()


def _decode(stored: StoredBytes, check: Future[None] | None) -> Dataset:
    """``stored`` as a pydicom dataset (``check``: its verification running in a helper
    thread). Bytes that do not decode are reported as the damage they are when their
    checksum fails too (:class:`IntegrityError` naming the instance), else as pydicom's
    error."""
    try:
        dataset = dcmread(io.BytesIO(stored.data))
    except Exception:
        if check is not None:
            check.result()  # raises IntegrityError for damaged bytes
        else:
            stored.verify()
        raise
    # like a dataset read from a file: it does not hold on to the bytes it was decoded
    # from (a copy of everything it holds - the list of a series would take twice the
    # memory, and allocating that much more costs more than decoding)
    dataset.buffer = None
    return dataset


def _read_datasets(store: Store, records: list[InstanceRecord]) -> list[Dataset]:
    """Each of ``records`` as a verified pydicom dataset, in order.

    Each instance is read whole (one ``read`` of its blob file), its sha256 is checked
    in a helper thread while this thread decodes it (``hashlib`` releases the GIL on
    large buffers, so on two cores the check costs little wall time), and the datasets
    are returned only once every check passed. This thread does the system calls, which
    release the GIL often; the helper holds it only to start and finish a hash."""
    if len(records) < 2:
        return [_decode(stored, None) for stored in (_read_instance(store, r) for r in records)]
    datasets: list[Dataset] = []
    checks: list[Future[None]] = []
    with ThreadPoolExecutor(1, thread_name_prefix="dcm-sha256") as hasher:
        try:
            for record in records:
                stored = _read_instance(store, record)
                check = None if stored.verified else hasher.submit(_check, stored)
                datasets.append(_decode(stored, check))
                if check is not None:
                    checks.append(check)
            for check in checks:
                check.result()
        finally:
            for check in checks:
                check.cancel()
    return datasets


def read_header(store: Store, record: InstanceRecord, *, first_read: int = 64 * 1024) -> Dataset:
    """The header of a stored instance (everything before its pixel data), reading only
    as many bytes as that needs (the store's reader does not seek, so the bytes are read
    in growing blocks until pydicom stops before the pixel data or the file ends).

    The bytes read are not checksum-verified (that happens at the end of a file); use
    :func:`get_instance_dicom` for a verified, complete dataset.
    """
    with store.open_instance(record) as reader:
        data = bytearray()
        want = first_read
        while True:
            chunk = reader.read(want - len(data))
            data += chunk
            at_end = not chunk or len(data) < want
            buffer = io.BytesIO(bytes(data))
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    header = dcmread(buffer, stop_before_pixels=True)
                if at_end or buffer.tell() < len(data):
                    return header  # stopped before the pixel data, or read it all
            except Exception:
                if at_end:
                    raise
            want *= 4


def get_instance_dicom(instance_id: str, *, store: Store | None = None) -> Dataset:
    """One instance (``_id`` or SOPInstanceUID) as a pydicom dataset."""
    s = _store(store)
    stored = _read_instance(s, get_instance(instance_id, store=s))
    stored.verify()
    return _decode(stored, None)


# -------------------------------------------------------------------- series
_UNSAFE = re.compile(r"[^0-9A-Za-z._-]")


def _write_instance(store: Store, record: InstanceRecord, target: Path) -> None:
    """Stream an instance's stored bytes to ``target`` atomically (temporary file +
    rename)."""
    for attempt in range(2):
        try:
            with store.open_instance(record) as reader, atomic_write(target) as out:
                while chunk := reader.read(CHUNK_SIZE):
                    out.write(chunk)
            return
        except NotFoundError:
            if attempt:
                raise
            record = store.get_instance(record["SOPInstanceUID"])


@overload
def get_series_dicom(
    series_id: str, dir_path: None = None, *, store: Store | None = None
) -> list[Dataset]: ...


@overload
def get_series_dicom(
    series_id: str, dir_path: str | os.PathLike[str], *, store: Store | None = None
) -> list[str]: ...


def get_series_dicom(
    series_id: str,
    dir_path: str | os.PathLike[str] | None = None,
    *,
    store: Store | None = None,
) -> list[Dataset] | list[str]:
    """The instances of a series, in slice order (:mod:`~dcm_processor_service.index.order`).

    ``series_id``: the series record ``_id`` (what ``headers["_id"]`` holds) or its
    SeriesInstanceUID. Without ``dir_path``: a list of pydicom datasets (pixel data
    included). With ``dir_path``: the files are written there (the folder is created if
    needed; files of the same names are replaced) as ``NNNN_<SOPInstanceUID>.dcm``, byte
    for byte as stored, and their paths are returned in order.

    Raises :class:`NotFoundError` naming the series when it is not in the store, and
    :class:`IntegrityError` when stored bytes do not match their checksum.
    """
    s = _store(store)
    records = list_instances(series_id, store=s)
    if dir_path is None:
        return _read_datasets(s, records)
    target = Path(dir_path)
    if target.exists() and not target.is_dir():
        raise InvalidInputError(f"invalid 'dir_path' {str(target)!r} - it is a file, not a folder")
    target.mkdir(parents=True, exist_ok=True)
    width = max(4, len(str(len(records))))
    paths = []
    for number, record in enumerate(records, start=1):
        path = target / f"{number:0{width}d}_{_UNSAFE.sub('_', record['SOPInstanceUID'])}.dcm"
        _write_instance(s, record, path)
        paths.append(str(path))
    logger.debug("wrote %d instance(s) of series %s to %s", len(paths), series_id, target)
    return paths


def get_series(series_id: str, *, store: Store | None = None) -> SeriesRecord:
    """The series record by ``_id`` or SeriesInstanceUID; :class:`NotFoundError` naming it."""
    series_id = _check_key(series_id, "series id")
    return _store(store).get_series(series_id)


def list_series(
    *,
    study_id: str | None = None,
    patient_id: str | None = None,
    session_id: str | None = None,
    store: Store | None = None,
) -> list[SeriesRecord]:
    """Series records, filtered by study (``_id`` or StudyInstanceUID), patient (``_id``
    or PatientUID) and/or the session whose ingest filed them. No filter: every series."""
    return _store(store).list_series(
        study_id=study_id, patient_id=patient_id, session_id=session_id
    )


def session_series(
    session_id: str | None = None, *, store: Store | None = None
) -> list[SeriesRecord]:
    """The series of a session (default: the current job's session from the runtime
    context, ``DCM-PROCESSOR-SERVICE-SESSION-ID``)."""
    sid = session_id if session_id is not None else current_context().require("session_id")
    return list_series(session_id=sid, store=store)


# ------------------------------------------------------------ study, patient
def get_study(study_id: str, *, store: Store | None = None) -> StudyRecord:
    """The study record by ``_id`` or StudyInstanceUID."""
    study_id = _check_key(study_id, "study id")
    return _store(store).get_study(study_id)


def list_studies(
    *, patient_id: str | None = None, session_id: str | None = None, store: Store | None = None
) -> list[StudyRecord]:
    """Study records, filtered by patient and/or session."""
    return _store(store).list_studies(patient_id=patient_id, session_id=session_id)


def get_patient(patient_id: str, *, store: Store | None = None) -> PatientRecord:
    """The patient record by ``_id`` or PatientUID."""
    patient_id = _check_key(patient_id, "patient id")
    return _store(store).get_patient(patient_id)


def list_patients(
    *, session_id: str | None = None, store: Store | None = None
) -> list[PatientRecord]:
    """Patient records, filtered by session."""
    return _store(store).list_patients(session_id=session_id)
