"""Runs a service through the dcm-processor platform's own code (run by the platform
virtualenv's Python, see ``support.platform_venv``): ``python platform_driver.py SPEC OUT``.

The platform's database is ``mongomock`` in this process (no MongoDB server can run
here); the service's jobs see OUR store (SQLite) through their environment, as the
brief of the test demands. Step by step, with the platform's code wherever it runs
without a real MongoDB:

1. install the service into the platform's database with ``dcm-processor``'s own
   installer (``CompManager``: the registry and module folders are zipped as the
   platform zips them);
2. schedule one patient as ``JobScheduler.process_patient`` does: the pre-services job,
   per study each series' jobs then the study's jobs, then the patient's jobs, then the
   post-services job - through the scheduler's own ``handle_stable_object`` (its
   registry-callback check: each registry zip extracted and imported as package
   ``registry_<jobName>``, the callback called with its keywords; its ``dependsOn``
   pruning) and its own pre/post job creation. ``process_patient`` itself is not called:
   it looks our store's series/study ids up in the platform's database, where they are
   not ObjectIds;
3. run every job in creation order: workers through the worker's own
   ``WorkerManager.__execute_default`` (the module zip extracted as package
   ``service_module``, ``write_main_file`` generating the main file, a fresh Python
   process), the pre/post hooks through ``write_main_file`` with module
   ``dcm_processor_service`` as the worker's ``default_service_callback`` does - but
   with the environment from the worker's own ``__make_service_env`` pointing at OUR
   store instead of the platform's database (``default_service_callback`` would point it
   at the platform's). Each job is also recorded in our store under the platform's job
   id, as the platform's database would hold it.

SPEC (JSON): ``service`` (folder), ``db_url``/``db_name`` (our SQLite store),
``session_id``, ``peer_id``, ``patient`` (record), ``studies`` (records, each with
``series``: records). OUT gets, per job: id, function, name, event, object id,
kwargs (keys, added_params) and the result file's content.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import mongomock
import mongomock.gridfs

mongomock.gridfs.enable_gridfs_integration()

import dcm_processor_db_provider.mongo as platform_mongo  # noqa: E402

_DATABASE_SERVER = mongomock.MongoClient()  # the platform's database: one in-process fake
platform_mongo.MongoClient = lambda *args, **kwargs: _DATABASE_SERVER

from dcm_processor.libs.component_lib import CompManager  # noqa: E402
from dcm_processor_job_scheduler.job_scheduler import JobScheduler  # noqa: E402
from dcm_processor_worker import WorkerManager  # noqa: E402
from dcm_processor_worker.venv_worker_lib import write_main_file  # noqa: E402

from dcm_processor_service.store import open_store  # noqa: E402

MONGO_URL = "mongodb://platform-db.invalid:27017"  # never contacted: mongomock
MONGO_DB = "dcm-processor"
HOOKS = {
    "dcm_processor_worker.pre_services": "run_pre_services",
    "dcm_processor_worker.post_services": "run_post_services",
}


def _run_hook(job: dict, env: dict[str, str]) -> dict:
    """``WorkerManager.default_service_callback``'s steps, with ``env`` pointing at our store."""
    with tempfile.TemporaryDirectory() as tmp:
        main_py, result_json = write_main_file(
            temp_dir=tmp,
            module_name="dcm_processor_service",
            func_name=HOOKS[job["data"]["function_name"]],
            args=job["data"]["args"],
            kwargs=job["data"]["kwargs"],
            db_provider="mongodb",
        )
        subprocess.run([sys.executable, main_py], env={**os.environ, **env}, check=False)
        with open(result_json) as f:
            return json.load(f)


def main(spec_path: str, out_path: str) -> int:
    spec = json.loads(Path(spec_path).read_text())
    session_id, peer_id, patient = spec["session_id"], spec["peer_id"], spec["patient"]

    installer = CompManager(dburl=MONGO_URL, dbname=MONGO_DB, dbprovider="mongodb")
    installer._CompManager__install_from_path(comp_path=spec["service"], service_only=True)

    scheduler = JobScheduler(dburl=MONGO_URL, dbname=MONGO_DB, dbprovider="mongodb", device_id="t")
    db = scheduler.db_mgr
    services = db.get_services()
    assert services, "the platform's installer installed no service"

    def event_jobs(event: str) -> list:
        return scheduler._JobScheduler__get_event_jobs(services, event)

    def schedule(event: str, headers: dict, waits: list) -> list:
        return scheduler.handle_stable_object(
            session_id=session_id,
            event=event,
            headers=headers,
            jobs=event_jobs(event),
            workers={},
            depends_on_ids=waits,
            peer_id=peer_id,
        )

    pre = scheduler._JobScheduler__create_pre_service_job(
        session_id=session_id, headers=patient, peer_id=peer_id
    )
    order, study_level = [pre], []
    for study in spec["studies"]:
        series_ids = []
        for series in study["series"]:
            series_ids += schedule("stable-series", series, [pre])
        study_ids = schedule(
            "stable-study", {k: v for k, v in study.items() if k != "series"}, series_ids or [pre]
        )
        order += series_ids + study_ids
        study_level += study_ids or series_ids
    patient_ids = schedule("stable-patient", patient, study_level or [pre])
    order += patient_ids
    post = scheduler._JobScheduler__create_post_service_job(
        session_id=session_id,
        headers=patient,
        peer_id=peer_id,
        depends_on=patient_ids or study_level or [pre],
    )
    order.append(post)

    store = open_store("sqlite", spec["db_url"], spec["db_name"])
    out = []
    for job_id in order:
        job = db.get_job_by_id(job_id)
        data = job["data"]
        kwargs = data["kwargs"]
        name = job.get("job_name") or HOOKS[data["function_name"]]
        if job.get("job_name"):
            store.create_job(session_id, name, job["job_event"], job_id=str(job["_id"]))
        env = WorkerManager._WorkerManager__make_service_env(
            job, "sqlite", spec["db_url"], spec["db_name"]
        )
        if data["function_name"] == "dcm_processor_worker.controller":
            result = WorkerManager._WorkerManager__execute_default(
                job_info=job,
                service_info=db.get_service_by_id(kwargs["service_id"]),
                args=data["args"],
                kwargs=kwargs,
                env=env,
                dbMgr=db,
            )
        else:
            result = _run_hook(job, env)
        out.append(
            {
                "id": str(job["_id"]),
                "function": data["function_name"],
                "job_name": name,
                "event": job.get("job_event"),
                "object": str((kwargs.get("headers") or {}).get("_id")),
                "depends_on": [str(d) for d in job.get("depends_on") or []],
                "kwargs": sorted(kwargs),
                "added_params": kwargs.get("added_params"),
                "env": env,
                "result": result,
            }
        )
    store.close()
    Path(out_path).write_text(json.dumps(out, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
