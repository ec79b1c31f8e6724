"""The local runner: run a service on one machine exactly as the platform's worker would.

::

    from dcm_processor_service.runner import load_manifest, run_service

    report = run_service(load_manifest("examples/threshold-service"), ["scans/"],
                         db_url=".dcm-service/", output_dir="results/")
    print(report.ok, report.counts())

Modules: :mod:`.manifest` (``dcm-processor.json``, entry points), :mod:`.schedule`
(``dependsOn`` order), :mod:`.inputs` (input files by patient), :mod:`.job_process`
(one process per job), :mod:`.processes` (finding and ending a job's processes),
:mod:`.ownership` (which runner owns a record, heartbeat, stale records), :mod:`.runner`
(the orchestration), :mod:`.progress` (events for whoever watches), :mod:`.sample_data`
(a synthetic CT for demos and tests).

Names are imported lazily, so ``python -m dcm_processor_service.runner.job_process``
(every job's process) starts without loading the runner.
"""

from __future__ import annotations

from .._lazy import lazy_attributes

__all__ = [
    "EntryPoint",
    "JobOutcome",
    "JobRun",
    "JobSpec",
    "RunInterrupted",
    "RunObserver",
    "RunReport",
    "Runner",
    "ServiceManifest",
    "SessionRun",
    "export_session",
    "load_manifest",
    "make_sample_ct",
    "manifest_for_function",
    "parse_timeout",
    "run_service",
]

_WHERE = {
    "EntryPoint": "manifest",
    "JobSpec": "manifest",
    "ServiceManifest": "manifest",
    "load_manifest": "manifest",
    "manifest_for_function": "manifest",
    "parse_timeout": "manifest",
    "JobOutcome": "job_process",
    "RunObserver": "progress",
    "JobRun": "runner",
    "RunInterrupted": "runner",
    "RunReport": "runner",
    "Runner": "runner",
    "SessionRun": "runner",
    "export_session": "runner",
    "run_service": "runner",
    "make_sample_ct": "sample_data",
}


__getattr__, __dir__ = lazy_attributes(__name__, _WHERE, globals())
