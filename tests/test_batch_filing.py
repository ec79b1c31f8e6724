"""Group commit files a batch of instances in one transaction; instances of a batch that
share their patient, study and series skip the repeated parent upserts and the series
and study conflict checks. These tests pin down that the shortcut never changes what is
filed: an instance that moves series inside the batch, a conflict in the middle of a
batch, and parents whose values change within the batch - on every provider.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from dcm_processor_service import StorageError
from dcm_processor_service.index.ingest import IngestConflict, ingest
from dcm_processor_service.store import Store
from dcm_processor_service.store.sqlite import SQLiteStore
from support.dicomdata import write_ct_series


def _series(tmp_path: Path, n: int) -> list[Dataset]:
    return [dcmread(p) for p in write_ct_series(tmp_path / "ct", n, 8, 8)]


def _copy(ds: Dataset, **tags: str) -> Dataset:
    out = dcmread(_bytes(ds))
    for keyword, value in tags.items():
        setattr(out, keyword, value)
    return out


def _bytes(ds: Dataset) -> object:
    import io

    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    buffer.seek(0)
    return buffer


def test_an_instance_moving_series_inside_a_batch_leaves_the_others_filed(
    store: Store, tmp_path: Path
) -> None:
    w, v = _series(tmp_path, 2)
    other_series = generate_uid()
    # one batch: W in S, W again now in T (S left empty and removed), then V in S
    report = ingest([w, _copy(w, SeriesInstanceUID=other_series), v], store=store)
    assert report.n_stored == 3 and report.ok
    by_uid = {s["SeriesInstanceUID"]: s for s in store.list_series()}
    assert set(by_uid) == {w.SeriesInstanceUID, other_series}
    moved = store.get_instance(str(w.SOPInstanceUID))
    assert moved["SeriesInstanceUID"] == other_series
    assert moved["SeriesUID"] == by_uid[other_series]["_id"]
    assert by_uid[other_series]["Instances"] == [moved["_id"]]
    kept = store.get_instance(str(v.SOPInstanceUID))
    assert kept["SeriesUID"] == by_uid[w.SeriesInstanceUID]["_id"]
    assert by_uid[w.SeriesInstanceUID]["Instances"] == [kept["_id"]]
    assert len(store.list_studies()) == 1 and len(store.list_patients()) == 1


def test_a_conflict_in_the_middle_of_a_batch_refuses_only_its_instance(
    store: Store, tmp_path: Path
) -> None:
    a, b, c = _series(tmp_path, 3)
    intruder = _copy(b, PatientID="OTHER-42")
    report = ingest([a, intruder, c], store=store)
    assert report.n_stored == 2
    [conflict] = report.failed
    assert isinstance(conflict, IngestConflict)
    (series,) = store.list_series()
    assert len(series["Instances"]) == 2
    assert series["Metadata"]["PatientID"] == "SYN-1"
    assert [p["Metadata"]["PatientID"] for p in store.list_patients()] == ["SYN-1"]


def test_parent_values_that_change_within_a_batch_end_as_the_last_instance_says(
    store: Store, tmp_path: Path
) -> None:
    a, b, c = _series(tmp_path, 3)
    report = ingest(
        [
            a,
            _copy(b, SeriesDescription="RENAMED"),
            _copy(c, SeriesDescription="RENAMED", StudyDescription="NEW"),
        ],
        store=store,
    )
    assert report.n_stored == 3
    (series,) = store.list_series()
    assert series["Metadata"]["SeriesDescription"] == "RENAMED"
    assert series["Metadata"]["StudyDescription"] == "NEW"
    (study,) = store.list_studies()
    assert study["Metadata"]["StudyDescription"] == "NEW"


def test_every_blob_of_a_batch_is_flushed_once_before_its_records_commit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The flushes of a batch are split over threads: together they cover each blob
    exactly once, all before the transaction; one that fails discards the batch."""
    store = SQLiteStore(str(tmp_path / "store"), "t")
    flushed: list[str] = []
    real = store.blobs.make_durable

    def recording(keys: Sequence[str]) -> None:
        assert not store.list_series()  # nothing of the batch is filed yet
        flushed.extend(keys)
        real(keys)

    monkeypatch.setattr(store.blobs, "make_durable", recording)
    paths = write_ct_series(tmp_path / "ct", 40, 8, 8)
    report = ingest(paths, store=store, batch_size=40)
    assert report.n_stored == 40
    assert sorted(flushed) == sorted(
        store.get_instance(s.instance_id)["BlobKey"] for s in report.stored
    )

    def failing(keys: Sequence[str]) -> None:
        raise StorageError("cannot flush files in blob folder: disk gone")

    monkeypatch.setattr(store.blobs, "make_durable", failing)
    more = write_ct_series(tmp_path / "ct2", 20, 8, 8, patient_id="SYN-2")
    with pytest.raises(StorageError, match="disk gone"):
        ingest(more, store=store, batch_size=20)
    assert len(store.list_series()) == 1  # nothing of the failed batch is filed
    blob_files = [p for p in (tmp_path / "store.blobs").rglob("*") if p.is_file()]
    assert len(blob_files) == 40  # and its bytes are gone
    store.close()
