"""Benchmark: the example service on the local runner against a Dask cluster of 1 and 2 workers.

One command::

    python benchmarks/bench_cluster.py                      # 200 series of 32 x 256², as issue #13 asks
    python benchmarks/bench_cluster.py --series 16 --size 64 --slices 16   # a quick look

One patient with ``--series`` small CT series (one study) is run through
``examples/threshold-service`` (per series: ``threshold`` then ``deliver``), with
PostgreSQL as the store (a throwaway server on a loopback port), in the same run:

- **local**: the local runner (each job in its own process, one after the other);
- **cluster-N**: ``Runner`` with a :class:`DaskExecutor` on an in-process Dask cluster
  of N worker processes (``--workers``, default ``1,2``), one thread each.

The cluster's cost per job is measured apart, with a job that does nothing
(``--overhead-jobs``, default 40 tiny series): local and cluster-1 alternately, twice
each; the overhead is the smaller of the two differences between a cluster run and the
local run just before it - so that it is not buried in the example's seconds of work,
nor in the drift of a shared machine's load. ``job proc`` is the mean time of a job's process, as
measured around it (on the worker, for the cluster).

Each run ingests into a fresh database; the figures are for the jobs' phase (first job
started to last job finished, as the runner's observer saw them): jobs/s, the
cluster's overhead per job against the local runner ((cluster-1 - local) / jobs;
goal <= 50 ms) and the scaling from 1 to 2 workers (goal >= 1.6x on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # support.postgres

from dcm_processor_service.runner import Runner, RunObserver, load_manifest  # noqa: E402
from dcm_processor_service.runner.executors.dask_cluster import start_local_cluster  # noqa: E402
from dcm_processor_service.runner.executors.dask_executor import DaskExecutor  # noqa: E402
from dcm_processor_service.runner.sample_data import make_sample_ct  # noqa: E402
from support.postgres import PostgresServer  # noqa: E402

EXAMPLE = ROOT / "examples" / "threshold-service"
STUDY_UID = "1.2.826.0.1.3680043.8.498.4242"


class JobClock(RunObserver):
    """When the first job started and the last one ended."""

    def __init__(self) -> None:
        self.first: float | None = None
        self.last = 0.0
        self.jobs = 0
        self.process_seconds = 0.0

    def job_started(self, job: Any) -> None:
        if job.object_kind != "session" and self.first is None:
            self.first = time.monotonic()

    def job_finished(self, job: Any) -> None:
        if job.object_kind != "session":
            self.jobs += 1
            self.last = time.monotonic()
            self.process_seconds += job.duration or 0.0


def make_inputs(folder: Path, series: int, slices: int, size: int) -> None:
    for i in range(series):
        make_sample_ct(
            folder / f"s{i:04d}",
            slices=slices,
            size=size,
            patient_id="BENCH-1",
            study_uid=STUDY_UID,
            series_description=f"bench series {i}",
            seed=i,
        )


def one_run(
    label: str, server: PostgresServer, inputs: Path, workers: int | None, service: Path = EXAMPLE
) -> dict[str, Any]:
    name = server.create_database(f"bench_{label.replace('-', '_')}_{int(time.time())}")
    clock = JobClock()
    client = start_local_cluster(workers) if workers else None
    try:
        executor = DaskExecutor(client, service_root=service) if client else None
        started = time.monotonic()
        report = Runner(
            load_manifest(service),
            db_provider="postgresql",
            db_url=server.url(name),
            db_name=name,
            observer=clock,
            executor=executor,
            handle_signals=False,
        ).run([inputs])
        wall = time.monotonic() - started
    finally:
        if client is not None:
            cluster = client.cluster
            client.close()
            cluster.close()
        server.drop_database(name)
    if not report.ok:
        failed = [(j.job_name, j.status, j.error) for j in report.jobs if j.failed][:3]
        raise SystemExit(f"{label}: the run failed: {failed}")
    phase = clock.last - (clock.first or clock.last)
    return {
        "label": label,
        "jobs": clock.jobs,
        "jobs_phase_s": round(phase, 2),
        "wall_s": round(wall, 2),
        "jobs_per_s": round(clock.jobs / phase, 3) if phase else None,
        "job_process_s": round(clock.process_seconds / max(1, clock.jobs), 3),
    }


NOOP = "def noop(**kwargs):\n    return None\n"


def overhead_runs(server: PostgresServer, root: Path, jobs: int) -> list[dict[str, Any]]:
    """A job that does nothing, on ``jobs`` tiny series: local and cluster-1, twice each
    (ABAB, so a change in the machine's load hits both): the pure cost of a job."""
    service = root / "noop-service"
    (service / "module").mkdir(parents=True)
    (service / "module" / "__init__.py").write_text(NOOP)
    manifest = {
        "name": "noop",
        "version": "1.0.0",
        "service": {
            "module": "module",
            "jobs": [{"jobName": "noop", "workerEntry": "noop", "events": ["stable-series"]}],
        },
    }
    (service / "dcm-processor.json").write_text(json.dumps(manifest))
    inputs = root / "noop-in"
    make_inputs(inputs, jobs, 2, 16)
    runs = []
    for round_ in (1, 2):
        runs.append(one_run(f"noop-local-{round_}", server, inputs, None, service))
        runs.append(one_run(f"noop-cluster-{round_}", server, inputs, 1, service))
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--series", type=int, default=200, help="series of the patient (200)")
    parser.add_argument("--slices", type=int, default=32, help="slices per series (32)")
    parser.add_argument("--size", type=int, default=256, help="rows = columns (256)")
    parser.add_argument("--workers", default="1,2", help="cluster sizes to run (1,2)")
    parser.add_argument(
        "--overhead-jobs", type=int, default=40, help="no-op jobs for the overhead (40; 0: skip)"
    )
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    sizes = [int(n) for n in args.workers.split(",") if n.strip()]
    with tempfile.TemporaryDirectory(prefix="bench-cluster-") as tmp:
        inputs = Path(tmp) / "in"
        make_inputs(inputs, args.series, args.slices, args.size)
        with PostgresServer() as server:
            noop = (
                overhead_runs(server, Path(tmp), args.overhead_jobs) if args.overhead_jobs else []
            )
            runs = [one_run("local", server, inputs, None)]
            runs += [one_run(f"cluster-{n}", server, inputs, n) for n in sizes]
    local = runs[0]
    by_label = {r["label"]: r for r in runs}
    figures: dict[str, Any] = {"runs": runs, "series": args.series, "slices": args.slices}
    figures["noop_runs"] = noop
    if noop:
        per_job = {r["label"]: r["jobs_phase_s"] / max(1, r["jobs"]) for r in noop}
        pairs = [
            per_job[f"noop-cluster-{n}"] - per_job[f"noop-local-{n}"] for n in (1, 2)
        ]  # each cluster run against the local run just before it: the load drifts less
        figures["noop_ms_per_job"] = {k: round(v * 1000, 1) for k, v in per_job.items()}
        figures["overhead_ms_per_job"] = round(min(pairs) * 1000, 1)
    if "cluster-1" in by_label:
        one = by_label["cluster-1"]
        figures["example_delta_ms_per_job"] = round(
            (one["jobs_phase_s"] - local["jobs_phase_s"]) / max(1, one["jobs"]) * 1000, 1
        )
        if "cluster-2" in by_label and one["jobs_per_s"]:
            figures["scaling_1_to_2"] = round(
                by_label["cluster-2"]["jobs_per_s"] / one["jobs_per_s"], 2
            )
    if args.json:
        print(json.dumps(figures, indent=2))
        return
    print(
        f"{args.series} series of {args.slices} x {args.size}², example service (2 jobs per series)"
    )
    print(f"{'run':<15} {'jobs':>5} {'jobs phase':>11} {'wall':>8} {'jobs/s':>8} {'job proc':>9}")
    for run in noop + runs:
        print(
            f"{run['label']:<15} {run['jobs']:>5} {run['jobs_phase_s']:>10.2f}s "
            f"{run['wall_s']:>7.2f}s {run['jobs_per_s'] or 0:>8.3f} {run['job_process_s']:>8.3f}s"
        )
    if "overhead_ms_per_job" in figures:
        print(
            "no-op job, ms per job: "
            + ", ".join(f"{k} {v}" for k, v in figures["noop_ms_per_job"].items())
            + f" -> cluster overhead per job {figures['overhead_ms_per_job']} ms "
            "(smaller of the two paired differences; goal <= 50 ms)"
        )
    if "example_delta_ms_per_job" in figures:
        print(
            "example service, cluster-1 minus local per job: "
            f"{figures['example_delta_ms_per_job']} ms (includes the drift of the machine's load)"
        )
    if "scaling_1_to_2" in figures:
        print(f"scaling 1 -> 2 workers: {figures['scaling_1_to_2']}x (goal >= 1.6x on 2 cores)")


if __name__ == "__main__":
    main()
