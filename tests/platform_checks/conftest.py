"""A platform deployment in one process, for the cross-checks.

These checks run only inside the platform environment (``support.platform_venv``,
started by ``tests/test_mongodb_platform.py``): the dcm-processor platform's own
``DBManager`` (``dcm-processor-db-provider`` 0.0.1), ``JobScheduler`` and worker
``WorkerManager`` and this package share one MongoDB database. No MongoDB server can run
on the test machines, so that database is mongomock, an in-process fake: the platform's
``MongoDBProvider`` gets the fake client in place of the ``pymongo.MongoClient`` it would
open, and this package opens it through the test provider ``mongomock`` (the real
``MongoStore`` with the client replaced, ``support.mongo``). Everything else is the
platform's code, unchanged.

Where the platform's own readers are broken, the checks read the platform's data the
way those readers evidently mean to (and say so): ``get_session_job_id`` queries
``session_id`` while ``create_job`` writes ``sessionId`` (so it never finds a job), and
``get_session_file`` compares the text ids of the job with the ObjectIds its own
upload writes (so it never finds a file).
"""

from __future__ import annotations

import io
import uuid
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from bson import ObjectId
from dcm_processor_db_provider import DBManager
from dcm_processor_job_scheduler.job_scheduler import JobScheduler
from dcm_processor_worker.manager import WorkerManager
from pydicom import dcmread
from pydicom.dataset import Dataset

from dcm_processor_service import RuntimeContext
from dcm_processor_service.store import open_store
from dcm_processor_service.store.mongodb import MongoStore
from support import mongo
from support.dicomdata import files_in, test_file

#: The fake server the platform and this package share.
LABEL = "platform-crosscheck"
URL = f"mongodb://{LABEL}"
#: A real CT series (5 slices) the platform's DICOM server receives.
CT_SERIES = "dicomdirtests/98892001/CT5N"
PEER = {
    "name": "pacs",
    "host": "127.0.0.1",
    "port": 11112,
    "aet": "PACS",
    "whitelist_aet": ["MODALITY"],
    "whitelist_ip": [],
    "tls": False,
}
#: The service the platform's scheduler schedules: two series jobs, one after the other.
SERVICE_JOBS = [
    {
        "jobName": "seg",
        "registryEntry": "callback",
        "workerEntry": "worker",
        "events": ["stable-series"],
        "params": {"threshold": 300},
        "timeout": "1h",
    },
    {
        "jobName": "report",
        "registryEntry": "callback",
        "workerEntry": "worker",
        "events": ["stable-series"],
        "dependsOn": "seg",
    },
]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The platform's code uses APIs its pinned pydicom and pymongo deprecate; those
    warnings are the platform's, not failures of the checks."""
    for item in items:  # (the platform catches every exception: an error would hide)
        item.add_marker(pytest.mark.filterwarnings("ignore:GridIn property:DeprecationWarning"))
        item.add_marker(
            pytest.mark.filterwarnings("ignore:'write_like_original':DeprecationWarning")
        )


def attach(manager: DBManager, db_name: str) -> DBManager:
    """Point the platform's provider at the shared fake server (the one change made to
    the platform: its ``MongoClient``)."""
    client = mongo.mock_client(LABEL)
    manager.db.client = client
    manager.db.db = client[db_name]
    return manager


def read(dataset_path: Path) -> Dataset:
    return dcmread(dataset_path)


def ct_files() -> list[Path]:
    return files_in(test_file(CT_SERIES))


def platform_job_id(platform: DBManager, session_id: str, job_name: str, event: str) -> Any:
    """The platform's ``get_session_job_id`` with the field its ``create_job`` writes
    (``sessionId``; the platform queries ``session_id`` and never finds a job)."""
    doc = platform.db.find_one(
        "jobs",
        {"query": {"sessionId": session_id, "job_name": job_name, "job_event": event}},
    )
    return None if doc is None else doc["_id"]


def platform_session_file(platform: DBManager, job_id: str, name: str) -> dict[str, Any] | None:
    """The platform's ``get_session_file`` with the ids as its ``upload_session_file``
    writes them (ObjectIds; the platform compares them with text and never finds one)."""
    session_id = platform.get_job_session_id(job_id)
    query = {"session_id": ObjectId(session_id), "job_id": ObjectId(job_id), "name": name}
    return platform.db.find_one_file("sessionfiles", {"query": query})


def worker_environment(job: dict[str, Any], db_name: str) -> dict[str, str]:
    """The environment the platform's worker gives a job's process (its own code)."""
    make = WorkerManager._WorkerManager__make_service_env  # type: ignore[attr-defined]
    return dict(make(job, "mongodb", URL, db_name))


@dataclass
class Deployment:
    """A platform deployment after a patient's images arrived and were scheduled."""

    platform: DBManager
    db_name: str
    peer_id: str
    session_id: str
    patient: dict[str, Any]
    jobs: list[dict[str, Any]] = field(default_factory=list)

    def job(self, name: str) -> dict[str, Any]:
        """The (first) job of that name; ``"pre"``/``"post"`` for the hook jobs."""
        wanted = {
            "pre": "dcm_processor_worker.pre_services",
            "post": "dcm_processor_worker.post_services",
        }
        for job in self.jobs:
            if job.get("job_name") == name or job["data"]["function_name"] == wanted.get(name):
                return job
        raise KeyError(name)

    def context(self, name: str) -> RuntimeContext:
        """The runtime context this package reads in that job's process (from the
        worker's environment; the provider name is the in-process fake's)."""
        env = worker_environment(self.job(name), self.db_name)
        return RuntimeContext.from_env(env).replace(db_provider=mongo.PROVIDER)

    def series(self) -> list[dict[str, Any]]:
        return self.platform.db.find(
            "series", {"query": {"PatientUID": self.patient["PatientUID"]}}
        )


@pytest.fixture
def db_name() -> Iterator[str]:
    name = f"crosscheck-{uuid.uuid4().hex}"
    yield name
    mongo.drop_database(LABEL, name)


@pytest.fixture
def platform(db_name: str) -> DBManager:
    """The platform's ``DBManager`` on the shared database."""
    return attach(DBManager(dburl=URL, dbname=db_name, dbprovider="mongodb"), db_name)


@pytest.fixture
def ours(db_name: str) -> Iterator[MongoStore]:
    """This package's store on the shared database."""
    mongo.register()
    store = open_store(mongo.PROVIDER, URL, db_name)
    assert isinstance(store, MongoStore)
    yield store
    store.close()


def _registry_zip() -> io.BytesIO:
    """The service's registry package: every callback schedules its job."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr(
            "__init__.py", "def callback(**kwargs):\n    return True, {'seen': True}\n"
        )
    buffer.seek(0)
    return buffer


@pytest.fixture
def deployment(platform: DBManager, db_name: str, tmp_path: Path) -> Deployment:
    """What the platform writes when a CT series arrives: the peer (its CLI), the
    instances and records (its DICOM server's ``upload_dicom_dataset``), a service
    (its registry), then the session and jobs (its scheduler's ``process_patient``)."""
    peer_id = platform.create_dicom_peer(dict(PEER))
    for path in ct_files():
        platform.upload_dicom_dataset(read(path), peer_id)
    archive = tmp_path / "registry.zip"
    archive.write_bytes(_registry_zip().getvalue())
    registry_id = platform.upload_component_file(file=str(archive), metadata={"kind": "registry"})
    platform.create_service(
        {
            "name": "svc",
            "version": "1.0.0",
            "registry": str(registry_id),
            "module": None,
            "jobs": SERVICE_JOBS,
        }
    )
    scheduler = JobScheduler(dburl=URL, dbname=db_name, dbprovider="mongodb", device_id="device-1")
    attach(scheduler.db_mgr, db_name)
    [patient] = platform.db.find("patients")
    scheduler.process_patient(patient)
    [session] = platform.db.find("sessions")
    session_id = str(session["_id"])
    jobs = platform.db.find("jobs", {"query": {"sessionId": session_id}})
    assert len(jobs) == 4, jobs  # pre, seg, report, post
    return Deployment(platform, db_name, str(peer_id), session_id, patient, jobs)
