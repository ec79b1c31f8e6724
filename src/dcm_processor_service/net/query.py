"""Query a peer for a patient's studies and series: :func:`find_studies`,
:func:`find_series`, and :func:`find_priors` (the earlier comparable studies of the
patient a job's series belongs to).

One API for both kinds of peer: a peer with a DICOMweb endpoint is asked by QIDO-RS,
any other (or ``protocol="dimse"``) by C-FIND (Study Root). ``peer`` is a peer name or
id, a :class:`~dcm_processor_service.store.Peer`, or ``None`` for the session's peer
(``DCM-PROCESSOR-SERVICE-PEER-ID``). Matches come back as :class:`StudyMatch` /
:class:`SeriesMatch`; retrieve them with :func:`~dcm_processor_service.retrieve_study`
or :func:`~dcm_processor_service.retrieve_series`.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from pydicom.dataset import Dataset

from .._context import current_context
from .._errors import InvalidInputError, NotFoundError
from .._runtime import store_for
from ..store.base import Store
from ..store.records import Peer
from .dicomweb.auth import open_client
from .dicomweb.qido_wado import qido
from .options import default_calling_ae_title
from .protocol import use_dicomweb
from .qr_dimse import c_find

__all__ = [
    "PeerLike",
    "SeriesMatch",
    "StudyMatch",
    "find_priors",
    "find_series",
    "find_studies",
    "resolve_peer",
]

logger = logging.getLogger(__name__)

#: How to talk to a peer: ``None`` = DICOMweb when the peer has an endpoint, else DIMSE.

PeerLike = str | Peer | None

_STUDY_KEYS: Final = (
    "PatientID",
    "PatientName",
    "PatientBirthDate",
    "StudyInstanceUID",
    "StudyDate",
    "StudyTime",
    "StudyDescription",
    "AccessionNumber",
    "ModalitiesInStudy",
)
_SERIES_KEYS: Final = (
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "Modality",
    "SeriesNumber",
    "SeriesDescription",
    "NumberOfSeriesRelatedInstances",
)


def _text(ds: Dataset, keyword: str) -> str | None:
    value = ds.get(keyword)
    if value is None or value == "":
        return None
    return str(value)


@dataclass(frozen=True)
class StudyMatch:
    """A study the peer has: its identifying values, and ``identifier`` (everything
    the peer answered)."""

    study_instance_uid: str
    patient_id: str | None
    patient_name: str | None
    patient_birth_date: str | None
    study_date: str | None
    study_time: str | None
    study_description: str | None
    accession_number: str | None
    modalities: tuple[str, ...]
    peer: str
    identifier: Dataset = field(repr=False, compare=False)

    @classmethod
    def from_dataset(cls, ds: Dataset, peer: str) -> StudyMatch:
        """Build from a C-FIND / QIDO-RS answer."""
        modalities = ds.get("ModalitiesInStudy") or []
        if isinstance(modalities, str):
            modalities = [modalities]
        return cls(
            study_instance_uid=str(ds.StudyInstanceUID),
            patient_id=_text(ds, "PatientID"),
            patient_name=_text(ds, "PatientName"),
            patient_birth_date=_text(ds, "PatientBirthDate"),
            study_date=_text(ds, "StudyDate"),
            study_time=_text(ds, "StudyTime"),
            study_description=_text(ds, "StudyDescription"),
            accession_number=_text(ds, "AccessionNumber"),
            modalities=tuple(str(m) for m in modalities if m),
            peer=peer,
            identifier=ds,
        )


@dataclass(frozen=True)
class SeriesMatch:
    """A series the peer has."""

    study_instance_uid: str
    series_instance_uid: str
    modality: str | None
    series_number: int | None
    series_description: str | None
    number_of_instances: int | None
    peer: str
    identifier: Dataset = field(repr=False, compare=False)

    @classmethod
    def from_dataset(cls, ds: Dataset, peer: str, study_uid: str) -> SeriesMatch:
        """Build from a C-FIND / QIDO-RS answer."""

        def number(keyword: str) -> int | None:
            value = ds.get(keyword)
            try:
                return int(value) if value not in (None, "") else None
            except (TypeError, ValueError):
                return None

        return cls(
            study_instance_uid=_text(ds, "StudyInstanceUID") or study_uid,
            series_instance_uid=str(ds.SeriesInstanceUID),
            modality=_text(ds, "Modality"),
            series_number=number("SeriesNumber"),
            series_description=_text(ds, "SeriesDescription"),
            number_of_instances=number("NumberOfSeriesRelatedInstances"),
            peer=peer,
            identifier=ds,
        )


# -- peers ---------------------------------------------------------------------------
def resolve_peer(peer: PeerLike, store: Store | None = None) -> Peer:
    """The peer record for ``peer`` (a name or id, a :class:`Peer`, or ``None`` for the
    session's peer); :class:`NotFoundError` when the session has none."""
    if isinstance(peer, Peer):
        return peer
    if peer is not None and not isinstance(peer, str):
        raise InvalidInputError(f"invalid 'peer' value {peer!r} - give a peer name or a Peer")
    name = peer if peer is not None else current_context().peer_id
    if name is None:
        raise NotFoundError(
            "no peer given and the session has no peer (DCM-PROCESSOR-SERVICE-PEER-ID is "
            "unset) - pass peer='NAME'"
        )
    return (store if store is not None else store_for()).get_peer(name)


# -- values ------------------------------------------------------------------------------
def _da(value: object, what: str) -> str:
    if isinstance(value, dt.datetime):
        return value.strftime("%Y%m%d")
    if isinstance(value, dt.date):
        return value.strftime("%Y%m%d")
    if isinstance(value, str):
        text = value.replace("-", "") if len(value) == 10 else value
        try:
            dt.datetime.strptime(text, "%Y%m%d")
        except ValueError:
            pass
        else:
            return text
    raise InvalidInputError(
        f"invalid {what!r} value {value!r} - give a date, or 'YYYYMMDD' / 'YYYY-MM-DD'"
    )


def _date_range(date_from: object, date_to: object) -> str | None:
    if date_from is None and date_to is None:
        return None
    start = "" if date_from is None else _da(date_from, "date_from")
    end = "" if date_to is None else _da(date_to, "date_to")
    if start and end and start > end:
        raise InvalidInputError(
            f"invalid date range {start}-{end} - 'date_from' is after 'date_to'"
        )
    return start if start == end else f"{start}-{end}"


def _check_value(value: object, what: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise InvalidInputError(f"invalid {what!r} value {value!r} - must be a non-empty string")
    return value.strip()


# -- studies and series ----------------------------------------------------------------------
def _search(
    peer: Peer,
    protocol: str | None,
    level: str,
    keys: tuple[str, ...],
    filters: dict[str, str],
    calling_ae_title: str | None,
    study_uid: str | None = None,
) -> list[Dataset]:
    if use_dicomweb(peer, protocol):
        assert peer.dicomweb is not None
        path = "/studies" if level == "STUDY" else f"/studies/{study_uid}/series"
        params = dict(filters)
        params["includefield"] = ",".join(k for k in keys if k not in filters)
        with open_client(peer.dicomweb) as client:
            return qido(client, peer.name, path, params)
    identifier = Dataset()
    identifier.QueryRetrieveLevel = level
    for key in keys:
        setattr(identifier, key, filters.get(key, ""))
    if study_uid:
        identifier.StudyInstanceUID = study_uid
    aet = calling_ae_title or default_calling_ae_title()
    return c_find(peer, identifier, aet)


def find_studies(
    peer: PeerLike = None,
    *,
    patient_id: str | None = None,
    modality: str | None = None,
    date_from: dt.date | str | None = None,
    date_to: dt.date | str | None = None,
    study_instance_uid: str | None = None,
    accession_number: str | None = None,
    protocol: str | None = None,
    calling_ae_title: str | None = None,
    store: Store | None = None,
) -> list[StudyMatch]:
    """The studies on ``peer`` matching every filter given, oldest first.

    ``patient_id`` matches exactly (a study whose answered PatientID differs - a
    wildcard in the ID, a peer doing fuzzy matching - is dropped); ``modality`` is one
    of the study's modalities; ``date_from``/``date_to`` bound the StudyDate (either may
    be open). At least one filter is required (an unfiltered query would list the whole
    archive).
    """
    filters: dict[str, str] = {}
    for key, value, what in (
        ("PatientID", patient_id, "patient_id"),
        ("ModalitiesInStudy", modality, "modality"),
        ("StudyInstanceUID", study_instance_uid, "study_instance_uid"),
        ("AccessionNumber", accession_number, "accession_number"),
    ):
        checked = _check_value(value, what)
        if checked is not None:
            filters[key] = checked
    dates = _date_range(date_from, date_to)
    if dates is not None:
        filters["StudyDate"] = dates
    if not filters:
        raise InvalidInputError(
            "find_studies needs at least one filter (patient_id, modality, date range, "
            "study_instance_uid or accession_number)"
        )
    record = resolve_peer(peer, store)
    found = _search(record, protocol, "STUDY", _STUDY_KEYS, filters, calling_ae_title)
    matches = [
        StudyMatch.from_dataset(ds, record.name) for ds in found if ds.get("StudyInstanceUID")
    ]
    if patient_id is not None:
        dropped = [m for m in matches if m.patient_id != filters["PatientID"]]
        if dropped:
            logger.warning(
                "dropped %d study match(es) from %s whose Patient ID is not exactly %r",
                len(dropped),
                record.name,
                filters["PatientID"],
            )
        matches = [m for m in matches if m.patient_id == filters["PatientID"]]
    if modality is not None:
        matches = [
            m for m in matches if not m.modalities or filters["ModalitiesInStudy"] in m.modalities
        ]
    return sorted(matches, key=lambda m: (m.study_date or "", m.study_time or ""))


def find_series(
    study_instance_uid: str,
    peer: PeerLike = None,
    *,
    modality: str | None = None,
    protocol: str | None = None,
    calling_ae_title: str | None = None,
    store: Store | None = None,
) -> list[SeriesMatch]:
    """The series of a study on ``peer`` (of ``modality`` when given), by series number."""
    study = _check_value(study_instance_uid, "study_instance_uid")
    assert study is not None
    filters: dict[str, str] = {}
    wanted = _check_value(modality, "modality")
    if wanted is not None:
        filters["Modality"] = wanted
    record = resolve_peer(peer, store)
    found = _search(record, protocol, "SERIES", _SERIES_KEYS, filters, calling_ae_title, study)
    matches = [
        SeriesMatch.from_dataset(ds, record.name, study)
        for ds in found
        if ds.get("SeriesInstanceUID")
    ]
    matches = [m for m in matches if m.study_instance_uid == study]
    if wanted is not None:
        matches = [m for m in matches if m.modality == wanted]
    return sorted(matches, key=lambda m: (m.series_number is None, m.series_number or 0))


# -- priors ------------------------------------------------------------------------------
def _header_values(headers: Mapping[str, Any] | Dataset) -> dict[str, str | None]:
    if isinstance(headers, Dataset):
        source: Mapping[str, Any] = {
            k: headers.get(k)
            for k in (
                "PatientID",
                "PatientBirthDate",
                "StudyInstanceUID",
                "StudyDate",
                "StudyTime",
                "Modality",
            )
        }
    elif isinstance(headers, Mapping):
        meta = headers.get("Metadata")
        source = {
            **(meta if isinstance(meta, Mapping) else {}),
            **{k: v for k, v in headers.items() if k != "Metadata"},
        }
    else:
        raise InvalidInputError(
            f"invalid 'headers' {type(headers).__name__} - give the job's headers (a series "
            "record), a dict of DICOM keywords, or a pydicom Dataset"
        )
    return {k: (str(v) if v not in (None, "") else None) for k, v in source.items()}


def find_priors(
    headers: Mapping[str, Any] | Dataset,
    peer: PeerLike = None,
    *,
    modality: str | None = None,
    limit: int | None = 1,
    protocol: str | None = None,
    calling_ae_title: str | None = None,
    store: Store | None = None,
) -> list[StudyMatch]:
    """The patient's earlier comparable studies on ``peer``, most recent first
    (``limit`` of them; ``None``: all). ``priors[0]`` is *the* prior.

    ``headers``: what the job got (a series record), or a dataset / dict of keywords
    with ``PatientID``, ``StudyInstanceUID`` and ``StudyDate`` (``StudyTime`` and
    ``Modality`` used when present). Comparable: a study holding ``modality`` (default:
    the series' Modality). Earlier: StudyDate (and StudyTime) before the current study's;
    the current study itself never counts. Patient safety: the Patient ID must match
    exactly, and a study whose Patient's Birth Date differs from the current one is left
    out (with a warning) - a reused or mistyped ID.
    """
    values = _header_values(headers)
    missing = [k for k in ("PatientID", "StudyInstanceUID", "StudyDate") if not values.get(k)]
    if missing:
        raise InvalidInputError(f"cannot look for priors: the headers have no {', '.join(missing)}")
    if limit is not None and (not isinstance(limit, int) or limit < 1):
        raise InvalidInputError(f"invalid 'limit' value {limit!r} - a positive int or None")
    wanted = modality or values.get("Modality")
    current = (values["StudyDate"] or "", values.get("StudyTime") or "")
    studies = find_studies(
        peer,
        patient_id=values["PatientID"],
        modality=wanted,
        date_to=values["StudyDate"],
        protocol=protocol,
        calling_ae_title=calling_ae_title,
        store=store,
    )
    birth = values.get("PatientBirthDate")
    priors = []
    for match in studies:
        if match.study_instance_uid == values["StudyInstanceUID"]:
            continue
        if (match.study_date or "", match.study_time or "") >= current:
            continue
        if birth and match.patient_birth_date and match.patient_birth_date != birth:
            logger.warning(
                "left out study %s: Patient ID %s but birth date %s, not %s",
                match.study_instance_uid,
                match.patient_id,
                match.patient_birth_date,
                birth,
            )
            continue
        priors.append(match)
    priors.reverse()  # most recent first
    return priors if limit is None else priors[:limit]
