"""A service written for the dcm-processor platform, the way its template writes one.

:func:`write_platform_service` writes ``dcm-processor.json`` plus the ``registry`` and
``module`` packages (entries exported from ``__init__.py``, code in ``main.py`` with a
relative import of a helper module) - nothing in it knows about ``dcm-service``. It
exercises what the platform does and a service relies on:

* bare entries; a registry callback with its parameters in another order
  (``callback(headers, params, **kw)``); a keywords-only worker (``def send(**kwargs)``);
* ``dependsOn`` as a string (``send`` after ``convert``) and as a list;
* a job never scheduled because the job it depends on did not pass its registry
  callback (``pruned`` -> ``filtered-out``);
* ``stable-study`` and ``stable-patient`` jobs;
* a series job that makes a DICOM object (an Encapsulated PDF of the series' study) and
  a dependent job that sends it to the session's peer.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

__all__ = ["write_platform_service"]

_REGISTRY_INIT = "from .main import callback, never, study_callback\n"

_REGISTRY_MAIN = textwrap.dedent(
    '''
    """Registry callbacks: parameters in the platform's keyword style, in any order."""


    def callback(headers, params, **kwargs):
        modality = (headers.get("Metadata") or {}).get("Modality")
        if modality not in params.get("modalities", ["CT"]):
            return False
        return True, {"series": headers["SeriesInstanceUID"], "seen": sorted(kwargs["added_params"])}


    def never(session_id, job_name, headers, params, added_params):
        return False


    def study_callback(**kwargs):
        series = len(kwargs["headers"].get("Series") or [])
        return [True, {"series_in_study": series, "keywords": sorted(kwargs)}]
    '''
)

_MODULE_INIT = "from .main import convert, patient_summary, send, study_summary, unreachable\n"

_MODULE_HELPERS = textwrap.dedent(
    '''
    """A helper module, imported relatively by main.py (the platform imports the
    module folder as the package service_module)."""

    PDF = (
        b"%PDF-1.4\\n1 0 obj << /Type /Catalog /Pages 2 0 R >> endobj\\n"
        b"2 0 obj << /Type /Pages /Kids [] /Count 0 >> endobj\\n"
        b"trailer << /Root 1 0 R >>\\n%%EOF\\n"
    )


    def describe(headers):
        meta = headers.get("Metadata") or {}
        return f"{meta.get('Modality', '?')} {meta.get('SeriesDescription', '')}".strip()
    '''
)

_MODULE_MAIN = textwrap.dedent(
    '''
    """Workers, written against the original package's module paths."""

    import tempfile
    from pathlib import Path

    from dcm_processor_service.converters import get_series_dicom
    from dcm_processor_service.db_manager import (
        download_session_file,
        get_dicom_sender,
        get_peer,
        get_session_data,
        set_session_data,
        upload_session_file,
    )
    from dcm_processor_service.dicom_network.utils import make_pdf_dicom

    from .helpers import PDF, describe


    def convert(session_id, job_name, headers, params, added_params, **kwargs):
        datasets = get_series_dicom(headers["_id"])
        report = make_pdf_dicom(datasets[0], PDF, series_description=params["title"])
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "report.dcm"
            report.save_as(path, enforce_file_format=True)
            upload_session_file(str(path), "report.dcm", meta={"series": describe(headers)})
        set_session_data("sop_instance_uid", report.SOPInstanceUID)
        return {
            "sop_instance_uid": report.SOPInstanceUID,
            "study": report.StudyInstanceUID,
            "filter": added_params[job_name],
            "kwargs": sorted(kwargs),
        }


    def send(**kwargs):
        uid = get_session_data("sop_instance_uid", job_name="convert")
        peer = get_peer()
        with tempfile.TemporaryDirectory() as tmp:
            path = download_session_file("report.dcm", str(Path(tmp) / "r.dcm"), job_name="convert")
            statuses = get_dicom_sender().send_dicom_from_filelist([path])
        return {
            "sent": uid,
            "statuses": [int(s.Status) for s in statuses],
            "peer": [peer["aet"], peer.get("host"), peer["port"]],
            "event": kwargs["event"],
        }


    def unreachable(**kwargs):
        raise RuntimeError("this job must never be scheduled")


    def study_summary(session_id, job_name, headers, params, added_params, **kwargs):
        return {
            "study": headers["StudyInstanceUID"],
            "series": len(headers["Series"]),
            "filter": added_params[job_name],
        }


    def patient_summary(headers, **kwargs):
        return {"patient": headers["Metadata"]["PatientID"], "studies": len(headers["Studies"])}
    '''
)


def _job(name: str, worker: str, registry: str, events: list[str], **extra: object) -> dict:
    return {
        "jobName": name,
        "workerEntry": worker,
        "registryEntry": registry,
        "events": events,
        "dependsOn": [],
        "worker": None,
        "timeout": "1h",
        "params": {},
        "sortPosition": 0,
        "description": "",
        **extra,
    }


def write_platform_service(root: Path, name: str = "platform-fixture") -> Path:
    """Write the service into ``root`` (created) and return ``root``."""
    for folder, files in (
        ("registry", {"__init__.py": _REGISTRY_INIT, "main.py": _REGISTRY_MAIN}),
        (
            "module",
            {"__init__.py": _MODULE_INIT, "main.py": _MODULE_MAIN, "helpers.py": _MODULE_HELPERS},
        ),
    ):
        (root / folder).mkdir(parents=True, exist_ok=True)
        for filename, text in files.items():
            (root / folder / filename).write_text(text.lstrip(), encoding="utf-8")
    series = ["stable-series"]
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
                _job("send", "send", "callback", series, dependsOn="convert", sortPosition=2),
                _job("convert", "convert", "callback", series, params={"title": "Fixture report"}),
                _job("pruned", "unreachable", "callback", series, dependsOn=["filtered-out"]),
                _job("filtered-out", "unreachable", "never", series),
                _job("study-summary", "study_summary", "study_callback", ["stable-study"]),
                _job("patient-summary", "patient_summary", "study_callback", ["stable-patient"]),
            ],
        },
    }
    (root / "dcm-processor.json").write_text(json.dumps(manifest, indent=4), encoding="utf-8")
    (root / "README.md").write_text(f"# {name}\n", encoding="utf-8")
    return root
