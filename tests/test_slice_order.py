"""One slice order everywhere: the same stack, given in any order, comes out in the same
order from the series record's ``Instances`` (every provider), ``list_instances``,
``get_series_dicom`` (datasets and files), the SEG/SR source images, ``order_slices``
on datasets, and the NIfTI sidecar's first slice.

The stack is built so that the earlier rules disagree: InstanceNumber runs against the
position (the store used to list ``Instances`` by InstanceNumber), and three slices share
one position - two with the same InstanceNumber, told apart by SOPInstanceUID only (the
SEG/SR sources used to keep the input order for ties).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset

import dcm_processor_service as dps
from dcm_processor_service.store import Store
from support.dicomdata import write_ct_series

SHUFFLES = 3  # input orders tried per check


def _retag(path: Path, **values: object) -> None:
    ds = pydicom.dcmread(path)
    for keyword, value in values.items():
        setattr(ds, keyword, value)
    if "SOPInstanceUID" in values:
        ds.file_meta.MediaStorageSOPInstanceUID = values["SOPInstanceUID"]
    ds.save_as(path, enforce_file_format=True)


@pytest.fixture
def stack(tmp_path: Path) -> tuple[list[Path], list[str]]:
    """(files, SOPInstanceUIDs in the expected order) of one axial stack of 8 files."""
    paths = write_ct_series(tmp_path / "stack", 6, 16, 16)  # ascending z, IN 1..6
    for k, path in enumerate(paths):  # InstanceNumber against the position: 6..1
        _retag(path, InstanceNumber=6 - k, SOPInstanceUID=f"1.2.826.0.1.99.{k + 10}")
    z2 = pydicom.dcmread(paths[2]).ImagePositionPatient  # the slice with IN 4
    extra = []
    for name, number, uid in (("dup-a", 7, "1.2.826.0.1.99.3"), ("dup-b", 4, "1.2.826.0.1.99.0")):
        target = paths[0].parent / name
        target.write_bytes(paths[2].read_bytes())
        _retag(target, InstanceNumber=number, SOPInstanceUID=uid, ImagePositionPatient=z2)
        extra.append(target)
    files = [*paths, *extra]
    # expected, written out by hand: z ascending; at z2: IN 4 (UID text "...99.0" before
    # "...99.12"), then IN 7
    expected = [
        "1.2.826.0.1.99.10",  # z0, IN 6
        "1.2.826.0.1.99.11",  # z1, IN 5
        "1.2.826.0.1.99.0",  # z2, IN 4, smaller UID
        "1.2.826.0.1.99.12",  # z2, IN 4
        "1.2.826.0.1.99.3",  # z2, IN 7
        "1.2.826.0.1.99.13",  # z3
        "1.2.826.0.1.99.14",  # z4
        "1.2.826.0.1.99.15",  # z5
    ]
    return files, expected


def _shuffled(items: list[Path], seed: int) -> list[Path]:
    out = list(items)
    random.Random(seed).shuffle(out)
    return out


def _uids(datasets: list[Dataset]) -> list[str]:
    return [str(ds.SOPInstanceUID) for ds in datasets]


def test_the_store_and_series_access_agree_whatever_the_filing_order(
    store: Store, stack: tuple[list[Path], list[str]], tmp_path: Path
) -> None:
    files, expected = stack
    for seed in range(SHUFFLES):  # each round files the stack afresh, in another order
        session = f"round-{seed}"
        report = dps.ingest(_shuffled(files, seed), store=store, session_id=session)
        assert report.ok and report.n_stored == len(files)
        (series_id,) = report.series_ids
        by_id = {i["_id"]: i["SOPInstanceUID"] for i in store.list_instances(series_id)}
        assert [by_id[i] for i in store.get_series(series_id)["Instances"]] == expected
        assert [by_id[i] for i in store.list_series()[0]["Instances"]] == expected
        assert [i["SOPInstanceUID"] for i in store.list_instances(series_id)] == expected
        assert [i["SOPInstanceUID"] for i in dps.list_instances(series_id, store=store)] == (
            expected
        )
        assert _uids(dps.get_series_dicom(series_id, store=store)) == expected
        written = dps.get_series_dicom(series_id, tmp_path / f"out{seed}", store=store)
        assert written == sorted(written)  # file names sort the same way
        assert [Path(p).stem.split("_", 1)[1] for p in written] == expected
        assert store.delete_session_instances(session) == len(files)
        assert store.list_series() == []


def test_seg_sources_and_order_slices_agree_whatever_the_input_order(
    stack: tuple[list[Path], list[str]],
) -> None:
    files, expected = stack
    headers = {p: pydicom.dcmread(p, stop_before_pixels=True) for p in files}
    for seed in range(SHUFFLES):
        order = _shuffled(files, seed)
        assert _uids(dps.sorted_source_images(order)) == expected  # paths
        assert _uids(dps.sorted_source_images([headers[p] for p in order])) == expected
        datasets = [headers[p] for p in order]
        assert _uids([datasets[i] for i in dps.order_slices(datasets)]) == expected


def test_the_nifti_sidecar_describes_the_first_slice_in_slice_order(
    stack: tuple[list[Path], list[str]], tmp_path: Path
) -> None:
    files, _ = stack
    clean = files[:6]  # one slice per position (dcm2niix needs a regular stack)
    lowest = pydicom.dcmread(clean[0], stop_before_pixels=True)  # z0, InstanceNumber 6
    for seed in range(2):
        _, json_path, _ = dps.series_files_to_nifti(
            _shuffled(clean, seed), tmp_path / f"ct{seed}.nii"
        )
        sidecar = json.loads(Path(json_path).read_text())
        assert sidecar["SOPInstanceUID"] == lowest.SOPInstanceUID
        assert sidecar["InstanceNumber"] == 6
