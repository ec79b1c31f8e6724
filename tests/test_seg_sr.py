"""DICOM Segmentation and Structured Reports built with highdicom, validated by dciodvfy."""

from __future__ import annotations

import random
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from dcm_processor_service import AlgorithmInfo, DicomInputError, InvalidInputError
from dcm_processor_service.imaging.nifti_read import series_files_to_nifti
from dcm_processor_service.imaging.seg import SegmentInfo, make_segmentation, sorted_source_images
from dcm_processor_service.imaging.sr import (
    MeasurementInfo,
    make_measurement_report,
    make_text_report,
    segment_volumes,
)
from support.imaging import dciodvfy, make_ct_series, read_series

SLICES, ROWS, COLS = 6, 16, 20
SPACING = (0.75, 0.75, 1.25)  # column, row, slice (mm)
ALGORITHM = AlgorithmInfo("OrganNet", "2.1.0", manufacturer="ACME AI")


@pytest.fixture
def series(tmp_path: Path) -> tuple[list[Path], np.ndarray]:
    """A CT series whose every voxel has a unique value (to follow voxels across layouts)."""
    pixels = np.arange(SLICES * ROWS * COLS, dtype=np.int16).reshape(SLICES, ROWS, COLS)
    return make_ct_series(tmp_path / "ct", pixels=pixels, spacing=SPACING), pixels


@pytest.fixture
def sources(series) -> list[Dataset]:
    return read_series(series[0])


def labels_volume() -> np.ndarray:
    labels = np.zeros((SLICES, ROWS, COLS), np.uint8)
    labels[2:4, 3:8, 4:9] = 1  # 2 x 5 x 5 = 50 voxels
    labels[1, 10:12, 10:15] = 4  # 10 voxels
    return labels


def frames_by_segment(seg: Dataset) -> dict[int, dict[str, np.ndarray]]:
    """segment number -> {source SOPInstanceUID: frame} read back from the SEG."""
    frames = seg.pixel_array
    if frames.ndim == 2:
        frames = frames[np.newaxis]
    result: dict[int, dict[str, np.ndarray]] = {}
    for index, group in enumerate(seg.PerFrameFunctionalGroupsSequence):
        number = int(group.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        source = group.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        result.setdefault(number, {})[source] = frames[index]
    return result


def contribution(ds: Dataset) -> Dataset:
    """Our algorithm's ContributingEquipmentSequence item (highdicom adds its own too)."""
    items = [i for i in ds.ContributingEquipmentSequence if i.ManufacturerModelName == "OrganNet"]
    assert len(items) == 1
    assert items[0].PurposeOfReferenceCodeSequence[0].CodeValue == "109102"
    return items[0]


# --------------------------------------------------------------------------- SEG


def test_segmentation_from_array(sources: list[Dataset], tmp_path: Path) -> None:
    labels = labels_volume()
    seg = make_segmentation(
        sources,
        labels,
        {
            1: SegmentInfo("Liver", codes.SCT.Organ, codes.SCT.Liver, color=(200, 100, 50)),
            4: "Lesion",
        },
        algorithm=ALGORITHM,
        series_description="Liver AI",
    )
    ordered = sorted_source_images(sources)
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["Liver", "Lesion"]
    liver = seg.SegmentSequence[0]
    assert liver.SegmentedPropertyTypeCodeSequence[0].CodeValue == codes.SCT.Liver.value
    assert liver.SegmentedPropertyCategoryCodeSequence[0].CodeValue == codes.SCT.Organ.value
    assert liver.SegmentAlgorithmType == "AUTOMATIC"
    assert liver.SegmentAlgorithmName == "OrganNet"
    assert liver.SegmentationAlgorithmIdentificationSequence[0].AlgorithmVersion == "2.1.0"
    assert "RecommendedDisplayCIELabValue" in liver
    lesion = seg.SegmentSequence[1]
    assert lesion.SegmentedPropertyTypeCodeSequence[0].CodeValue == codes.SCT.Tissue.value
    assert contribution(seg).SoftwareVersions == "2.1.0"
    assert (seg.Manufacturer, seg.ManufacturerModelName, seg.SoftwareVersions) == (
        "ACME AI",
        "OrganNet",
        "2.1.0",
    )
    assert seg.SeriesNumber == sources[0].SeriesNumber + 2000
    assert seg.SeriesDescription == "Liver AI"
    for keyword in ("PatientName", "PatientID", "StudyInstanceUID", "AccessionNumber"):
        assert seg.get(keyword) == sources[0].get(keyword)
    assert seg.PatientAge == "045Y"
    assert seg.FrameOfReferenceUID == sources[0].FrameOfReferenceUID

    # value by value: each segment's frame equals the label mask of its source slice
    by_segment = frames_by_segment(seg)
    assert len(by_segment[1]) == 2 and len(by_segment[2]) == 1  # empty frames omitted
    for number, value in ((1, 1), (2, 4)):
        for k, source in enumerate(ordered):
            frame = by_segment[number].get(source.SOPInstanceUID)
            expected = (labels[k] == value).astype(np.uint8)
            if frame is None:
                assert not expected.any()
            else:
                np.testing.assert_array_equal(frame, expected)
    # geometry: every frame sits at its source image's position
    for group in seg.PerFrameFunctionalGroupsSequence:
        uid = group.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        source = next(s for s in sources if s.SOPInstanceUID == uid)
        position = group.PlanePositionSequence[0].ImagePositionPatient
        assert [float(v) for v in position] == [float(v) for v in source.ImagePositionPatient]

    seg.save_as(tmp_path / "seg.dcm")
    errors, report = dciodvfy(tmp_path / "seg.dcm")
    assert errors == [], report


def test_empty_frames_kept_on_request(sources: list[Dataset]) -> None:
    seg = make_segmentation(sources, labels_volume(), omit_empty_frames=False)
    assert seg.NumberOfFrames == 2 * SLICES
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["Segment 1", "Segment 4"]


def test_nifti_labels_match_dicom_labels(series, sources: list[Dataset]) -> None:
    """A label NIfTI on dcm2niix's grid (axes flipped vs DICOM) gives the same SEG."""
    files, pixels = series
    image, _, array = series_files_to_nifti(files)
    assert array.shape == (COLS, ROWS, SLICES)  # dcm2niix layout, not DICOM's
    nifti_labels = nib.Nifti1Image((array.astype(np.int64) % 3).astype(np.uint8), image.affine)
    dicom_labels = (pixels % 3).astype(np.uint8)
    shuffled = sources[:]
    random.Random(3).shuffle(shuffled)
    from_nifti = make_segmentation(shuffled, nifti_labels)
    from_array = make_segmentation(sources, dicom_labels)
    np.testing.assert_array_equal(from_nifti.pixel_array, from_array.pixel_array)
    assert frames_by_segment(from_nifti).keys() == frames_by_segment(from_array).keys()


def test_label_shape_mismatch_names_both_shapes(sources: list[Dataset]) -> None:
    with pytest.raises(InvalidInputError, match=r"\(6, 16, 10\).*\(6, 16, 20\)"):
        make_segmentation(sources, np.zeros((SLICES, ROWS, 10), np.uint8))
    with pytest.raises(InvalidInputError, match="axes look permuted"):
        make_segmentation(sources, np.zeros((COLS, ROWS, SLICES), np.uint8))
    with pytest.raises(InvalidInputError, match="3-D"):
        make_segmentation(sources, np.zeros((ROWS, COLS), np.uint8))


def test_nifti_label_geometry_mismatch(series, sources: list[Dataset]) -> None:
    image, _, _ = series_files_to_nifti(series[0])
    shifted = image.affine.copy()
    shifted[:3, 3] += [0.3, 0.0, 0.0]  # a third of a voxel off
    labels = np.ones((COLS, ROWS, SLICES), np.uint8)
    with pytest.raises(InvalidInputError, match=r"does not match the source series geometry"):
        make_segmentation(sources, nib.Nifti1Image(labels, shifted))
    with pytest.raises(InvalidInputError, match=r"label image shape \(20, 16, 5\)"):
        make_segmentation(sources, nib.Nifti1Image(labels[:, :, :5], image.affine))


@pytest.mark.parametrize(
    ("labels", "segments", "match"),
    [
        (np.full((SLICES, ROWS, COLS), 0.5, np.float32), None, "non-integer"),
        (np.full((SLICES, ROWS, COLS), -1, np.int16), None, "negative"),
        (np.zeros((SLICES, ROWS, COLS), np.uint8), None, "nothing to segment"),
        (labels_volume(), {1: "Liver"}, r"label values \[4\]"),
        (labels_volume(), {0: "Background", 1: "a", 4: "b"}, "> 0"),
    ],
)
def test_bad_labels(sources: list[Dataset], labels, segments, match: str) -> None:
    with pytest.raises(InvalidInputError, match=match):
        make_segmentation(sources, labels, segments)


def test_bad_sources(sources: list[Dataset]) -> None:
    other = Dataset()
    other.update(sources[0])
    other.SeriesInstanceUID = "1.2.3"
    with pytest.raises(DicomInputError, match="2 series"):
        make_segmentation([*sources, other], labels_volume())
    bare = Dataset()
    bare.SeriesInstanceUID = sources[0].SeriesInstanceUID
    with pytest.raises(DicomInputError, match="lacks ImagePositionPatient"):
        make_segmentation([bare], np.ones((1, 4, 4), np.uint8))


def test_bool_labels_and_listed_empty_segment(sources: list[Dataset]) -> None:
    mask = labels_volume() == 1
    seg = make_segmentation(sources, mask, {1: "Liver"})
    assert seg.NumberOfFrames == 2
    assert segment_volumes(seg, sources) == {1: pytest.approx(50 * 0.75 * 0.75 * 1.25 / 1000)}


# --------------------------------------------------------------------------- SR


def test_text_report(sources: list[Dataset], tmp_path: Path) -> None:
    report = make_text_report(
        sources,
        ["No focal liver lesion.", "Spleen normal."],
        "Normal abdominal CT.",
        algorithm=ALGORITHM,
        is_final=True,
    )
    assert report.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.22"  # Enhanced SR
    assert report.CompletionFlag == "COMPLETE" and report.VerificationFlag == "UNVERIFIED"
    assert report.ConceptNameCodeSequence[0].CodeValue == "18748-4"
    texts = [
        item.TextValue
        for section in report.ContentSequence
        if section.ValueType == "CONTAINER"
        for item in section.ContentSequence
    ]
    assert texts == ["No focal liver lesion.", "Spleen normal.", "Normal abdominal CT."]
    observer = [i for i in report.ContentSequence if i.RelationshipType == "HAS OBS CONTEXT"]
    assert any(getattr(i, "TextValue", None) == "OrganNet" for i in observer)
    evidence = report.CurrentRequestedProcedureEvidenceSequence[0]
    series_item = evidence.ReferencedSeriesSequence[0]
    assert series_item.SeriesInstanceUID == sources[0].SeriesInstanceUID
    assert {i.ReferencedSOPInstanceUID for i in series_item.ReferencedSOPSequence} == {
        s.SOPInstanceUID for s in sources
    }
    assert report.SeriesNumber == sources[0].SeriesNumber + 3000
    assert report.PatientID == sources[0].PatientID
    assert contribution(report).SoftwareVersions == "2.1.0"
    report.save_as(tmp_path / "text.dcm")
    errors, text = dciodvfy(tmp_path / "text.dcm")
    assert errors == [], text


def test_text_report_needs_findings(sources: list[Dataset]) -> None:
    with pytest.raises(InvalidInputError, match="findings"):
        make_text_report(sources, [])
    with pytest.raises(InvalidInputError, match="findings"):
        make_text_report(sources, ["ok", ""])


def test_measurement_report(sources: list[Dataset], tmp_path: Path) -> None:
    seg = make_segmentation(
        sources, labels_volume(), {1: "Liver", 4: "Lesion"}, algorithm=ALGORITHM
    )
    seg.save_as(tmp_path / "seg.dcm")
    voxel_ml = 0.75 * 0.75 * 1.25 / 1000
    volumes = segment_volumes(seg, sources)
    assert volumes == {1: pytest.approx(50 * voxel_ml), 2: pytest.approx(10 * voxel_ml)}
    report = make_measurement_report(
        sources,
        tmp_path / "seg.dcm",
        {2: [MeasurementInfo(codes.SCT.Diameter, 3.75, codes.UCUM.Millimeter)]},
        algorithm=ALGORITHM,
    )
    assert report.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.34"  # Comprehensive 3D SR
    assert report.ContentTemplateSequence[0].TemplateIdentifier == "1500"

    def walk(items):
        for item in items:
            yield item
            yield from walk(getattr(item, "ContentSequence", []))

    nodes = list(walk(report.ContentSequence))
    numbers = [
        (n.ConceptNameCodeSequence[0].CodeMeaning, float(n.MeasuredValueSequence[0].NumericValue))
        for n in nodes
        if n.ValueType == "NUM"
    ]
    assert numbers == [
        ("Volume", pytest.approx(50 * voxel_ml)),
        ("Volume", pytest.approx(10 * voxel_ml)),
        ("Diameter", 3.75),
    ]
    referenced = [n for n in nodes if n.ValueType == "IMAGE" and "ReferencedSOPSequence" in n]
    segment_refs = [
        r.ReferencedSOPSequence[0]
        for r in referenced
        if r.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == seg.SOPInstanceUID
    ]
    assert sorted(int(r.ReferencedSegmentNumber) for r in segment_refs) == [1, 2]
    evidence_series = {
        s.SeriesInstanceUID
        for study in report.CurrentRequestedProcedureEvidenceSequence
        for s in study.ReferencedSeriesSequence
    }
    assert evidence_series == {sources[0].SeriesInstanceUID, seg.SeriesInstanceUID}
    assert report.PatientName == sources[0].PatientName
    report.save_as(tmp_path / "tid1500.dcm")
    errors, text = dciodvfy(tmp_path / "tid1500.dcm")
    assert errors == [], text
    back = pydicom.dcmread(tmp_path / "tid1500.dcm")
    assert back.SOPInstanceUID == report.SOPInstanceUID


def test_measurement_report_bad_input(sources: list[Dataset]) -> None:
    seg = make_segmentation(sources, labels_volume())
    with pytest.raises(InvalidInputError, match=r"segment numbers \[7\]"):
        make_measurement_report(
            sources, seg, {7: [MeasurementInfo(codes.SCT.Diameter, 1.0, codes.UCUM.Millimeter)]}
        )
    with pytest.raises(DicomInputError, match="Segmentation Storage"):
        make_measurement_report(sources, sources[0])
