"""Series selection rules and image-plane detection, on real headers.

The pydicom DICOMDIR test set (13 series: CT, CR, MR localizers in 3 planes, 7 rotated
MR localizers) is ingested once per storage provider; expectations are computed from
pydicom reads of the files, and the planes from a table worked out by hand below.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread

from dcm_processor_service import InvalidInputError, use_context
from dcm_processor_service.index.ingest import ingest
from dcm_processor_service.index.order import (
    DEFAULT_PLANE_TOLERANCE,
    image_plane,
    slice_normal,
    slice_position,
)
from dcm_processor_service.index.select import SeriesSelector, select_series
from dcm_processor_service.store import Store, open_store
from support.dicomdata import DICOMDIR_TESTS, files_in, platform_patient_uid, write_ct_series
from support.stores import PROVIDERS, make_store

SESSION = "select-session"

#: Plane of each referenced file at the default 15 degree tolerance, by hand from its
#: ImageOrientationPatient (normal = row x column):
#: MR700 rows rotate about z by ~0, 16, 33, 49, 66, 82 and 98 degrees with column (0,0,-1),
#: so normals rotate from +y (coronal) to -x (sagittal); 16 degrees is oblique at 15.
PLANES_BY_FILE = {
    "77654033/CT2/*": "axial",  # [1,0,0,0,1,0]
    "98892001/CT5N/*": "axial",
    "98892001/CT2N/6293": "sagittal",  # [0,-1,0,0,0,-1] -> normal +x
    "98892001/CT2N/6924": "coronal",  # [1,0,0,0,0,-1] -> normal +y
    "98892003/MR1/*": "sagittal",  # [0,1,0,0,0,-1]
    "98892003/MR2/15970": "sagittal",
    "98892003/MR2/4950": "coronal",
    "98892003/MR2/4981": "axial",
    "98892003/MR2/5011": "sagittal",
    "98892003/MR2/6273": "axial",
    "98892003/MR2/6605": "sagittal",
    "98892003/MR2/6935": "coronal",
    "98892003/MR700/4558": "coronal",  # ~0.1 degrees
    "98892003/MR700/4528": "oblique",  # ~16.4 degrees from coronal
    "98892003/MR700/4588": "oblique",  # ~32.8
    "98892003/MR700/4467": "oblique",  # ~49 (41 from sagittal)
    "98892003/MR700/4618": "oblique",  # ~24.5 from sagittal
    "98892003/MR700/4678": "sagittal",  # ~8.1 from sagittal
    "98892003/MR700/4648": "sagittal",  # ~8.2 from sagittal
}


def plane_of(path: Path) -> str | None:
    relative = path.relative_to(DICOMDIR_TESTS)
    for pattern, plane in PLANES_BY_FILE.items():
        if relative.match(pattern):
            return plane
    return None  # CR: no ImageOrientationPatient


def referenced_files() -> list[Path]:
    return [p for p in files_in(DICOMDIR_TESTS) if p.parent.parent.parent == DICOMDIR_TESTS]


# ---------------------------------------------------------------------- geometry
@pytest.mark.parametrize(
    "path", referenced_files(), ids=lambda p: str(p.relative_to(DICOMDIR_TESTS))
)
def test_image_plane_of_real_headers(path: Path) -> None:
    ds = dcmread(path, stop_before_pixels=True)
    if "ImageOrientationPatient" not in ds:
        assert plane_of(path) is None
        return
    assert image_plane(ds.ImageOrientationPatient) == plane_of(path)


def test_image_plane_tolerance_and_axes() -> None:
    assert DEFAULT_PLANE_TOLERANCE == 15.0
    assert image_plane([1, 0, 0, 0, 1, 0]) == "axial"
    assert image_plane([-1, 0, 0, 0, -1, 0]) == "axial"  # normal towards the feet
    assert image_plane([1, 0, 0, 0, 0, -1]) == "coronal"
    assert image_plane([0, 1, 0, 0, 0, -1]) == "sagittal"
    tilted = [1, 0, 0, 0, 0.9396926, -0.3420201]  # 20 degrees about x
    assert image_plane(tilted) == "oblique"
    assert image_plane(tilted, 20.5) == "axial"
    assert image_plane(tilted, tolerance=19.5) == "oblique"
    mr700_16 = dcmread(DICOMDIR_TESTS / "98892003/MR700/4528", stop_before_pixels=True)
    assert image_plane(mr700_16.ImageOrientationPatient, 20) == "coronal"
    assert slice_normal([1, 0, 0, 0, 1, 0]) == (0.0, 0.0, 1.0)
    assert slice_position([1, 0, 0, 0, 1, 0], [3, 4, -7.5]) == -7.5


@pytest.mark.parametrize(
    ("iop", "message"),
    [
        (None, "must be 6 numbers"),
        ([1, 0, 0, 0, 1], "must be 6 finite numbers"),
        ("1\\0\\0\\0\\1\\0", "must be 6 numbers"),
        ([1, 0, 0, 1, 0, 0], "parallel"),
        ([1, 0, 0, 0, 1, float("nan")], "finite"),
    ],
)
def test_image_plane_rejects_bad_orientation(iop: Any, message: str) -> None:
    with pytest.raises(InvalidInputError, match=message):
        image_plane(iop)


def test_image_plane_rejects_bad_tolerance() -> None:
    with pytest.raises(InvalidInputError, match="'tolerance'"):
        image_plane([1, 0, 0, 0, 1, 0], tolerance=91)


# ------------------------------------------------------------------ the indexed set
class Indexed:
    """The ingested set plus what pydicom says about each series."""

    def __init__(self, store: Store, url: tuple[str, str, str]) -> None:
        self.store = store
        self.url = url
        self.info: dict[str, dict[str, Any]] = {}
        by_series: dict[str, list[tuple[Path, Any]]] = defaultdict(list)
        for path in referenced_files():
            ds = dcmread(path, stop_before_pixels=True)
            by_series[ds.SeriesInstanceUID].append((path, ds))
        for uid, items in by_series.items():
            first = items[0][1]
            self.info[uid] = {
                "Modality": first.Modality,
                "SeriesNumber": int(first.SeriesNumber),
                "SeriesDescription": str(first.get("SeriesDescription", "")),
                "ProtocolName": first.get("ProtocolName"),
                "BodyPartExamined": first.get("BodyPartExamined"),
                "SliceThickness": [
                    float(ds.SliceThickness) for _, ds in items if "SliceThickness" in ds
                ],
                "ImageType": [list(ds.ImageType) for _, ds in items],
                "ScanOptions": first.get("ScanOptions"),
                "n": len(items),
                "planes": [plane_of(path) for path, _ in items],
            }

    def expect(self, predicate: Callable[[dict[str, Any]], bool]) -> set[str]:
        return {uid for uid, info in self.info.items() if predicate(info)}


@pytest.fixture(scope="module", params=PROVIDERS)
def indexed(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Indexed]:
    """The DICOMDIR set ingested once per provider (session ``select-session``), plus a
    synthetic CT in another session."""
    url = make_store(str(request.param), tmp_path_factory.mktemp("select"), request)
    store = open_store(*url)
    try:
        report = ingest(DICOMDIR_TESTS / "DICOMDIR", store=store, session_id=SESSION)
        assert report.ok and len(report.series_ids) == 13
        yield Indexed(store, url)
    finally:
        store.close()


def uids(series: list[Any]) -> set[str]:
    return {s["SeriesInstanceUID"] for s in series}


def select(indexed: Indexed, rules: Any, **kwargs: Any) -> set[str]:
    return uids(select_series(rules, session_id=SESSION, store=indexed.store, **kwargs))


# ----------------------------------------------------------------- rule kinds
def test_modality(indexed: Indexed) -> None:
    cts = indexed.expect(lambda i: i["Modality"] == "CT")
    assert len(cts) == 3
    assert select(indexed, {"Modality": "CT"}) == cts
    assert select(indexed, {"Modality": " ct "}) == cts  # case and spaces ignored
    assert select(indexed, {"Modality": ["CR", "CT"]}) == indexed.expect(
        lambda i: i["Modality"] in ("CR", "CT")
    )
    assert select(indexed, {"Modality": {"in": ["US", "MR"]}}) == indexed.expect(
        lambda i: i["Modality"] == "MR"
    )
    assert select(indexed, {"Modality": {"eq": "US"}}) == set()


def test_description_and_protocol_regex(indexed: Indexed) -> None:
    localizers = indexed.expect(
        lambda i: re.search("localizer", i["SeriesDescription"], re.I) is not None
    )
    assert len(localizers) == 4
    assert select(indexed, {"SeriesDescription": {"regex": "LOCALIZER"}}) == localizers
    pilots = indexed.expect(
        lambda i: i["ProtocolName"] is not None and "PILOT" in i["ProtocolName"]
    )
    assert len(pilots) == 2
    assert select(indexed, {"ProtocolName": {"regex": r"^t/s/c.*pilot"}}) == pilots
    assert (
        select(indexed, {"SeriesDescription": re.compile("Localizer")}) == set()
    )  # case-sensitive pattern
    not_localizer = {"SeriesDescription": {"not": {"regex": "localizer"}}}
    assert select(indexed, not_localizer) == set(indexed.info) - localizers


def test_body_part_exists_and_numbers(indexed: Indexed) -> None:
    spines = indexed.expect(lambda i: i["BodyPartExamined"] == "CSPINE")
    assert len(spines) == 3
    assert select(indexed, {"BodyPartExamined": "cspine"}) == spines
    with_part = indexed.expect(lambda i: i["BodyPartExamined"] is not None)
    assert select(indexed, {"BodyPartExamined": {"exists": True}}) == with_part
    assert select(indexed, {"BodyPartExamined": {"exists": False}}) == set(indexed.info) - with_part
    assert select(indexed, {"SeriesNumber": "700"}) == indexed.expect(
        lambda i: i["SeriesNumber"] == 700
    )
    assert select(indexed, {"SeriesNumber": {"min": 4, "max": 5}}) == indexed.expect(
        lambda i: 4 <= i["SeriesNumber"] <= 5
    )


def test_numeric_ranges_over_instances(indexed: Indexed) -> None:
    thin = indexed.expect(lambda i: bool(i["SliceThickness"]) and max(i["SliceThickness"]) <= 2.5)
    assert len(thin) == 3
    assert select(indexed, {"SliceThickness": {"max": 2.5}}) == thin
    assert select(indexed, {"SliceThickness": {"min": 5, "max": 20}}) == indexed.expect(
        lambda i: bool(i["SliceThickness"]) and all(5 <= t <= 20 for t in i["SliceThickness"])
    )
    assert select(indexed, {"NumberOfInstances": {"min": 4}}) == indexed.expect(
        lambda i: i["n"] >= 4
    )
    assert select(indexed, {"NumberOfInstances": 7}) == indexed.expect(lambda i: i["n"] == 7)


def test_multivalued_tags_match_any_value(indexed: Indexed) -> None:
    def all_have(word: str) -> Callable[[dict[str, Any]], bool]:
        return lambda i: all(word in types for types in i["ImageType"])

    assert select(indexed, {"ImageType": "AXIAL"}) == indexed.expect(all_have("AXIAL"))
    assert select(indexed, {"ImageType": "ORIGINAL"}) == indexed.expect(all_have("ORIGINAL"))
    assert select(indexed, {"ImageType": {"not": "AXIAL"}}) == indexed.expect(
        lambda i: not any("AXIAL" in types for types in i["ImageType"])
    )
    assert select(indexed, {"PixelSpacing": {"max": 0.5}}) <= set(indexed.info)


def test_plane(indexed: Indexed) -> None:
    def planes_in(*wanted: str) -> Callable[[dict[str, Any]], bool]:
        return lambda i: all(p in wanted for p in i["planes"])

    axial = indexed.expect(planes_in("axial"))
    assert len(axial) == 2
    assert select(indexed, {"Plane": "axial"}) == axial
    assert select(indexed, {"Plane": "Sagittal"}) == indexed.expect(planes_in("sagittal"))
    orthogonal = indexed.expect(planes_in("axial", "coronal", "sagittal"))
    assert select(indexed, {"Plane": ["axial", "coronal", "sagittal"]}) == orthogonal
    assert select(indexed, {"Plane": {"exists": False}}) == indexed.expect(
        lambda i: i["planes"] == [None] * i["n"]
    )
    # MR700 (7 rotated localizers) is oblique at 15 degrees, never at 45
    mr700 = indexed.expect(lambda i: i["SeriesNumber"] == 700)
    assert not mr700 & orthogonal
    assert mr700 <= select(indexed, {"Plane": ["axial", "coronal", "sagittal"]}, plane_tolerance=45)
    assert select(indexed, {"Plane": "oblique"}) == set()  # no series is oblique throughout


def test_any_keyword_is_read_from_the_header(indexed: Indexed) -> None:
    cine = indexed.expect(lambda i: i["ScanOptions"] == "CINE MODE")
    assert cine and select(indexed, {"ScanOptions": "cine mode"}) == cine
    assert select(indexed, {"ScanOptions": {"exists": False}}) == indexed.expect(
        lambda i: i["ScanOptions"] is None
    )


def test_and_inside_a_rule_set(indexed: Indexed) -> None:
    rules = {"Modality": "MR", "Plane": "sagittal", "SeriesDescription": {"regex": "localizer"}}
    expected = indexed.expect(
        lambda i: (
            i["Modality"] == "MR"
            and all(p == "sagittal" for p in i["planes"])
            and "LOCALIZER" in i["SeriesDescription"]
        )
    )
    assert len(expected) == 4
    assert select(indexed, rules) == expected
    assert select(indexed, {**rules, "SliceThickness": {"max": 5}}) == set()


def test_rule_sets_in_order_first_match_wins(indexed: Indexed) -> None:
    rules = [
        {"Modality": "US"},  # matches nothing
        {"Modality": "CT", "Plane": "axial"},
        {"Modality": "CT"},  # would match more, but comes later
        {},
    ]
    selection = SeriesSelector(rules).select(
        indexed.store.list_series(session_id=SESSION), store=indexed.store
    )
    assert selection.rule_index == 1 and bool(selection)
    assert uids(selection.series) == indexed.expect(
        lambda i: i["Modality"] == "CT" and all(p == "axial" for p in i["planes"])
    )
    assert select(indexed, [{"Modality": "US"}, {}]) == set(indexed.info)  # {} matches all
    assert select(indexed, [{"Modality": "US"}]) == set()
    assert not SeriesSelector({"Modality": "US"}).select(
        indexed.store.list_series(), store=indexed.store
    )


def test_results_are_ordered_by_series_number(indexed: Indexed) -> None:
    picked = select_series({"Modality": "MR"}, session_id=SESSION, store=indexed.store)
    keys = [
        (s["Metadata"]["StudyDate"], s["StudyInstanceUID"], s["Metadata"]["SeriesNumber"])
        for s in picked
    ]
    assert keys == sorted(keys) and len(keys) == len(
        indexed.expect(lambda i: i["Modality"] == "MR")
    )


def test_candidates_by_study_patient_series_and_context(indexed: Indexed, tmp_path: Path) -> None:
    store = indexed.store
    ct5n = next(s for s in store.list_series() if s["Metadata"].get("SeriesNumber") == 5)
    by_study = select_series({"Modality": "CT"}, study_id=ct5n["StudyInstanceUID"], store=store)
    assert {s["StudyInstanceUID"] for s in by_study} == {ct5n["StudyInstanceUID"]}
    patient = platform_patient_uid("77654033")
    by_patient = select_series({"Modality": "CT"}, patient_id=patient, store=store)
    assert [s["PatientUID"] for s in by_patient] == [patient]
    assert (
        select_series({"Modality": "CT"}, series=[ct5n["_id"], ct5n], store=store)[0]["_id"]
        == ct5n["_id"]
    )

    write_ct_series(tmp_path / "syn", 3, 8, 8, patient_id="OTHER")
    ingest(tmp_path / "syn", store=store, session_id="other-session")
    try:
        provider, url, name = indexed.url
        with use_context(
            db_provider=provider, db_url=url, db_name=name, session_id="other-session"
        ):
            (only,) = select_series({"Modality": "CT", "Plane": "axial"})
            assert only["PatientUID"] == platform_patient_uid("OTHER")
        with pytest.raises(Exception, match="DCM-PROCESSOR-SERVICE-SESSION-ID"):
            select_series({"Modality": "CT"}, store=store)
    finally:
        store.delete_session_instances("other-session")


def test_records_alone_need_no_store_for_record_rules(indexed: Indexed) -> None:
    records = indexed.store.list_series()
    # no store= and no runtime context: fine while rules only read the records
    assert uids(select_series({"Modality": "CT"}, series=records)) == indexed.expect(
        lambda i: i["Modality"] == "CT"
    )
    with pytest.raises(Exception, match="DCM-PROCESSOR-SERVICE-DB-PROVIDER"):
        select_series({"Plane": "axial"}, series=records)  # needs the instances


def test_callable_condition(indexed: Indexed) -> None:
    big = select(indexed, {"NumberOfInstances": lambda n: n > 4})
    assert big == indexed.expect(lambda i: i["n"] > 4)


# ------------------------------------------------------------------ bad rules
@pytest.mark.parametrize(
    ("rules", "message"),
    [
        ({"Modaliti": "CT"}, r"rule set 0: unknown keyword 'Modaliti'.*did you mean 'Modality'\?"),
        ([{}, {"plane": "axial"}], r"rule set 1: unknown keyword 'plane'.*did you mean 'Plane'\?"),
        (
            {"Modality": {"equals": "CT"}},
            r"rule set 0 Modality: unknown operator\(s\) \['equals'\]",
        ),
        (
            {"SeriesDescription": {"regex": "t1("}},
            r"rule set 0 SeriesDescription: invalid regular expression 't1\('",
        ),
        ({"SeriesDescription": {"regex": 3}}, "'regex' must be a str"),
        ({"SliceThickness": {"min": 3, "max": 1}}, "'min' 3 is greater than 'max' 1"),
        ({"SliceThickness": {"min": "thin"}}, "'min' must be a number"),
        ({"Modality": []}, "an empty list matches nothing"),
        ({"Modality": {}}, "an empty operator dict"),
        ({"Modality": {"in": "CT"}}, "'in' takes a list"),
        ({"Modality": {"eq": ["CT"]}}, "'eq' takes one value"),
        ({"Modality": {"exists": "yes"}}, "'exists' must be true or false"),
        ({"Modality": True}, "True is not a condition"),
        ({"Modality": None}, "None is not a condition"),
        ({"Modality": [{"a": 1}]}, "is not a str or number"),
        (
            {"Plane": "diagonal"},
            "unknown plane 'diagonal' - use one of axial, coronal, sagittal, oblique",
        ),
        ({"Plane": {"not": ["axial", "slanted"]}}, "rule set 0 Plane.not: unknown plane 'slanted'"),
        ([], "an empty list - give at least one rule set"),
        (["Modality"], "rule set 0 is str, not a dict"),
        ("Modality=CT", "give a rule set"),
        ({3: "CT"}, "keyword 3 is not a str"),
    ],
)
def test_invalid_rules_name_the_rule(rules: Any, message: str) -> None:
    with pytest.raises(InvalidInputError, match=message):
        SeriesSelector(rules)


def test_invalid_plane_tolerance() -> None:
    with pytest.raises(InvalidInputError, match="'plane_tolerance'"):
        SeriesSelector({"Plane": "axial"}, plane_tolerance=-1)
