"""The local runner: run a service on one machine exactly as the platform's worker would.

::

    from dcm_processor_service.runner import load_manifest, run_service

    report = run_service(load_manifest("examples/threshold-service"), ["scans/"],
                         db_url=".dcm-service/", output_dir="results/")
    print(report.ok, report.counts())

Modules: :mod:`.platform` (how the platform loads and calls a service),
:mod:`.manifest` (``dcm-processor.json``, entry points), :mod:`.schedule` (``dependsOn``
pruning and order), :mod:`.inputs` (input files by patient), :mod:`.job_process` (one
process per job), :mod:`.processes` (finding and ending a job's processes),
:mod:`.ownership` (which runner owns a record, heartbeat, stale records), :mod:`.runner`
(the job graph and its run), :mod:`.progress` (events for whoever watches),
:mod:`.check` (``dcm-service check``), :mod:`.template` (``dcm-service new service``),
:mod:`.sample_data` (a synthetic CT for demos and tests).

Names are imported lazily, so ``python -m dcm_processor_service.runner.job_process``
(every job's process) starts without loading the runner.
"""

from __future__ import annotations

from .._lazy import lazy_attributes

__all__ = [
    "CheckReport",
    "EntryPoint",
    "JobOutcome",
    "JobRun",
    "JobSpec",
    "ManifestProblem",
    "RunInterrupted",
    "RunObserver",
    "RunReport",
    "Runner",
    "ServiceManifest",
    "SessionRun",
    "check_service",
    "export_session",
    "load_manifest",
    "make_sample_ct",
    "manifest_for_function",
    "parse_timeout",
    "run_service",
    "write_service_template",
]

_WHERE = {
    "EntryPoint": "manifest",
    "JobSpec": "manifest",
    "ManifestProblem": "manifest",
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
    "CheckReport": "check",
    "check_service": "check",
    "write_service_template": "template",
}


__getattr__, __dir__ = lazy_attributes(__name__, _WHERE, globals())
