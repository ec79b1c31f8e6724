"""Test services written into ``tmp_path``: a manifest plus small Python files.

:func:`write_service` writes ``dcm-processor.json`` with the given jobs, a registry
module ``svc_filters.py`` (:data:`FILTERS`) and a worker module ``svc_workers.py``
(:data:`WORKERS`). Every test uses the same module names on purpose: the runner must not
mix up two services' modules loaded one after the other.

Workers write what they saw into the session data (``seen``) and return it, so tests
check it in the run report or the store. :func:`sample_series` writes a tiny synthetic
CT series (fast: 4 slices of 16 x 16 by default).
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

from dcm_processor_service.runner.sample_data import make_sample_ct

#: The nine environment variables the platform's worker (and the runner) set for a job.
CONTEXT_VARIABLES = frozenset(
    {
        "DCM-PROCESSOR-SERVICE-DB-PROVIDER",
        "DCM-PROCESSOR-SERVICE-DB-URL",
        "DCM-PROCESSOR-SERVICE-DB-NAME",
        "DCM-PROCESSOR-SERVICE-SESSION-ID",
        "DCM-PROCESSOR-SERVICE-JOB-ID",
        "DCM-PROCESSOR-SERVICE-JOB-EVENT",
        "DCM-PROCESSOR-SERVICE-JOB-NAME",
        "DCM-PROCESSOR-SERVICE-JOB-SERVICE-NAME",
        "DCM-PROCESSOR-SERVICE-PEER-ID",
    }
)

FILTERS = textwrap.dedent(
    """
    import json, os

    def yes(session_id, job_name, headers, params, added_params):
        return True

    def no(session_id, job_name, headers, params, added_params):
        return False

    def with_params(session_id, job_name, headers, params, added_params):
        return True, {"from_filter": job_name, "instances": len(headers.get("Instances") or []),
                      "seen_before": sorted(added_params)}

    def as_list(session_id, job_name, headers, params, added_params):
        return [True, {"as": "list"}]

    def ct_only(session_id, job_name, headers, params, added_params):
        return headers["Metadata"].get("Modality") == "CT"

    def min_slices(session_id, job_name, headers, params, added_params):
        return len(headers.get("Instances") or []) >= int(params.get("min_slices", 1))

    def raises(session_id, job_name, headers, params, added_params):
        raise ValueError("filter exploded")
    """
)

WORKERS = textwrap.dedent(
    """
    import json, os, subprocess, sys, time
    import dcm_processor_service as dps
    from dcm_processor_service.progress import heartbeat, report_progress

    def _env():
        return {k: v for k, v in os.environ.items()
                if k.replace("_", "-").startswith("DCM-PROCESSOR-SERVICE-")}

    def record(session_id, job_name, headers, params, added_params, **kwargs):
        seen = {"session_id": session_id, "job_name": job_name, "headers": headers,
                "params": params, "added_params": added_params, "kwargs": kwargs,
                "env": _env(), "cwd": os.getcwd()}
        dps.set_session_data("seen", seen)
        return seen

    def plain(session_id, job_name, headers, params, added_params):
        return {"plain": True}  # no **kwargs: the platform's other keywords do not fit

    def unstorable(**kwargs):
        return {"values": {1, 2}}  # a set: json.dump cannot write it

    def fail(session_id, job_name, headers, params, added_params, **kwargs):
        dps.set_session_data("before_failure", 1)
        raise RuntimeError("worker exploded on purpose")

    def exit_nonzero(session_id, job_name, headers, params, added_params, **kwargs):
        sys.exit(3)

    def crash(session_id, job_name, headers, params, added_params, **kwargs):
        print("about to crash", flush=True)
        os._exit(7)

    def sleep(session_id, job_name, headers, params, added_params, **kwargs):
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        with open(params["pid_file"] + ".part", "w") as f:  # whole, or not there at all
            json.dump({"job": os.getpid(), "child": child.pid}, f)
        os.replace(params["pid_file"] + ".part", params["pid_file"])
        time.sleep(float(params.get("seconds", 60)))
        return "woke up"

    def progress(session_id, job_name, headers, params, added_params, **kwargs):
        steps = int(params.get("steps", 4))
        for i in range(steps):
            report_progress(100 * (i + 1) / steps, stage=f"step-{i + 1}", message=f"{i + 1} of {steps}")
            time.sleep(float(params.get("pause", 0.35)))
        heartbeat()
        return "done"

    def store_value(session_id, job_name, headers, params, added_params, **kwargs):
        dps.set_session_data("value", params.get("value", 42))
        dps.upload_session_file(b"hello from " + job_name.encode(), "hello.txt")
        return params.get("value", 42)

    def read_value(session_id, job_name, headers, params, added_params, **kwargs):
        return dps.get_session_data("value", job_name=params["from_job"])

    def append_order(session_id, job_name, headers, params, added_params, **kwargs):
        path = params["order_file"]
        with open(path, "a") as f:
            f.write(job_name + "\\n")
        return job_name

    def noisy(session_id, job_name, headers, params, added_params, **kwargs):
        import logging
        logging.getLogger("svc").info("a log line from the job")
        print("a printed line from the job")
        return None
    """
)


def write_service(
    root: Path,
    jobs: list[dict[str, Any]],
    *,
    name: str = "test-service",
    filters: str = FILTERS,
    workers: str = WORKERS,
    manifest_extra: dict[str, Any] | None = None,
) -> Path:
    """Write a service into ``root`` (created) and return ``root``.

    ``jobs`` are manifest job objects; ``registryEntry``/``workerEntry`` default to
    ``svc_filters.yes`` / ``svc_workers.record`` and ``events`` to stable-series.
    """
    root.mkdir(parents=True, exist_ok=True)
    (root / "registry").mkdir(exist_ok=True)
    (root / "module").mkdir(exist_ok=True)
    (root / "registry" / "svc_filters.py").write_text(filters, encoding="utf-8")
    (root / "module" / "svc_workers.py").write_text(workers, encoding="utf-8")
    full_jobs = []
    for job in jobs:
        item = {"workerEntry": "svc_workers.record", "events": ["stable-series"], **job}
        full_jobs.append(item)
    manifest = {
        "name": name,
        "version": "0.1.0",
        "service": {"registry": "registry", "module": "module", "jobs": full_jobs},
        **(manifest_extra or {}),
    }
    (root / "dcm-processor.json").write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    return root


def sample_series(
    folder: Path,
    *,
    slices: int = 4,
    size: int = 16,
    patient_id: str = "PAT-1",
    study_uid: str | None = None,
    description: str = "test series",
) -> list[Path]:
    """A tiny synthetic CT series in ``folder``."""
    return make_sample_ct(
        folder,
        slices=slices,
        size=size,
        patient_id=patient_id,
        patient_name=f"Test^{patient_id}",
        series_description=description,
        study_uid=study_uid,
    )


#: The two studies of :func:`sample_two_studies`.
FIRST_STUDY, SECOND_STUDY = "1.2.826.0.1.3680043.8.498.11", "1.2.826.0.1.3680043.8.498.22"


def sample_two_studies(folder: Path) -> None:
    """One patient, two studies: :data:`FIRST_STUDY` with series ``a1`` (4 slices) and
    ``a2`` (3 slices), :data:`SECOND_STUDY` with series ``b1``, in ``folder``."""
    sample_series(folder / "a1", study_uid=FIRST_STUDY, description="a1")
    sample_series(folder / "a2", study_uid=FIRST_STUDY, description="a2", slices=3)
    sample_series(folder / "b1", study_uid=SECOND_STUDY, description="b1")
