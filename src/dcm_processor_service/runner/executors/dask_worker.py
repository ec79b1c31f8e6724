"""What runs on a Dask worker for one job of the runner (see :mod:`.dask_executor`).

:func:`run_on_worker` is the Dask task: it tells the runner the job starts (a Dask
event on the run's topic, naming this worker), makes the service's code available on
this machine, and runs the job exactly as the local runner does -
:func:`~.local.run_job_process`: its own process, the platform's environment and
keyword call, the job's timeout - in a work folder under the worker's local directory,
with the worker's environment plus the run's ``DCM-PROCESSOR-SERVICE-*`` variables.

**The service's code travels through Dask.** The runner zips the service folder once
per run (:func:`~.dask_cluster.ship_service`) and registers it with Dask's upload
mechanism (the ``UploadFile`` worker plugin, which also reaches workers that join
later); the zip lands in each worker's local directory. :func:`unpack_service`
unpacks it once per content digest into ``<local dir>/dcm-service-services/<digest>``
and :func:`relocate_entry` points the job's entry at that copy. Inputs and outputs go
through the store (the job's keywords name it), never through a shared folder.

The job process gets :data:`~..job_process.PARENT_VARIABLE`: if this worker is killed
while the job runs, the job process dies with it, and the job runs again on another
worker (at least once, never twice at the same time).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
import zipfile
from dataclasses import dataclass, replace
from pathlib import Path

from ..._context import ENV_PREFIX
from ..._errors import ServiceError
from ..entries import EntryPoint
from ..job_process import PARENT_VARIABLE
from .base import JobOutcome, JobTask
from .local import make_private_dir, run_job_process

__all__ = [
    "JOBS_DIR",
    "SERVICES_DIR",
    "ShippedService",
    "relocate_entry",
    "run_on_worker",
    "unpack_service",
]

logger = logging.getLogger(__name__)

#: Folder of the worker's local directory holding the unpacked services.
SERVICES_DIR = "dcm-service-services"
#: Folder of the worker's local directory holding the jobs' logs and scratch folders.
JOBS_DIR = "dcm-service-jobs"


@dataclass(frozen=True)
class ShippedService:
    """A service folder uploaded to the workers: the zip's file ``archive`` (in each
    worker's local directory), its content ``digest``, and the folder it was made
    from on the runner's machine (``root``: entries under it are relocated)."""

    archive: str
    digest: str
    root: str


def unpack_service(local_dir: Path, service: ShippedService) -> Path:
    """The service's folder on this worker: the uploaded zip unpacked once (into a
    temporary folder renamed into place, so concurrent jobs never see half of it)."""
    target = local_dir / SERVICES_DIR / service.digest
    if target.is_dir():
        return target
    archive = local_dir / service.archive
    if not archive.is_file():
        raise ServiceError(
            f"the service's code {service.archive!r} did not reach this worker's local "
            f"directory {str(local_dir)!r} - was it uploaded by the runner (dcm-service run "
            "--cluster uploads it)?"
        )
    make_private_dir(target.parent)
    staging = Path(tempfile.mkdtemp(prefix=".unpack-", dir=target.parent))
    try:
        with zipfile.ZipFile(archive) as zipped:
            for name in zipped.namelist():
                if name.startswith("/") or ".." in Path(name).parts:
                    raise ServiceError(f"refusing service archive member {name!r}")
            zipped.extractall(staging)
        try:
            os.rename(staging, target)
        except OSError:  # another job unpacked it first
            if not target.is_dir():
                raise
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return target


def _moved(path: Path, old_root: Path, new_root: Path) -> Path:
    try:
        return new_root / path.relative_to(old_root)
    except ValueError:  # outside the service folder: it must exist on the worker as is
        return path


def relocate_entry(entry: EntryPoint, old_root: Path, new_root: Path) -> EntryPoint:
    """``entry`` with every path under ``old_root`` (the service folder on the
    runner's machine) moved under ``new_root`` (its copy on this worker)."""
    return replace(
        entry,
        package=_moved(entry.package, old_root, new_root) if entry.package else None,
        file=_moved(entry.file, old_root, new_root) if entry.file else None,
        search_path=tuple(str(_moved(Path(p), old_root, new_root)) for p in entry.search_path),
    )


def run_on_worker(task: JobTask, service: ShippedService | None, topic: str) -> JobOutcome:
    """The Dask task of one job: announce it on ``topic``, unpack ``service``, run the
    job in its own process on this worker, and return its outcome (naming this
    worker). A job that fails is an outcome, not an exception: only the loss of the
    worker makes Dask run it again."""
    from distributed import get_worker

    worker = get_worker()
    worker.log_event(topic, {"key": task.key, "worker": worker.address})
    local_dir = Path(worker.local_directory)
    if service is not None:
        home = unpack_service(local_dir, service)
        task = replace(task, entry=relocate_entry(task.entry, Path(service.root), home))
    env = {k: v for k, v in os.environ.items() if not k.replace("_", "-").startswith(ENV_PREFIX)}
    env.update(task.env)  # the run's DCM-PROCESSOR-SERVICE-* variables
    env[PARENT_VARIABLE] = str(os.getpid())
    task = replace(task, env=env)
    outcome = run_job_process(task, local_dir / JOBS_DIR / task.group)
    outcome.worker = worker.address
    with contextlib.suppress(OSError):  # the scratch folder is the job's, not the worker's
        shutil.rmtree(local_dir / JOBS_DIR / task.group / task.name)
    return outcome
