"""get_series_dicom() as datasets: read whole, sha256 checked in a helper thread while
the instances are decoded, returned only once every check passed.

Runs on every provider plus PostgreSQL with a ``blob_dir`` (the file read path of a
server store); real files (pydicom's bundled CT, a synthetic CT series), real stores.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread

from dcm_processor_service import IntegrityError, NotFoundError
from dcm_processor_service.index import series as series_api
from dcm_processor_service.index.ingest import ingest
from dcm_processor_service.index.series import get_instance_dicom, get_series_dicom
from dcm_processor_service.store import Store, open_store
from support.dicomdata import files_in, test_file, write_ct_series
from support.stores import corrupt_blob, make_store

CT5N = "dicomdirtests/98892001/CT5N"


@pytest.fixture(params=["sqlite", "postgresql", "postgresql+blob_dir", "mongodb"])
def any_store(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    provider = str(request.param)
    name, url, db = make_store(provider.split("+")[0], tmp_path, request)
    if provider.endswith("+blob_dir"):
        url += f"?blob_dir={tmp_path / 'pg-blobs'}"
    store = open_store(name, url, db)
    yield store
    store.close()


def _blobs(store: Store) -> Any:
    """The blob store holding the instances (MongoDB: its DICOM bucket)."""
    return getattr(store, "dicom", None) if store.provider == "mongodb" else None


def _stored_bytes(store: Store, record: Any) -> bytes:
    with store.open_instance(record) as reader:
        return bytes(reader.read())


def test_datasets_equal_pydicom_value_by_value(any_store: Store, tmp_path: Path) -> None:
    paths = write_ct_series(tmp_path / "ct", 6, 24, 20, seed=3)
    report = ingest(paths, store=any_store)
    datasets = get_series_dicom(report.series_ids[0], store=any_store)
    assert len(datasets) == len(paths)
    for ds, path in zip(datasets, paths, strict=True):  # write_ct_series: slice order
        expected = dcmread(path)
        assert ds == expected
        assert ds.file_meta == expected.file_meta
        assert ds.preamble == expected.preamble
        assert ds.PixelData == expected.PixelData
        assert (ds.pixel_array == expected.pixel_array).all()
        assert ds.buffer is None  # the stored bytes are not kept alive beside the dataset


def test_a_single_instance_series_and_get_instance_dicom(any_store: Store) -> None:
    source = test_file("CT_small.dcm")
    report = ingest(source, store=any_store)
    [ds] = get_series_dicom(report.series_ids[0], store=any_store)
    assert ds == dcmread(source) and ds.PixelData == dcmread(source).PixelData
    one = get_instance_dicom(ds.SOPInstanceUID, store=any_store)
    assert one == ds and one.PixelData == ds.PixelData


@pytest.mark.parametrize("position", [0, 2, 4])
def test_damaged_bytes_that_still_decode_raise_integrity_error(
    any_store: Store, position: int
) -> None:
    """One pixel byte changed: pydicom decodes it happily, the sha256 check of the
    helper thread must still stop the whole series (first, middle, last instance)."""
    series_id = ingest(test_file(CT5N), store=any_store).series_ids[0]
    records = series_api.list_instances(series_id, store=any_store)
    damaged = records[position]
    data = bytearray(_stored_bytes(any_store, damaged))
    data[-1] ^= 0xFF  # the last byte: inside the pixel data
    corrupt_blob(any_store, damaged["BlobKey"], bytes(data), _blobs(any_store))
    assert dcmread(io.BytesIO(bytes(data))).SOPInstanceUID  # still decodes
    with pytest.raises(IntegrityError, match=damaged["SOPInstanceUID"]):
        get_series_dicom(series_id, store=any_store)
    with pytest.raises(IntegrityError, match=damaged["SOPInstanceUID"]):
        get_instance_dicom(damaged["_id"], store=any_store)


@pytest.mark.parametrize(("change", "message"), [(b"\0", "stored size"), (None, "stored size")])
def test_stored_bytes_longer_or_shorter_than_recorded(
    any_store: Store, change: bytes | None, message: str
) -> None:
    series_id = ingest(test_file(CT5N), store=any_store).series_ids[0]
    damaged = series_api.list_instances(series_id, store=any_store)[1]
    data = _stored_bytes(any_store, damaged)
    data = data + change if change is not None else data[:-100]
    corrupt_blob(any_store, damaged["BlobKey"], data, _blobs(any_store))
    with pytest.raises(IntegrityError, match=f"{damaged['SOPInstanceUID']}.*{message}"):
        get_series_dicom(series_id, store=any_store)


def test_undecodable_damage_is_reported_as_damage(any_store: Store) -> None:
    series_id = ingest(test_file(CT5N), store=any_store).series_ids[0]
    damaged = series_api.list_instances(series_id, store=any_store)[2]
    size = len(_stored_bytes(any_store, damaged))
    corrupt_blob(any_store, damaged["BlobKey"], b"\x07" * size, _blobs(any_store))
    with pytest.raises(IntegrityError, match=damaged["SOPInstanceUID"]):
        get_series_dicom(series_id, store=any_store)


def test_instance_replaced_between_listing_and_reading(any_store: Store, tmp_path: Path) -> None:
    """Records listed, then one instance filed again with other pixels: reading with the
    listed (stale) records gives the new version, verified."""
    paths = write_ct_series(tmp_path / "ct", 4, 16, 16, seed=1)
    series_id = ingest(paths, store=any_store).series_ids[0]
    records = series_api.list_instances(series_id, store=any_store)
    changed = dcmread(paths[1])
    changed.PixelData = bytes(reversed(changed.PixelData))
    changed.save_as(tmp_path / "changed.dcm")
    ingest(tmp_path / "changed.dcm", store=any_store)
    if any_store.provider == "mongodb":  # replaced in place: a stale record reads it again
        records = series_api.list_instances(series_id, store=any_store)
    datasets = series_api._read_datasets(any_store, records)
    assert [ds.SOPInstanceUID for ds in datasets] == [dcmread(p).SOPInstanceUID for p in paths]
    assert datasets[1].PixelData == changed.PixelData
    assert datasets[2].PixelData == dcmread(paths[2]).PixelData


def test_instance_removed_and_filed_again_after_listing(any_store: Store, tmp_path: Path) -> None:
    """The listed record no longer exists (its session's instances were removed, then
    filed again under new record ids): each instance is found again by SOPInstanceUID."""
    paths = write_ct_series(tmp_path / "ct", 3, 16, 16, seed=2)
    series_id = ingest(paths, store=any_store, session_id="first").series_ids[0]
    records = series_api.list_instances(series_id, store=any_store)
    assert any_store.delete_session_instances("first") == 3
    ingest(paths, store=any_store, session_id="second")
    datasets = series_api._read_datasets(any_store, records)
    for ds, path in zip(datasets, paths, strict=True):
        assert ds == dcmread(path) and ds.PixelData == dcmread(path).PixelData


def test_missing_stored_bytes_raise_not_found(any_store: Store, tmp_path: Path) -> None:
    if not hasattr(getattr(any_store, "blobs", None), "path"):
        pytest.skip("only a blob folder can lose a file behind the store's back")
    series_id = ingest(test_file(CT5N), store=any_store).series_ids[0]
    lost = series_api.list_instances(series_id, store=any_store)[3]
    any_store.blobs.path(lost["BlobKey"]).unlink()  # type: ignore[attr-defined]
    with pytest.raises(NotFoundError, match=lost["SOPInstanceUID"]):
        get_series_dicom(series_id, store=any_store)


def test_every_file_of_a_real_series_round_trips(any_store: Store) -> None:
    sources = {dcmread(p).SOPInstanceUID: p for p in files_in(test_file(CT5N))}
    series_id = ingest(test_file(CT5N), store=any_store).series_ids[0]
    datasets = get_series_dicom(series_id, store=any_store)
    assert sorted(ds.SOPInstanceUID for ds in datasets) == sorted(sources)
    for ds in datasets:
        expected = dcmread(sources[ds.SOPInstanceUID])
        assert ds == expected and ds.PixelData == expected.PixelData
