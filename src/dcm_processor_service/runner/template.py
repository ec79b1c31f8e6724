"""``dcm-service new service NAME``: the platform's service template, runnable at once.

Writes what ``dcm-processor generate service NAME`` writes - the manifest, a
``registry`` package exporting ``callback`` and a ``module`` package exporting
``worker``, each from its ``main.py``, and a README - with the same fields and
signatures, so the service deploys to the platform unchanged and runs under
``dcm-service run`` as it is.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

from .._context import JOB_EVENTS
from .._errors import ServiceError
from .._validation import validate_name
from .manifest import MANIFEST_NAME

__all__ = ["write_service_template"]

_REGISTRY_MAIN = '''"""Registry callback of {name}.

The platform's scheduler (and ``dcm-service run``) calls ``callback`` for every stable
object of the job's events - a series, a study or the patient - with the keywords
session_id, job_name, headers, params and added_params. ``headers`` is the object's
record: ``headers["Metadata"]`` holds its DICOM tags (Modality, SeriesDescription, ...).
"""


def callback(session_id, job_name, headers, params, added_params, **kwargs):
    injected_params = {{"custom-data": "Some new data"}}

    # Check the header information etc. to see if the job has to run for this object.
    # If yes, return True with the params to inject (the worker gets them as
    # added_params[job_name]); if not, return False.
    return True, injected_params
'''

_MODULE_MAIN = '''"""Worker of {name}.

Runs in its own process with the job's context in the environment
(DCM-PROCESSOR-SERVICE-*), so the dcm_processor_service functions work here:
get_series_nifti(headers["_id"], "input.nii.gz"), upload_session_file(...),
set_session_data(...), get_dicom_sender().send_dicom_from_path(...), ...
The return value must be JSON-serialisable: the platform stores it with the job.
"""

import logging

logger = logging.getLogger(__name__)


def worker(session_id, job_name, headers, params, added_params, **kwargs):
    metadata = headers.get("Metadata") or {{}}
    logger.info(
        "%s: %s %s (params %s, from the registry callback %s)",
        job_name,
        kwargs.get("event"),
        metadata.get("SeriesDescription") or metadata.get("StudyDescription") or headers.get("_id"),
        params,
        added_params.get(job_name),
    )
    return {{"object": headers.get("_id")}}
'''


def write_service_template(
    name: str,
    directory: str | os.PathLike[str] = ".",
    *,
    events: Sequence[str] = ("stable-series",),
) -> list[Path]:
    """Write the platform's service template for ``name`` into ``directory/name``;
    return the files written. Refuses a folder that exists and is not empty."""
    try:
        validate_name(name, "service name")
    except ValueError as exc:
        raise ServiceError(str(exc)) from None
    bad = [e for e in events if e not in JOB_EVENTS]
    if bad:
        raise ServiceError(f"unknown event {bad[0]!r} - known: {', '.join(JOB_EVENTS)}")
    root = Path(directory).expanduser().resolve() / name
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise ServiceError(
            f"{root} already exists and is not an empty folder - choose another name"
        )
    manifest = {
        "name": name,
        "version": "0.0.1",
        "summary": "",
        "tags": [name],
        "service": {
            "registry": "registry",
            "module": "module",
            "required_services": [],
            "required_workers": [],
            "jobs": [
                {
                    "jobName": name,
                    "workerEntry": "worker",
                    "registryEntry": "callback",
                    "events": list(dict.fromkeys(events)) or ["stable-series"],
                    "dependsOn": [],
                    "worker": None,
                    "timeout": "1h",
                    "params": {},
                    "sortPosition": 0,
                    "description": "",
                }
            ],
        },
    }
    files = {
        MANIFEST_NAME: json.dumps(manifest, indent=4) + "\n",
        "README.md": f"# {name}\n",
        "registry/__init__.py": "from .main import callback\n",
        "registry/main.py": _REGISTRY_MAIN.format(name=name),
        "module/__init__.py": "from .main import worker\n",
        "module/main.py": _MODULE_MAIN.format(name=name),
    }
    written = []
    for relative, text in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written
