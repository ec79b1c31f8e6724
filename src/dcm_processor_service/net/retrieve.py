"""Retrieve a study or series from a peer into the job's session:
:func:`retrieve_series`, :func:`retrieve_study`.

The instances are fetched into a private temporary folder - by WADO-RS from a DICOMweb
peer, by C-GET (or, with ``method="move"``, C-MOVE to ourselves) from a DIMSE peer -
and then go through :func:`~dcm_processor_service.ingest` like any other input, with the
session and the peer recorded. So the patient-safety rules of the ingest hold (an
instance that would merge two patients is refused, bad files are reported), and
:func:`~dcm_processor_service.get_series_dicom` / ``get_series_nifti`` work on the
retrieved series as on the triggering one (``report.series_ids`` are their record ids).

An instance the peer sent that does not belong to what was asked for (another study or
series) is not filed: it is a failure of the report, naming both UIDs.
"""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path

from pydicom import dcmread
from pydicom.errors import InvalidDicomError

from .._context import current_context
from .._errors import InvalidInputError, NotFoundError
from .._runtime import store_for
from ..index.ingest import IngestFailure, IngestReport, ingest
from ..store.base import Store
from ..store.records import Peer
from .dicomweb.auth import open_client
from .dicomweb.qido_wado import wado
from .options import default_calling_ae_title
from .protocol import use_dicomweb
from .qr_dimse import c_get, c_move
from .query import PeerLike, resolve_peer

__all__ = ["METHODS", "retrieve_series", "retrieve_study"]

logger = logging.getLogger(__name__)

#: DIMSE retrieval methods.
METHODS = ("get", "move")


def _fetch(
    peer: Peer,
    study_uid: str,
    series_uid: str | None,
    folder: Path,
    *,
    protocol: str | None,
    method: str,
    move_port: int | None,
    calling_ae_title: str | None,
) -> list[Path]:
    if use_dicomweb(peer, protocol):
        assert peer.dicomweb is not None
        path = f"/studies/{study_uid}" + (f"/series/{series_uid}" if series_uid else "")
        with open_client(peer.dicomweb) as client:
            return wado(client, peer.name, path, folder)
    aet = calling_ae_title or default_calling_ae_title()
    if method == "move":
        if move_port is None:
            raise InvalidInputError(
                "method='move' needs 'move_port': the port the peer sends to (it must know "
                f"our AE title {aet!r} at this host and port)"
            )
        return c_move(peer, study_uid, series_uid, folder, aet, move_port)
    return c_get(peer, study_uid, series_uid, folder, aet)


def _belongs(path: Path, study_uid: str, series_uid: str | None) -> str | None:
    """Why ``path`` is not part of what was asked for (None when it is)."""
    try:
        ds = dcmread(
            path, stop_before_pixels=True, specific_tags=["StudyInstanceUID", "SeriesInstanceUID"]
        )
    except (InvalidDicomError, OSError, ValueError):
        return None  # not readable: the ingest reports it as a failure
    if str(ds.get("StudyInstanceUID", "")) != study_uid:
        return (
            f"the peer sent an instance of study {ds.get('StudyInstanceUID')} when study "
            f"{study_uid} was asked for - not filed"
        )
    if series_uid is not None and str(ds.get("SeriesInstanceUID", "")) != series_uid:
        return (
            f"the peer sent an instance of series {ds.get('SeriesInstanceUID')} when series "
            f"{series_uid} was asked for - not filed"
        )
    return None


def _retrieve(
    study_uid: object,
    series_uid: object,
    peer: PeerLike,
    *,
    protocol: str | None,
    method: str,
    move_port: int | None,
    session_id: str | None,
    calling_ae_title: str | None,
    store: Store | None,
) -> IngestReport:
    for value, what in ((study_uid, "study_instance_uid"), (series_uid, "series_instance_uid")):
        if (value is not None or what == "study_instance_uid") and (
            not isinstance(value, str) or not value.strip()
        ):
            raise InvalidInputError(f"invalid {what!r} value {value!r} - must be a UID string")
    if method not in METHODS:
        raise InvalidInputError(f"invalid 'method' value {method!r} - must be 'get' or 'move'")
    assert isinstance(study_uid, str)
    study_uid = study_uid.strip()
    series = series_uid.strip() if isinstance(series_uid, str) else None
    target = store if store is not None else store_for()
    record = resolve_peer(peer, target)
    sid = session_id if session_id is not None else current_context().session_id
    what = f"series {series}" if series else f"study {study_uid}"
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="dcm-retrieve-") as tmp:
        folder = Path(tmp)
        paths = _fetch(
            record,
            study_uid,
            series,
            folder,
            protocol=protocol,
            method=method,
            move_port=move_port,
            calling_ae_title=calling_ae_title,
        )
        fetched_s = time.perf_counter() - t0
        if not paths:
            raise NotFoundError(f"peer {record.name} has no {what} (nothing was retrieved)")
        good: list[Path] = []
        foreign: list[IngestFailure] = []
        for path in paths:
            reason = _belongs(path, study_uid, series)
            if reason is None:
                good.append(path)
            else:
                logger.warning("retrieve of %s from %s: %s", what, record.name, reason)
                foreign.append(IngestFailure(f"{record.name}:{path.name}", reason))
        report = (
            ingest(good, store=target, peer_id=record.id, session_id=sid)
            if good
            else IngestReport()
        )
    report.failed.extend(foreign)
    report.elapsed_s = time.perf_counter() - t0
    logger.info(
        "retrieved %s from %s: %d instance(s) fetched in %.2f s; %s",
        what,
        record.name,
        len(paths),
        fetched_s,
        report.summary(),
    )
    return report


def retrieve_series(
    study_instance_uid: str,
    series_instance_uid: str,
    peer: PeerLike = None,
    *,
    protocol: str | None = None,
    method: str = "get",
    move_port: int | None = None,
    session_id: str | None = None,
    calling_ae_title: str | None = None,
    store: Store | None = None,
) -> IngestReport:
    """Fetch one series from ``peer`` and file it in the store under the session
    (default: the job's session); return the :class:`IngestReport` (its ``series_ids``
    are what :func:`get_series_dicom` takes).

    ``protocol``: ``None`` (DICOMweb when the peer has an endpoint, else DIMSE),
    ``"dicomweb"`` or ``"dimse"``. ``method`` (DIMSE): ``"get"`` (C-GET, default) or
    ``"move"`` (C-MOVE to ourselves: a storage SCP on ``move_port`` with our calling AE
    title, which the peer must know). Network failures raise the package's
    :class:`NetworkError` family; a study or series the peer does not have raises
    :class:`NotFoundError`; per-instance problems are the report's failures.
    """
    return _retrieve(
        study_instance_uid,
        series_instance_uid,
        peer,
        protocol=protocol,
        method=method,
        move_port=move_port,
        session_id=session_id,
        calling_ae_title=calling_ae_title,
        store=store,
    )


def retrieve_study(
    study_instance_uid: str,
    peer: PeerLike = None,
    *,
    protocol: str | None = None,
    method: str = "get",
    move_port: int | None = None,
    session_id: str | None = None,
    calling_ae_title: str | None = None,
    store: Store | None = None,
) -> IngestReport:
    """Fetch a whole study from ``peer`` into the session (see :func:`retrieve_series`)."""
    return _retrieve(
        study_instance_uid,
        None,
        peer,
        protocol=protocol,
        method=method,
        move_port=move_port,
        session_id=session_id,
        calling_ae_title=calling_ae_title,
        store=store,
    )
