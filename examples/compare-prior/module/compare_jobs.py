"""Worker of the compare-prior service: compare a new series with the patient's prior.

``compare_with_prior`` (job "compare", every stable CT series):

1. ``find_priors(headers)`` asks the session's peer - by QIDO-RS when it is a DICOMweb
   peer, by C-FIND otherwise - for the patient's most recent earlier study holding the
   same modality (same Patient ID, same birth date, earlier study date);
2. ``find_series`` + ``retrieve_series`` fetch the prior's largest series of that
   modality (WADO-RS or C-GET) into the session, through the ingest (so the
   patient-safety rules apply);
3. ``get_series_dicom`` reads both series the same way, and the volume above
   ``params["threshold"]`` (in the images' rescaled units, HU for CT) is measured in each;
4. the result goes into the session data (``comparison``) and, with
   ``params["send_report"]``, a text SR referencing the new series is sent to the
   session's peer (STOW-RS or C-STORE: ``get_dicom_sender`` picks).

Without a prior, the job records ``{"prior": None}`` and sends nothing.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from dcm_processor_service import (
    find_priors,
    find_series,
    get_dicom_sender,
    get_series_dicom,
    make_text_report,
    report_progress,
    retrieve_series,
    set_session_data,
)

logger = logging.getLogger("compare_prior")


def _volume_above(datasets: list[Any], threshold: float) -> dict[str, float]:
    """Voxels above ``threshold`` (rescaled values) and their volume in ml."""
    first = datasets[0]
    row_mm, col_mm = (float(v) for v in first.PixelSpacing)
    thickness = float(first.get("SpacingBetweenSlices") or first.get("SliceThickness") or 1.0)
    voxels = 0
    for ds in datasets:
        values = ds.pixel_array * float(ds.get("RescaleSlope", 1)) + float(
            ds.get("RescaleIntercept", 0)
        )
        voxels += int(np.count_nonzero(values > threshold))
    return {"voxels": voxels, "volume_ml": round(voxels * row_mm * col_mm * thickness / 1000.0, 3)}


def compare_with_prior(
    session_id: str,
    job_name: str,
    headers: dict[str, Any],
    params: dict[str, Any],
    added_params: dict[str, Any],
    **kwargs: Any,
) -> dict[str, Any]:
    """Compare the series with the patient's prior (see the module docs)."""
    threshold = float(params.get("threshold", 150))
    modality = headers["Metadata"].get("Modality")
    report_progress(5, stage="query", message="looking for the prior study")
    priors = find_priors(headers)
    if not priors:
        logger.info("no earlier %s study of this patient on the peer", modality)
        result: dict[str, Any] = {"prior": None}
        set_session_data("comparison", result)
        return result
    prior = priors[0]
    series = find_series(prior.study_instance_uid, modality=modality)
    if not series:
        raise RuntimeError(f"prior study {prior.study_instance_uid} has no {modality} series")
    chosen = max(series, key=lambda s: s.number_of_instances or 0)
    report_progress(
        20, stage="retrieve", message=f"prior of {prior.study_date}: series {chosen.series_number}"
    )
    retrieved = retrieve_series(prior.study_instance_uid, chosen.series_instance_uid)
    if not retrieved.series_ids:
        raise RuntimeError(f"the prior series was not stored: {retrieved.summary()}")
    report_progress(60, stage="compare")
    current = get_series_dicom(headers["_id"])
    before = get_series_dicom(retrieved.series_ids[0])
    now_volume = _volume_above(current, threshold)
    prior_volume = _volume_above(before, threshold)
    change = round(now_volume["volume_ml"] - prior_volume["volume_ml"], 3)
    result = {
        "prior": {
            "study_instance_uid": prior.study_instance_uid,
            "study_date": prior.study_date,
            "series_instance_uid": chosen.series_instance_uid,
            "instances": retrieved.n_stored,
        },
        "threshold": threshold,
        "current": now_volume,
        "before": prior_volume,
        "change_ml": change,
        "sent": 0,
    }
    if params.get("send_report", True):
        sender = get_dicom_sender()
        if sender is not None:
            sr = make_text_report(
                current,
                findings=[
                    f"Volume above {threshold:g}: {now_volume['volume_ml']} ml "
                    f"(prior of {prior.study_date}: {prior_volume['volume_ml']} ml).",
                    f"Change since the prior: {change:+} ml.",
                ],
                series_description="Comparison with prior",
            )
            send = sender.send(sr).raise_for_failures()
            result["sent"] = len(send.succeeded)
            result["report_sop_instance_uid"] = str(sr.SOPInstanceUID)
    set_session_data("comparison", result)
    report_progress(100, stage="done", message=f"change {change:+} ml")
    return result
