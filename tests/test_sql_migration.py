"""Schema 3 of the SQL providers: an index that dcm-processor-service 0.1 filed (its
``pid:``/``pn:``/``study:`` patient keys, ``PatientAge`` as text, empty tags as ``""``)
gets the platform's PatientUID and Metadata values when the store is next opened."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dcm_processor_service import open_store
from dcm_processor_service.store import Store
from support.dicomdata import platform_patient_uid
from support.stores import make_store

NOW = "2026-01-01T00:00:00+00:00"


@pytest.fixture(params=["sqlite", "postgresql"])
def sql_url(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, str, str]:
    return make_store(str(request.param), tmp_path, request)


def _as_version_2(store: Store) -> None:
    """Rows as 0.1 wrote them (created in this order), and the schema version before 3."""
    patients = [
        (
            "p1",
            "pid:123",
            '{"PatientAge":"043Y","PatientID":"123","PatientName":"A^B","PatientSex":""}',
        ),
        ("p2", "study:1.2.9", '{"PatientName":"Anon^X","PatientSex":"F"}'),
        ("p3", "study:1.2.10", '{"PatientName":"Anon^X","PatientSex":"F"}'),
        ("p4", "study:1.2.11", '{"PatientName":""}'),
    ]
    studies = [
        ("s1", "1.2.8", "p1"),
        ("s2", "1.2.9", "p2"),
        ("s3", "1.2.10", "p3"),
        ("s4", "1.2.11", "p4"),
    ]

    def work(tx):  # type: ignore[no-untyped-def]
        for n, (pid, uid, meta) in enumerate(patients):
            tx.execute(
                "INSERT INTO patients (id, patient_uid, peer_id, meta, created_at, updated_at)"
                " VALUES (?, ?, NULL, ?, ?, ?)",
                (pid, uid, meta, f"2026-01-0{n + 1}", NOW),
            )
        for sid, uid, pid in studies:
            tx.execute(
                "INSERT INTO studies (id, study_uid, patient_id, peer_id, meta, created_at, updated_at)"
                " VALUES (?, ?, ?, NULL, ?, ?, ?)",
                (
                    sid,
                    uid,
                    pid,
                    json.dumps({"AccessionNumber": "", "StudyInstanceUID": uid}),
                    NOW,
                    NOW,
                ),
            )
            tx.execute(
                "INSERT INTO series (id, series_uid, study_id, patient_id, peer_id, modality, meta,"
                " created_at, updated_at) VALUES (?, ?, ?, ?, NULL, 'CT', '{}', ?, ?)",
                (f"se-{sid}", f"{uid}.1", sid, pid, NOW, NOW),
            )
        tx.execute(
            "INSERT INTO sessions (id, peer_id, patient_uid, status, meta, created_at, updated_at)"
            " VALUES ('sess', NULL, 'pid:123', 'open', '{}', ?, ?)",
            (NOW, NOW),
        )
        tx.execute("UPDATE schema_version SET version = 2 WHERE component = 'core'")

    store._run(work)  # type: ignore[attr-defined]


def test_an_index_of_version_0_1_gets_the_platform_keys_and_values(
    sql_url: tuple[str, str, str],
) -> None:
    with open_store(*sql_url) as store:
        _as_version_2(store)
    with open_store(*sql_url) as store:  # opening migrates
        assert store.migrate() == 3
        by_id = platform_patient_uid("123")
        patient = store.get_patient(by_id)
        assert patient["_id"] == "p1"
        assert patient["Metadata"] == {
            "PatientAge": 43,
            "PatientID": "123",
            "PatientName": "A^B",
            "ModalitiesInPatient": ["CT"],
        }
        assert store.get_session("sess").patient_uid == by_id
        # 0.1 kept these apart (no birth date); the platform's key is name::sex for both
        merged = store.get_patient(platform_patient_uid("Anon^X::F"))
        assert merged["_id"] == "p2" and merged["Studies"] == ["s2", "s3"]
        assert [s["_id"] for s in store.list_series(patient_id=merged["_id"])] == ["se-s2", "se-s3"]
        assert store.get_study("1.2.10")["PatientUID"] == merged["PatientUID"]
        assert store.get_patient(platform_patient_uid("1.2.11"))["_id"] == "p4"
        assert [p["_id"] for p in store.list_patients()] == ["p1", "p2", "p4"]
        assert "AccessionNumber" not in store.get_study("1.2.8")["Metadata"]
