"""The local runner: run a service on one machine exactly as the platform's worker would.

::

    from dcm_processor_service.runner import load_manifest, run_service

    report = run_service(load_manifest("examples/threshold-service"), ["scans/"],
                         db_url=".dcm-service/", output_dir="results/")
    print(report.ok, report.counts())

Modules, in the order a run uses them:

* :mod:`.platform` - how the platform loads and calls a service (interface facts);
* :mod:`.manifest` - reading ``dcm-processor.json`` into typed specs (:mod:`.specs`:
  :class:`ServiceManifest`, :class:`JobSpec`), with every problem at once;
* :mod:`.rules` - the platform's rules for a service, and :class:`ManifestProblem`;
* :mod:`.entries` - entry points: parsed, checked without running code, imported;
* :mod:`.inputs` - input files, grouped by patient;
* :mod:`.graph` - a session's job graph (pre -> series -> study -> patient -> post) and
  the ``dependsOn`` rules;
* :mod:`.executors` - where the jobs run: :class:`Executor` (the seam),
  :class:`LocalExecutor` (each job in its own process, :mod:`.job_process`),
  :class:`DaskExecutor` (the jobs on a Dask cluster; :mod:`.window` keeps several
  sessions open there, :mod:`.resume` continues a run from the store);
  :mod:`.processes` finds and ends a job's processes;
* :mod:`.runner` - :class:`Runner`: the orchestration of a run;
* :mod:`.report` - what a run did (:class:`RunReport`, :class:`SessionRun`,
  :class:`JobRun`); :mod:`.progress` - events for whoever watches (:class:`RunObserver`);
* :mod:`.export` - a session's outputs to a folder; :mod:`.stopping` - signals;
* :mod:`.ownership` - which runner owns a record, heartbeat, stale records;
* :mod:`.check` (``dcm-service check``), :mod:`.template` (``dcm-service new service``),
  :mod:`.sample_data` (a synthetic CT for demos and tests).

Names are imported lazily, so ``python -m dcm_processor_service.runner.job_process``
(every job's process) starts without loading the runner.
"""

from __future__ import annotations

from .._lazy import lazy_attributes

__all__ = [
    "CheckReport",
    "DaskExecutor",
    "EntryPoint",
    "Executor",
    "JobOutcome",
    "JobRun",
    "JobSpec",
    "JobTask",
    "LocalExecutor",
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
    "EntryPoint": "entries",
    "JobSpec": "specs",
    "ServiceManifest": "specs",
    "ManifestProblem": "rules",
    "load_manifest": "manifest",
    "manifest_for_function": "manifest",
    "parse_timeout": "manifest",
    "DaskExecutor": "executors.dask_executor",
    "Executor": "executors.base",
    "JobOutcome": "executors.base",
    "JobTask": "executors.base",
    "LocalExecutor": "executors.local",
    "RunObserver": "progress",
    "JobRun": "report",
    "RunReport": "report",
    "SessionRun": "report",
    "RunInterrupted": "stopping",
    "Runner": "runner",
    "run_service": "runner",
    "export_session": "export",
    "make_sample_ct": "sample_data",
    "CheckReport": "check",
    "check_service": "check",
    "write_service_template": "template",
}


__getattr__, __dir__ = lazy_attributes(__name__, _WHERE, globals())
