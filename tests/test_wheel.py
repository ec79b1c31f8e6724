"""The built wheel on its own: a fresh virtual environment holding only the wheel and
its dependencies (``support.wheel_venv``), commands run outside the checkout.

``dcm-service demo`` (the bundled example service), ``new service`` + ``check`` +
``run``, ``python -m dcm_processor_service``, and ``doctor`` against a healthy node
(SQLite and PostgreSQL stores, a dcmtk peer) and broken ones: no dcm2niix, an
unreachable PostgreSQL, a peer that is down, a TLS peer whose certificate expired.
The wheel and the venv are built once per test session.
"""

from __future__ import annotations

import json
import re
import subprocess
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from support.peers import TLSFiles, issue_certificate, make_ca, run_storescp
from support.postgres import PostgresServer, free_port, sanitize_db_name
from support.wheel_venv import WheelVenv, build_wheel, make_wheel_venv

pytestmark = pytest.mark.network


@pytest.fixture(scope="session")
def venv(tmp_path_factory: pytest.TempPathFactory) -> WheelVenv:
    root = tmp_path_factory.mktemp("wheel")
    wheel = build_wheel(root / "dist")
    return make_wheel_venv(root / "venv", wheel)


def _doctor(venv: WheelVenv, cwd: Path, *args: str) -> tuple[int, str, list[str]]:
    """Run ``doctor`` as a user reads it: exit code, text, the checks that FAILed."""
    proc = venv.run("doctor", *args, cwd=cwd)
    failed = re.findall(r"^FAIL\s+(\S+)", proc.stdout, re.M)
    return proc.returncode, proc.stdout, failed


def test_the_wheel_holds_the_example_service_and_imports_from_itself(
    venv: WheelVenv, tmp_path: Path
) -> None:
    names = zipfile.ZipFile(venv.wheel).namelist()
    bundled = "dcm_processor_service/bundled/threshold-service/"
    for name in (
        "dcm-processor.json", "README.md", "registry/__init__.py",
        "registry/threshold_filters.py", "module/__init__.py", "module/threshold_jobs.py",
        "module/report_pdf.py",
    ):  # fmt: skip
        assert bundled + name in names
    assert "dcm_processor_service/__main__.py" in names
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]
    proc = venv.run("--version", cwd=tmp_path)
    assert proc.returncode == 0
    version = re.search(r"dcm_processor_service-([^-]+)-", venv.wheel.name).group(1)  # type: ignore[union-attr]
    assert proc.stdout.splitlines()[0] == f"dcm-service {version}"
    assert re.search(
        r"^\s+dcm2niix\s+\d+\.\d+\.\d+ \(" + re.escape(str(venv.site_packages)), proc.stdout, re.M
    )
    module = subprocess.run(
        [str(venv.bin / "python"), "-m", "dcm_processor_service", "--version"],
        cwd=tmp_path, env=venv.env(), capture_output=True, text=True,
    )  # fmt: skip
    assert module.returncode == 0 and module.stdout == proc.stdout
    where = subprocess.run(
        [str(venv.bin / "python"), "-c", "import dcm_processor_service as d; print(d.__file__)"],
        cwd=tmp_path, env=venv.env(), capture_output=True, text=True,
    )  # fmt: skip
    assert Path(where.stdout.strip()).is_relative_to(venv.site_packages)


def test_demo_runs_the_bundled_example(venv: WheelVenv, tmp_path: Path) -> None:
    proc = venv.run("demo", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    results = tmp_path / "demo-output" / "results" / "DEMO-001" / "threshold"
    assert (results / "segmentation.dcm").is_file()
    assert (results / "report.pdf").read_bytes().startswith(b"%PDF")
    assert (results / "mask.nii.gz").is_file()
    assert "threshold" in proc.stdout and "succeeded" in proc.stdout
    assert str(venv.site_packages / "dcm_processor_service" / "bundled") in proc.stderr


def test_new_service_check_and_run(venv: WheelVenv, tmp_path: Path) -> None:
    assert venv.run("new", "service", "my-service", cwd=tmp_path).returncode == 0
    check = venv.run("check", "my-service", cwd=tmp_path)
    assert check.returncode == 0, check.stdout
    assert "the platform accepts this service" in check.stdout
    data = venv.run("demo-data", "scans", "--slices", "4", "--size", "16", cwd=tmp_path)
    assert data.returncode == 0, data.stderr
    run = venv.run("run", "my-service", "scans", "--output", "out", "--json", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout)
    assert report["counts"]["succeeded"] >= 1
    assert report["counts"].get("failed", 0) == 0


# ----------------------------------------------------------------------------- doctor
def test_doctor_on_a_healthy_sqlite_node(venv: WheelVenv, tmp_path: Path) -> None:
    assert venv.run("db", "init", cwd=tmp_path).returncode == 0
    with run_storescp(tmp_path / "received") as scp:
        added = venv.run("peers", "add", "pacs", scp.aet, "127.0.0.1", str(scp.port), cwd=tmp_path)
        assert added.returncode == 0
        proc = venv.run("doctor", "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout
    findings = {f["check"]: f for f in json.loads(proc.stdout)["findings"]}
    assert not [f for f in findings.values() if f["status"] == "fail"]
    assert findings["peer/pacs/echo"]["status"] == "ok"
    assert findings["dcm2niix"]["details"]["path"].startswith(str(venv.site_packages))
    assert findings["store/writable"]["status"] == "ok"


@pytest.mark.postgresql
def test_doctor_on_a_healthy_postgresql_store(
    venv: WheelVenv, tmp_path: Path, postgres_server: PostgresServer, request: pytest.FixtureRequest
) -> None:
    name = postgres_server.create_database(sanitize_db_name(request.node.name))
    try:
        store = ("--db-provider", "postgresql", "--db-url", postgres_server.url(name))
        assert venv.run("db", "init", *store, cwd=tmp_path).returncode == 0
        code, text, failed = _doctor(venv, tmp_path, *store)
        assert code == 0 and failed == [], text
        for check in ("store/schema", "store/reachable", "store/writable", "store/clock"):
            assert re.search(rf"^ok\s+{check}\s", text, re.M), check
        assert "node healthy" in text
    finally:
        postgres_server.drop_database(name)


@pytest.fixture
def without_dcm2niix(venv: WheelVenv) -> Iterator[None]:
    """No dcm2niix for one test: the venv's binary and its ``bin/dcm2niix`` wrapper
    moved away (PATH holds only the venv's bin, /usr/bin and /bin: none there)."""
    moved = [venv.site_packages / "dcm2niix" / "dcm2niix", venv.bin / "dcm2niix"]
    for path in moved:
        path.rename(path.with_name("dcm2niix.moved-by-test"))
    try:
        yield
    finally:
        for path in moved:
            path.with_name("dcm2niix.moved-by-test").rename(path)


def test_doctor_without_dcm2niix(venv: WheelVenv, tmp_path: Path, without_dcm2niix: None) -> None:
    code, text, failed = _doctor(venv, tmp_path)
    assert code == 1
    assert failed == ["dcm2niix"]
    assert re.search(r"^FAIL\s+dcm2niix\s+the dcm2niix binary was not found", text, re.M)
    assert re.search(r"^\s+fix: pip install dcm2niix", text, re.M)
    version = venv.run("--version", cwd=tmp_path)
    assert re.search(
        r"^\s+dcm2niix\s+unusable: the dcm2niix binary was not found", version.stdout, re.M
    )


def test_doctor_with_postgresql_unreachable(venv: WheelVenv, tmp_path: Path) -> None:
    url = f"postgresql://svc:Wheel-Secret-7@127.0.0.1:{free_port()}/dcm"
    code, text, failed = _doctor(
        venv, tmp_path, "--db-provider", "postgresql", "--db-url", url, "--timeout", "2"
    )
    assert code == 1
    assert failed == ["store/reachable"]
    assert re.search(r"^FAIL\s+store/reachable\s+postgresql store .* is not reachable", text, re.M)
    assert "fix: check that the PostgreSQL server is running" in text
    assert "Wheel-Secret-7" not in text


def test_doctor_with_a_peer_that_is_down(venv: WheelVenv, tmp_path: Path) -> None:
    port = free_port()
    assert (
        venv.run("peers", "add", "pacs", "PACS", "127.0.0.1", str(port), cwd=tmp_path).returncode
        == 0
    )
    code, text, failed = _doctor(venv, tmp_path, "--timeout", "2")
    assert code == 1
    assert failed == ["peer/pacs/echo"]
    assert re.search(
        rf"^FAIL\s+peer/pacs/echo\s+peer pacs \(PACS@127.0.0.1:{port}\) is down", text, re.M
    )
    assert "fix: start the peer" in text


def test_doctor_with_an_expired_tls_certificate(venv: WheelVenv, tmp_path: Path) -> None:
    pki = tmp_path / "pki"
    ca = make_ca(pki, days=365)
    server = issue_certificate(pki, "server", ca, ips=("127.0.0.1",), days=-1)
    client = issue_certificate(pki, "client", ca, dns=("wheel-client",), client=True, days=365)
    tls = TLSFiles(ca[0], ca[1], server[0], server[1], client[0], client[1])
    with run_storescp(tmp_path / "received", tls=tls) as scp:
        added = venv.run(
            "peers", "add", "pacs", scp.aet, "127.0.0.1", str(scp.port), "--tls",
            "--ca-file", str(ca[0]), "--cert-file", str(client[0]), "--key-file", str(client[1]),
            cwd=tmp_path,
        )  # fmt: skip
        assert added.returncode == 0, added.stderr
        code, text, failed = _doctor(venv, tmp_path)
    assert code == 1
    assert failed == ["peer/pacs/echo", "peer/pacs/certificate"]
    assert re.search(
        r"^FAIL\s+peer/pacs/certificate\s+the certificate of peer pacs .* expired on", text, re.M
    )
    assert "fix: renew the peer's certificate" in text
