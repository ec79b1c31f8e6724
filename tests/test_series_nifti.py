"""get_series_nifti: a stored series to NIfTI, compared with dcm2niix run on the files."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

import dcm_processor_service as dps
from dcm_processor_service.store import Store
from support.dicomdata import DICOMDIR_TESTS
from support.imaging import run_dcm2niix

CT5N = DICOMDIR_TESTS / "98892001" / "CT5N"


@pytest.fixture
def series_id(store: Store) -> str:
    report = dps.ingest(CT5N, store=store)
    assert report.ok and len(report.series_ids) == 1
    return report.series_ids[0]


def test_file_mode_matches_dcm2niix(store: Store, series_id: str, tmp_path: Path) -> None:
    reference = nib.load(run_dcm2niix(CT5N, tmp_path / "ref"))
    nii, sidecar, nothing = dps.get_series_nifti(
        series_id, tmp_path / "out" / "ct.nii.gz", store=store
    )
    assert nothing is None and nii.endswith("ct.nii.gz") and sidecar.endswith("ct.json")
    ours = nib.load(nii)
    np.testing.assert_allclose(ours.affine, reference.affine, atol=1e-4)
    np.testing.assert_array_equal(np.asarray(ours.dataobj), np.asarray(reference.dataobj))
    meta = json.loads(Path(sidecar).read_text())
    assert meta["Slices"] == 5 and meta["Modality"] == "CT"
    assert meta["SeriesInstanceUID"] == store.get_series(series_id)["SeriesInstanceUID"]


def test_memory_mode_leaves_nothing_behind(store: Store, series_id: str, tmp_path: Path) -> None:
    reference = nib.load(run_dcm2niix(CT5N, tmp_path / "ref"))
    image, sidecar, array = dps.get_series_nifti(series_id, store=store)
    assert array.dtype == np.float32 and array.shape == reference.shape
    np.testing.assert_allclose(array, reference.get_fdata(dtype=np.float32), rtol=0, atol=1e-3)
    np.testing.assert_allclose(image.affine, reference.affine, atol=1e-4)
    assert isinstance(sidecar["PatientName"], str) and sidecar["Slices"] == 5


def test_unknown_series(store: Store) -> None:
    with pytest.raises(dps.NotFoundError, match="no-such-series"):
        dps.get_series_nifti("no-such-series", store=store)


def test_uses_the_runtime_context(store_url) -> None:
    provider, url, name = store_url
    with dps.use_context(db_provider=provider, db_url=url, db_name=name):
        report = dps.ingest(CT5N)
        _, _, array = dps.get_series_nifti(report.series_ids[0])
        assert array.shape[2] == 5
