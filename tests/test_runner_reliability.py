"""The runner against misbehaving jobs and a runner that dies: no stall, no orphaned
process, no record left ``running`` unrecognised, no leaked password, bounded error text,
no run lost to one bad export.

Every job runs in a real child process; the signal and crash tests run ``dcm-service``
itself as a real subprocess and signal or kill it.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from dcm_processor_service import InvalidInputError, use_context
from dcm_processor_service.cli import main
from dcm_processor_service.runner import Runner, load_manifest
from dcm_processor_service.session import download_session_file, upload_session_file
from dcm_processor_service.store import open_store
from dcm_processor_service.store.records import utcnow
from support.processes import alive
from support.services import WORKERS, sample_series, write_service

#: Workers that misbehave the way real services do (added to the shared test workers).
MISBEHAVING = WORKERS + textwrap.dedent(
    """
    import logging, textwrap

    def _save(params, **pids):
        path = params["pid_file"]
        with open(path + ".tmp", "w") as f:
            json.dump(pids, f)
        os.replace(path + ".tmp", path)

    def child_holds_output(session_id, job_name, headers, params, added_params, **kwargs):
        # a child that inherits the job's stdout (the runner's pipe) and outlives the job
        argv = [sys.executable, "-c", f"import time; time.sleep({params.get('child_seconds', 30)})"]
        child = subprocess.Popen(argv, start_new_session=bool(params.get("setsid")))
        _save(params, job=os.getpid(), child=child.pid)
        time.sleep(float(params.get("seconds", 0)))
        return "returned"

    _DAEMON = '''
    import os, sys, time
    if os.fork() == 0:
        os.setsid()
        if os.fork() == 0:
            with open(sys.argv[1] + ".tmp", "w") as f:
                f.write(str(os.getpid()))
            os.replace(sys.argv[1] + ".tmp", sys.argv[1])
            time.sleep(60)
        os._exit(0)
    '''

    def leaves_processes(session_id, job_name, headers, params, added_params, **kwargs):
        # one child in the job's process group, one daemon (double fork + setsid)
        quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], **quiet)
        daemon_file = params["pid_file"] + ".daemon"
        subprocess.run([sys.executable, "-c", textwrap.dedent(_DAEMON), daemon_file],
                       check=True, **quiet)
        deadline = time.monotonic() + 10
        while not os.path.exists(daemon_file) and time.monotonic() < deadline:
            time.sleep(0.02)
        with open(daemon_file) as f:
            daemon = int(f.read())
        _save(params, job=os.getpid(), child=child.pid, daemon=daemon)
        return "left two processes behind"

    def flood(session_id, job_name, headers, params, added_params, **kwargs):
        sys.stdout.write("x" * int(params.get("output", 0)))  # no newline
        sys.stdout.flush()
        if params.get("exit"):
            os._exit(5)
        raise RuntimeError("HEAD-" + "E" * int(params.get("message", 0)) + "-TAIL")

    def leak_url(session_id, job_name, headers, params, added_params, **kwargs):
        url = os.environ["DCM-PROCESSOR-SERVICE-DB-URL"]
        print("connecting to", url)
        logging.getLogger("svc").warning("store url is %s", url)
        logging.getLogger("svc").info("conninfo host=127.0.0.1 password=%s", url.split(":")[2].split("@")[0])
        dps.set_session_data("reached", True)
        return kwargs.get("db_url") == url

    def long_names(session_id, job_name, headers, params, added_params, **kwargs):
        dps.upload_session_file(b"short", "short.txt")
        dps.upload_session_file(b"250 ascii", "a" * 246 + ".txt")
        dps.upload_session_file(b"130 e-acute", "\\u00e9" * 130)
        return "uploaded"
    """
)


#: ``dcm-service`` as a real subprocess.
CLI = [sys.executable, "-m", "dcm_processor_service.cli"]


def _service(tmp_path: Path, jobs: list[dict[str, Any]]) -> Path:
    return write_service(tmp_path / "svc", jobs, workers=MISBEHAVING)


@pytest.fixture
def data(tmp_path: Path) -> Path:
    folder = tmp_path / "input"
    sample_series(folder, slices=2, size=8)
    return folder


def _run(service: Path, data: Path, tmp_path: Path, **options: Any):
    runner = Runner(
        load_manifest(service),
        db_url=str(tmp_path / "store") + os.sep,
        work_dir=tmp_path / "work",
        **options,
    )
    return runner.run([data])


def _wait_gone(pids: list[int], seconds: float = 5.0) -> list[int]:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and any(alive(p) for p in pids):
        time.sleep(0.05)
    return [p for p in pids if alive(p)]


def _wait_file(path: Path, seconds: float = 60.0) -> dict[str, int]:
    deadline = time.monotonic() + seconds
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)
    return json.loads(path.read_text())


@pytest.fixture
def kill_leftovers():
    """Pids a test expects dead; any survivor is killed after the test (and reported)."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        if alive(pid):
            os.kill(pid, signal.SIGKILL)


def _cli_json(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, Any]:
    capsys.readouterr()
    code = main([*args, "--json"])
    out = capsys.readouterr().out
    return code, json.loads(out) if out.strip() else None


def _sleeping_service(tmp_path: Path, pid_file: Path, *more: dict[str, Any]) -> Path:
    """A service whose job ``long`` starts a child, saves both pids and sleeps 60 s."""
    long = {
        "jobName": "long",
        "workerEntry": "svc_workers.sleep",
        "params": {"pid_file": str(pid_file), "seconds": 60},
    }
    return _service(tmp_path, [long, *more])


@contextlib.contextmanager
def _runner_in_job(
    service: Path, data: Path, store: Path, pid_file: Path, leftovers: list[int], *extra: str
) -> Iterator[tuple[subprocess.Popen[str], dict[str, int]]]:
    """``dcm-service run`` as a subprocess, once its job runs: ``(process, job pids)``."""
    runner = subprocess.Popen(
        [*CLI, "run", str(service), str(data), "--store", str(store), *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
    )
    try:
        pids = _wait_file(pid_file)
        leftovers.extend(pids.values())
        yield runner, pids
    finally:
        if runner.poll() is None:
            runner.kill()
            runner.wait()


# ------------------------------------------------------- 2. leftover child holds stdout
@pytest.mark.parametrize("setsid", [False, True], ids=["same-group", "setsid"])
def test_a_child_holding_the_output_does_not_stall_the_runner(
    tmp_path: Path, data: Path, setsid: bool, kill_leftovers: list[int]
) -> None:
    """The job returns at once; its child keeps the output pipe open for 30 s. The job's
    outcome is decided when the job process exits, and the child is ended."""
    pid_file = tmp_path / "pids.json"
    service = _service(
        tmp_path,
        [
            {
                "jobName": "parent",
                "workerEntry": "svc_workers.child_holds_output",
                "timeout": "20s",
                "params": {"pid_file": str(pid_file), "setsid": setsid},
            }
        ],
    )
    start = time.monotonic()
    report = _run(service, data, tmp_path)
    elapsed = time.monotonic() - start
    pids = json.loads(pid_file.read_text())
    kill_leftovers.extend(pids.values())
    job = report.jobs[1]
    assert (job.job_name, job.status, job.result) == ("parent", "succeeded", "returned")
    assert elapsed < 15, f"the runner stalled {elapsed:.1f}s on the job's child"
    assert job.duration < 10
    assert _wait_gone(list(pids.values())) == []


def test_the_timeout_applies_when_a_setsid_child_holds_the_output(
    tmp_path: Path, data: Path, kill_leftovers: list[int]
) -> None:
    pid_file = tmp_path / "pids.json"
    service = _service(
        tmp_path,
        [
            {
                "jobName": "slow",
                "workerEntry": "svc_workers.child_holds_output",
                "timeout": "2s",
                "params": {"pid_file": str(pid_file), "setsid": True, "seconds": 30},
            }
        ],
    )
    start = time.monotonic()
    report = _run(service, data, tmp_path)
    elapsed = time.monotonic() - start
    pids = json.loads(pid_file.read_text())
    kill_leftovers.extend(pids.values())
    slow = report.jobs[1]
    assert slow.status == "timed-out"
    assert slow.error == "timed out after 2s - the job process was killed"
    assert elapsed < 15, f"a 2 s timeout ended the run after {elapsed:.1f}s"
    assert _wait_gone(list(pids.values())) == []


# ---------------------------------------------------------------- 3. orphaned processes
def test_no_process_of_a_finished_job_survives(
    tmp_path: Path, data: Path, kill_leftovers: list[int]
) -> None:
    """A job that succeeded left a child in its process group and a daemon that
    double-forked into a session of its own: both are ended when the job ends."""
    pid_file = tmp_path / "pids.json"
    service = _service(
        tmp_path,
        [
            {
                "jobName": "messy",
                "workerEntry": "svc_workers.leaves_processes",
                "params": {"pid_file": str(pid_file)},
            }
        ],
    )
    report = _run(service, data, tmp_path)
    pids = json.loads(pid_file.read_text())
    kill_leftovers.extend(pids.values())
    assert report.jobs[1].status == "succeeded"
    assert _wait_gone([pids["child"], pids["daemon"]]) == []


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT])
def test_a_signalled_runner_ends_its_job_and_records_it(
    tmp_path: Path, data: Path, signum: int, kill_leftovers: list[int]
) -> None:
    pid_file = tmp_path / "pids.json"
    service = _sleeping_service(tmp_path, pid_file, {"jobName": "after", "dependsOn": ["long"]})
    store = tmp_path / "store"
    with _runner_in_job(service, data, store, pid_file, kill_leftovers, "--json") as (runner, pids):
        runner.send_signal(signum)
        _, err = runner.communicate(timeout=30)
    name = signal.Signals(signum).name
    assert runner.returncode == 128 + signum, err
    assert f"interrupted by {name}" in err
    assert _wait_gone(list(pids.values())) == []
    with open_store("sqlite", str(store) + os.sep) as s:
        (session,) = s.list_sessions()
        jobs = {j.name: j for j in s.list_jobs(session.id)}
    assert session.status == "interrupted"
    assert jobs["long"].status == "failed"
    assert f"interrupted by {name}" in (jobs["long"].error or "")
    assert jobs["after"].status == "skipped"
    assert jobs["long"].finished_at is not None


def test_a_killed_runner_leaves_records_that_are_recognised_and_cleaned(
    tmp_path: Path, data: Path, capsys: pytest.CaptureFixture[str], kill_leftovers: list[int]
) -> None:
    pid_file = tmp_path / "pids.json"
    service = _sleeping_service(tmp_path, pid_file)
    store = tmp_path / "store"
    store_args = ["--store", str(store)]
    with _runner_in_job(service, data, store, pid_file, kill_leftovers) as (runner, pids):
        # while the runner lives: owned, fresh, not stale, and not cleaned from under it
        code, listed = _cli_json(capsys, "sessions", "list", *store_args)
        (entry,) = listed
        assert entry["owner"] == f"{runner.pid}@{socket.gethostname()}"
        assert entry["status"] == "running" and entry["stale"] is False
        assert 0 <= entry["heartbeat_age"] < 30
        assert main(["sessions", "clean", entry["id"], *store_args]) == 2
        assert "is being run by" in capsys.readouterr().err
        runner.kill()  # SIGKILL: nothing of the runner runs any more
        runner.communicate(timeout=30)
    assert alive(pids["job"]), "the job process should outlive a SIGKILLed runner"
    code, listed = _cli_json(capsys, "sessions", "list", *store_args)
    (entry,) = listed
    assert entry["stale"] is True
    assert f"runner {runner.pid}@{socket.gethostname()} is gone" in entry["stale_reason"]
    code, shown = _cli_json(capsys, "sessions", "show", entry["id"], *store_args)
    (job,) = [j for j in shown["jobs"] if j["name"] == "long"]
    assert job["status"] == "running" and job["stale"] is True
    assert job["owner"] == entry["owner"]
    # --mark-only: end the leftover processes, mark the records, keep the data
    code, marked = _cli_json(capsys, "sessions", "clean", "--stale", "--mark-only", *store_args)
    assert code == 0
    assert marked[entry["id"]]["processes_ended"] >= 2
    assert _wait_gone(list(pids.values())) == []
    with open_store("sqlite", str(store) + os.sep) as s:
        session = s.get_session(entry["id"])
        job_record = s.get_job(job["id"])
    assert session.status == "abandoned"
    assert job_record.status == "failed" and "abandoned" in (job_record.error or "")
    code, listed = _cli_json(capsys, "sessions", "list", *store_args)
    assert listed[0]["stale"] is False  # abandoned is final: nothing left to recover
    code, cleaned = _cli_json(capsys, "sessions", "clean", entry["id"], *store_args)
    assert code == 0 and cleaned[entry["id"]]["session"] == 1


def test_a_record_without_heartbeat_from_another_host_is_stale(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """On another host only the heartbeat can tell: older than the limit is stale."""
    store = tmp_path / "store"
    with open_store("sqlite", str(store) + os.sep) as s:
        for sid, age in (("quiet", 600), ("fresh", 1)):
            s.ensure_session(sid)
            s.update_session(
                sid,
                status="running",
                owner="4242@elsewhere.example",
                heartbeat_at=utcnow() - timedelta(seconds=age),
            )
    assert main(["sessions", "list", "--store", str(store), "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    by_id = {e["id"]: e for e in listed}
    assert by_id["quiet"]["stale"] is True
    assert "no heartbeat" in by_id["quiet"]["stale_reason"]
    assert by_id["quiet"]["heartbeat_age"] >= 600
    assert by_id["fresh"]["stale"] is False


# ------------------------------------------------------------------ 5. password leaks
@pytest.mark.postgresql
def test_the_postgresql_password_reaches_no_log_and_no_work_file(
    tmp_path: Path, data: Path, postgres_server: Any
) -> None:
    name = postgres_server.create_database(f"leak_{os.getpid()}_{time.monotonic_ns()}")
    try:
        url = postgres_server.url(name)
        password = postgres_server.password
        service = _service(tmp_path, [{"jobName": "leaky", "workerEntry": "svc_workers.leak_url"}])
        work = tmp_path / "work"
        proc = subprocess.run(
            [
                *CLI,
                *("-vv", "run", str(service), str(data), "--db-provider", "postgresql"),
                *("--db-url", url, "--work-dir", str(work), "--keep-session", "--json"),
            ],
            capture_output=True,
            text=True,
            timeout=120,
            stdin=subprocess.DEVNULL,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        report = json.loads(proc.stdout)
        (job,) = [j for j in report["sessions"][0]["jobs"] if j["job_name"] == "leaky"]
        assert job["result"] is True  # the job got the real URL (as kwarg and in its env)
        assert password not in proc.stderr and password not in proc.stdout
        files = [p for p in work.rglob("*")]
        assert any(p.name.endswith(".log") for p in files)
        for path in [work, *files]:
            mode = stat.S_IMODE(path.stat().st_mode)
            if path.is_dir():
                assert mode == 0o700, f"{path} has mode {oct(mode)}"
            else:
                assert mode == 0o600, f"{path} has mode {oct(mode)}"
                assert password.encode() not in path.read_bytes(), f"password in {path}"
        log = Path(job["log_path"]).read_text()
        assert "connecting to postgresql://postgres:***@" in log  # the job's print, masked
        assert "store url is postgresql://postgres:***@" in log  # its logging, masked
        assert "password=***" in log
    finally:
        postgres_server.drop_database(name)


def test_masking_covers_urls_conninfo_and_registered_secrets() -> None:
    from dcm_processor_service._safe_text import mask_secrets, register_secret

    assert (
        mask_secrets("at postgresql://bob:pa55word@db:5432/x?sslmode=require")
        == "at postgresql://bob:***@db:5432/x?sslmode=require"
    )
    assert mask_secrets("mongodb://u:p%40ss@h1,h2/db") == "mongodb://u:***@h1,h2/db"
    assert (
        mask_secrets("host=db password='it''s secret' user=bob") == "host=db password=*** user=bob"
    )
    assert mask_secrets("PASSWORD = hunter22 dbname=x") == "PASSWORD = *** dbname=x"
    register_secret("zq-registered-9")
    assert mask_secrets("error: auth failed for zq-registered-9!") == "error: auth failed for ***!"
    assert mask_secrets("postgresql://bob@db/x") == "postgresql://bob@db/x"  # nothing to hide


# --------------------------------------------------------------- 9. unbounded error text
#: Characters an error text keeps (docs/runner.md: "beyond 4,000 characters ...").
TEXT_LIMIT = 4000


@pytest.mark.parametrize(
    ("params", "kept"),
    [
        ({"output": 30_000_000, "message": 5_000_000}, ("RuntimeError: HEAD-EEE", "EEE-TAIL")),
        ({"output": 30_000_000, "exit": True}, ("exited with code 5", "xxx")),
    ],
    ids=["huge-exception", "huge-output-then-crash"],
)
def test_error_text_is_bounded_head_and_tail(
    tmp_path: Path, data: Path, params: dict[str, Any], kept: tuple[str, str]
) -> None:
    service = _service(
        tmp_path, [{"jobName": "flood", "workerEntry": "svc_workers.flood", "params": params}]
    )
    report = _run(service, data, tmp_path, keep_session=True)
    job = report.jobs[1]
    assert job.status == "failed"
    head, tail = kept
    assert job.error.startswith(head) if "exited" not in head else head in job.error
    assert job.error.rstrip().endswith(tail)
    assert "characters omitted" in job.error
    assert len(job.error) <= TEXT_LIMIT + 100
    assert len(job.traceback or "") <= TEXT_LIMIT + 100
    assert len(json.dumps(report.to_dict())) < 200_000
    with open_store("sqlite", str(tmp_path / "store") + os.sep) as s:
        stored = s.get_job(job.job_id).error or ""
    assert len(stored) <= TEXT_LIMIT + 100 and "characters omitted" in stored
    assert Path(job.log_path).stat().st_size < 1_000_000  # the log keeps head and tail too


# ----------------------------------------------------------------- 10. long file names
def test_a_long_valid_name_downloads_and_a_too_long_one_is_named(tmp_path: Path) -> None:
    url = str(tmp_path / "store") + os.sep
    with open_store("sqlite", url) as s:
        s.ensure_session("s1")
        job = s.create_job("s1", "j", "stable-series")
    long_ascii, long_utf8 = "a" * 246 + ".txt", "\u00e9" * 130  # 250 chars; 260 bytes
    with use_context(
        db_provider="sqlite", db_url=url, session_id="s1", job_id=job.id, job_name="j"
    ):
        upload_session_file(b"fits", long_ascii)
        upload_session_file(b"too long for ext4", long_utf8)
        target = tmp_path / "out" / long_ascii
        target.parent.mkdir()
        assert download_session_file(long_ascii, target) == str(target)
        assert target.read_bytes() == b"fits"
        with pytest.raises(InvalidInputError, match=r"file name .*260 bytes.*255") as info:
            download_session_file(long_utf8, tmp_path / "out" / long_utf8)
        assert long_utf8[:20] in str(info.value)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [long_ascii]  # no leftovers


def test_a_failed_export_keeps_the_report(
    tmp_path: Path, data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    service = _service(tmp_path, [{"jobName": "names", "workerEntry": "svc_workers.long_names"}])
    out = tmp_path / "results"
    code, report = _cli_json(
        capsys, "run", str(service), str(data), "--store", str(tmp_path / "store"), "-o", str(out)
    )
    assert code == 1
    assert report is not None, "no --json report"
    (session,) = report["sessions"]
    assert {j["job_name"]: j["status"] for j in session["jobs"]} == {
        "pre-services": "succeeded",
        "names": "succeeded",
    }
    (failure,) = session["export_failed"]
    assert failure["name"] == "\u00e9" * 130 and "260 bytes" in failure["reason"]
    exported = sorted(Path(p).name for p in session["exported_files"])
    assert exported == sorted(["a" * 246 + ".txt", "short.txt", "session-data.json", "jobs.json"])
    assert not session["ok"] and report["ok"] is False and report["exit_code"] == 1
    assert session["kept_reason"].startswith("export failed")
    with open_store("sqlite", str(tmp_path / "store") + os.sep) as s:
        assert s.get_session(session["session_id"]).status == "kept"
    leftovers = [p.name for p in out.rglob("*") if p.name.endswith(".part")]
    assert leftovers == []


def test_output_lines_are_bounded_and_redraws_keep_their_last_state() -> None:
    from dcm_processor_service.runner.executors.local import OutputLines

    lines = OutputLines(limit=20)
    chunks = [b"crlf\r", b"\nbar 10%\r20%\r3", b"0%\n", b"a" * 50 + b"\n", "é".encode()[:1]]
    got = [line for chunk in chunks for line in lines.feed(chunk)]
    got += lines.feed("é".encode()[1:] + b" no newline", final=True)
    assert got == [
        "crlf",
        "30%",
        "aaaaa[... 30 characters omitted ...]aaaaaaaaaaaaaaa",
        "é no newline",
    ]
