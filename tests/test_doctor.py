"""``dcm-service doctor`` and ``dcm-service --version`` in this process, against real
components: SQLite files, the session's PostgreSQL server, dcmtk ``storescp`` peers
(plain and TLS, with certificates from a throwaway openssl CA) on 127.0.0.1.

The wheel-only runs of the same command (a fresh virtual environment holding only the
built wheel, dcm2niix removed, ...) are in ``test_wheel.py``.
"""

from __future__ import annotations

import re
import socket
import sqlite3
import subprocess
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest

import dcm_processor_service
from dcm_processor_service.cli import main
from dcm_processor_service.doctor import Finding, Status
from dcm_processor_service.doctor.x509 import certificate_dates, pem_certificates
from support.cli import cli_json
from support.peers import OPENSSL, TLSFiles, issue_certificate, make_ca, run_storescp
from support.postgres import PostgresServer, free_port, sanitize_db_name

pytestmark = pytest.mark.network


def _findings(report: Any) -> dict[str, list[dict[str, Any]]]:
    by_check: dict[str, list[dict[str, Any]]] = {}
    for finding in report["findings"]:
        by_check.setdefault(finding["check"], []).append(finding)
    return by_check


def _one(report: Any, check: str) -> dict[str, Any]:
    (finding,) = _findings(report)[check]
    return finding


def _doctor(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, Any]:
    code, report = cli_json(capsys, "doctor", *args)
    for finding in report["findings"]:  # every problem says how to fix it
        if finding["status"] in ("warn", "fail"):
            assert finding["fix"], finding
    assert report["ok"] == (code == 0)
    assert report["ok"] == all(f["status"] != "fail" for f in report["findings"])
    return code, report


def _openssl_not_after(cert: Path) -> datetime:
    text = subprocess.run(
        [OPENSSL, "x509", "-in", str(cert), "-noout", "-enddate"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    stamp = text.strip().split("=", 1)[1]
    return datetime.strptime(stamp, "%b %d %H:%M:%S %Y GMT").replace(tzinfo=timezone.utc)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    """A CA valid for a year, a server certificate for 127.0.0.1 valid for a year, one
    that expired yesterday, and a client certificate."""
    d = tmp_path_factory.mktemp("pki")
    ca = make_ca(d, days=365)
    return {
        "ca": ca,
        "server": issue_certificate(d, "server", ca, ips=("127.0.0.1",), days=365),
        "expired": issue_certificate(d, "expired", ca, ips=("127.0.0.1",), days=-1),
        "client": issue_certificate(d, "client", ca, dns=("doctor-client",), client=True, days=365),
    }


# ---------------------------------------------------------------------------- x509
def test_certificate_dates_match_openssl(pki: dict[str, tuple[Path, Path]]) -> None:
    for name in ("ca", "server", "expired", "client"):
        (der,) = pem_certificates(pki[name][0])
        dates = certificate_dates(der)
        assert dates.not_after == _openssl_not_after(pki[name][0]), name
    expired = certificate_dates(pem_certificates(pki["expired"][0])[0])
    assert -1.01 < expired.days_left() < -0.99
    valid = certificate_dates(pem_certificates(pki["server"][0])[0])
    assert 364.9 < valid.days_left() <= 365.0


def test_certificate_dates_refuse_what_is_not_a_certificate() -> None:
    with pytest.raises(ValueError, match="not a DER certificate"):
        certificate_dates(b"\x04\x03abc")
    with pytest.raises(ValueError, match="truncated"):
        certificate_dates(b"\x30\x82\x01\x00\x30")


def test_a_problem_without_a_fix_is_refused() -> None:
    with pytest.raises(ValueError, match="needs a fix"):
        Finding("x", Status.FAIL, "broken")
    assert Finding("x", Status.SKIP, "not here").fix is None


# ------------------------------------------------------------------------- version
def test_version_lists_ours_and_the_libraries(capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    assert main(["--version"]) == 0
    text = capsys.readouterr().out
    lines = dict(
        re.match(r"\s*(.+?)\s{2,}(.+)$", line).groups()  # type: ignore[union-attr]
        for line in text.splitlines()[1:]
    )
    assert text.splitlines()[0] == f"dcm-service {metadata.version('dcm-processor-service')}"
    assert dcm_processor_service.__version__ == metadata.version("dcm-processor-service")
    for name in ("pydicom", "pynetdicom", "highdicom", "nibabel", "numpy"):
        assert lines[name] == metadata.version(name)
    from dcm_processor_service.imaging.nifti_read import find_dcm2niix

    binary = find_dcm2niix()
    said = subprocess.run([binary, "--version"], capture_output=True, text=True).stdout
    version = re.search(r"v(\d+\.\d+\.\d+)", said)
    assert version is not None
    assert lines["dcm2niix"] == f"{version.group(1)} ({binary})"
    assert lines["store driver sqlite"].startswith(f"sqlite3 {sqlite3.sqlite_version} ")
    assert lines["store driver postgresql"] == (
        f"psycopg {metadata.version('psycopg')}, psycopg-pool {metadata.version('psycopg-pool')}"
    )
    assert lines["store driver mongodb"] == f"pymongo {metadata.version('pymongo')}"


# ---------------------------------------------------------------------- sqlite store
def test_healthy_sqlite_node_with_a_peer(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = str(tmp_path / "store")
    assert main(["db", "init", "--store", store]) == 0
    with run_storescp(tmp_path / "received") as scp:
        assert (
            main(["peers", "add", "pacs", scp.aet, "127.0.0.1", str(scp.port), "--store", store])
            == 0
        )
        code, report = _doctor(capsys, "--store", store)
    assert code == 0, [f for f in report["findings"] if f["status"] != "ok"]
    for check in ("package", "dcm2niix", "import/highdicom", "store/reachable", "store/writable"):
        assert _one(report, check)["status"] == "ok", check
    schema = _one(report, "store/schema")
    assert schema["status"] == "ok"
    assert schema["details"]["version"] == schema["details"]["expected"]
    echo = _one(report, "peer/pacs/echo")
    assert echo["status"] == "ok" and echo["details"]["status"] == 0
    assert 0 < echo["details"]["latency_s"] < 5
    assert _one(report, "store/clock")["status"] == "skip"
    free = _one(report, "store/free-space")["details"]
    assert free["free_bytes"] > 0 and free["total_bytes"] >= free["free_bytes"]
    job_env = _one(report, "env/job")["details"]["job_environment"]
    assert job_env["DCM-PROCESSOR-SERVICE-DB-PROVIDER"] == "sqlite"
    assert job_env["DCM-PROCESSOR-SERVICE-DB-URL"] == str(Path(store).resolve()) + "/"
    # the write probe left nothing behind
    code, sessions = cli_json(capsys, "sessions", "list", "--store", store)
    assert code == 0 and sessions == []


def test_store_not_created_yet_is_reported_and_not_created(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = tmp_path / "nothing-here"
    code, report = _doctor(capsys, "--store", str(store))
    assert code == 0
    assert _one(report, "store/schema")["status"] == "warn"
    assert "db init" in _one(report, "store/schema")["fix"]
    assert _one(report, "peers")["status"] == "skip"
    assert not store.exists()


def test_schema_newer_than_the_package_fails(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = tmp_path / "store"
    assert main(["db", "init", "--store", str(store)]) == 0
    (db,) = store.glob("*.sqlite3")
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE schema_version SET version = version + 1 WHERE component = 'core'")
    code, report = _doctor(capsys, "--store", str(store))
    assert code == 1
    schema = _one(report, "store/schema")
    assert schema["status"] == "fail"
    assert "newer than this package supports" in schema["message"]
    assert "pip install --upgrade" in schema["fix"]


def test_peer_that_is_down_fails_with_a_fix(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = str(tmp_path / "store")
    port = free_port()  # nothing listens there
    assert main(["peers", "add", "gone", "GONE", "127.0.0.1", str(port), "--store", store]) == 0
    code, report = _doctor(capsys, "--store", store, "--timeout", "2")
    assert code == 1
    echo = _one(report, "peer/gone/echo")
    assert echo["status"] == "fail"
    assert f"GONE@127.0.0.1:{port}" in echo["message"] and "down or unreachable" in echo["message"]
    assert "start the peer" in echo["fix"]


def _doctor_on_tls_peer(
    tmp_path: Path,
    pki: dict[str, tuple[Path, Path]],
    server: str,
    name: str,
    capsys: pytest.CaptureFixture[str],
) -> tuple[int, Any]:
    """``doctor`` on a store whose one peer ``name`` is a TLS ``storescp`` presenting
    the certificate ``pki[server]`` (we present ``pki["client"]``, trusting ``pki["ca"]``)."""
    store = str(tmp_path / "store")
    ca, cert, client = pki["ca"], pki[server], pki["client"]
    tls = TLSFiles(ca[0], ca[1], cert[0], cert[1], client[0], client[1])
    with run_storescp(tmp_path / "received", tls=tls) as scp:
        assert main([
            "peers", "add", name, scp.aet, "127.0.0.1", str(scp.port), "--tls",
            "--ca-file", str(ca[0]), "--cert-file", str(client[0]), "--key-file", str(client[1]),
            "--store", store,
        ]) == 0  # fmt: skip
        return _doctor(capsys, "--store", store)


def test_tls_peer_certificates(
    tmp_path: Path, pki: dict[str, tuple[Path, Path]], capsys: pytest.CaptureFixture[str]
) -> None:
    code, report = _doctor_on_tls_peer(tmp_path, pki, "server", "secure", capsys)
    assert code == 0, [f for f in report["findings"] if f["status"] != "ok"]
    assert _one(report, "peer/secure/echo")["status"] == "ok"
    cert = _one(report, "peer/secure/certificate")
    assert cert["status"] == "ok"
    assert cert["details"]["not_after"] == _openssl_not_after(pki["server"][0]).isoformat()
    for field in ("cert_file", "ca_file"):
        assert _one(report, f"peer/secure/{field}")["status"] == "ok"


def test_tls_peer_with_an_expired_certificate_fails(
    tmp_path: Path, pki: dict[str, tuple[Path, Path]], capsys: pytest.CaptureFixture[str]
) -> None:
    code, report = _doctor_on_tls_peer(tmp_path, pki, "expired", "stale", capsys)
    assert code == 1
    cert = _one(report, "peer/stale/certificate")
    assert cert["status"] == "fail"
    when = _openssl_not_after(pki["expired"][0]).strftime("%Y-%m-%d %H:%M UTC")
    assert f"expired on {when}" in cert["message"]
    assert "renew" in cert["fix"]
    echo = _one(report, "peer/stale/echo")
    assert echo["status"] == "fail" and "expired" in echo["message"]


def test_client_certificate_about_to_expire_warns(
    tmp_path: Path, pki: dict[str, tuple[Path, Path]], capsys: pytest.CaptureFixture[str]
) -> None:
    store = str(tmp_path / "store")
    soon = issue_certificate(
        tmp_path, "soon", pki["ca"], dns=("doctor-client",), client=True, days=10
    )
    assert main([
        "peers", "add", "later", "LATER", "127.0.0.1", str(free_port()), "--tls",
        "--ca-file", str(pki["ca"][0]), "--cert-file", str(soon[0]), "--key-file", str(soon[1]),
        "--store", store,
    ]) == 0  # fmt: skip
    _, report = _doctor(capsys, "--store", store, "--timeout", "1")
    finding = _one(report, "peer/later/cert_file")
    assert finding["status"] == "warn"
    assert re.search(r"expires in (9|10) day\(s\)", finding["message"])


# ------------------------------------------------------------------------ postgresql
@pytest.mark.postgresql
def test_healthy_postgresql_store(
    postgres_server: PostgresServer,
    request: pytest.FixtureRequest,
    capsys: pytest.CaptureFixture[str],
) -> None:
    name = postgres_server.create_database(sanitize_db_name(request.node.name))
    url = postgres_server.url(name)
    try:
        options = ("--db-provider", "postgresql", "--db-url", url)
        code, report = _doctor(capsys, *options)
        assert _one(report, "store/schema")["status"] == "warn"  # an empty database
        assert _one(report, "store/reachable")["status"] == "ok"
        assert postgres_server.sql(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'",
            dbname=name,
        ) == [(0,)]  # the doctor created nothing
        assert main(["db", "init", *options]) == 0
        code, report = _doctor(capsys, *options)
        assert code == 0, [f for f in report["findings"] if f["status"] != "ok"]
        for check in ("store/schema", "store/reachable", "store/writable", "store/clock"):
            assert _one(report, check)["status"] == "ok", check
        assert abs(_one(report, "store/clock")["details"]["skew_s"]) < 1.0
        assert _one(report, "store/free-space")["status"] == "skip"
        assert postgres_server.password not in str(report)
        assert postgres_server.sql("SELECT count(*) FROM sessions", dbname=name) == [(0,)]
    finally:
        postgres_server.drop_database(name)


def test_unreachable_postgresql_fails_with_a_fix(capsys: pytest.CaptureFixture[str]) -> None:
    port = free_port()
    with socket.socket() as s:  # prove nothing listens
        assert s.connect_ex(("127.0.0.1", port)) != 0
    url = f"postgresql://doctor:Secret-Pw-42@127.0.0.1:{port}/nodb"
    code, report = _doctor(capsys, "--db-provider", "postgresql", "--db-url", url, "--timeout", "2")
    assert code == 1
    reachable = _one(report, "store/reachable")
    assert reachable["status"] == "fail"
    assert f"127.0.0.1:{port}" in reachable["message"] or str(port) in reachable["message"]
    assert "PostgreSQL server is running" in reachable["fix"]
    assert "Secret-Pw-42" not in str(report)
    assert _one(report, "peers")["status"] == "skip"


# ------------------------------------------------------------------------ environment
def test_environment_problems(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DCM-PROCESSOR-SERVICE-JOB-NAME", "segment")
    monkeypatch.setenv("DCM_PROCESSOR_SERVICE_JOB_NAME", "report")
    monkeypatch.setenv("DCM-PROCESSOR-SERVICE-JOB-EVENT", "stable-everything")
    monkeypatch.setenv("DCM_PROCESSOR_SERVICE_CALLING_AET", "A-TITLE-FAR-TOO-LONG")
    code, report = _doctor(capsys, "--store", str(tmp_path / "s"))
    assert code == 1
    both = _one(report, "env/DCM-PROCESSOR-SERVICE-JOB-NAME")
    assert both["status"] == "warn" and "'segment'" in both["message"]
    event = _one(report, "env/context")
    assert event["status"] == "fail" and "stable-everything" in event["message"]
    aet = _one(report, "env/calling-aet")
    assert aet["status"] == "fail" and "16 characters" in aet["message"]


def test_text_output_names_problem_and_fix(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = str(tmp_path / "store")
    assert (
        main(["peers", "add", "gone", "GONE", "127.0.0.1", str(free_port()), "--store", store]) == 0
    )
    capsys.readouterr()
    assert main(["doctor", "--store", store, "--timeout", "1", "-q"]) == 1
    text = capsys.readouterr().out
    assert re.search(r"^FAIL\s+peer/gone/echo\s+peer gone .* is down or unreachable", text, re.M)
    assert re.search(r"^\s+fix: start the peer", text, re.M)
    assert "ok    package" not in text  # -q: only problems
    assert "node NOT healthy" in text


# -------------------------------------------------------------------------- DICOMweb
def test_dicomweb_peer_gets_a_qido_probe(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from support.dicomweb import PASSWORD, USER, dicomweb_url, run_orthanc_dicomweb

    store = str(tmp_path / "store")
    monkeypatch.setenv("DOCTOR_WEB_PW", PASSWORD)
    monkeypatch.setenv("DOCTOR_WEB_BAD_PW", "not-" + PASSWORD)
    with run_orthanc_dicomweb(tmp_path / "orthanc") as orthanc:
        for name, secret in (("web", "env:DOCTOR_WEB_PW"), ("badpw", "env:DOCTOR_WEB_BAD_PW")):
            assert main([
                "peers", "add", name, "--dicomweb", dicomweb_url(orthanc), "--username", USER,
                "--secret", secret, "--store", store,
            ]) == 0  # fmt: skip
        code, report = _doctor(capsys, "--store", store)
    assert code == 1
    good = _one(report, "peer/web/qido")
    assert good["status"] == "ok" and good["details"]["status"] == 0
    assert "peer/web/echo" not in _findings(report)  # a DICOMweb-only peer: no C-ECHO
    bad = _one(report, "peer/badpw/qido")
    assert bad["status"] == "fail" and "refused our credentials" in bad["message"]
    assert "secret" in bad["fix"]
    assert PASSWORD not in str(report)
