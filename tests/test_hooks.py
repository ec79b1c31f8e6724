"""Pre/post-services hooks: session opened, then everything of the session removed."""

from __future__ import annotations

import io

import pytest

import dcm_processor_service as dps
from dcm_processor_service import NotFoundError, use_context
from support.stores import instance_input


def test_pre_and_post_services(store_url) -> None:
    provider, url, name = store_url
    with use_context(
        db_provider=provider,
        db_url=url,
        db_name=name,
        session_id="s1",
        job_id="j1",
        job_name="seg",
        job_event="stable-series",
        peer_id="pacs",
    ):
        assert dps.run_pre_services("s1", "pre", {}, {}, {}) == {
            "session_id": "s1",
            "status": "running",
        }
        assert dps.run_pre_services("s1", "pre", {}, {}, {})["status"] == "running"  # idempotent
        store = dps.store_for()
        assert store.get_session("s1").peer_id == "pacs"
        store.create_job("s1", "seg", "stable-series", job_id="j1")
        dps.set_session_data("a", 1)
        dps.upload_session_file(b"file", "f")
        store.put_instance(
            instance_input("9.1", patient="P", session_id="s1"), io.BytesIO(b"dicom")
        )
        store.put_instance(
            instance_input("9.2", patient="P", session_id="other-session"), io.BytesIO(b"dicom")
        )
        blob_path = (
            store.blobs.path(store.get_instance("9.1")["BlobKey"])
            if hasattr(store.blobs, "path")
            else None
        )

        report = dps.run_post_services(session_id="s1")
        assert report == {"data": 1, "files": 1, "instances": 1, "session": 1}
        assert dps.get_session_data("a") is None and dps.has_session_file("f") is False
        with pytest.raises(NotFoundError):
            store.get_instance("9.1")
        assert store.get_instance("9.2")  # another session's images stay
        with pytest.raises(NotFoundError):
            store.get_session("s1")
        assert store.list_jobs("s1") == []
        if blob_path is not None:
            assert not blob_path.exists()
        # a second run is a no-op
        assert dps.run_post_services("s1") == {"data": 0, "files": 0, "instances": 0, "session": 0}


def test_post_services_takes_session_from_context(store_url) -> None:
    provider, url, name = store_url
    with use_context(
        db_provider=provider, db_url=url, db_name=name, session_id="ctx-session", job_id="j"
    ):
        dps.set_session_data("x", 1)
        assert dps.run_post_services()["data"] == 1
