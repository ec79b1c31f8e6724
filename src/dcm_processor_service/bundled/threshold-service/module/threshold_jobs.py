"""Worker callbacks of the threshold service.

``segment`` (job "threshold", every stable CT/MR series): converts the series to NIfTI,
thresholds it, and stores as session files a NIfTI mask, a DICOM Segmentation, a PDF
report and the PDF wrapped as DICOM (Encapsulated PDF); the mask size goes into the
session data.

``deliver`` (job "deliver", dependsOn "threshold"): reads what "threshold" stored (by
``job_name``) and sends the DICOM objects to the session's peer - or logs that it
skipped the sending when the session has no peer.

Both have the platform's worker signature: the platform (and ``dcm-service run``) calls
them with keywords only - ``session_id``, ``job_name``, ``headers``, ``params``,
``added_params`` and, caught by ``**kwargs``, ``job_id``, ``event``, ``service_id``,
``worker_id``, ``worker_type``, ``db_provider``, ``db_name``, ``db_url``. They are
exported by this package's ``__init__.py``, which is what the manifest's bare
``workerEntry`` names refer to.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from pydicom import dcmread

from dcm_processor_service import (
    SegmentInfo,
    dicom_series_to_nifti,
    download_session_file,
    get_dicom_sender,
    get_series_dicom,
    get_session_data,
    make_pdf_dicom,
    make_segmentation,
    report_progress,
    set_session_data,
    upload_session_file,
)

from .report_pdf import build_report_pdf

logger = logging.getLogger("threshold_service")

#: Session files holding DICOM objects, in the order "deliver" sends them.
DICOM_OUTPUTS = ("segmentation.dcm", "report-pdf.dcm")


def segment(
    session_id: str,
    job_name: str,
    headers: dict[str, Any],
    params: dict[str, Any],
    added_params: dict[str, Any],
    **kwargs: Any,
) -> dict[str, Any]:
    """Threshold the series ``headers`` describes; store SEG, PDF and mask."""
    threshold = float(params.get("threshold", 150))
    label = str(params.get("label", "Above threshold"))
    metadata = headers.get("Metadata") or {}
    logger.info(
        "series %s (%s, %s slices): threshold %g",
        metadata.get("SeriesDescription", ""),
        metadata.get("Modality"),
        added_params.get(job_name, {}).get("slices"),
        threshold,
    )
    with tempfile.TemporaryDirectory(prefix="threshold-") as tmp:
        work = Path(tmp)
        report_progress(5, stage="export", message="reading the series")
        files = get_series_dicom(headers["_id"], dir_path=work / "dicom")
        report_progress(20, stage="convert", message="DICOM -> NIfTI (dcm2niix)")
        nifti_path = work / "series.nii.gz"
        n_slices = dicom_series_to_nifti(work / "dicom", nifti_path)
        image = nib.load(nifti_path)
        data = image.get_fdata(dtype=np.float32)

        report_progress(50, stage="threshold", message=f"voxels above {threshold:g}")
        mask = (data > threshold).astype(np.uint8)
        voxels = int(mask.sum())
        voxel_ml = float(np.prod(image.header.get_zooms()[:3])) / 1000.0
        volume_ml = round(voxels * voxel_ml, 3)
        mask_image = nib.Nifti1Image(mask, image.affine)
        nib.save(mask_image, work / "mask.nii.gz")
        upload_session_file(work / "mask.nii.gz", "mask.nii.gz", meta={"threshold": threshold})

        outputs: list[str] = []
        if voxels:
            report_progress(65, stage="segmentation", message="DICOM SEG")
            seg = make_segmentation(
                files,
                mask_image,
                {1: SegmentInfo(label)},
                series_description=f"Threshold > {threshold:g}",
            )
            seg.save_as(work / "segmentation.dcm")
            upload_session_file(
                work / "segmentation.dcm", "segmentation.dcm", content_type="application/dicom"
            )
            outputs.append("segmentation.dcm")
        else:
            logger.warning("no voxel above %g: no segmentation", threshold)

        report_progress(85, stage="report", message="PDF report")
        lines = [
            f"Patient: {metadata.get('PatientName', '')} ({metadata.get('PatientID', '')})",
            f"Series: {metadata.get('Modality', '')} #{metadata.get('SeriesNumber', '')} "
            f"{metadata.get('SeriesDescription', '')}",
            f"Slices: {n_slices}",
            f"Threshold: {threshold:g}",
            f"Voxels above threshold: {voxels}",
            f"Volume above threshold: {volume_ml:.1f} ml",
        ]
        pdf = build_report_pdf("Threshold report", lines)
        upload_session_file(pdf, "report.pdf", content_type="application/pdf")
        pdf_dicom = make_pdf_dicom(
            dcmread(files[0], stop_before_pixels=True), pdf, series_description="Threshold report"
        )
        pdf_dicom.save_as(work / "report-pdf.dcm", enforce_file_format=True)
        upload_session_file(
            work / "report-pdf.dcm", "report-pdf.dcm", content_type="application/dicom"
        )
        outputs.append("report-pdf.dcm")

    set_session_data("mask_voxels", voxels)
    set_session_data("mask_volume_ml", volume_ml)
    set_session_data("dicom_outputs", outputs)
    report_progress(100, stage="done", message=f"{voxels} voxels, {volume_ml:.1f} ml")
    return {"mask_voxels": voxels, "mask_volume_ml": volume_ml, "outputs": outputs}


def deliver(
    session_id: str,
    job_name: str,
    headers: dict[str, Any],
    params: dict[str, Any],
    added_params: dict[str, Any],
    **kwargs: Any,
) -> dict[str, Any]:
    """Send the DICOM outputs of job "threshold" to the session's peer."""
    voxels = get_session_data("mask_voxels", job_name="threshold")
    outputs = get_session_data("dicom_outputs", default=[], job_name="threshold")
    logger.info("threshold found %s voxel(s); %d DICOM object(s) to deliver", voxels, len(outputs))
    sender = get_dicom_sender()
    if sender is None:
        logger.info(
            "the session has no peer: not sending (run with --peer NAME or --peer-address AET@HOST:PORT)"
        )
        set_session_data("sent", 0)
        return {"sent": 0, "skipped": "no peer"}
    with tempfile.TemporaryDirectory(prefix="deliver-") as tmp:
        paths = []
        for name in outputs:
            target = Path(tmp) / name
            if download_session_file(name, filename=target, job_name="threshold") is None:
                raise RuntimeError(f"session file {name!r} of job 'threshold' is missing")
            paths.append(str(target))
        report_progress(30, stage="send", message=f"{len(paths)} object(s) to {sender.peer_label}")
        statuses = sender.send_dicom_from_filelist(paths)
    codes = [int(s.Status) for s in statuses]
    stored = [c for c in codes if c == 0 or (c & 0xF000) == 0xB000]
    if len(stored) != len(paths):
        raise RuntimeError(
            f"{len(paths) - len(stored)} of {len(paths)} object(s) were not stored by {sender.peer_label}: "
            + ", ".join(f"0x{c:04X}" for c in codes)
        )
    set_session_data("sent", len(stored))
    report_progress(100, stage="done", message=f"sent {len(stored)} object(s)")
    logger.info("sent %d object(s) to %s", len(stored), sender.peer_label)
    return {"sent": len(stored), "peer": sender.peer_label}
