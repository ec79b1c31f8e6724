"""Registry (filter) callbacks of the threshold service.

The platform's scheduler (and ``dcm-service run``) calls each job's ``registryEntry``
for every stable series / study / patient of the job's events, with the keywords
``session_id``, ``job_name``, ``headers``, ``params`` and ``added_params``. Returning
``False`` means "do not schedule this job for this object"; ``(True, {...})`` schedules
it and passes the dict to the worker as ``added_params[job_name]``.
"""

from __future__ import annotations

from typing import Any


def ct_or_mr_volume(
    session_id: str,
    job_name: str,
    headers: dict[str, Any],
    params: dict[str, Any],
    added_params: dict[str, Any],
    **kwargs: Any,
) -> bool | tuple[bool, dict[str, Any]]:
    """Schedule the job for CT or MR series with at least ``params["min_slices"]``
    instances (default 16)."""
    metadata = headers.get("Metadata") or {}
    modality = metadata.get("Modality")
    slices = len(headers.get("Instances") or [])
    if modality not in ("CT", "MR") or slices < int(params.get("min_slices", 16)):
        return False
    return True, {"modality": modality, "slices": slices}
