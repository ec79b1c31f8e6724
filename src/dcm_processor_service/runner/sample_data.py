"""A small synthetic CT series for demos and tests (``dcm-service demo-data``).

The volume is a water cylinder (0 HU) in air (-1000 HU) with a bright sphere (400 HU)
in its middle, a little noise, axial slices, and complete CT Image headers (patient,
study, series, frame of reference, equipment, image plane and pixel modules) that pass
``dciodvfy``. 32 slices of 128 x 128 take about 1 MB.
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
from pathlib import Path

__all__ = ["make_sample_ct", "make_sample_data"]

logger = logging.getLogger(__name__)

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
SPHERE_HU = 400
WATER_HU = 0
AIR_HU = -1000


def make_sample_ct(
    out_dir: str | os.PathLike[str],
    *,
    slices: int = 32,
    size: int = 128,
    patient_id: str = "DEMO-001",
    patient_name: str = "Demo^Patient",
    series_description: str = "Synthetic CT with sphere",
    pixel_spacing: float = 1.5,
    slice_thickness: float = 3.0,
    sphere_radius_mm: float | None = None,
    seed: int = 0,
    study_uid: str | None = None,
) -> list[Path]:
    """Write a synthetic axial CT series to ``out_dir`` (``CT_0001.dcm`` ...) and return
    the file paths. The sphere's radius defaults to a quarter of the field of view."""
    import numpy as np
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, UID, ExplicitVRLittleEndian, generate_uid

    if slices < 1 or size < 8:
        raise ValueError(
            f"invalid sample size {slices} x {size}^2 - need at least 1 slice of 8 x 8"
        )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    now = _dt.datetime.now()
    study_uid = study_uid or generate_uid()
    series_uid = generate_uid()
    frame_uid = generate_uid()
    fov = size * pixel_spacing
    radius = sphere_radius_mm if sphere_radius_mm is not None else fov / 4
    depth = slices * slice_thickness
    radius = min(radius, depth / 2 * 0.9) if slices > 1 else radius
    # patient coordinates (LPS, mm): image centre at x = y = 0, z from 0 up
    coords = (np.arange(size) - (size - 1) / 2) * pixel_spacing
    yy, xx = np.meshgrid(coords, coords, indexing="ij")
    body = (xx / (fov * 0.42)) ** 2 + (yy / (fov * 0.36)) ** 2 <= 1.0
    centre_z = (slices - 1) * slice_thickness / 2
    intercept = -1024
    paths: list[Path] = []
    for i in range(slices):
        z = i * slice_thickness
        hu = np.full((size, size), AIR_HU, dtype=np.float32)
        hu[body] = WATER_HU
        sphere = xx**2 + yy**2 + (z - centre_z) ** 2 <= radius**2
        hu[sphere] = SPHERE_HU
        hu += rng.normal(0, 8, hu.shape).astype(np.float32)
        stored = np.clip(np.round(hu - intercept), -32768, 32767).astype(np.int16)

        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = UID(CT_IMAGE_STORAGE)
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
        ds = Dataset()
        ds.file_meta = meta
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.SOPClassUID = CT_IMAGE_STORAGE
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.StudyDate = ds.SeriesDate = ds.ContentDate = ds.AcquisitionDate = now.strftime("%Y%m%d")
        ds.StudyTime = ds.SeriesTime = ds.ContentTime = ds.AcquisitionTime = now.strftime("%H%M%S")
        ds.AccessionNumber = "DEMO0001"
        ds.Modality = "CT"
        ds.Manufacturer = "dcm-processor-service"
        ds.ManufacturerModelName = "synthetic"
        ds.ReferringPhysicianName = ""
        ds.StudyDescription = "Synthetic demo study"
        ds.SeriesDescription = series_description
        ds.PatientName = patient_name
        ds.PatientID = patient_id
        ds.PatientBirthDate = "19700101"
        ds.PatientSex = "O"
        ds.BodyPartExamined = "CHEST"
        ds.KVP = "120"
        ds.PatientPosition = "HFS"
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.StudyID = "1"
        ds.SeriesNumber = 1
        ds.AcquisitionNumber = 1
        ds.InstanceNumber = i + 1
        ds.PatientOrientation = ""
        ds.ImagePositionPatient = [f"{-(size - 1) / 2 * pixel_spacing:.4f}"] * 2 + [f"{z:.4f}"]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.FrameOfReferenceUID = frame_uid
        ds.PositionReferenceIndicator = ""
        ds.SliceLocation = f"{z:.4f}"
        ds.SliceThickness = f"{slice_thickness:g}"
        ds.PixelSpacing = [f"{pixel_spacing:g}", f"{pixel_spacing:g}"]
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows = size
        ds.Columns = size
        ds.BitsAllocated = 16
        ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 1
        ds.RescaleIntercept = str(intercept)
        ds.RescaleSlope = "1"
        ds.RescaleType = "HU"
        ds.WindowCenter = "40"
        ds.WindowWidth = "400"
        ds.PixelData = stored.tobytes()
        path = out / f"CT_{i + 1:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    logger.info("wrote %d synthetic CT slices (%d x %d) to %s", slices, size, size, out)
    return paths


def make_sample_data(
    out_dir: str | os.PathLike[str],
    *,
    patients: int = 1,
    slices: int = 32,
    size: int = 128,
    seed: int = 0,
) -> list[Path]:
    """One synthetic CT series per patient under ``out_dir`` (``patient-1/``, ... when
    more than one patient). Returns every file written."""
    if patients < 1:
        raise ValueError(f"invalid patients {patients} - need at least 1")
    out = Path(out_dir)
    paths: list[Path] = []
    for p in range(patients):
        folder = out if patients == 1 else out / f"patient-{p + 1}"
        paths += make_sample_ct(
            folder,
            slices=slices,
            size=size,
            patient_id=f"DEMO-{p + 1:03d}",
            patient_name=f"Demo^Patient{p + 1}",
            seed=seed + p,
        )
    return paths
