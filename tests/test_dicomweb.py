"""DICOMweb peers: STOW-RS to a real Orthanc with its DICOMweb plugin and basic auth on
loopback, checked through Orthanc's REST API; secrets stored as references only.

Nothing about the peer is mocked: Orthanc (``orthanc-dicomweb``) is started by the tests.
"""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread

import dcm_processor_service as dps
from dcm_processor_service._errors import (
    ConfigError,
    InvalidInputError,
    NetworkError,
    PeerAuthError,
    PeerUnreachableError,
)
from dcm_processor_service.cli import main
from dcm_processor_service.net.dicomweb.stow import StowSender
from dcm_processor_service.net.results import Outcome
from dcm_processor_service.store import DicomWebEndpoint, Peer, open_store
from support.dicomdata import write_ct_series
from support.dicomweb import PASSWORD, USER, dicomweb_url, restart_orthanc, run_orthanc_dicomweb
from support.peers import TEST_FILES, OrthancPeer, copy_with_new_uid, make_encapsulated_pdf

pytestmark = pytest.mark.network

SECRET_ENV = "DCMPS_TEST_DICOMWEB_PASSWORD"


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OrthancPeer]:
    with run_orthanc_dicomweb(tmp_path_factory.mktemp("orthanc-web")) as peer:
        yield peer


@pytest.fixture
def clean_orthanc(orthanc: OrthancPeer) -> OrthancPeer:
    if orthanc.process.poll() is not None:  # a test stopped it
        restart_orthanc(orthanc)
    orthanc.delete_all()
    return orthanc


@pytest.fixture
def password(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv(SECRET_ENV, PASSWORD)
    return PASSWORD


def _endpoint(orthanc: OrthancPeer) -> DicomWebEndpoint:
    return DicomWebEndpoint(
        dicomweb_url(orthanc), auth="basic", username=USER, secret=f"env:{SECRET_ENV}"
    )


def _orthanc_uids(orthanc: OrthancPeer) -> set[str]:
    return {
        orthanc.get_json(f"/instances/{i}/simplified-tags")["SOPInstanceUID"]
        for i in orthanc.instances()
    }


# -- STOW-RS of every kind of object -------------------------------------------------------------
def test_stow_sends_ct_mr_seg_pdf_and_multiframe(
    tmp_path: Path, clean_orthanc: OrthancPeer, password: str
) -> None:
    orthanc = clean_orthanc
    files = [
        copy_with_new_uid(TEST_FILES / name, tmp_path / "in", f"{label}.dcm")
        for name, label in (
            ("CT_small.dcm", "ct"),
            ("MR_small.dcm", "mr"),
            ("liver_1frame.dcm", "seg"),
            ("rtdose.dcm", "multiframe"),
        )
    ]
    pdf = make_encapsulated_pdf("stow report")
    store = open_store("sqlite", str(tmp_path / "store"), "t")
    dps.add_peer("web", dicomweb=_endpoint(orthanc), store=store)
    sender = dps.get_dicom_sender("web", store=store, batch_instances=2)
    assert isinstance(sender, StowSender)

    report = sender.send([*files, pdf])

    assert report.ok, report.summary()
    assert [r.outcome for r in report.results] == [Outcome.STORED] * 5
    assert [r.status for r in report.results] == [0] * 5
    assert report.associations == 3  # 5 instances in requests of at most 2
    assert [r.source for r in report.results] == [*map(str, files), "dataset #0"]
    for path in files:  # value by value, through Orthanc's REST API
        sent = dcmread(path)
        stored = orthanc.dataset(sent.SOPInstanceUID)
        assert stored.SOPClassUID == sent.SOPClassUID
        assert stored.SeriesInstanceUID == sent.SeriesInstanceUID
        assert stored.get("NumberOfFrames") == sent.get("NumberOfFrames")
        assert stored.PixelData == sent.PixelData
    doc = orthanc.dataset(pdf.SOPInstanceUID)
    assert doc.EncapsulatedDocument == pdf.EncapsulatedDocument
    assert doc.MIMETypeOfEncapsulatedDocument == "application/pdf"
    assert _orthanc_uids(orthanc) == {r.sop_instance_uid for r in report.results}
    # the original's API answers one status dataset per instance
    again = sender.send_dicom_from_filelist([str(files[0]), str(tmp_path / "missing.dcm")])
    assert [int(ds.Status) for ds in again] == [0, 0xC000]


def test_stow_reads_failed_instances_from_the_answer(
    tmp_path: Path, clean_orthanc: OrthancPeer, password: str
) -> None:
    """An instance Orthanc cannot store is refused by the answer's Failed SOP Sequence,
    the others of the same request are stored."""
    good = copy_with_new_uid(TEST_FILES / "CT_small.dcm", tmp_path, "good.dcm")
    bad = copy_with_new_uid(TEST_FILES / "MR_small.dcm", tmp_path, "bad.dcm")
    ds = dcmread(bad)
    del ds.StudyInstanceUID  # Orthanc refuses an instance without its study
    ds.save_as(bad, enforce_file_format=True)
    report = StowSender(_endpoint(clean_orthanc)).send([good, bad])
    by_source = {Path(r.source).name: r for r in report.results}
    assert by_source["good.dcm"].outcome is Outcome.STORED
    assert by_source["bad.dcm"].outcome in (Outcome.REFUSED, Outcome.IN_DOUBT)
    assert by_source["bad.dcm"].error
    assert _orthanc_uids(clean_orthanc) == {by_source["good.dcm"].sop_instance_uid}


# -- credentials ----------------------------------------------------------------------------------
def test_wrong_password_is_a_clear_error_and_never_shown(
    tmp_path: Path,
    clean_orthanc: OrthancPeer,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setenv(SECRET_ENV, "not-the-password")
    sender = StowSender(_endpoint(clean_orthanc), name="web")
    f = copy_with_new_uid(TEST_FILES / "CT_small.dcm", tmp_path)
    with caplog.at_level(logging.DEBUG), pytest.raises(PeerAuthError) as info:
        sender.send(f)
    message = str(info.value)
    assert "refused our credentials" in message and "HTTP 401" in message
    assert "not-the-password" not in message
    assert "not-the-password" not in caplog.text
    report = info.value.report
    assert report is not None and report.counts()["not_sent"] == 1
    assert clean_orthanc.instances() == []
    with pytest.raises(PeerAuthError):
        sender.send_echo()


def test_missing_secret_names_the_variable(clean_orthanc: OrthancPeer) -> None:
    sender = StowSender(
        DicomWebEndpoint(
            dicomweb_url(clean_orthanc), auth="basic", username=USER, secret="env:DCMPS_NOT_SET"
        )
    )
    with pytest.raises(ConfigError, match="DCMPS_NOT_SET"):
        sender.send_echo()


def test_secrets_are_stored_as_references_only(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError) as info:
        DicomWebEndpoint("http://127.0.0.1:1/dicom-web", "basic", "u", "hunter2")
    assert "hunter2" not in str(info.value) and "env:" in str(info.value)
    with pytest.raises(InvalidInputError, match="credentials"):
        DicomWebEndpoint("http://u:hunter2@127.0.0.1:1/dicom-web")
    with pytest.raises(InvalidInputError, match="absolute"):
        DicomWebEndpoint("http://h/dicom-web", "bearer", secret="file:token.txt")
    with pytest.raises(InvalidInputError, match="needs 'username'"):
        DicomWebEndpoint("http://h/dicom-web", "basic", secret="env:X")
    with pytest.raises(InvalidInputError, match="must be one of"):
        DicomWebEndpoint("http://h/dicom-web", "digest")
    with pytest.raises(InvalidInputError, match="http"):
        DicomWebEndpoint("ftp://h/dicom-web")

    store = open_store("sqlite", str(tmp_path / "store"), "t")
    saved = dps.add_peer(
        "web",
        dicomweb=DicomWebEndpoint(
            "https://pacs.example.org/dicom-web", "basic", "svc", "env:PACS_PW"
        ),
        store=store,
    )
    assert (saved.aet, saved.host, saved.port) == ("DICOMWEB", "pacs.example.org", 443)
    assert store.get_peer("web").dicomweb == saved.dicomweb
    assert saved["dicomweb"] == {
        "url": "https://pacs.example.org/dicom-web",
        "auth": "basic",
        "username": "svc",
        "secret": "env:PACS_PW",
    }
    store.close()


def test_secret_from_a_file(tmp_path: Path, clean_orthanc: OrthancPeer) -> None:
    secret = tmp_path / "pw"
    secret.write_text(PASSWORD + "\n")
    endpoint = DicomWebEndpoint(dicomweb_url(clean_orthanc), "basic", USER, f"file:{secret}")
    assert StowSender(endpoint).send_echo().ok
    secret.write_text("")
    with pytest.raises(ConfigError, match="is empty"):
        StowSender(endpoint).send_echo()


def test_dicomweb_peer_records_in_every_store(store: dps.Store) -> None:
    """A DICOMweb peer round-trips through every provider; a DIMSE peer record has no
    ``dicomweb`` field (the platform's layout unchanged)."""
    endpoint = DicomWebEndpoint("http://127.0.0.1:8042/dicom-web", "bearer", secret="env:TOKEN")
    store.put_peer(Peer(name="web", aet="ORTHANC", host="127.0.0.1", port=4242, dicomweb=endpoint))
    store.put_peer(Peer(name="dimse", aet="PACS", host="127.0.0.1", port=104))
    web = store.get_peer("web")
    assert web.dicomweb == endpoint and web.is_dicomweb
    assert "dicomweb" not in store.get_peer("dimse").to_dict()
    store.put_peer(Peer(name="web", aet="ORTHANC", host="127.0.0.1", port=4242))
    assert store.get_peer("web").dicomweb is None  # updating without it removes it


def test_mongodb_peer_document_keeps_the_platform_fields(tmp_path: Path, request) -> None:
    """mongomock (no MongoDB server can run here): the stored document is the
    platform's peer record plus one ``dicomweb`` sub-document with the reference."""
    from support.stores import make_store

    provider, url, name = make_store("mongodb", tmp_path, request)
    store = open_store(provider, url, name)
    dps.add_peer(
        "web",
        "ORTHANC",
        "127.0.0.1",
        4242,
        dicomweb=DicomWebEndpoint("http://127.0.0.1:8042/dicom-web", "basic", "u", "env:PW"),
        store=store,
    )
    doc = store._run(lambda db: db.peers.find_one({"name": "web"}))  # type: ignore[attr-defined]
    assert {k: doc[k] for k in ("name", "aet", "host", "port", "tls")} == {
        "name": "web",
        "aet": "ORTHANC",
        "host": "127.0.0.1",
        "port": 4242,
        "tls": False,
    }
    assert doc["whitelist_aet"] == [] and doc["whitelist_ip"] == []
    assert doc["dicomweb"] == {
        "url": "http://127.0.0.1:8042/dicom-web",
        "auth": "basic",
        "username": "u",
        "secret": "env:PW",
    }
    store.close()


# -- the peer going away -----------------------------------------------------------------------
def _kill_when_stored(orthanc: OrthancPeer, count: int, restart: bool) -> threading.Thread:
    def watch() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if orthanc.get_json("/statistics")["CountInstances"] >= count:
                break
            time.sleep(0.01)
        orthanc.process.kill()
        orthanc.process.wait(10)
        if restart:
            restart_orthanc(orthanc)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def test_orthanc_stopped_mid_send_gives_an_exact_report_and_resumes(
    tmp_path: Path, clean_orthanc: OrthancPeer, password: str
) -> None:
    orthanc = clean_orthanc
    files = write_ct_series(tmp_path / "ct", n_slices=48, rows=256, columns=256)
    sender = StowSender(_endpoint(orthanc), batch_instances=4, max_retries=0, in_doubt_resends=0)
    watcher = _kill_when_stored(orthanc, 8, restart=False)
    with pytest.raises(NetworkError) as info:
        sender.send(tmp_path / "ct")
    watcher.join(30)
    report = info.value.report
    assert report is not None and len(report.results) == 48
    restart_orthanc(orthanc)
    in_orthanc = _orthanc_uids(orthanc)
    stored = {r.sop_instance_uid for r in report.results if r.outcome is Outcome.STORED}
    not_sent = {r.sop_instance_uid for r in report.results if r.outcome is Outcome.NOT_SENT}
    in_doubt = {r.sop_instance_uid for r in report.results if r.outcome is Outcome.IN_DOUBT}
    # Orthanc had 8 when it was killed: the batch in flight may be stored but unanswered
    assert len(stored | in_doubt) >= 8 and stored and not_sent
    assert stored <= in_orthanc  # every instance reported stored is there
    assert not (not_sent & in_orthanc)  # none reported not sent is
    assert in_orthanc <= stored | in_doubt
    assert len(in_doubt) <= 4  # at most the batch in flight
    # resume: send what was not confirmed
    resumed = sender.send([r.source for r in report.failed])
    assert resumed.ok and len(resumed.results) == len(report.failed)
    assert _orthanc_uids(orthanc) == {str(dcmread(f).SOPInstanceUID) for f in files}


def test_retries_resume_after_orthanc_comes_back(
    tmp_path: Path, clean_orthanc: OrthancPeer, password: str
) -> None:
    orthanc = clean_orthanc
    files = write_ct_series(tmp_path / "ct", n_slices=40, rows=256, columns=256)
    sender = StowSender(_endpoint(orthanc), batch_instances=4, max_retries=6, backoff=0.2)
    watcher = _kill_when_stored(orthanc, 8, restart=True)
    report = sender.send(tmp_path / "ct")
    watcher.join(30)
    assert report.ok, report.summary()
    assert report.retries >= 1
    assert _orthanc_uids(orthanc) == {str(dcmread(f).SOPInstanceUID) for f in files}


def test_unreachable_peer(tmp_path: Path) -> None:
    from support.peers import free_port

    sender = StowSender(
        DicomWebEndpoint(f"http://127.0.0.1:{free_port()}/dicom-web"), max_retries=1, backoff=0.01
    )
    f = copy_with_new_uid(TEST_FILES / "CT_small.dcm", tmp_path)
    with pytest.raises(PeerUnreachableError) as info:
        sender.send(f)
    assert info.value.report is not None
    assert info.value.report.results[0].outcome is Outcome.NOT_SENT
    assert info.value.report.retries == 1


# -- bounded memory -------------------------------------------------------------------------------
_RSS_PROBE = """
import json, os, resource, sys
from dcm_processor_service.net.dicomweb.stow import StowSender
from dcm_processor_service.store import DicomWebEndpoint
sender = StowSender(DicomWebEndpoint(sys.argv[1], "basic", sys.argv[2], "env:DCMPS_PW"))
assert sender.send_echo().ok
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
report = sender.send(sys.argv[3])
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"ok": report.ok, "n": len(report.results), "bytes": report.bytes_sent,
                  "before_kb": before, "after_kb": after}))
"""


def test_a_large_study_is_sent_in_bounded_memory(
    tmp_path: Path, clean_orthanc: OrthancPeer
) -> None:
    """~63 MB with the default batch limits (64 MiB per request): the sender's peak RSS
    grows by a small fraction of it (bodies are streamed from the files). The 1 GB
    figure (77 MiB peak RSS) is measured by benchmarks/bench_send.py --big-mb 1024."""
    write_ct_series(tmp_path / "big", n_slices=120, rows=512, columns=512)
    size = sum(p.stat().st_size for p in (tmp_path / "big").iterdir())
    env = {**os.environ, "DCMPS_PW": PASSWORD}
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            _RSS_PROBE,
            dicomweb_url(clean_orthanc),
            USER,
            str(tmp_path / "big"),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=240,
        check=True,
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["ok"] and result["n"] == 120
    assert result["bytes"] > size
    growth = (result["after_kb"] - result["before_kb"]) * 1024
    assert growth < size / 5, f"peak RSS grew by {growth / 1e6:.1f} MB for {size / 1e6:.0f} MB"
    assert clean_orthanc.get_json("/statistics")["CountInstances"] == 120


# -- the CLI ----------------------------------------------------------------------------------------
def test_cli_add_list_echo_and_send(
    tmp_path: Path, clean_orthanc: OrthancPeer, password: str, capsys
) -> None:
    orthanc = clean_orthanc
    store = ["--store", str(tmp_path / "store")]
    url = dicomweb_url(orthanc)
    add = ["peers", "add", "web", "--dicomweb", url, "--username", USER]
    assert main([*add, "--secret", PASSWORD, *store]) != 0  # a secret in clear is refused
    assert "never the secret itself" in capsys.readouterr().err
    assert main([*add, "--secret", f"env:{SECRET_ENV}", "--json", *store]) == 0
    saved = json.loads(capsys.readouterr().out)
    assert saved["dicomweb"]["secret"] == f"env:{SECRET_ENV}"
    assert saved["dicomweb"]["auth"] == "basic"
    stored_files = [p for p in (tmp_path / "store").rglob("*") if p.is_file()]
    assert stored_files and all(PASSWORD.encode() not in p.read_bytes() for p in stored_files)
    assert any(f"env:{SECRET_ENV}".encode() in p.read_bytes() for p in stored_files)

    assert main(["peers", "list", *store]) == 0
    assert url in capsys.readouterr().out
    assert main(["peers", "echo", "web", "--json", *store]) == 0
    assert json.loads(capsys.readouterr().out)["ok"] is True

    write_ct_series(tmp_path / "ct", n_slices=3, rows=16, columns=16)
    assert main(["send", "web", str(tmp_path / "ct"), "--json", *store]) == 0
    result = json.loads(capsys.readouterr().out)
    assert (result["sent"], result["failed"]) == (3, 0)
    assert len(orthanc.instances()) == 3

    os.environ[SECRET_ENV] = "wrong"
    assert main(["peers", "echo", "web", *store]) != 0
    assert "refused our credentials" in capsys.readouterr().err


def test_get_dicom_sender_choices(tmp_path: Path) -> None:
    store = open_store("sqlite", str(tmp_path / "store"), "t")
    dps.add_peer(
        "both",
        "ORTHANC",
        "127.0.0.1",
        4242,
        dicomweb="http://127.0.0.1:8042/dicom-web",
        store=store,
    )
    assert isinstance(dps.get_dicom_sender("both", store=store), StowSender)
    assert isinstance(dps.get_dicom_sender("both", store=store, protocol="dimse"), dps.DicomSender)
    with pytest.raises(InvalidInputError, match="DIMSE negotiation"):
        dps.get_dicom_sender("both", ["1.2.3"], store=store)
    with pytest.raises(InvalidInputError, match="override"):
        dps.get_dicom_sender("both", store=store).send_dicom_from_path(tmp_path, host="x")
    with pytest.raises(InvalidInputError, match="needs aet"):
        dps.add_peer("nothing", store=store)
    store.close()


def test_pixel_data_round_trip_of_a_dataset(clean_orthanc: OrthancPeer, password: str) -> None:
    """A pydicom dataset is encoded as a Part 10 file; its pixels arrive unchanged."""
    ds = dcmread(TEST_FILES / "CT_small.dcm")
    from pydicom.uid import generate_uid

    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    report = StowSender(_endpoint(clean_orthanc)).send(ds)
    assert report.ok
    back = clean_orthanc.dataset(ds.SOPInstanceUID)
    np.testing.assert_array_equal(back.pixel_array, ds.pixel_array)
    assert dcmread(io.BytesIO(clean_orthanc.instance_file(clean_orthanc.instances()[0])))


# -- TLS and client certificates --------------------------------------------------------------
def test_stow_over_https_with_a_client_certificate(
    tmp_path: Path, clean_orthanc: OrthancPeer
) -> None:
    """HTTPS requiring a client certificate from our CA (a TLS terminator in front of
    Orthanc, see ``support.dicomweb.tls_terminator``): ``cert`` auth with the CA file
    works; without a client certificate, or without trusting the server's CA
    (verification cannot be switched off), the send fails with TLSError."""
    from dcm_processor_service._errors import TLSError
    from dcm_processor_service.net.dicomweb.auth import open_client
    from dcm_processor_service.net.dicomweb.qido_wado import qido
    from support.dicomweb import tls_terminator
    from support.peers import make_tls_files

    tls = make_tls_files(tmp_path / "pki")
    f = copy_with_new_uid(TEST_FILES / "CT_small.dcm", tmp_path / "in")
    # the terminator's upstream is Orthanc with basic auth: the client cert and basic
    # auth are combined here (auth "basic" + cert files = mutual TLS plus a password)
    with tls_terminator(clean_orthanc.http_port, tls) as port, pytest.MonkeyPatch.context() as mp:
        mp.setenv(SECRET_ENV, PASSWORD)
        url = f"https://127.0.0.1:{port}/dicom-web"
        good = DicomWebEndpoint(
            url,
            "basic",
            USER,
            f"env:{SECRET_ENV}",
            cert_file=str(tls.client_cert),
            key_file=str(tls.client_key),
            ca_file=str(tls.ca_cert),
        )
        assert StowSender(good).send_echo().ok
        assert StowSender(good).send(f).ok
        uid = str(dcmread(f).SOPInstanceUID)
        with open_client(good) as client:
            assert len(qido(client, "tls", "/instances", {"SOPInstanceUID": uid})) == 1
        no_cert = DicomWebEndpoint(
            url, "basic", USER, f"env:{SECRET_ENV}", ca_file=str(tls.ca_cert)
        )
        with pytest.raises(NetworkError):
            StowSender(no_cert, max_retries=0).send_echo()
        untrusted = DicomWebEndpoint(
            url, "cert", cert_file=str(tls.client_cert), key_file=str(tls.client_key)
        )
        with pytest.raises(TLSError, match="certificate verify failed"):
            StowSender(untrusted).send_echo()


# -- multipart bodies ---------------------------------------------------------------------------------
def test_multipart_writer_length_and_reader_round_trip(tmp_path: Path) -> None:
    """The writer's Content-Length is exact; the reader splits the body back into the
    same parts whatever the chunking (boundaries cut anywhere), keeping each part's
    bytes (including CRLFs and boundary-like text inside them)."""
    from dcm_processor_service.net.dicomweb.multipart import MultipartWriter, read_parts

    tricky = b"\r\n--not-the-boundary\r\n" + bytes(range(256)) * 40
    (tmp_path / "a.bin").write_bytes(tricky)
    body = MultipartWriter()
    body.add_file(tmp_path / "a.bin")
    body.add_bytes(b"")
    body.add_bytes(b"second\r\n")
    data = b"".join(body)
    assert body.finished and len(data) == body.content_length
    for size in (1, 7, 64, 1000, len(data)):
        chunks = [data[i : i + size] for i in range(0, len(data), size)]
        out = tmp_path / f"out{size}"
        out.mkdir()
        parts = list(read_parts(chunks, body.boundary, lambda n, o=out: o / f"{n}"))
        assert [p.path.read_bytes() for p in parts] == [tricky, b"", b"second\r\n"]
        assert {p.content_type for p in parts} == {"application/dicom"}


def test_multipart_reader_refuses_a_truncated_answer(tmp_path: Path) -> None:
    from dcm_processor_service._errors import DicomInputError
    from dcm_processor_service.net.dicomweb.multipart import MultipartWriter, read_parts

    body = MultipartWriter()
    body.add_bytes(b"first part")
    body.add_bytes(b"x" * 5000)
    data = b"".join(body)
    cut = data[: len(data) - 2000]
    got = []
    with pytest.raises(DicomInputError, match="part 1"):
        for part in read_parts([cut], body.boundary, lambda n: tmp_path / f"{n}"):
            got.append(part.path.read_bytes())
    assert got == [b"first part"]
    assert not (tmp_path / "1").exists()  # the incomplete part is not left behind


def test_an_unencodable_dataset_does_not_stop_its_batch(
    tmp_path: Path, clean_orthanc: OrthancPeer, password: str
) -> None:
    from pydicom.uid import generate_uid

    good = copy_with_new_uid(TEST_FILES / "CT_small.dcm", tmp_path)
    bad = dcmread(TEST_FILES / "MR_small.dcm")
    bad.SOPInstanceUID = bad.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    with pytest.warns(UserWarning):
        bad.add_new(0x00280010, "US", "not a number")  # Rows: pydicom cannot encode it
    report = StowSender(_endpoint(clean_orthanc)).send([good, bad])
    assert [r.outcome for r in report.results] == [Outcome.STORED, Outcome.NOT_SENT]
    assert "cannot read it" in (report.results[1].error or "")
    assert _orthanc_uids(clean_orthanc) == {str(dcmread(good).SOPInstanceUID)}


def test_bearer_and_basic_headers_come_from_the_reference(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Orthanc has no bearer tokens, so this checks the header itself: the token is read
    from the reference when the client is built, and is only in that header."""
    import base64

    from dcm_processor_service.net.dicomweb.auth import auth_headers, open_client

    token = tmp_path / "token"
    token.write_text("tok-123\n")
    bearer = DicomWebEndpoint("https://h/dicom-web", "bearer", secret=f"file:{token}")
    assert auth_headers(bearer) == {"Authorization": "Bearer tok-123"}
    monkeypatch.setenv("DCMPS_PW", "p:w")
    basic = DicomWebEndpoint("http://h/dicom-web", "basic", "u", "env:DCMPS_PW")
    assert auth_headers(basic) == {"Authorization": "Basic " + base64.b64encode(b"u:p:w").decode()}
    assert auth_headers(DicomWebEndpoint("http://h/dicom-web")) == {}
    with open_client(bearer) as client:
        assert client.headers["Authorization"] == "Bearer tok-123"
    assert "tok-123" not in repr(bearer) and "tok-123" not in json.dumps(bearer.to_dict())


def test_a_dimse_sender_for_a_peer_does_not_load_httpx() -> None:
    # choosing the sender is on every job's send path: a DIMSE peer must not pay for the
    # HTTP client (about 0.1 s of imports), nor a session-data-only job for either
    code = (
        "import sys\n"
        "from dcm_processor_service.net.peer_sender import sender_for_peer\n"
        "from dcm_processor_service.store.records import Peer\n"
        "peer = Peer(name='P', aet='PACS', host='127.0.0.1', port=104)\n"
        "sender = sender_for_peer(peer)\n"
        "print(type(sender).__name__, 'httpx' in sys.modules)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split()
    assert out == ["DicomSender", "False"]
