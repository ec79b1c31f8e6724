"""Series selection: pick the series of a session, study or patient by rules.

A **rule set** is a dict ``{keyword: condition}``; a series matches it when *every*
condition holds (AND). Rules are a rule set or a **list of rule sets tried in order**:
the first rule set that matches at least one series wins, and all the series it matches
are returned. An empty rule set ``{}`` matches every series (a last-resort fallback).
Rules are plain JSON, so they can live in a job's ``params``::

    from dcm_processor_service import select_series

    t1 = select_series([
        # preferred: a thin axial T1 after contrast
        {"Modality": "MR", "SeriesDescription": {"regex": r"t1.*(gd|post|\\+c)"},
         "Plane": "axial", "SliceThickness": {"max": 1.5}},
        # otherwise any T1 that is a volume, not a localizer
        {"Modality": "MR", "SeriesDescription": {"regex": "t1"},
         "ImageType": {"not": "LOCALIZER"}, "NumberOfInstances": {"min": 20}},
    ])                                   # series of the current session

**Keywords**: any DICOM keyword (``Modality``, ``SeriesDescription``, ``ProtocolName``,
``BodyPartExamined``, ``SliceThickness``, ``ImageType``, ``EchoTime``...) plus the
derived ``Plane`` (``"axial"``, ``"coronal"``, ``"sagittal"``, ``"oblique"``, from each
instance's ImageOrientationPatient, see
:func:`~dcm_processor_service.image_plane`) and ``NumberOfInstances``.
Where the value comes from:

- patient, study and series tags (:data:`~dcm_processor_service.index.metadata.PATIENT_KEYWORDS`,
  ``STUDY_KEYWORDS``, ``SERIES_KEYWORDS``): the series record's ``Metadata``;
- per-instance tags (:data:`~dcm_processor_service.index.metadata.INSTANCE_KEYWORDS`) and
  ``Plane``: every instance of the series — the condition must hold for **all** of them
  (so a series mixing axial and sagittal slices is not ``"axial"``);
- any other keyword: the header of the series' first instance (read from the store).

**Conditions**:

=====================================  ==============================================
``"CT"``, ``3``, ``2.5``               equal (text ignores case and surrounding spaces;
                                       numbers compare numerically, ``"5"`` equals ``5``)
``["CT", "MR"]``                       any of
``{"regex": "t1|mprage"}``             regular-expression *search*, ignoring case
``{"min": 0.5, "max": 1.5}``           numeric range, inclusive (either bound optional)
``{"in": ["CT", "PT"]}``               any of (same as a list)
``{"eq": "CT"}``                       equal (same as a plain value)
``{"exists": true}``                   the tag is present (``false``: absent)
``{"not": <condition>}``               negation
``re.compile(...)`` / a callable       Python API only: ``pattern.search`` / ``f(value)``
=====================================  ==============================================

Several operators in one dict must all hold. A multi-valued tag (``ImageType``,
``PixelSpacing``) matches an equality, any-of or regex condition when *one* of its values
does (``{"ImageType": "LOCALIZER"}`` = "ImageType contains LOCALIZER"), and a range when
*all* of its values are inside it. A missing tag matches nothing but ``{"exists": false}``
and negations.

Invalid rules raise :class:`~dcm_processor_service.InvalidInputError` naming the rule set,
keyword and problem before anything is read (an unknown keyword suggests the closest
known one).
"""

from __future__ import annotations

import difflib
import logging
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, cast

from pydicom.datadict import keyword_dict
from pydicom.dataset import Dataset

from .._context import current_context
from .._errors import InvalidInputError
from .._runtime import store_for
from ..store.base import Store
from ..store.records import InstanceRecord, SeriesRecord
from .metadata import (
    INSTANCE_KEYWORDS,
    PATIENT_KEYWORDS,
    SERIES_KEYWORDS,
    STUDY_KEYWORDS,
    json_value,
)
from .order import DEFAULT_PLANE_TOLERANCE, PLANES, image_plane
from .series import read_header

__all__ = ["DERIVED_KEYWORDS", "Selection", "SeriesSelector", "select_series"]

logger = logging.getLogger(__name__)

#: Keywords computed by the selector rather than read from a tag.
DERIVED_KEYWORDS: Final = ("Plane", "NumberOfInstances")

_OPERATORS: Final = ("eq", "in", "regex", "min", "max", "exists", "not")
_RECORD_KEYWORDS: Final = frozenset({*PATIENT_KEYWORDS, *STUDY_KEYWORDS, *SERIES_KEYWORDS})
_INSTANCE_KEYWORDS: Final = frozenset({*INSTANCE_KEYWORDS, "Plane"})
_MISSING: Final = object()

Predicate = Callable[[Any], bool]


# ------------------------------------------------------------------ compiling
class _Invalid(Exception):
    pass


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value) if math.isfinite(float(value)) else None
    if isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            return None
        return number if math.isfinite(number) else None
    return None


def _elements(value: Any) -> list[Any]:
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _equal(value: Any, expected: Any) -> bool:
    if value is None:
        return False
    if not isinstance(expected, str) or _number(expected) is not None:
        a, b = _number(value), _number(expected)
        if a is not None and b is not None:
            return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-6)
    return str(value).strip().casefold() == str(expected).strip().casefold()


def _check_scalar(value: Any, where: str) -> None:
    if not isinstance(value, (str, int, float)) or isinstance(value, bool):
        raise _Invalid(f"{where}: {value!r} is not a str or number")


def _compile(condition: Any, keyword: str, where: str) -> Predicate:
    """A predicate over one value (``_MISSING`` when the tag is absent)."""
    if isinstance(condition, re.Pattern):
        pattern = condition
        return lambda v: (
            v is not _MISSING
            and any(e is not None and pattern.search(str(e)) is not None for e in _elements(v))
        )
    if callable(condition):
        func = condition
        return lambda v: v is not _MISSING and bool(func(v))
    if isinstance(condition, (list, tuple)):
        if not condition:
            raise _Invalid(f"{where}: an empty list matches nothing - give at least one value")
        for item in condition:
            _check_scalar(item, where)
        _check_plane(keyword, condition, where)
        choices = list(condition)
        return lambda v: (
            v is not _MISSING and any(_equal(e, c) for e in _elements(v) for c in choices)
        )
    if isinstance(condition, Mapping):
        return _compile_ops(condition, keyword, where)
    if isinstance(condition, bool) or condition is None:
        raise _Invalid(
            f"{where}: {condition!r} is not a condition - use a value, a list, or a dict of "
            f"operators ({', '.join(_OPERATORS)})"
        )
    _check_scalar(condition, where)
    _check_plane(keyword, [condition], where)
    expected = condition
    return lambda v: v is not _MISSING and any(_equal(e, expected) for e in _elements(v))


def _check_plane(keyword: str, values: Iterable[Any], where: str) -> None:
    if keyword != "Plane":
        return
    for value in values:
        if str(value).strip().lower() not in PLANES:
            raise _Invalid(f"{where}: unknown plane {value!r} - use one of {', '.join(PLANES)}")


def _compile_ops(ops: Mapping[str, Any], keyword: str, where: str) -> Predicate:
    if not ops:
        raise _Invalid(f"{where}: an empty operator dict - use one of {', '.join(_OPERATORS)}")
    unknown = [op for op in ops if op not in _OPERATORS]
    if unknown:
        raise _Invalid(f"{where}: unknown operator(s) {unknown} - known: {', '.join(_OPERATORS)}")
    parts: list[Predicate] = []
    if "eq" in ops:
        if isinstance(ops["eq"], (list, tuple, Mapping)):
            raise _Invalid(f"{where}: 'eq' takes one value; use 'in' for several")
        parts.append(_compile(ops["eq"], keyword, f"{where}.eq"))
    if "in" in ops:
        if not isinstance(ops["in"], (list, tuple)):
            raise _Invalid(f"{where}: 'in' takes a list of values")
        parts.append(_compile(list(ops["in"]), keyword, f"{where}.in"))
    if "regex" in ops:
        text = ops["regex"]
        if not isinstance(text, str):
            raise _Invalid(f"{where}: 'regex' must be a str, got {type(text).__name__}")
        try:
            pattern = re.compile(text, re.IGNORECASE)
        except re.error as exc:
            raise _Invalid(f"{where}: invalid regular expression {text!r}: {exc}") from None
        parts.append(_compile(pattern, keyword, f"{where}.regex"))
    if "min" in ops or "max" in ops:
        low, high = ops.get("min"), ops.get("max")
        for name, bound in (("min", low), ("max", high)):
            if bound is not None and (
                isinstance(bound, bool) or not isinstance(bound, (int, float))
            ):
                raise _Invalid(f"{where}: '{name}' must be a number, got {bound!r}")
        if low is not None and high is not None and low > high:
            raise _Invalid(f"{where}: 'min' {low} is greater than 'max' {high}")

        def in_range(v: Any) -> bool:
            if v is _MISSING:
                return False
            numbers = [_number(e) for e in _elements(v)]
            return bool(numbers) and all(
                n is not None and (low is None or n >= low) and (high is None or n <= high)
                for n in numbers
            )

        parts.append(in_range)
    if "exists" in ops:
        wanted = ops["exists"]
        if not isinstance(wanted, bool):
            raise _Invalid(f"{where}: 'exists' must be true or false")
        parts.append(lambda v: (v is not _MISSING) == wanted)
    if "not" in ops:
        inner = _compile(ops["not"], keyword, f"{where}.not")
        parts.append(lambda v: not inner(v))
    return lambda v: all(p(v) for p in parts)


def _check_keyword(keyword: Any, where: str) -> str:
    if not isinstance(keyword, str):
        raise _Invalid(f"{where}: keyword {keyword!r} is not a str")
    if keyword in DERIVED_KEYWORDS or keyword in keyword_dict:
        return keyword
    close = difflib.get_close_matches(keyword, [*DERIVED_KEYWORDS, *keyword_dict], n=1)
    hint = f" - did you mean {close[0]!r}?" if close else ""
    raise _Invalid(
        f"{where}: unknown keyword {keyword!r} (not a DICOM keyword nor {', '.join(DERIVED_KEYWORDS)}){hint}"
    )


@dataclass(frozen=True)
class _Condition:
    keyword: str
    test: Predicate
    source: str  # "record", "instances", "count", "header"


@dataclass(frozen=True)
class _RuleSet:
    index: int
    conditions: tuple[_Condition, ...]
    rules: dict[str, Any]


def _source(keyword: str) -> str:
    if keyword == "NumberOfInstances":
        return "count"
    if keyword in _RECORD_KEYWORDS:
        return "record"
    if keyword in _INSTANCE_KEYWORDS:
        return "instances"
    return "header"


def _compile_rules(rules: Any) -> list[_RuleSet]:
    if isinstance(rules, Mapping):
        rule_sets: list[Any] = [rules]
    elif isinstance(rules, (list, tuple)):
        rule_sets = list(rules)
        if not rule_sets:
            raise InvalidInputError(
                "invalid series rules: an empty list - give at least one rule set (a dict)"
            )
    else:
        raise InvalidInputError(
            f"invalid series rules {rules!r:.80} - give a rule set (dict of keyword: condition) or a list of them"
        )
    compiled = []
    for index, rule_set in enumerate(rule_sets):
        where = f"rule set {index}"
        if not isinstance(rule_set, Mapping):
            raise InvalidInputError(
                f"invalid series rules: {where} is {type(rule_set).__name__}, not a dict"
            )
        conditions = []
        for keyword, condition in rule_set.items():
            try:
                kw = _check_keyword(keyword, where)
                test = _compile(condition, kw, f"{where} {kw}")
            except _Invalid as exc:
                raise InvalidInputError(f"invalid series rule: {exc}") from None
            conditions.append(_Condition(kw, test, _source(kw)))
        compiled.append(_RuleSet(index, tuple(conditions), dict(rule_set)))
    return compiled


# ------------------------------------------------------------------ matching
class _SeriesView:
    """Lazily fetched values of one series: record metadata, instances, header."""

    def __init__(
        self, record: Mapping[str, Any], store: Store | None, plane_tolerance: float
    ) -> None:
        self.record = record
        self._store = store
        self._tolerance = plane_tolerance
        self._instances: list[InstanceRecord] | None = None
        self._header: Any = None

    @property
    def store(self) -> Store:
        if self._store is None:
            self._store = store_for()
        return self._store

    def instances(self) -> list[InstanceRecord]:
        if self._instances is None:
            self._instances = self.store.list_instances(self.record["_id"])
        return self._instances

    def instance_values(self, keyword: str) -> list[Any]:
        values = []
        for instance in self.instances():
            meta = instance.get("Metadata") or {}
            if keyword == "Plane":
                iop = meta.get("ImageOrientationPatient")
                try:
                    values.append(
                        image_plane(iop, self._tolerance) if iop is not None else _MISSING
                    )
                except InvalidInputError:
                    values.append(_MISSING)
            else:
                values.append(meta.get(keyword, _MISSING))
        return values

    def header_value(self, keyword: str) -> Any:
        if self._header is None:
            instances = self.instances()
            self._header = read_header(self.store, instances[0]) if instances else Dataset()
        if keyword not in self._header:
            return _MISSING
        try:
            return json_value(self._header[keyword])
        except InvalidInputError:
            return _MISSING

    def matches(self, condition: _Condition) -> bool:
        if condition.source == "record":
            return condition.test(
                (self.record.get("Metadata") or {}).get(condition.keyword, _MISSING)
            )
        if condition.source == "count":
            count = (
                len(self.record.get("Instances") or ())
                if "Instances" in self.record
                else len(self.instances())
            )
            return condition.test(count)
        if condition.source == "instances":
            values = self.instance_values(condition.keyword)
            return bool(values) and all(condition.test(v) for v in values)
        return condition.test(self.header_value(condition.keyword))


@dataclass(frozen=True)
class Selection:
    """The result of :meth:`SeriesSelector.select`: the matching series and the index of
    the rule set that matched (``None`` when nothing matched)."""

    series: list[SeriesRecord] = field(default_factory=list)
    rule_index: int | None = None

    def __bool__(self) -> bool:
        return bool(self.series)


def _series_sort_key(record: Mapping[str, Any]) -> tuple[Any, ...]:
    meta = record.get("Metadata") or {}
    number = _number(meta.get("SeriesNumber"))
    return (
        str(meta.get("StudyDate") or ""),
        str(record.get("StudyInstanceUID") or ""),
        number if number is not None else math.inf,
        str(record.get("SeriesInstanceUID") or ""),
    )


class SeriesSelector:
    """Compiled selection rules (validated at construction).

    ``rules``: a rule set or a list of rule sets (see the module docs).
    ``plane_tolerance``: degrees for the ``Plane`` keyword (default
    :data:`~dcm_processor_service.index.order.DEFAULT_PLANE_TOLERANCE`).
    """

    def __init__(
        self,
        rules: Mapping[str, Any] | Sequence[Mapping[str, Any]],
        *,
        plane_tolerance: float = DEFAULT_PLANE_TOLERANCE,
    ) -> None:
        if not isinstance(plane_tolerance, (int, float)) or not 0 <= plane_tolerance <= 90:
            raise InvalidInputError(
                f"invalid 'plane_tolerance' value {plane_tolerance!r} - must be degrees in 0-90"
            )
        self.plane_tolerance = float(plane_tolerance)
        self._rule_sets = _compile_rules(rules)

    def matches(
        self, series: Mapping[str, Any], rule_index: int = 0, *, store: Store | None = None
    ) -> bool:
        """Whether ``series`` (a series record) matches rule set ``rule_index``."""
        try:
            rule_set = self._rule_sets[rule_index]
        except IndexError:
            raise InvalidInputError(
                f"no rule set {rule_index} (there are {len(self._rule_sets)})"
            ) from None
        view = _SeriesView(series, store, self.plane_tolerance)
        return all(view.matches(c) for c in rule_set.conditions)

    def select(
        self, series: Iterable[Mapping[str, Any]], *, store: Store | None = None
    ) -> Selection:
        """Try the rule sets in order over ``series`` (records); the first rule set that
        matches any series wins. Matches are ordered by StudyDate, study, SeriesNumber."""
        candidates = sorted(series, key=_series_sort_key)
        views = [_SeriesView(record, store, self.plane_tolerance) for record in candidates]
        for rule_set in self._rule_sets:
            matched = [v.record for v in views if all(v.matches(c) for c in rule_set.conditions)]
            if matched:
                logger.debug("series rule set %d matched %d series", rule_set.index, len(matched))
                return Selection([dict(m) for m in matched], rule_set.index)  # type: ignore[misc]
        logger.debug("no series rule set matched any of %d series", len(candidates))
        return Selection()


def select_series(
    rules: Mapping[str, Any] | Sequence[Mapping[str, Any]],
    *,
    session_id: str | None = None,
    study_id: str | None = None,
    patient_id: str | None = None,
    series: Iterable[Mapping[str, Any] | str] | None = None,
    store: Store | None = None,
    plane_tolerance: float = DEFAULT_PLANE_TOLERANCE,
) -> list[SeriesRecord]:
    """The series that match ``rules`` (first matching rule set wins; ``[]`` if none).

    Candidates: ``series`` (records or ids) when given; else the series filtered by
    ``study_id`` / ``patient_id`` / ``session_id``; with none of those, the series of the
    current session (``DCM-PROCESSOR-SERVICE-SESSION-ID``). ``store`` defaults to the
    job's store. Raises :class:`InvalidInputError` for invalid rules.
    """
    selector = SeriesSelector(rules, plane_tolerance=plane_tolerance)
    candidates: Sequence[Mapping[str, Any]]
    items = list(series) if series is not None else None
    if items is not None and not any(isinstance(item, str) for item in items):
        # records given: the store is opened only if a rule needs instances or headers
        return selector.select(cast(list[Mapping[str, Any]], items), store=store).series
    s = store if store is not None else store_for()
    if items is not None:
        candidates = [s.get_series(item) if isinstance(item, str) else item for item in items]
    else:
        if session_id is None and study_id is None and patient_id is None:
            session_id = current_context().require("session_id")
        candidates = s.list_series(study_id=study_id, patient_id=patient_id, session_id=session_id)
    return selector.select(candidates, store=s).series
