"""DICOM <-> NIfTI with the real tools: dcm2niix, dciodvfy, dcentvfy.

Round trips go NIfTI -> nifti_to_dicom -> files on disk -> the dcm2niix CLI -> NIfTI and
compare voxel by voxel in world space (both sides canonicalised with nibabel).
"""

from __future__ import annotations

import gzip
import json
import logging
import tracemalloc
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.uid import CTImageStorage, MRImageStorage, SecondaryCaptureImageStorage

import dcm_processor_service as dps
from dcm_processor_service import (
    AlgorithmInfo,
    ConversionError,
    DicomInputError,
    InvalidInputError,
    nifti_to_dicom,
    write_datasets,
)
from dcm_processor_service.imaging.nifti_read import (
    choose_main_volume,
    dicom_series_to_nifti,
    find_dcm2niix,
    series_files_to_nifti,
)
from dcm_processor_service.index.metadata import get_simplified_json, parse_patient_age
from support.imaging import (
    CT5N,
    TEST_FILES,
    canonical,
    dcentvfy,
    dciodvfy,
    make_affine,
    make_ct_series,
    run_dcm2niix,
    synthetic_volume,
)

ORIENTATIONS = ["axial", "axial_lps", "coronal", "sagittal", "oblique"]
KINDS = ["int16_hu", "uint8_labels", "float_prob", "wide", "tiny", "int32_offset"]
EXPECTED_PLANE = {
    "axial": "AXIAL",
    "axial_lps": "AXIAL",
    "coronal": "CORONAL",
    "sagittal": "SAGITTAL",
    "oblique": "OBLIQUE",
}


def round_trip(img: nib.Nifti1Image, tmp_path: Path, modality: str = "CT", **kwargs):
    """nifti_to_dicom -> files -> dcm2niix CLI; return (datasets, files, image back)."""
    datasets = nifti_to_dicom(img, modality, "round trip", **kwargs)
    files = write_datasets(datasets, tmp_path / "dicom")
    back = nib.load(run_dcm2niix(tmp_path / "dicom", tmp_path / "nifti"))
    return datasets, files, back


def value_tolerance(datasets: list[pydicom.Dataset], data: np.ndarray) -> float:
    """Half a rescale step, plus float32 rounding of dcm2niix's scl_slope/scl_inter."""
    slope = float(datasets[0].RescaleSlope)
    if slope == 1.0 and float(datasets[0].RescaleIntercept).is_integer():
        return 0.0
    return slope / 2 + 2e-7 * float(np.abs(data).max()) + 1e-12


# --------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("orientation", ORIENTATIONS)
@pytest.mark.parametrize("kind", KINDS)
def test_round_trip_geometry_and_values(orientation: str, kind: str, tmp_path: Path) -> None:
    data = synthetic_volume(kind)
    img = nib.Nifti1Image(data, make_affine(orientation))
    datasets, _, back = round_trip(img, tmp_path)

    affine_in, data_in = canonical(img)
    affine_out, data_out = canonical(back)
    assert data_out.shape == data_in.shape
    np.testing.assert_allclose(affine_out, affine_in, atol=1e-3)
    tolerance = value_tolerance(datasets, data)
    if np.issubdtype(data.dtype, np.integer):
        assert tolerance == 0.0, "integers must be stored exactly"
        np.testing.assert_array_equal(data_out, data_in)
    else:
        assert np.abs(data_out - data_in).max() <= tolerance

    first = datasets[0]
    assert len(datasets) == data.shape[2]
    assert first.ImageType[:2] == ["DERIVED", "SECONDARY"]
    assert first.ImageType[2] == EXPECTED_PLANE[orientation]
    assert len(str(first.RescaleSlope)) <= 16
    assert len(first.ImageOrientationPatient) == 6
    assert all(len(str(v)) <= 16 for v in first.ImageOrientationPatient)
    row, col = (
        np.array(first.ImageOrientationPatient[:3]),
        np.array(first.ImageOrientationPatient[3:]),
    )
    assert abs(np.linalg.norm(row) - 1) < 1e-9 and abs(np.linalg.norm(col) - 1) < 1e-9
    assert abs(row @ col) < 1e-9
    assert sorted(float(v) for v in first.PixelSpacing) == pytest.approx([0.7, 0.8])
    assert float(first.SliceThickness) == pytest.approx(2.5)


@pytest.mark.parametrize(
    ("kind", "pixel_representation", "slope", "intercept"),
    [
        ("int16_hu", 1, "1", "0"),
        ("uint8_labels", 0, "1", "0"),
        ("int32_offset", 0, "1", None),  # offset into uint16, exact
        ("float_prob", 0, None, "0"),
    ],
)
def test_signedness_and_rescale(
    kind: str, pixel_representation: int, slope: str | None, intercept: str | None
) -> None:
    data = synthetic_volume(kind)
    first = nifti_to_dicom(nib.Nifti1Image(data, np.eye(4)), "CT")[0]
    assert first.PixelRepresentation == pixel_representation
    assert (first.BitsAllocated, first.BitsStored, first.HighBit) == (16, 16, 15)
    if slope is not None:
        assert str(first.RescaleSlope) == slope
    if intercept is not None:
        assert str(first.RescaleIntercept) == intercept
    if kind == "int32_offset":
        assert float(first.RescaleIntercept) == float(data.min())
    if kind == "float_prob":
        assert first.LossyImageCompression == "01"
        assert float(first.RescaleSlope) * 65535 >= 1.0  # max maps inside 0..65535


def test_integer_valued_floats_are_stored_exactly(tmp_path: Path) -> None:
    data = synthetic_volume("int16_hu").astype(np.float64)
    datasets, _, back = round_trip(nib.Nifti1Image(data, make_affine("axial")), tmp_path)
    assert datasets[0].PixelRepresentation == 1
    assert str(datasets[0].RescaleSlope) == "1"
    np.testing.assert_array_equal(
        canonical(back)[1], canonical(nib.Nifti1Image(data, make_affine("axial")))[1]
    )


def test_nifti_scaling_on_integers_is_kept(tmp_path: Path) -> None:
    raw = synthetic_volume("uint8_labels").astype(np.int16) * 100
    img = nib.Nifti1Image(raw, make_affine("coronal"))
    img.header.set_slope_inter(0.5, -20.0)
    nib.save(img, tmp_path / "scaled.nii")
    loaded = nib.load(tmp_path / "scaled.nii")
    datasets, _, back = round_trip(loaded, tmp_path)
    assert (str(datasets[0].RescaleSlope), str(datasets[0].RescaleIntercept)) == ("0.5", "-20")
    np.testing.assert_allclose(canonical(back)[1], canonical(loaded)[1], atol=1e-6)


def test_wide_and_tiny_ranges_are_not_inverted() -> None:
    for kind in ("wide", "tiny"):
        data = synthetic_volume(kind)
        datasets = nifti_to_dicom(nib.Nifti1Image(data, np.eye(4)), "MR")
        slope, intercept = float(datasets[0].RescaleSlope), float(datasets[0].RescaleIntercept)
        assert slope > 0
        assert intercept == pytest.approx(float(data.min()), abs=slope)
        # decode every slice ourselves: stored * slope + intercept ~ value
        for k, ds in enumerate(datasets):
            stored = np.frombuffer(ds.PixelData, dtype="<u2").reshape(ds.Rows, ds.Columns)
            decoded = stored * slope + intercept
            assert sorted(decoded.ravel()) == pytest.approx(
                sorted(np.asarray(data[:, :, k], dtype=np.float64).ravel()), abs=slope / 2 + 1e-12
            )


def test_nan_is_stored_as_zero_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    data = synthetic_volume("float_prob")
    data[0, 0, 0] = np.nan
    with caplog.at_level(logging.WARNING, logger="dcm_processor_service"):
        datasets = nifti_to_dicom(nib.Nifti1Image(data, np.eye(4)), "OT")
    assert "NaN" in caplog.text
    assert all(len(ds.PixelData) == ds.Rows * ds.Columns * 2 for ds in datasets)


def test_secondary_capture_uint8_uses_8_bits(tmp_path: Path) -> None:
    data = synthetic_volume("uint8_labels")
    datasets, _, back = round_trip(nib.Nifti1Image(data, make_affine("sagittal")), tmp_path, "OT")
    first = datasets[0]
    assert first.SOPClassUID == SecondaryCaptureImageStorage
    assert (first.BitsAllocated, first.PixelRepresentation, first.Modality) == (8, 0, "OT")
    assert first.ConversionType == "WSD"
    np.testing.assert_array_equal(
        canonical(back)[1], canonical(nib.Nifti1Image(data, make_affine("sagittal")))[1]
    )


@pytest.mark.parametrize(
    ("modality", "sop_class_uid", "expected"),
    [
        ("CT", None, CTImageStorage),
        ("mr", None, MRImageStorage),
        ("PT", None, SecondaryCaptureImageStorage),
        ("OT", SecondaryCaptureImageStorage, SecondaryCaptureImageStorage),
        ("CT", SecondaryCaptureImageStorage, SecondaryCaptureImageStorage),
    ],
)
def test_sop_class_choice(modality: str, sop_class_uid: str | None, expected: str) -> None:
    datasets = nifti_to_dicom(
        nib.Nifti1Image(synthetic_volume("int16_hu", (8, 6, 2)), np.eye(4)),
        modality,
        sop_class_uid=sop_class_uid,
    )
    assert {ds.SOPClassUID for ds in datasets} == {expected}
    assert datasets[0].Modality == modality.upper()
    assert datasets[0].file_meta.MediaStorageSOPClassUID == expected


def test_mr_has_spacing_between_slices() -> None:
    img = nib.Nifti1Image(
        synthetic_volume("int16_hu", (8, 6, 3)), make_affine("axial", (1, 1, 3.3))
    )
    first = nifti_to_dicom(img, "MR")[0]
    assert float(first.SpacingBetweenSlices) == pytest.approx(3.3)
    assert float(first.SliceThickness) == pytest.approx(3.3)


def test_positions_follow_the_affine_slice_by_slice() -> None:
    affine = make_affine("oblique", (0.6, 0.9, 1.7))
    datasets = nifti_to_dicom(nib.Nifti1Image(synthetic_volume("int16_hu"), affine), "CT")
    lps = np.diag([-1.0, -1.0, 1.0])
    positions = {tuple(np.round([float(v) for v in ds.ImagePositionPatient], 6)) for ds in datasets}
    # every DICOM position is the world position of a corner voxel of slice k
    for k, ds in enumerate(datasets):
        ipp = np.array([float(v) for v in ds.ImagePositionPatient])
        corners = [
            lps @ (affine @ [i, j, k, 1])[:3]
            for i in (0, synthetic_volume("int16_hu").shape[0] - 1)
            for j in (0, synthetic_volume("int16_hu").shape[1] - 1)
        ]
        assert min(np.linalg.norm(ipp - c) for c in corners) < 1e-9
        assert ds.InstanceNumber == k + 1
    assert len(positions) == len(datasets)


# --------------------------------------------------------------------------- validators


@pytest.mark.parametrize("modality", ["CT", "MR", "OT"])
def test_generated_series_pass_dciodvfy_and_dcentvfy(modality: str, tmp_path: Path) -> None:
    img = nib.Nifti1Image(synthetic_volume("float_prob", (16, 12, 3)), make_affine("oblique"))
    datasets = nifti_to_dicom(img, modality, "validated", algorithm=AlgorithmInfo("Net", "1.0"))
    files = write_datasets(datasets, tmp_path)
    for path in files:
        errors, report = dciodvfy(path)
        assert errors == [], report
    errors, report = dcentvfy(files)
    assert errors == [], report


@pytest.mark.parametrize("modality", ["CT", "OT"])
def test_joined_to_reference_study(modality: str, tmp_path: Path) -> None:
    ref_files = make_ct_series(tmp_path / "ref", 4, 12, 10)
    ref = pydicom.dcmread(ref_files[0])
    img = nib.Nifti1Image(synthetic_volume("uint8_labels", (10, 12, 4)), make_affine("axial"))
    datasets = nifti_to_dicom(
        img, modality, "AI labels", ref_dcm=ref, algorithm=AlgorithmInfo("Seg", "3")
    )
    for ds in datasets:
        assert ds.StudyInstanceUID == ref.StudyInstanceUID
        assert ds.PatientID == ref.PatientID
        assert str(ds.PatientName) == "Müller^Jürgen"
        assert ds.SpecificCharacterSet == "ISO_IR 100"  # the reference's, names fit it
        assert ds.FrameOfReferenceUID == ref.FrameOfReferenceUID
        assert ds.SeriesNumber == ref.SeriesNumber + 1000
        assert ds.SeriesDescription == "AI labels"
        assert ds.ContributingEquipmentSequence[0].ManufacturerModelName == "Seg"
    assert len({ds.SeriesInstanceUID for ds in datasets}) == 1
    assert datasets[0].SeriesInstanceUID != ref.SeriesInstanceUID
    files = write_datasets(datasets, tmp_path / "out")
    errors, report = dcentvfy([*ref_files, *files])
    assert errors == [], report
    for path in files:
        errors, report = dciodvfy(path)
        assert errors == [], report


def test_standalone_header_is_complete() -> None:
    datasets = nifti_to_dicom(
        nib.Nifti1Image(synthetic_volume("int16_hu", (6, 6, 2)), np.eye(4)),
        "CT",
        study_instance_uid="1.2.3.4",
        patient={"PatientName": "Doe^Jane", "PatientID": "P-77"},
    )
    first = datasets[0]
    assert first.StudyInstanceUID == "1.2.3.4"
    assert (str(first.PatientName), first.PatientID) == ("Doe^Jane", "P-77")
    assert first.FrameOfReferenceUID and first.SeriesInstanceUID
    assert first.StudyInstanceUID == datasets[1].StudyInstanceUID
    assert first.SOPInstanceUID != datasets[1].SOPInstanceUID
    default = nifti_to_dicom(
        nib.Nifti1Image(synthetic_volume("int16_hu", (6, 6, 2)), np.eye(4)), "CT"
    )[0]
    assert default.PatientID.startswith("ANON") and default.StudyInstanceUID


def test_memory_stays_below_the_volume_size() -> None:
    """No float64 (or even float32) copy of the whole volume is made."""
    data = np.random.default_rng(1).random((256, 256, 40), dtype=np.float32)
    img = nib.Nifti1Image(data, np.eye(4))
    tracemalloc.start()
    try:
        datasets = nifti_to_dicom(img, "CT")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    stored = sum(len(ds.PixelData) for ds in datasets)
    assert stored == data.size * 2
    assert peak < data.nbytes, f"peak {peak / 1e6:.1f} MB for a {data.nbytes / 1e6:.1f} MB volume"


@pytest.mark.parametrize(
    ("shape", "match"),
    [((8, 8), "3-D volume"), ((8, 8, 4, 2), "3-D volume"), ((8, 8, 0), "empty")],
)
def test_bad_volume_shapes(shape: tuple[int, ...], match: str) -> None:
    with pytest.raises(InvalidInputError, match=match):
        nifti_to_dicom(nib.Nifti1Image(np.zeros(shape, np.int16), np.eye(4)), "CT")


def test_4d_with_one_volume_is_accepted() -> None:
    datasets = nifti_to_dicom(nib.Nifti1Image(np.zeros((8, 8, 3, 1), np.int16), np.eye(4)), "CT")
    assert len(datasets) == 3


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"modality": ""}, "modality"),
        ({"modality": "C T"}, "modality"),
        ({"modality": "MR", "sop_class_uid": CTImageStorage}, "needs modality 'CT'"),
        ({"modality": "CT", "sop_class_uid": "1.2.3"}, "sop_class_uid"),
        ({"modality": "CT", "series_description": "x" * 65}, "64 characters"),
        ({"modality": "CT", "series_number": -1}, "series_number"),
    ],
)
def test_bad_arguments(kwargs: dict, match: str) -> None:
    img = nib.Nifti1Image(np.zeros((4, 4, 2), np.int16), np.eye(4))
    with pytest.raises(InvalidInputError, match=match):
        nifti_to_dicom(img, **kwargs)


def test_sheared_in_plane_axes_are_refused() -> None:
    affine = np.eye(4)
    affine[0, 1] = 0.5  # j axis leans into x: pixels are not rectangular
    with pytest.raises(InvalidInputError, match="not perpendicular"):
        nifti_to_dicom(nib.Nifti1Image(np.zeros((4, 4, 2), np.int16), affine), "CT")


def test_reference_without_identity_is_refused(tmp_path: Path) -> None:
    ref = pydicom.Dataset()
    ref.Modality = "CT"
    with pytest.raises(DicomInputError, match="StudyInstanceUID"):
        nifti_to_dicom(nib.Nifti1Image(np.zeros((4, 4, 2), np.int16), np.eye(4)), "CT", ref_dcm=ref)


def test_conflicting_study_and_reference(tmp_path: Path) -> None:
    ref = pydicom.dcmread(make_ct_series(tmp_path, 1, 4, 4)[0])
    with pytest.raises(InvalidInputError, match="differs"):
        nifti_to_dicom(
            nib.Nifti1Image(np.zeros((4, 4, 2), np.int16), np.eye(4)),
            "CT",
            study_instance_uid="1.2.3",
            ref_dcm=ref,
        )


def test_complex_data_is_refused() -> None:
    with pytest.raises(InvalidInputError, match="data type"):
        nifti_to_dicom(nib.Nifti1Image(np.zeros((4, 4, 2), np.complex64), np.eye(4)), "CT")


# --------------------------------------------------------------------------- DICOM -> NIfTI


def test_dcm2niix_comes_from_the_pypi_package() -> None:
    import dcm2niix

    assert find_dcm2niix() == str(dcm2niix.bin)


def test_series_to_nifti_matches_the_dcm2niix_cli(tmp_path: Path) -> None:
    reference = nib.load(run_dcm2niix(CT5N, tmp_path / "cli"))
    cli_sidecar = json.loads(next((tmp_path / "cli").glob("*.json")).read_text())

    nifti_path, json_path, nothing = series_files_to_nifti(CT5N, tmp_path / "ours" / "ct.nii")
    assert nothing is None
    assert nifti_path == str(tmp_path / "ours" / "ct.nii")
    assert json_path == str(tmp_path / "ours" / "ct.json")
    assert sorted(p.name for p in (tmp_path / "ours").iterdir()) == ["ct.json", "ct.nii"]
    ours = nib.load(nifti_path)
    np.testing.assert_array_equal(ours.affine, reference.affine)
    np.testing.assert_array_equal(np.asarray(ours.dataobj), np.asarray(reference.dataobj))
    assert ours.get_data_dtype() == reference.get_data_dtype()

    sidecar = json.loads(Path(json_path).read_text())
    for key, value in cli_sidecar.items():  # BIDS keys that DICOM keywords do not override
        if key not in (
            "SeriesNumber",
            "ImageType",
            "Modality",
            "Manufacturer",
            "SeriesDescription",
            "ProtocolName",
            "AcquisitionTime",
            "SoftwareVersions",
            "PatientPosition",
            "ScanOptions",
            "ConvolutionKernel",
            "ExposureTime",
            "XRayTubeCurrent",
            "AcquisitionNumber",
            "InstitutionalDepartmentName",
            "DeidentificationMethod",
            "ManufacturersModelName",
            "XRayExposure",
        ):
            assert sidecar[key] == value, key
    # the sidecar describes the series' first slice in slice order (lowest position along
    # the normal), not the first file name
    headers = [pydicom.dcmread(p, stop_before_pixels=True) for p in sorted(CT5N.iterdir())]
    first = headers[dps.order_slices(headers)[0]]
    assert min(float(h.ImagePositionPatient[2]) for h in headers) == first.ImagePositionPatient[2]
    assert sidecar["Slices"] == 5
    assert sidecar["SeriesInstanceUID"] == first.SeriesInstanceUID
    assert sidecar["SOPInstanceUID"] == first.SOPInstanceUID
    assert sidecar["PatientName"] == str(first.PatientName)
    assert sidecar["ConversionSoftware"] == "dcm2niix"

    image, header, array = series_files_to_nifti(CT5N)
    assert array.dtype == np.float32
    np.testing.assert_array_equal(array, reference.get_fdata(dtype=np.float32))
    np.testing.assert_array_equal(image.affine, reference.affine)
    assert image.dataobj is array
    assert header == sidecar


def test_series_as_file_list_and_datasets(tmp_path: Path) -> None:
    files = sorted(CT5N.iterdir())
    reference = nib.load(run_dcm2niix(CT5N, tmp_path / "cli")).get_fdata()
    _, _, from_files = series_files_to_nifti([str(f) for f in files])
    _, _, from_datasets = series_files_to_nifti([pydicom.dcmread(f) for f in files])
    np.testing.assert_array_equal(from_files, reference)
    np.testing.assert_array_equal(from_datasets, reference)
    _, _, first_three = series_files_to_nifti(files[:3])
    assert first_three.shape[2] == 3


def test_compression_follows_the_file_name(tmp_path: Path) -> None:
    assert dicom_series_to_nifti(CT5N, tmp_path / "a.nii.gz") == 5
    assert (tmp_path / "a.nii.gz").read_bytes()[:2] == b"\x1f\x8b"
    with gzip.open(tmp_path / "a.nii.gz") as fh:
        assert len(fh.read()) > 0
    assert dicom_series_to_nifti(CT5N, tmp_path / "b.nii", compress=False) == 5
    assert (tmp_path / "b.nii").read_bytes()[:2] != b"\x1f\x8b"
    assert dicom_series_to_nifti(CT5N, tmp_path / "c.nii.gz", compression_level=1) == 5
    a, b = nib.load(tmp_path / "a.nii.gz"), nib.load(tmp_path / "b.nii")
    np.testing.assert_array_equal(a.get_fdata(), b.get_fdata())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.nii.gz", "b.nii", "c.nii.gz"]


@pytest.mark.parametrize(
    ("name", "kwargs", "match"),
    [
        ("x.nii", {"compress": True}, "contradicts"),
        ("x.nii.gz", {"compress": False}, "contradicts"),
        ("x.img", {}, "must end with"),
        ("x.nii", {"compression_level": 12}, "compression_level"),
    ],
)
def test_bad_output_names(name: str, kwargs: dict, match: str, tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match=match):
        dicom_series_to_nifti(CT5N, tmp_path / name, **kwargs)


def test_dcm2niix_failure_raises_with_its_message(tmp_path: Path) -> None:
    empty = tmp_path / "not-dicom"
    empty.mkdir()
    (empty / "readme.txt").write_text("hello")
    with pytest.raises(
        ConversionError, match=r"dcm2niix could not convert .*Unable to find any DICOM"
    ):
        dicom_series_to_nifti(empty, tmp_path / "out.nii")
    assert [p.name for p in tmp_path.iterdir()] == ["not-dicom"]  # no temp dir left
    with pytest.raises(InvalidInputError, match="no such directory"):
        dicom_series_to_nifti(tmp_path / "missing", tmp_path / "out.nii")


def test_several_volumes_keep_the_main_one(tmp_path: Path) -> None:
    # CT2 has uneven slice spacing: dcm2niix writes the stack and an equalised _Eq copy
    ct2 = TEST_FILES / "dicomdirtests" / "77654033" / "CT2"
    assert dicom_series_to_nifti(ct2, tmp_path / "ct2.nii") == 8  # the _Eq volume (more voxels)
    # MR700: seven localizers in different planes -> seven single-slice volumes
    mr700 = TEST_FILES / "dicomdirtests" / "98892003" / "MR700"
    assert dicom_series_to_nifti(mr700, tmp_path / "mr.nii") == 1


def test_sidecar_describes_the_chosen_series_and_dcm2niix_is_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # MR2: three series (localizers) in one folder; files sorted by name start with another
    mr2 = TEST_FILES / "dicomdirtests" / "98892003" / "MR2"
    with caplog.at_level(logging.DEBUG, logger="dcm_processor_service.imaging.nifti_read"):
        _, json_path, _ = series_files_to_nifti(mr2, tmp_path / "mr2.nii.gz")
    sidecar = json.loads(Path(json_path).read_text())
    uids = {pydicom.dcmread(f, stop_before_pixels=True).SeriesInstanceUID for f in mr2.iterdir()}
    assert sidecar["SeriesInstanceUID"] in uids
    chosen = [
        pydicom.dcmread(f, stop_before_pixels=True)
        for f in sorted(mr2.iterdir())
        if pydicom.dcmread(f, stop_before_pixels=True).SeriesInstanceUID
        == sidecar["SeriesInstanceUID"]
    ]
    assert sidecar["SOPInstanceUID"] == chosen[0].SOPInstanceUID
    messages = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("dcm2niix: Found 7 DICOM") for m in messages)
    assert any("wrote 7 volumes" in m for m in messages)


def test_in_memory_datasets_are_not_modified() -> None:
    files = sorted(CT5N.iterdir())
    datasets = [pydicom.dcmread(f) for f in files]
    for ds in datasets:
        del ds.file_meta
    _, _, array = series_files_to_nifti(datasets)
    assert array.shape[2] == 5
    assert not any(hasattr(ds, "file_meta") for ds in datasets)


def test_choose_main_volume_rules(tmp_path: Path) -> None:
    def save(name: str, shape: tuple[int, ...], zooms: tuple[float, ...], dtype: type) -> Path:
        img = nib.Nifti1Image(np.zeros(shape, dtype), np.diag([*zooms, 1.0]))
        path = tmp_path / name
        nib.save(img, path)
        return path

    big_roi = save("s_ROI1.nii", (20, 20, 20), (1, 1, 1), np.uint8)
    small = save("s.nii", (10, 10, 10), (1, 1, 1), np.int16)
    assert choose_main_volume([big_roi, small]) == small
    larger = save("s_e2.nii", (10, 10, 12), (1, 1, 1), np.int16)
    assert choose_main_volume([small, larger]) == larger
    finer = save("s_a.nii", (10, 10, 12), (0.5, 1, 1), np.int16)
    assert choose_main_volume([larger, finer]) == finer
    wider = save("s_b.nii", (10, 10, 12), (0.5, 1, 1), np.float32)
    assert choose_main_volume([finer, wider]) == wider


# --------------------------------------------------------------------------- simplified JSON


def test_simplified_json_of_a_real_header() -> None:
    ds = pydicom.dcmread(TEST_FILES / "CT_small.dcm")
    header = get_simplified_json(ds, n_slices=12)
    json.dumps(header, allow_nan=False)  # strictly JSON
    assert "PixelData" not in header
    assert header["Slices"] == 12
    assert header["PatientName"] == str(ds.PatientName)
    assert header["Rows"] == ds.Rows and isinstance(header["Rows"], int)
    assert header["PixelSpacing"] == [float(v) for v in ds.PixelSpacing]
    assert header["SliceThickness"] == float(ds.SliceThickness)
    assert header["ImageType"] == list(ds.ImageType)
    assert header["StudyDate"] == ds.StudyDate
    assert header["SOPInstanceUID"] == ds.SOPInstanceUID
    assert not any(key == "" for key in header)
    assert all(not isinstance(v, bytes) for v in header.values())


def test_simplified_json_types_and_sequences() -> None:
    ds = pydicom.Dataset()
    ds.PatientName = "Doe^John"
    ds.PatientAge = "045Y"
    ds.InstanceNumber = "7"
    ds.ImagePositionPatient = ["1.5", "-2", "3e2"]
    ds.WindowCenter = "40"
    ds.StudyDescription = ""
    ds.PixelData = b"\x00\x01"
    ds.add_new(0x00291010, "OB", b"private")
    ds.add_new(0x00091001, "LO", "private text")
    item = pydicom.Dataset()
    item.CodeValue = "123"
    item.CodeMeaning = "Thing"
    ds.ProcedureCodeSequence = [item]
    header = get_simplified_json(ds)
    assert header == {
        "PatientName": "Doe^John",
        "PatientAge": 45,
        "InstanceNumber": 7,
        "ImagePositionPatient": [1.5, -2.0, 300.0],
        "WindowCenter": 40.0,
        "StudyDescription": None,
        "ProcedureCodeSequence": [{"CodeValue": "123", "CodeMeaning": "Thing"}],
    }
    assert "ProcedureCodeSequence" not in get_simplified_json(ds, sequences=False)


@pytest.mark.parametrize(
    ("age", "years"),
    [
        ("045Y", 45),
        ("018M", 1),
        ("011M", 0),
        ("003W", 0),
        ("400D", 1),
        ("45", 45),
        ("", None),
        ("abc", None),
        (None, None),
    ],
)
def test_patient_age_parsing(age: str | None, years: int | None) -> None:
    assert parse_patient_age(age) == years


def test_simplified_json_bad_input(tmp_path: Path) -> None:
    (tmp_path / "x.dcm").write_bytes(b"not dicom")
    with pytest.raises(DicomInputError, match="not a readable DICOM"):
        get_simplified_json(tmp_path / "x.dcm")
    with pytest.raises(InvalidInputError, match="n_slices"):
        get_simplified_json(pydicom.Dataset(), n_slices=-1)


def test_no_stray_files_after_in_memory_conversion(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)
    series_files_to_nifti(CT5N)
    assert list(tmp_path.iterdir()) == []
