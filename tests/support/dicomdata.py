"""Real and synthetic DICOM for tests and benchmarks.

Real files: pydicom's bundled test data, located through ``DATA_ROOT`` and globbed
directly — never ``get_testdata_file(s)``, which try the network for files that are not
bundled. Synthetic files: :func:`write_ct_series` writes an axial CT volume of any size
(used by the benchmark with 300 slices of 512 x 512) with a complete, independent header.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from pydicom import dcmwrite
from pydicom.data.data_manager import DATA_ROOT
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

__all__ = [
    "DICOMDIR_TESTS",
    "TEST_FILES",
    "files_in",
    "platform_patient_uid",
    "sha256_file",
    "test_file",
    "write_ct_series",
]

#: pydicom's bundled test files.
TEST_FILES = Path(DATA_ROOT) / "test_files"
#: The DICOMDIR test set: 3 patients, studies, series (CT, CR, MR) and DICOMDIR variants.
DICOMDIR_TESTS = TEST_FILES / "dicomdirtests"


def test_file(relative: str) -> Path:
    """A bundled test file or folder (``"CT_small.dcm"``, ``"dicomdirtests/98892001/CT5N"``);
    skips the test when this pydicom build lacks it."""
    path = TEST_FILES / relative
    if not path.exists():
        import pytest

        pytest.skip(f"pydicom test data {relative!r} is not bundled with this pydicom")
    return path


test_file.__test__ = False  # type: ignore[attr-defined]  # not a test, despite the name


def files_in(folder: str | os.PathLike[str]) -> list[Path]:
    """Every regular file below ``folder``, sorted."""
    return sorted(p for p in Path(folder).rglob("*") if p.is_file())


def platform_patient_uid(key_text: str) -> str:
    """The PatientUID the platform gives a patient whose key text (``"<PatientID>"``,
    ``"<PatientID>::<Issuer>"``, ``"<Name>::<Birth>::<Sex>"`` or the StudyInstanceUID)
    is ``key_text``: its sha256 in hex (written out here, independent of the code)."""
    return hashlib.sha256(key_text.encode("utf-8")).hexdigest()


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def write_ct_series(
    directory: str | os.PathLike[str],
    n_slices: int = 8,
    rows: int = 32,
    columns: int = 32,
    *,
    spacing: tuple[float, float, float] = (0.7, 0.7, 1.5),
    orientation: Sequence[float] = (1, 0, 0, 0, 1, 0),
    patient_id: str = "SYN-1",
    series_description: str = "SYNTHETIC CT",
    series_number: int = 2,
    study_uid: str | None = None,
    names: Iterable[str] | None = None,
    seed: int = 0,
) -> list[Path]:
    """Write an uncompressed int16 CT series (one file per slice) and return the paths in
    slice order (ascending position along the normal).

    Slices step by ``spacing[2]`` along the normal of ``orientation``; InstanceNumber
    runs 1..n in that order. Files are named ``names`` (default ``IM<k>`` in a shuffled
    order, so the directory order is not the slice order). Pixel data: a smooth ramp plus
    noise, different per slice.
    """
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    row_dir = np.asarray(orientation[:3], dtype=float)
    col_dir = np.asarray(orientation[3:], dtype=float)
    normal = np.cross(row_dir, col_dir)
    normal /= np.linalg.norm(normal)
    if names is None:
        order = rng.permutation(n_slices)
        names = [f"IM{int(i):05d}" for i in order]
    file_names = list(names)
    if len(file_names) != n_slices:
        raise ValueError(f"{len(file_names)} names for {n_slices} slices")

    now = dt.datetime(2024, 5, 6, 7, 8, 9)
    base = Dataset()
    base.SpecificCharacterSet = "ISO_IR 100"
    base.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    base.SOPClassUID = CTImageStorage
    base.StudyDate = base.SeriesDate = base.ContentDate = now.strftime("%Y%m%d")
    base.StudyTime = base.SeriesTime = base.ContentTime = now.strftime("%H%M%S")
    base.AccessionNumber = "A1"
    base.Modality = "CT"
    base.Manufacturer = "SYNTH"
    base.ReferringPhysicianName = ""
    base.StudyDescription = "SYNTHETIC STUDY"
    base.SeriesDescription = series_description
    base.PatientName = "Synthetic^Patient"
    base.PatientID = patient_id
    base.PatientBirthDate = "19700101"
    base.PatientSex = "O"
    base.BodyPartExamined = "CHEST"
    base.SliceThickness = f"{spacing[2]:g}"
    base.KVP = "120"
    base.PatientPosition = "HFS"
    base.StudyInstanceUID = study_uid or generate_uid()
    base.SeriesInstanceUID = generate_uid()
    base.StudyID = "1"
    base.SeriesNumber = series_number
    base.AcquisitionNumber = 1
    base.FrameOfReferenceUID = generate_uid()
    base.PositionReferenceIndicator = ""
    base.ImageOrientationPatient = [f"{v:g}" for v in orientation]
    base.SamplesPerPixel = 1
    base.PhotometricInterpretation = "MONOCHROME2"
    base.Rows = rows
    base.Columns = columns
    base.PixelSpacing = [f"{spacing[1]:g}", f"{spacing[0]:g}"]
    base.BitsAllocated = 16
    base.BitsStored = 16
    base.HighBit = 15
    base.PixelRepresentation = 1
    base.RescaleIntercept = "0"
    base.RescaleSlope = "1"

    ramp = (np.add.outer(np.arange(rows), np.arange(columns)) % 2000 - 1000).astype(np.int16)
    noise = rng.integers(-50, 50, size=(rows, columns), dtype=np.int16)
    origin = np.asarray([-0.5 * columns * spacing[0], -0.5 * rows * spacing[1], -100.0])
    paths = []
    for k in range(n_slices):
        ds = Dataset()
        ds.update(base)
        ds.SOPInstanceUID = generate_uid()
        ds.InstanceNumber = k + 1
        position = origin + k * spacing[2] * normal
        ds.ImagePositionPatient = [f"{v:.4f}" for v in position]
        ds.SliceLocation = f"{float(position @ normal):.4f}"
        ds.PixelData = (ramp + np.roll(noise, k, axis=1) + k).astype("<i2").tobytes()
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = ds.SOPClassUID
        meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta = meta
        path = out / file_names[k]
        dcmwrite(path, ds, enforce_file_format=True)
        paths.append(path)
    return paths
