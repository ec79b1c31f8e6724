"""Imaging test helpers: bundled test data, synthetic volumes and series, real validators.

Everything here runs the real tools (dcm2niix, dciodvfy, dcentvfy); nothing is mocked.
Test data are globbed from pydicom's bundled folder - never through
``get_testdata_file`` (it silently tries the network).
"""

from __future__ import annotations

import datetime as dt
import math
import os
import subprocess
from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
from pydicom.data.data_manager import DATA_ROOT
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

TEST_FILES = Path(DATA_ROOT) / "test_files"
CT5N = TEST_FILES / "dicomdirtests" / "98892001" / "CT5N"  # 5 axial CT slices, 2.5 mm apart


def dcm2niix_binary() -> str:
    """The dcm2niix binary shipped by the dcm2niix PyPI package."""
    import dcm2niix

    return str(dcm2niix.bin)


# ----------------------------------------------------------------------------- affines


def rotation(axis: str, degrees: float) -> np.ndarray:
    """3x3 rotation about x, y or z."""
    a = math.radians(degrees)
    c, s = math.cos(a), math.sin(a)
    if axis == "x":
        return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])
    if axis == "y":
        return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])


def make_affine(
    orientation: str,
    spacing: Sequence[float] = (0.7, 0.8, 2.5),
    origin: Sequence[float] = (-90.0, 110.0, -40.0),
) -> np.ndarray:
    """A RAS affine whose third (slice) axis is along the named plane's normal.

    ``axial``: i->R, j->A, k->S (the usual NIfTI layout); ``axial_lps``: i->L, j->P
    (dcm2niix-like flips); ``coronal``: i->R, j->S, k->A; ``sagittal``: i->A, j->S,
    k->R; ``oblique``: axial rotated 20 deg about x then 25 deg about z.
    """
    columns = {
        "axial": np.eye(3),
        "axial_lps": np.diag([-1.0, -1.0, 1.0]),
        "coronal": np.array([[1, 0, 0], [0, 0, 1], [0, 1, 0]], dtype=float),
        "sagittal": np.array([[0, 0, 1], [1, 0, 0], [0, 1, 0]], dtype=float),
        "oblique": rotation("z", 25) @ rotation("x", 20),
    }[orientation]
    affine = np.eye(4)
    affine[:3, :3] = columns @ np.diag(spacing)
    affine[:3, 3] = origin
    return affine


# ----------------------------------------------------------------------------- volumes


def synthetic_volume(kind: str, shape: Sequence[int] = (24, 20, 6), seed: int = 0) -> np.ndarray:
    """Test volumes: ``int16_hu``, ``uint8_labels``, ``float_prob``, ``wide`` (0..1e6
    float), ``tiny`` (-1e-3..1e-3 float), ``int32_offset`` (integers 100000..160000)."""
    rng = np.random.default_rng(seed)
    shape = tuple(shape)
    if kind == "int16_hu":
        data = rng.integers(-1024, 3072, size=shape).astype(np.int16)
        data.flat[0], data.flat[1] = -1024, 3071
        return data
    if kind == "uint8_labels":
        return rng.integers(0, 5, size=shape).astype(np.uint8)
    if kind == "float_prob":
        data = rng.random(shape, dtype=np.float32)
        data.flat[0], data.flat[1] = 0.0, 1.0
        return data
    if kind == "wide":
        data = rng.uniform(0, 1e6, size=shape)
        data.flat[0], data.flat[1] = 0.0, 1e6
        return data
    if kind == "tiny":
        data = rng.uniform(-1e-3, 1e-3, size=shape).astype(np.float32)
        data.flat[0], data.flat[1] = -1e-3, 1e-3
        return data
    if kind == "int32_offset":
        return rng.integers(100_000, 160_000, size=shape).astype(np.int32)
    raise ValueError(kind)


def canonical(img: nib.Nifti1Image) -> tuple[np.ndarray, np.ndarray]:
    """(affine, float64 data) of ``img`` reoriented to the closest RAS layout."""
    can = nib.as_closest_canonical(img)
    return can.affine, np.asarray(can.get_fdata(dtype=np.float64))


# ----------------------------------------------------------------------------- series


def make_ct_series(
    directory: str | os.PathLike[str],
    n_slices: int = 8,
    rows: int = 32,
    columns: int = 32,
    *,
    spacing: tuple[float, float, float] = (0.75, 0.75, 1.25),
    seed: int = 0,
    patient_id: str = "TEST-PAT-1",
    series_number: int = 3,
    pixels: np.ndarray | None = None,
) -> list[Path]:
    """Write an axial CT series (int16 HU stored as uint-offset with rescale -1024) with
    a complete header, independent of the code under test. ``pixels`` (slices, rows,
    cols) of int16 HU may be given; otherwise a smooth phantom plus noise is used."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    if pixels is None:
        rng = np.random.default_rng(seed)
        yy, xx = np.mgrid[0:rows, 0:columns]
        radius = np.sqrt((yy - rows / 2) ** 2 + (xx - columns / 2) ** 2)
        body = np.where(radius < min(rows, columns) * 0.4, 40, -1000).astype(np.int16)
        noise = rng.integers(-20, 20, size=(rows, columns), dtype=np.int16)
        pixels = np.empty((n_slices, rows, columns), dtype=np.int16)
        for k in range(n_slices):
            pixels[k] = body + np.roll(noise, k, axis=1) + k
    n_slices, rows, columns = pixels.shape
    study_uid, series_uid, frame_uid = generate_uid(), generate_uid(), generate_uid()
    now = dt.datetime(2024, 3, 5, 10, 30, 0)
    base = Dataset()
    base.SpecificCharacterSet = "ISO_IR 100"
    base.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    base.SOPClassUID = CTImageStorage
    base.StudyDate = base.SeriesDate = base.ContentDate = now.strftime("%Y%m%d")
    base.StudyTime = base.SeriesTime = base.ContentTime = now.strftime("%H%M%S")
    base.AccessionNumber = "ACC123"
    base.Modality = "CT"
    base.Manufacturer = "ACME"
    base.InstitutionName = "Test Hospital"
    base.ReferringPhysicianName = "Ref^Doctor"
    base.StationName = "CT1"
    base.StudyDescription = "CT CHEST"
    base.SeriesDescription = "AXIAL 1.25"
    base.ManufacturerModelName = "Scanner 9000"
    base.PatientName = "Müller^Jürgen"
    base.PatientID = patient_id
    base.PatientBirthDate = "19790215"
    base.PatientSex = "M"
    base.BodyPartExamined = "CHEST"
    base.SliceThickness = str(spacing[2])
    base.KVP = "120"
    base.PatientPosition = "HFS"
    base.StudyInstanceUID = study_uid
    base.SeriesInstanceUID = series_uid
    base.StudyID = "42"
    base.SeriesNumber = series_number
    base.AcquisitionNumber = 1
    base.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    base.FrameOfReferenceUID = frame_uid
    base.PositionReferenceIndicator = ""
    base.SamplesPerPixel = 1
    base.PhotometricInterpretation = "MONOCHROME2"
    base.Rows = rows
    base.Columns = columns
    base.PixelSpacing = [spacing[1], spacing[0]]
    base.BitsAllocated = 16
    base.BitsStored = 16
    base.HighBit = 15
    base.PixelRepresentation = 1
    base.RescaleIntercept = "0"
    base.RescaleSlope = "1"
    base.WindowCenter = "40"
    base.WindowWidth = "400"
    paths = []
    for k in range(n_slices):
        ds = Dataset()
        ds.update(base)
        ds.SOPInstanceUID = generate_uid()
        ds.InstanceNumber = k + 1
        z = -100.0 + k * spacing[2]
        ds.ImagePositionPatient = [-100.0, -120.0, z]
        ds.SliceLocation = z
        ds.PixelData = pixels[k].astype("<i2").tobytes()
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = ds.SOPClassUID
        meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta = meta
        path = out / f"CT{k + 1:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def read_series(paths: Sequence[str | os.PathLike[str]]) -> list[Dataset]:
    """Read every file of a series (with pixel data)."""
    return [pydicom.dcmread(p) for p in paths]


# ----------------------------------------------------------------------------- validators


def dciodvfy(path: str | os.PathLike[str]) -> tuple[list[str], str]:
    """Run David Clunie's dciodvfy; return (the "Error" lines, the whole report)."""
    done = subprocess.run(
        ["dciodvfy", os.fspath(path)],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    report = done.stderr + done.stdout
    errors = [line for line in report.splitlines() if line.startswith("Error")]
    return errors, report


def dcentvfy(paths: Sequence[str | os.PathLike[str]]) -> tuple[list[str], str]:
    """Run dcentvfy (consistency across the files of a series/study)."""
    done = subprocess.run(
        ["dcentvfy", *map(os.fspath, paths)],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    report = done.stderr + done.stdout
    errors = [line for line in report.splitlines() if line.startswith("Error")]
    return errors, report


def run_dcm2niix(input_dir: str | os.PathLike[str], output_dir: str | os.PathLike[str]) -> Path:
    """Run the dcm2niix CLI directly (uncompressed, BIDS sidecar); return the one NIfTI."""
    Path(output_dir).mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [
            dcm2niix_binary(),
            "-g", "i", "-b", "y", "-ba", "y", "-z", "n", "-f", "out",
            "-o", os.fspath(output_dir), os.fspath(input_dir),
        ],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        check=True,
        timeout=120,
    )  # fmt: skip
    produced = sorted(Path(output_dir).glob("*.nii"))
    assert len(produced) == 1, produced
    return produced[0]
