"""DICOM over TLS against real peers (dcmtk storescp ``+tls``, Orthanc ``DicomTls*``) with
a throwaway PKI made by the openssl CLI.

The peer's certificate must chain to the CA we trust and name the host we connect to
(never our own host name); the peer may demand our client certificate (mutual TLS).
"""

from __future__ import annotations

import dataclasses
import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread

from dcm_processor_service._errors import (
    AssociationAbortedError,
    InvalidInputError,
    NetworkError,
    TLSError,
)
from dcm_processor_service.net.results import Outcome
from dcm_processor_service.net.sender import DicomSender
from dcm_processor_service.net.tls import MINIMUM_TLS_VERSION, build_client_ssl_context
from dcm_processor_service.store.records import Peer
from support.peers import (
    TEST_FILES,
    OrthancPeer,
    TLSFiles,
    copy_with_new_uid,
    issue_certificate,
    make_ca,
    make_text_sr,
    make_tls_files,
    run_orthanc,
    run_storescp,
)
from support.ul_peers import RawConnection, RawPeer, response_to, timed

pytestmark = pytest.mark.network


@dataclasses.dataclass(frozen=True)
class PKI:
    files: TLSFiles  # server cert for DNS:localhost + IP:127.0.0.1, client cert
    other_ca: Path  # a CA that signed nothing we use
    localhost_only: TLSFiles  # server cert naming only DNS:localhost
    own_hostname_only: TLSFiles  # server cert naming only this machine's host name


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    d = tmp_path_factory.mktemp("pki")
    files = make_tls_files(d)
    ca = (files.ca_cert, files.ca_key)
    lh = issue_certificate(d, "localhost-only", ca, dns=("localhost",))
    own = issue_certificate(d, "own-hostname", ca, dns=(socket.gethostname(),))
    other_ca, _ = make_ca(tmp_path_factory.mktemp("other-pki"), "other")
    return PKI(
        files=files,
        other_ca=other_ca,
        localhost_only=dataclasses.replace(files, server_cert=lh[0], server_key=lh[1]),
        own_hostname_only=dataclasses.replace(files, server_cert=own[0], server_key=own[1]),
    )


@pytest.fixture(scope="module")
def ct_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return copy_with_new_uid(TEST_FILES / "CT_small.dcm", tmp_path_factory.mktemp("ct"))


@pytest.fixture(scope="module")
def tls_orthanc(tmp_path_factory: pytest.TempPathFactory, pki: PKI) -> Iterator[OrthancPeer]:
    with run_orthanc(tmp_path_factory.mktemp("orthanc-tls"), tls=pki.files) as peer:
        yield peer


def _sender(
    port: int, files: TLSFiles, *, host: str = "127.0.0.1", aet: str = "STORESCP", **kw: object
) -> DicomSender:
    args: dict[str, object] = {
        "enable_tls": True,
        "tls_ca_file": files.ca_cert,
        "tls_cert_file": files.client_cert,
        "tls_key_file": files.client_key,
        "max_retries": 0,
    }
    args.update(kw)
    return DicomSender("TESTSCU", host, port, aet, **args)  # type: ignore[arg-type]


# -- the SSL context -------------------------------------------------------------------------
def test_client_context_verifies_peer_and_host_name_with_tls_1_2_minimum(pki: PKI) -> None:
    ctx = build_client_ssl_context(
        ca_file=pki.files.ca_cert, cert_file=pki.files.client_cert, key_file=pki.files.client_key
    )
    assert ctx.verify_mode == ssl.CERT_REQUIRED
    assert ctx.check_hostname is True
    assert ctx.minimum_version == MINIMUM_TLS_VERSION == ssl.TLSVersion.TLSv1_2
    assert len(ctx.get_ca_certs()) == 1  # only our CA: no system store unless asked


def test_client_context_rejects_bad_files(pki: PKI, tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="'tls_ca_file'.*does not exist"):
        build_client_ssl_context(ca_file=tmp_path / "missing.pem")
    with pytest.raises(InvalidInputError, match="'tls_key_file' is given without 'tls_cert_file'"):
        build_client_ssl_context(ca_file=pki.files.ca_cert, key_file=pki.files.client_key)
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate")
    with pytest.raises(TLSError, match="cannot load CA certificates from tls_ca_file"):
        build_client_ssl_context(ca_file=garbage)
    with pytest.raises(TLSError, match="cannot load the client certificate"):
        build_client_ssl_context(cert_file=pki.files.client_cert, key_file=pki.files.server_key)


# -- dcmtk storescp with TLS -----------------------------------------------------------------
def test_mutual_tls_send_and_echo_to_storescp(tmp_path: Path, pki: PKI, ct_file: Path) -> None:
    with run_storescp(tmp_path / "rx", tls=pki.files) as scp:
        sender = _sender(scp.port, pki.files)
        echo = sender.send_echo()
        report = sender.send(ct_file)
        received = scp.datasets()
    assert echo.ok and echo.peer == f"STORESCP@127.0.0.1:{scp.port} (TLS)"
    assert [r.status for r in report.results] == [0]
    source = dcmread(ct_file)
    got = received[str(source.SOPInstanceUID)]
    assert np.array_equal(got.pixel_array, source.pixel_array)


def test_wrong_ca_is_refused_naming_host_port_and_reason(
    tmp_path: Path, pki: PKI, ct_file: Path
) -> None:
    with run_storescp(tmp_path / "rx", tls=pki.files) as scp:
        sender = _sender(scp.port, pki.files, tls_ca_file=pki.other_ca, max_retries=3, backoff=5)
        started = time.monotonic()
        with pytest.raises(
            TLSError, match=rf"127\.0\.0\.1:{scp.port}.*certificate verify failed"
        ) as info:
            sender.send(ct_file)
        assert time.monotonic() - started < 2  # certificate errors are not retried
        assert scp.files() == []
    assert info.value.report.results[0].status == 0x0110  # type: ignore[attr-defined]


def test_host_name_is_checked_against_the_peer_host(tmp_path: Path, pki: PKI) -> None:
    # The certificate names only DNS:localhost.
    with run_storescp(tmp_path / "rx", tls=pki.localhost_only) as scp:
        with pytest.raises(
            TLSError, match="IP address mismatch, certificate is not valid for '127.0.0.1'"
        ):
            _sender(scp.port, pki.files, host="127.0.0.1").send_echo()
        assert _sender(scp.port, pki.files, host="localhost").send_echo().ok
        # connecting by address but checking an explicitly configured name
        assert _sender(scp.port, pki.files, tls_server_name="localhost").send_echo().ok


def test_a_certificate_for_our_own_host_name_does_not_pass(tmp_path: Path, pki: PKI) -> None:
    # What the original did wrong: it checked the peer's certificate against *our* name.
    with run_storescp(tmp_path / "rx", tls=pki.own_hostname_only) as scp:
        with pytest.raises(TLSError, match="mismatch"):
            _sender(scp.port, pki.files, host="127.0.0.1").send_echo()
        with pytest.raises(TLSError, match="mismatch"):
            _sender(scp.port, pki.files, host="localhost").send_echo()


def test_missing_client_certificate_is_refused_when_required(tmp_path: Path, pki: PKI) -> None:
    with run_storescp(tmp_path / "rx", tls=pki.files, require_client_cert=True) as scp:
        sender = _sender(scp.port, pki.files, tls_cert_file=None, tls_key_file=None)
        # storescp either sends an alert ("certificate required") or just closes (EOF)
        with pytest.raises(TLSError, match=rf"127\.0\.0\.1:{scp.port}.*client certificate"):
            sender.send_echo()
    with run_storescp(tmp_path / "rx2", tls=pki.files, require_client_cert=False) as scp:
        assert _sender(scp.port, pki.files, tls_cert_file=None, tls_key_file=None).send_echo().ok


def test_system_trust_store_does_not_trust_a_private_ca(tmp_path: Path, pki: PKI) -> None:
    with run_storescp(tmp_path / "rx", tls=pki.files) as scp:
        with pytest.raises(TLSError, match="certificate verify failed"):
            _sender(scp.port, pki.files, tls_ca_file=None, tls_trusted_ca=True).send_echo()
        # the private CA plus the system store
        assert _sender(scp.port, pki.files, tls_trusted_ca=True).send_echo().ok


def test_tls_and_plain_peers_do_not_mix(tmp_path: Path, pki: PKI) -> None:
    with (
        run_storescp(tmp_path / "plain") as scp,
        pytest.raises(TLSError, match="is the peer configured for TLS on this port"),
    ):
        _sender(scp.port, pki.files).send_echo()
    with run_storescp(tmp_path / "tls", tls=pki.files) as scp:
        plain = DicomSender("TESTSCU", "127.0.0.1", scp.port, scp.aet, max_retries=0)
        with pytest.raises(AssociationAbortedError):
            plain.send_echo()


def test_for_peer_takes_tls_settings_from_the_record(tmp_path: Path, pki: PKI) -> None:
    with run_storescp(tmp_path / "rx", tls=pki.files) as scp:
        peer = Peer(
            name="secure-pacs",
            aet=scp.aet,
            host="127.0.0.1",
            port=scp.port,
            tls=True,
            cert_file=str(pki.files.client_cert),
            key_file=str(pki.files.client_key),
            ca_file=str(pki.files.ca_cert),
        )
        sender = DicomSender.for_peer(peer)
        assert sender.enable_tls is True
        assert sender.send_echo().ok
        no_tls = DicomSender.for_peer(dataclasses.replace(peer, tls=False), max_retries=0)
        with pytest.raises(NetworkError):
            no_tls.send_echo()


# -- Orthanc with DICOM TLS ------------------------------------------------------------------
def test_mutual_tls_to_orthanc(tls_orthanc: OrthancPeer, pki: PKI, ct_file: Path) -> None:
    sender = _sender(tls_orthanc.dicom_port, pki.files, aet=tls_orthanc.aet)
    report = sender.send(ct_file)
    assert [r.status for r in report.results] == [0]
    source = dcmread(ct_file)
    got = tls_orthanc.dataset(str(source.SOPInstanceUID))
    assert np.array_equal(got.pixel_array, source.pixel_array)


def test_orthanc_refuses_a_missing_client_certificate(tls_orthanc: OrthancPeer, pki: PKI) -> None:
    sender = _sender(
        tls_orthanc.dicom_port,
        pki.files,
        aet=tls_orthanc.aet,
        tls_cert_file=None,
        tls_key_file=None,
    )
    with pytest.raises(TLSError, match=rf"127\.0\.0\.1:{tls_orthanc.dicom_port}"):
        sender.send_echo()


def test_orthanc_with_an_untrusted_ca_is_refused(tls_orthanc: OrthancPeer, pki: PKI) -> None:
    sender = _sender(
        tls_orthanc.dicom_port, pki.files, aet=tls_orthanc.aet, tls_ca_file=pki.other_ca
    )
    with pytest.raises(TLSError, match="certificate verify failed"):
        sender.send_echo()


# -- deadlines over TLS (raw-socket TLS peers written in the test: pynetdicom cannot trickle)
def _tls_server_context(files: TLSFiles) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(files.server_cert, files.server_key)
    return ctx


def test_a_trickled_response_over_tls_is_bounded_by_the_dimse_timeout(
    pki: PKI, ct_file: Path
) -> None:
    """The peer takes the C-STORE, then sends its response one byte every 0.1 s inside
    TLS records: the DIMSE timeout bounds the whole response, and the instance, which
    went out in full, is reported in doubt."""

    def script(conn: RawConnection) -> None:
        conn.accept_association()
        ctx, command, _ = conn.read_message()
        conn.trickle(response_to(ctx, command), 0.1)

    with RawPeer(script, ssl_context=_tls_server_context(pki.files)) as peer, timed() as elapsed:
        sender = _sender(peer.port, pki.files, aet="RAW", dimse_timeout=1.0)
        with pytest.raises(AssociationAbortedError, match="within 1.0 s") as info:
            sender.send(ct_file)
    assert 1.0 <= elapsed[0] < 2.5
    result = info.value.report.results[0]  # type: ignore[attr-defined]
    assert (result.outcome, result.attempts) == (Outcome.IN_DOUBT, 1)


def test_a_slow_reader_over_tls_is_bounded_by_the_network_timeout(pki: PKI) -> None:
    """The peer reads 256 KiB every 0.1 s (13 s for 32 MiB): each block of at most
    4 MiB we send must be taken within the network timeout, over TLS too."""

    def script(conn: RawConnection) -> None:
        conn.accept_association()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not conn.stop.wait(0.1):
            if not conn.sock.recv(256 * 1024):
                return

    ds = make_text_sr()
    ds.EncapsulatedDocument = bytes(32 * 1024 * 1024)  # 32 MiB of payload
    with RawPeer(script, ssl_context=_tls_server_context(pki.files)) as peer, timed() as elapsed:
        sender = _sender(peer.port, pki.files, aet="RAW", network_timeout=1.0)
        with pytest.raises(AssociationAbortedError, match="did not take the data") as info:
            sender.send(ds)
    assert elapsed[0] < 4.0
    result = info.value.report.results[0]  # type: ignore[attr-defined]
    assert (result.outcome, result.sent) == (Outcome.NOT_SENT, False)
