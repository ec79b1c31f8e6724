"""The platform's MongoDB layout: names, id and value conventions, and the indexes.

Everything the dcm-processor platform reads keeps the platform's own name and type
(``docs/storage.md`` has the field-by-field table). What only this package needs lives in
one sub-document per document, :data:`EXTRA` (``dcmProcessorService``), which the
platform never reads: session status and meta, job status and progress, the sha256 of a
GridFS file (with the ``length`` and ``uploadDate`` it describes, so a later rewrite by
the platform makes it *stale*, not wrong), and ``origin`` on documents this package
created (only those may it delete on its own initiative).

Indexes (:func:`index_plan`): on a platform database (layout ``platform``) this package
creates only non-unique indexes, which no write can violate; layout ``exclusive`` adds
unique indexes on the platform's keys for a database nobody else writes to. Unique
indexes that dcm-processor-service 0.1 created on a platform database block the
platform's own writes (its documents lack those fields, so they all index as null);
they are dropped. Nothing else is ever dropped, and no document is changed.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Final

from bson import ObjectId

from ..._errors import InvalidInputError
from ..records import utcnow
from .url import EXCLUSIVE

__all__ = [
    "BUCKETS",
    "COLLECTIONS",
    "EXTRA",
    "ORIGIN",
    "RECORD_CHILDREN",
    "RECORD_ORDER",
    "SCHEMA_VERSION",
    "IndexSpec",
    "all_id_values",
    "extra_of",
    "index_plan",
    "stored",
]

#: The platform's collections (SPEC §3).
COLLECTIONS: Final = ("sessions", "jobs", "sessiondata", "peers", "series", "studies", "patients")
#: The platform's GridFS buckets (SPEC §3).
BUCKETS: Final = ("sessionfiles", "dicomfiles")
#: Version of the layout this module reads and writes (reported by ``migrate()``).
SCHEMA_VERSION: Final = 2
#: The sub-document holding what only this package reads.
EXTRA: Final = "dcmProcessorService"
#: ``EXTRA.origin`` of the documents this package created.
ORIGIN: Final = "dcm-processor-service"

#: record collection -> (its list of child ids, its modality list in ``Metadata``)
RECORD_CHILDREN: Final[dict[str, tuple[str, str | None]]] = {
    "series": ("Instances", None),
    "studies": ("Series", "ModalitiesInStudy"),
    "patients": ("Studies", "ModalitiesInPatient"),
}
#: the order records are listed (and the first of duplicates found) in
RECORD_ORDER: Final = [("CreatedAt", 1), ("_id", 1)]

_INT64: Final = (-(2**63), 2**63 - 1)


def stored(doc: dict[str, Any], key: str) -> Any:
    """``doc[key]`` as stored, ``None`` when the document lacks it (a document another
    component wrote may lack what this package's records promise)."""
    return doc.get(key)


def extra_of(doc: dict[str, Any] | None) -> dict[str, Any]:
    """The :data:`EXTRA` sub-document of ``doc`` (``{}`` when it has none, as the
    documents the platform wrote)."""
    value = (doc or {}).get(EXTRA)
    return value if isinstance(value, dict) else {}


# ------------------------------------------------------------------------ ids
def oid(value: Any) -> Any:
    """The ``_id`` (or id field) value for an id given as text: an ObjectId when it is 24
    hex digits (what the platform writes), else the text itself."""
    if isinstance(value, str) and len(value) == 24 and ObjectId.is_valid(value):
        return ObjectId(value)
    return value


def id_values(value: Any) -> list[Any]:
    """Every form an id may be stored in: the text, and the ObjectId when it is one."""
    text = str(value)
    values: list[Any] = [text]
    if len(text) == 24 and ObjectId.is_valid(text):
        values.append(ObjectId(text))
    return values


def all_id_values(values: Iterable[Any]) -> list[Any]:
    """:func:`id_values` of each of ``values`` (record ids listed as text), to query."""
    out: list[Any] = []
    for value in values:
        out.extend(id_values(value))
    return out


# ----------------------------------------------------------------------- time
def ms(value: datetime) -> datetime:
    """``value`` at BSON (millisecond) precision, so it reads back unchanged."""
    return value.replace(microsecond=value.microsecond // 1000 * 1000)


def now() -> datetime:
    """UTC now at BSON (millisecond) precision."""
    return ms(utcnow())


def aware(value: Any) -> datetime | None:
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


def to_bson_time(value: Any, field: str) -> datetime | None:
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
    stamp = aware(value)
    assert stamp is not None
    return ms(stamp)


def iso(value: Any) -> str | None:
    """A stored timestamp as ISO-8601 text (what the SQL providers return in records)."""
    stamp = aware(value)
    return stamp.isoformat() if stamp else None


# ---------------------------------------------------------------------- values
def bson_problem(value: Any, path: str = "value") -> str | None:
    """Why a JSON value cannot be stored natively as BSON, or ``None`` when it can."""
    if isinstance(value, bool) or value is None or isinstance(value, (float, str)):
        return None
    if isinstance(value, int):
        return None if _INT64[0] <= value <= _INT64[1] else f"{path} is an integer beyond 64 bits"
    if isinstance(value, list):
        for i, item in enumerate(value):
            problem = bson_problem(item, f"{path}[{i}]")
            if problem:
                return problem
        return None
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                return f"{path} has a non-text key {key!r}"
            if key.startswith("$") or "\x00" in key:
                return f"{path} has the key {key!r} (starts with '$' or contains NUL)"
            problem = bson_problem(item, f"{path}.{key}")
            if problem:
                return problem
        return None
    return f"{path} is a {type(value).__name__}"


def plain(value: Any, what: str) -> Any:
    """``value`` as plain JSON data storable as BSON (the SQL providers keep the same
    data as JSON text, so both read back alike)."""
    data = json.loads(json.dumps(value, default=str))
    problem = bson_problem(data)
    if problem:
        raise InvalidInputError(f"{what} cannot be stored in MongoDB: {problem}")
    return data


def dump_json(value: Any) -> str:
    """Compact JSON text of a stored value (ObjectIds and dates as text)."""
    return json.dumps(value, separators=(",", ":"), default=str)


# --------------------------------------------------------------------- indexes
@dataclass(frozen=True)
class IndexSpec:
    """One index: collection, keys (ascending), unique or not, and why it exists."""

    collection: str
    keys: tuple[str, ...]
    unique: bool = False
    why: str = ""

    @property
    def key_list(self) -> list[tuple[str, int]]:
        return [(k, 1) for k in self.keys]


_GRIDFS_INDEXES: Final = tuple(
    spec
    for bucket in BUCKETS
    for spec in (
        IndexSpec(f"{bucket}.files", ("filename", "uploadDate"), why="GridFS standard index"),
        IndexSpec(f"{bucket}.chunks", ("files_id", "n"), True, "GridFS standard index"),
    )
)

#: Non-unique indexes for the lookups of this package (safe on a platform database).
PLATFORM_INDEXES: Final = (
    *_GRIDFS_INDEXES,
    IndexSpec("jobs", ("sessionId", "job_name", "job_event"), why="jobs of a session by name"),
    IndexSpec("sessiondata", ("session_id", "job_id", "name"), why="session data by owner"),
    IndexSpec("peers", ("name",), why="peers by name"),
    IndexSpec(
        "series",
        ("PatientUID", "StudyInstanceUID", "SeriesInstanceUID", "PeerUID"),
        why="the platform's series key",
    ),
    IndexSpec("series", ("SeriesInstanceUID",), why="series by UID"),
    IndexSpec("series", ("Instances",), why="the series of an instance"),
    IndexSpec("studies", ("PatientUID", "StudyInstanceUID", "PeerUID"), why="the study key"),
    IndexSpec("studies", ("StudyInstanceUID",), why="studies by UID"),
    IndexSpec("studies", ("Series",), why="the study of a series"),
    IndexSpec("patients", ("PatientUID", "PeerUID"), why="the platform's patient key"),
    IndexSpec("patients", ("Studies",), why="the patient of a study"),
    IndexSpec(
        "sessionfiles.files",
        ("metadata.session_id", "metadata.job_id", "metadata.name"),
        why="session files by owner",
    ),
    IndexSpec("dicomfiles.files", ("metadata.SOPInstanceUID",), why="instances by UID"),
    IndexSpec(
        "dicomfiles.files", (f"metadata.{EXTRA}.sessionId",), why="instances a session filed"
    ),
)

#: Unique indexes of layout ``exclusive``: concurrent upserts of one key converge.
EXCLUSIVE_INDEXES: Final = (
    IndexSpec("sessiondata", ("session_id", "job_id", "name"), True, "one value per key"),
    IndexSpec("peers", ("name",), True, "one peer per name"),
    IndexSpec(
        "series",
        ("PatientUID", "StudyInstanceUID", "SeriesInstanceUID", "PeerUID"),
        True,
        "one series record per key",
    ),
    IndexSpec("studies", ("PatientUID", "StudyInstanceUID", "PeerUID"), True, "one study per key"),
    IndexSpec("patients", ("PatientUID", "PeerUID"), True, "one patient record per key"),
)

#: Unique indexes dcm-processor-service 0.1 created; each blocks the platform's writes.
LEGACY_UNIQUE_INDEXES: Final = (
    IndexSpec("sessiondata", ("sessionId", "jobId", "name"), True),
    IndexSpec("series", ("SeriesInstanceUID",), True),
    IndexSpec("studies", ("StudyInstanceUID",), True),
    IndexSpec("patients", ("PatientUID",), True),
)


def index_plan(layout: str) -> list[IndexSpec]:
    """The indexes of ``layout``: a unique index replaces a non-unique one on the same
    keys."""
    specs: dict[tuple[str, tuple[str, ...]], IndexSpec] = {
        (s.collection, s.keys): s for s in PLATFORM_INDEXES
    }
    if layout == EXCLUSIVE:
        for spec in EXCLUSIVE_INDEXES:
            specs[(spec.collection, spec.keys)] = spec
    return list(specs.values())
