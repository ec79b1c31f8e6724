"""Registry (filter) callback of the compare-prior service."""

from __future__ import annotations

from typing import Any


def volume_series(
    session_id: str,
    job_name: str,
    headers: dict[str, Any],
    params: dict[str, Any],
    added_params: dict[str, Any],
    **kwargs: Any,
) -> bool | tuple[bool, dict[str, Any]]:
    """Schedule the job for series of ``params["modalities"]`` (default CT) with at
    least ``params["min_slices"]`` instances (default 4)."""
    metadata = headers.get("Metadata") or {}
    modality = metadata.get("Modality")
    slices = len(headers.get("Instances") or [])
    if modality not in params.get("modalities", ["CT"]) or slices < int(
        params.get("min_slices", 4)
    ):
        return False
    return True, {"modality": modality}
