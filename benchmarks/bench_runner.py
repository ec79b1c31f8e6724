"""Benchmark: the local runner against misbehaving jobs (stall, leftovers, memory).

One command::

    python benchmarks/bench_runner.py                    # this checkout
    python benchmarks/bench_runner.py --src ../other/src # another version, for before/after

Each scenario runs a one-job service with :class:`~dcm_processor_service.runner.Runner`
in a fresh Python process (whose package comes from ``--src``) on a tiny synthetic CT,
and reports:

- **stall**: the job returns at once but leaves a child that keeps the job's output
  open for ``--child-seconds`` (job timeout 5 s): the run's wall time, against the same
  service whose job leaves nothing behind (the reference);
- **leftovers**: a job that succeeds leaving a child in its process group and a
  double-forked ``setsid`` daemon: how many of them still run after the run;
- **flood**: a job that prints ``--output-mb`` MB without a newline, then raises with a
  ``--message-mb`` MB message: the runner process's peak RSS (its own, not the job's),
  the length of the job's ``error`` and the size of the JSON report - against the
  plain job's peak RSS.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # support.processes

from support.processes import alive  # noqa: E402

WORKERS = textwrap.dedent(
    """
    import os, subprocess, sys, time

    def plain(session_id, job_name, headers, params, added_params, **kwargs):
        return "ok"

    def child_holds_output(session_id, job_name, headers, params, added_params, **kwargs):
        argv = [sys.executable, "-c", f"import time; time.sleep({params['child_seconds']})"]
        child = subprocess.Popen(argv)
        with open(params["pid_file"], "w") as f:
            f.write(str(child.pid))
        return "returned"

    DAEMON = "import os, sys, time\\nif os.fork() == 0:\\n    os.setsid()\\n    if os.fork() == 0:\\n        open(sys.argv[1], 'a').write(str(os.getpid()) + '\\\\n')\\n        time.sleep(60)\\n    os._exit(0)\\n"

    def leaves_processes(session_id, job_name, headers, params, added_params, **kwargs):
        quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], **quiet)
        with open(params["pid_file"], "a") as f:
            f.write(str(child.pid) + "\\n")
        subprocess.run([sys.executable, "-c", DAEMON, params["pid_file"]], check=True, **quiet)
        time.sleep(0.5)
        return "left processes"

    def flood(session_id, job_name, headers, params, added_params, **kwargs):
        sys.stdout.write("x" * (params["output_mb"] << 20))
        sys.stdout.flush()
        raise RuntimeError("E" * (params["message_mb"] << 20))
    """
)

RUN = textwrap.dedent(
    """
    import json, resource, sys, time
    from pathlib import Path
    from dcm_processor_service.runner import Runner, load_manifest
    service, data, work = sys.argv[1:4]
    start = time.monotonic()
    report = Runner(load_manifest(service), db_url=work + "/store/", work_dir=work + "/work",
                    keep_session=True).run([data])
    wall = time.monotonic() - start
    job = [j for j in report.jobs if j.event != "session"][0]
    print(json.dumps({
        "wall": wall, "status": job.status, "error_len": len(job.error or ""),
        "report_bytes": len(json.dumps(report.to_dict(), default=str)),
        "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }))
    """
)


def scenario(src: Path, tmp: Path, name: str, entry: str, params: dict[str, Any]) -> dict[str, Any]:
    work = tmp / name
    service = work / "svc"
    (service / "module").mkdir(parents=True)
    (service / "module" / "bench_workers.py").write_text(WORKERS)
    job = {"jobName": name, "workerEntry": f"bench_workers.{entry}", "timeout": "5s"}
    job.update({"events": ["stable-series"], "params": params})
    manifest = {"name": "bench", "version": "1", "service": {"module": "module", "jobs": [job]}}
    (service / "dcm-processor.json").write_text(json.dumps(manifest))
    env = dict(os.environ, PYTHONPATH=str(src))
    proc = subprocess.run(
        [sys.executable, "-c", RUN, str(service), str(tmp / "input"), str(work)],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )
    if proc.returncode != 0:
        raise SystemExit(f"{name} failed:\n{proc.stderr[-3000:]}")
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


def leftovers(pid_file: Path) -> int:
    pids = [int(p) for p in pid_file.read_text().split()] if pid_file.exists() else []
    time.sleep(1.0)
    running = [p for p in pids if alive(p)]
    for pid in running:  # clean up after the measurement
        os.kill(pid, signal.SIGKILL)
    return len(running)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--src", type=Path, default=ROOT / "src", help="package source folder")
    parser.add_argument("--child-seconds", type=int, default=20)
    parser.add_argument("--output-mb", type=int, default=100)
    parser.add_argument("--message-mb", type=int, default=20)
    args = parser.parse_args()
    sys.path.insert(0, str(args.src))
    from dcm_processor_service.runner.sample_data import make_sample_ct

    with tempfile.TemporaryDirectory(prefix="bench-runner-") as folder:
        tmp = Path(folder)
        make_sample_ct(tmp / "input", slices=2, size=16)
        plain = scenario(args.src, tmp, "plain", "plain", {})
        held = tmp / "held.pid"
        stall = scenario(
            args.src,
            tmp,
            "stall",
            "child_holds_output",
            {"child_seconds": args.child_seconds, "pid_file": str(held)},
        )
        stall_left = leftovers(held)
        left_file = tmp / "left.pids"
        messy = scenario(
            args.src, tmp, "leftovers", "leaves_processes", {"pid_file": str(left_file)}
        )
        left = leftovers(left_file)
        flood = scenario(
            args.src,
            tmp,
            "flood",
            "flood",
            {"output_mb": args.output_mb, "message_mb": args.message_mb},
        )
    print(f"package: {args.src}")
    print(f"{'scenario':<12} {'status':<10} {'wall s':>7} {'runner RSS MB':>14}  detail")
    print(
        f"{'plain':<12} {plain['status']:<10} {plain['wall']:7.1f} {plain['rss_mb']:14.0f}  reference"
    )
    print(
        f"{'stall':<12} {stall['status']:<10} {stall['wall']:7.1f} {stall['rss_mb']:14.0f}  "
        f"child kept the output {args.child_seconds}s; stall {stall['wall'] - plain['wall']:.1f}s "
        f"over plain; {stall_left} child(ren) left running"
    )
    print(
        f"{'leftovers':<12} {messy['status']:<10} {messy['wall']:7.1f} {messy['rss_mb']:14.0f}  "
        f"{left} of 2 leftover processes still running after the run"
    )
    print(
        f"{'flood':<12} {flood['status']:<10} {flood['wall']:7.1f} {flood['rss_mb']:14.0f}  "
        f"error {flood['error_len']:,} chars; JSON report {flood['report_bytes']:,} bytes"
    )


if __name__ == "__main__":
    main()
