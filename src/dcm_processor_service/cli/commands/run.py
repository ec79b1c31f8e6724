"""``dcm-service run SERVICE INPUT...``: run a service as the platform's worker would.

:func:`execute_run` is the run itself, shared with ``dcm-service demo``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import click

from ..._errors import ServiceError
from ...store.records import JobStatus
from ..batch_console import BatchConsole
from ..console import Console, err, out, print_json
from ..formatting import failure_details, run_summary
from ..options import (
    EVENT_CHOICE,
    CliState,
    pass_state,
    peer_address_option,
    peer_option,
    uses_store,
)

__all__ = ["execute_run", "parse_params", "parse_peer_address", "run"]

logger = logging.getLogger("dcm_processor_service.cli")

_PEER_ADDRESS = re.compile(r"^(?P<aet>[^@]+)@(?P<host>\[[^\]]+\]|[^:]+):(?P<port>\d+)$")


def parse_peer_address(text: str) -> tuple[str, str, int]:
    """``AET@HOST:PORT`` (an IPv6 host in brackets) as ``(aet, host, port)``."""
    match = _PEER_ADDRESS.match(text.strip())
    if match is None:
        raise click.BadParameter(
            f"{text!r} - write AET@HOST:PORT, e.g. ORTHANC@127.0.0.1:4242",
            param_hint="--peer-address",
        )
    return match["aet"], match["host"].strip("[]"), int(match["port"])


def parse_params(values: Sequence[str]) -> dict[str | None, dict[str, Any]]:
    """``--param [JOB:]KEY=VALUE`` values by job (``None``: every job); a value is
    parsed as JSON, else kept as text."""
    params: dict[str | None, dict[str, Any]] = {}
    for item in values:
        if "=" not in item:
            raise click.BadParameter(
                f"{item!r} - write KEY=VALUE or JOB:KEY=VALUE", param_hint="--param"
            )
        key, raw = item.split("=", 1)
        job: str | None = None
        if ":" in key:
            job, key = key.split(":", 1)
        key = key.strip()
        if not key or (job is not None and not job.strip()):
            raise click.BadParameter(f"{item!r} - the key is empty", param_hint="--param")
        try:
            value = json.loads(raw)
        except ValueError:
            value = raw
        params.setdefault(job.strip() if job else None, {})[key] = value
    return params


def _load_service(
    service: str, *, event: str | None, job_name: str | None, timeout: str | None
) -> Any:
    from ...runner.manifest import load_manifest, manifest_for_function

    path = Path(service).expanduser()
    if path.exists():
        if event or job_name or timeout:
            logger.warning(
                "--event, --job-name and --timeout apply only to a module:function service; ignored"
            )
        return load_manifest(path)
    if ":" in service:
        return manifest_for_function(
            service, event=event or "stable-series", job_name=job_name, timeout=timeout
        )
    raise ServiceError(
        f"service {service!r} not found - give a folder with dcm-processor.json, a manifest file, "
        "or a worker as module:function / file.py:function"
    )


def _register_peer(store: Any, peer: str | None, peer_address: str | None) -> str | None:
    """The peer name to use; ``--peer-address`` adds (or updates) it in the store."""
    if not peer_address:
        if peer is not None:
            store.get_peer(peer)  # fails early, naming the known peers
        return peer
    from ...store.records import Peer

    aet, host, port = parse_peer_address(peer_address)
    saved = store.put_peer(Peer(name=peer or aet, aet=aet, host=host, port=port))
    logger.info("peer %s registered (%s@%s:%d)", saved.name, saved.aet, saved.host, saved.port)
    return saved.name


@contextlib.contextmanager
def _cluster_client(address: Any, cluster: str | None, workers: int | None) -> Iterator[Any]:
    """A Dask client for ``--cluster`` / ``--workers`` (closed at the end, with the
    in-process cluster it started), or ``None`` (this machine)."""
    if cluster and workers:
        raise click.UsageError("give --cluster ADDRESS or --workers N, not both")
    if cluster is None and workers is None:
        yield None
        return
    from ...runner.executors.dask_cluster import connect_cluster, start_local_cluster

    if cluster is not None and address.provider == "sqlite":
        raise click.UsageError(
            "--cluster needs a store every worker reaches: a sqlite file on this machine "
            "is not - use --db-provider postgresql --db-url postgresql://HOST/... (or "
            "--workers N to run on this machine only)"
        )
    client = connect_cluster(cluster) if cluster is not None else start_local_cluster(workers or 1)
    local = getattr(client, "cluster", None)
    try:
        yield client
    finally:
        client.close()
        if local is not None:
            local.close()


def execute_run(
    state: CliState,
    manifest: Any,
    inputs: Sequence[str],
    *,
    params: Sequence[str],
    peer: str | None,
    peer_address: str | None,
    output: str | None,
    keep_session: bool,
    cleanup_on_failure: bool,
    work_dir: str | None,
    expect_job: str | None = None,
    cluster: str | None = None,
    workers: int | None = None,
    resume: str | None = None,
) -> int:
    """Run ``manifest`` on ``inputs`` in the state's store (on a Dask cluster with
    ``cluster`` or ``workers``; ``resume``: continue that run instead), draw the
    progress, print the summary (or the JSON report); the exit code. ``expect_job``:
    fail unless that job succeeded (the demo's check)."""
    from ...runner.runner import Runner

    overrides = parse_params(params)
    address = state.store_address()
    with _cluster_client(address, cluster, workers) as client:
        with address.open() as store:
            peer_name = _register_peer(store, peer, peer_address)
        folder = state.store_folder()
        if work_dir is None and folder is not None:
            work_dir = str(folder / "runs" / time.strftime("%Y%m%d-%H%M%S"))
        console_class = Console if client is None else BatchConsole
        console = console_class(
            sys.stderr,
            show_output=state.verbose >= 1,
            enabled=not state.json or sys.stderr.isatty(),
        )
        jobs = ", ".join(j.name + (" (disabled)" if j.disabled else "") for j in manifest.jobs)
        console.line(f"service {manifest.name} {manifest.version}: {jobs}")
        executor = None
        if client is not None:
            from ...runner.executors.dask_executor import DaskExecutor

            executor = DaskExecutor(client, service_root=manifest.root)
            count = len(client.scheduler_info(n_workers=-1).get("workers") or {})
            console.line(
                f"cluster {client.scheduler.address}: {count} worker(s); dashboard "
                f"{executor.dashboard_link or 'none'}"
            )
        runner = Runner(
            manifest,
            db_provider=address.provider,
            db_url=address.url,
            db_name=address.name,
            peer=peer_name,
            params=overrides,
            keep_session=keep_session,
            cleanup_on_failure=cleanup_on_failure,
            output_dir=output,
            work_dir=work_dir,
            observer=console,
            job_log_level="DEBUG" if state.verbose >= 2 else "INFO",
            executor=executor,
            run_id=resume,
        )
        with state.progress_on(console):
            report = runner.resume() if resume else runner.run(inputs)
        if state.json:
            data = report.to_dict()
            if executor is not None:
                data["cluster"] = {
                    "scheduler": client.scheduler.address,
                    "dashboard": executor.dashboard_link,
                }
            print_json(data)
        else:
            out(run_summary(report))
            details = failure_details(report)
            if details:
                err(details)
        if expect_job and not any(
            j.job_name == expect_job and j.status == JobStatus.SUCCEEDED for j in report.jobs
        ):
            err(f"error: job {expect_job!r} did not run on the input (see the summary)")
            return 1
        return report.exit_code


@click.command()
@click.argument("service")
@click.argument("inputs", nargs=-1, type=click.Path())
@click.option(
    "-p",
    "--param",
    "params",
    multiple=True,
    metavar="[JOB:]KEY=VALUE",
    help="Job parameter (value parsed as JSON, else text); JOB: limits it to one job. Repeatable.",
)
@peer_option("Peer (PACS) of the store the images 'came from'; jobs send results to it.")
@peer_address_option("Register this peer (named --peer or its AE title) and use it.")
@click.option(
    "-o",
    "--output",
    type=click.Path(file_okay=False),
    default=None,
    help="Export each session's files and data here before clean-up.",
)
@click.option(
    "--keep-session",
    is_flag=True,
    help="Do not run the post-services clean-up: keep data, files, images and jobs.",
)
@click.option(
    "--cleanup-on-failure",
    is_flag=True,
    help="Clean up even when a job failed (by default the session is kept).",
)
@click.option(
    "--work-dir",
    type=click.Path(file_okay=False),
    default=None,
    help="Where job logs and scratch folders go (default: STORE/runs).",
)
@click.option(
    "--event",
    type=EVENT_CHOICE,
    default=None,
    help="For module:function: the event the job runs on (default stable-series).",
)
@click.option(
    "--job-name",
    default=None,
    help="For module:function: the job name (default the function's name).",
)
@click.option(
    "--timeout",
    default=None,
    help="For module:function: the job timeout, e.g. 30s, 10m, 1h (default 1h).",
)
@click.option(
    "--cluster",
    metavar="ADDRESS",
    default=None,
    help="Run the jobs on the Dask cluster whose scheduler is at ADDRESS "
    "(tcp://HOST:8786); the store must be reachable from every worker (PostgreSQL).",
)
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=None,
    help="Run the jobs on an in-process Dask cluster of N worker processes on this machine.",
)
@click.option(
    "--resume",
    metavar="RUN_ID",
    default=None,
    help="Continue run RUN_ID (printed when it started) from the job states in the store: "
    "jobs that succeeded are not run again. No INPUT then.",
)
@uses_store
@pass_state
def run(
    state: CliState,
    service: str,
    inputs: tuple[str, ...],
    event: str | None,
    job_name: str | None,
    timeout: str | None,
    **run_options: Any,
) -> int:
    """Run SERVICE on INPUT DICOM (folders, files, DICOMDIRs) as the platform would.

    SERVICE is a folder with a dcm-processor.json manifest, the manifest file, or a
    single worker as module:function or path/file.py:function. The input is ingested
    into the store, one session per patient; each stable series, study and patient
    triggers the registry callbacks and jobs of its event, each job in its own process
    with the platform's DCM-PROCESSOR-SERVICE-* variables. Exit code 1 when a job
    failed or timed out.

    With --cluster (or --workers) every job is a task on a Dask cluster: jobs of a
    session that do not wait for each other run at the same time on the workers; the
    service folder is shipped to them; a job whose worker dies runs again on another.
    See docs/scaling.md.
    """
    # run_options: --param, --peer, --peer-address, --output, --keep-session,
    # --cleanup-on-failure, --work-dir, --cluster, --workers, --resume (execute_run's keywords)
    if bool(inputs) == bool(run_options.get("resume")):
        raise click.UsageError(
            "give INPUT (folders, files, DICOMDIRs) to run on, or --resume RUN_ID - not both"
            if inputs
            else "missing INPUT: give folders, files or DICOMDIRs (or --resume RUN_ID)"
        )
    manifest = _load_service(service, event=event, job_name=job_name, timeout=timeout)
    return execute_run(state, manifest, inputs, **run_options)
