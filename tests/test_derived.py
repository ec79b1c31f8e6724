"""Derived series and PDF documents in a reference's patient/study (validated by dciodvfy)."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset

from dcm_processor_service import (
    AlgorithmInfo,
    DicomInputError,
    InvalidInputError,
    make_pdf_dicom,
    make_series_dicom,
    nifti_to_dicom,
    write_datasets,
)
from dcm_processor_service.imaging.reference import (
    apply_charset,
    copy_reference_tags,
    patient_age,
)
from support.imaging import TEST_FILES, dcentvfy, dciodvfy, make_affine, make_ct_series

PATIENT_STUDY = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyInstanceUID",
    "StudyDate",
    "StudyTime",
    "StudyID",
    "AccessionNumber",
    "ReferringPhysicianName",
    "StudyDescription",
)


@pytest.fixture
def ref_series(tmp_path: Path) -> list[Path]:
    return make_ct_series(tmp_path / "ref", 3, 8, 8)


@pytest.fixture
def ref(ref_series: list[Path]) -> Dataset:
    return pydicom.dcmread(ref_series[0])


def pdf_bytes(text: str = "AI report") -> bytes:
    from reportlab.pdfgen import canvas

    buffer = io.BytesIO()
    page = canvas.Canvas(buffer)
    page.drawString(72, 720, text)
    page.save()
    return buffer.getvalue()


# --------------------------------------------------------------------------- series


@pytest.mark.parametrize(
    ("orientation", "plane"),
    [("axial", "AXIAL"), ("coronal", "CORONAL"), ("sagittal", "SAGITTAL"), ("oblique", "OBLIQUE")],
)
def test_make_series_dicom(
    orientation: str, plane: str, ref: Dataset, ref_series, tmp_path
) -> None:
    volume = np.arange(8 * 8 * 3, dtype=np.int16).reshape(8, 8, 3)
    datasets = nifti_to_dicom(nib.Nifti1Image(volume, make_affine(orientation)), "CT")
    own_study = datasets[0].StudyInstanceUID
    algorithm = AlgorithmInfo("LungNet", "1.4.2", manufacturer="ACME AI")
    out = make_series_dicom(ref, datasets, "Derived lungs", algorithm=algorithm)
    assert out == datasets
    for ds in out:
        for keyword in PATIENT_STUDY:
            assert ds.get(keyword) == ref.get(keyword), keyword
        assert ds.StudyInstanceUID != own_study
        assert ds.ImageType == ["DERIVED", "SECONDARY", plane]
        assert ds.SeriesNumber == ref.SeriesNumber + 1000
        assert ds.SeriesDescription == "Derived lungs"
        assert (ds.Manufacturer, ds.InstitutionName, ds.StationName) == (
            ref.Manufacturer,
            ref.InstitutionName,
            ref.StationName,
        )
        assert ds.BodyPartExamined == "CHEST" and ds.PatientPosition == "HFS"
        assert ds.FrameOfReferenceUID == ref.FrameOfReferenceUID
        assert ds.PatientAge == "045Y"  # 1979-02-15 .. 2024-03-05
        item = ds.ContributingEquipmentSequence[0]
        assert (item.Manufacturer, item.ManufacturerModelName, item.SoftwareVersions) == (
            "ACME AI",
            "LungNet",
            "1.4.2",
        )
        assert item.PurposeOfReferenceCodeSequence[0].CodeValue == "109102"
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    assert len({ds.SeriesInstanceUID for ds in out}) == 1
    assert out[0].SeriesInstanceUID != ref.SeriesInstanceUID
    assert len({ds.SOPInstanceUID for ds in out}) == len(out)
    files = write_datasets(out, tmp_path / "derived")
    for path in files:
        errors, report = dciodvfy(path)
        assert errors == [], report
    errors, report = dcentvfy([*ref_series, *files])  # one study: patient/study consistent
    assert errors == [], report


def test_make_series_dicom_on_plain_datasets(ref: Dataset) -> None:
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.SOPInstanceUID = "1.2.3"
    out = make_series_dicom(ref, [ds], series_number=77)
    assert out[0].ImageType == ["DERIVED", "SECONDARY"]  # no orientation, no plane
    assert out[0].SeriesNumber == 77
    assert out[0].Modality == "CT"  # from the reference
    assert out[0].InstanceNumber == 1
    assert out[0].SOPInstanceUID != "1.2.3"
    assert "SeriesDescription" not in out[0]


def test_series_number_without_reference_number(ref: Dataset) -> None:
    del ref.SeriesNumber
    out = make_series_dicom(ref, [Dataset()])
    assert out[0].SeriesNumber == 1000


def test_reference_from_a_path(ref_series: list[Path]) -> None:
    out = make_series_dicom(ref_series[0], [Dataset()])
    assert out[0].PatientID == "TEST-PAT-1"


@pytest.mark.parametrize("missing", ["StudyInstanceUID", "patient"])
def test_reference_without_identity(ref: Dataset, missing: str) -> None:
    if missing == "patient":
        del ref.PatientID
        del ref.PatientName
        match = "PatientID or PatientName"
    else:
        del ref.StudyInstanceUID
        match = "StudyInstanceUID"
    with pytest.raises(DicomInputError, match=match):
        make_series_dicom(ref, [Dataset()])
    with pytest.raises(DicomInputError, match=match):
        make_pdf_dicom(ref, pdf_bytes())


def test_bad_series_arguments(ref: Dataset, tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="at least one dataset"):
        make_series_dicom(ref, [])
    with pytest.raises(InvalidInputError, match="pydicom Dataset"):
        make_series_dicom(ref, ["not a dataset"])  # type: ignore[list-item]
    with pytest.raises(InvalidInputError, match="series_number"):
        make_series_dicom(ref, [Dataset()], series_number="abc")  # type: ignore[arg-type]
    (tmp_path / "bad.dcm").write_bytes(b"junk")
    with pytest.raises(DicomInputError, match="not a readable DICOM"):
        make_series_dicom(tmp_path / "bad.dcm", [Dataset()])


def test_charset_follows_the_reference_or_utf8(ref: Dataset) -> None:
    latin = make_series_dicom(ref, [Dataset()], "Résumé")[0]
    assert latin.SpecificCharacterSet == "ISO_IR 100"
    greek = make_series_dicom(ref, [Dataset()], "Ωμέγα")[0]
    assert greek.SpecificCharacterSet == "ISO_IR 192"
    ascii_only = Dataset()
    ascii_only.PatientName = "Doe^John"
    assert "SpecificCharacterSet" not in apply_charset(ascii_only)
    buffer = io.BytesIO()
    greek.file_meta = pydicom.dataset.FileMetaDataset()
    greek.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    greek.save_as(buffer)
    back = pydicom.dcmread(io.BytesIO(buffer.getvalue()), force=True)
    assert back.SeriesDescription == "Ωμέγα" and str(back.PatientName) == "Müller^Jürgen"


@pytest.mark.parametrize(
    ("birth", "study", "age"),
    [
        ("19790215", "20240305", "045Y"),
        ("19790306", "20240305", "044Y"),
        ("20240110", "20240305", "055D"),
        ("20240101", "20240305", "002M"),
        ("20230101", "20240305", "014M"),
        ("", "20240305", None),
        ("20250101", "20240305", None),
    ],
)
def test_patient_age(birth: str, study: str, age: str | None) -> None:
    ds = Dataset()
    ds.PatientBirthDate = birth
    ds.StudyDate = study
    assert patient_age(ds) == age
    ds.PatientAge = "033Y"
    assert patient_age(ds) == "033Y"


def test_copy_reference_tags_deep_copies_sequences(ref: Dataset) -> None:
    item = Dataset()
    item.CodeValue = "X"
    item.CodingSchemeDesignator = "99TEST"
    item.CodeMeaning = "Test"
    ref.ProcedureCodeSequence = [item]
    target = copy_reference_tags(ref, Dataset())
    target.ProcedureCodeSequence[0].CodeValue = "Y"
    assert ref.ProcedureCodeSequence[0].CodeValue == "X"
    assert target.PatientName == ref.PatientName


# --------------------------------------------------------------------------- PDF


@pytest.mark.parametrize("form", ["base64-str", "base64-bytes", "bytes", "path"])
def test_make_pdf_dicom(form: str, ref: Dataset, tmp_path: Path) -> None:
    pdf = pdf_bytes()
    value: object = {
        "base64-str": base64.b64encode(pdf).decode(),
        "base64-bytes": base64.encodebytes(pdf),  # with line breaks
        "bytes": pdf,
        "path": tmp_path / "r.pdf",
    }[form]
    (tmp_path / "r.pdf").write_bytes(pdf)
    ds = make_pdf_dicom(ref, value, "AI report", algorithm=AlgorithmInfo("Reporter", "2"))
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.104.1"
    assert ds.MIMETypeOfEncapsulatedDocument == "application/pdf"
    assert ds.EncapsulatedDocumentLength == len(pdf)
    assert bytes(ds.EncapsulatedDocument)[: len(pdf)] == pdf
    assert ds.SeriesNumber == ref.SeriesNumber + 4000
    assert ds.SeriesDescription == ds.DocumentTitle == "AI report"
    assert ds.Modality == "DOC"
    for keyword in PATIENT_STUDY:
        assert ds.get(keyword) == ref.get(keyword), keyword
    assert ds.PatientAge == "045Y"
    assert ds.ContributingEquipmentSequence[0].ManufacturerModelName == "Reporter"
    path = tmp_path / "pdf.dcm"
    ds.save_as(path)
    errors, report = dciodvfy(path)
    assert errors == [], report
    back = pydicom.dcmread(path)
    assert bytes(back.EncapsulatedDocument)[: back.EncapsulatedDocumentLength] == pdf


def test_pdf_series_number_and_age_from_reference(ref: Dataset) -> None:
    ref.PatientAge = "050Y"
    ds = make_pdf_dicom(ref, pdf_bytes(), series_number=9)
    assert ds.SeriesNumber == 9
    assert ds.PatientAge == "050Y"
    assert ds.DocumentTitle == "Report"


@pytest.mark.parametrize(
    "value",
    [
        "not base64 and not a pdf!",
        base64.b64encode(b"plain text, no PDF"),
        b"GIF89a....",
        "",
    ],
)
def test_non_pdf_is_refused(ref: Dataset, value: object) -> None:
    with pytest.raises(InvalidInputError, match="not a PDF"):
        make_pdf_dicom(ref, value)  # type: ignore[arg-type]


def test_pdf_of_wrong_type(ref: Dataset) -> None:
    with pytest.raises(InvalidInputError, match="base64"):
        make_pdf_dicom(ref, 12345)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- writing


def test_write_datasets(tmp_path: Path) -> None:
    datasets = nifti_to_dicom(nib.Nifti1Image(np.zeros((4, 4, 12), np.int16), np.eye(4)), "CT")
    files = write_datasets(datasets, tmp_path / "out")
    assert [p.name for p in files] == sorted(p.name for p in (tmp_path / "out").iterdir())
    assert files[0].name == f"00001_{datasets[0].SOPInstanceUID}.dcm"
    back = [pydicom.dcmread(p) for p in files]
    assert [ds.SOPInstanceUID for ds in back] == [ds.SOPInstanceUID for ds in datasets]
    assert back[0].file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
    named = write_datasets(datasets[:2], tmp_path / "named", name_pattern="IM{InstanceNumber:04d}")
    assert [p.name for p in named] == ["IM0001", "IM0002"]
    with pytest.raises(InvalidInputError, match="same file name"):
        write_datasets(datasets[:2], tmp_path / "x", name_pattern="same.dcm")
    with pytest.raises(InvalidInputError, match="path separator"):
        write_datasets(datasets[:1], tmp_path / "x", name_pattern="../{index}")


def test_real_reference_file(tmp_path: Path) -> None:
    ref = pydicom.dcmread(TEST_FILES / "CT_small.dcm")
    datasets = nifti_to_dicom(
        nib.Nifti1Image(np.ones((6, 6, 2), np.int16), np.eye(4)), "CT", ref_dcm=ref
    )
    assert datasets[0].PatientName == ref.PatientName
    assert datasets[0].StudyInstanceUID == ref.StudyInstanceUID
    errors, report = dciodvfy(write_datasets(datasets, tmp_path)[0])
    assert errors == [], report
