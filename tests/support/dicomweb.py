"""Orthanc with its DICOMweb plugin (Debian ``orthanc-dicomweb``) for the DICOMweb and
query/retrieve tests: basic authentication on, loopback ports, and a restart on the same
storage (for "the peer went away mid-send" tests)."""

from __future__ import annotations

import contextlib
import os
import socket
import ssl
import subprocess
import threading
import time
import urllib.error
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from support.peers import ORTHANC, OrthancPeer, TLSFiles, run_orthanc, wait_for_port

__all__ = [
    "DICOMWEB_PLUGIN",
    "PASSWORD",
    "USER",
    "dicomweb_url",
    "restart_orthanc",
    "run_orthanc_dicomweb",
    "tls_terminator",
]

DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
USER = "svc"
PASSWORD = "s3cret-pw"


def dicomweb_url(orthanc: OrthancPeer) -> str:
    """The DICOMweb root of a running Orthanc."""
    return f"{orthanc.url}/dicom-web"


@contextlib.contextmanager
def run_orthanc_dicomweb(
    work_dir: str | os.PathLike[str],
    *,
    modalities: Mapping[str, Sequence[Any]] | None = None,
) -> Iterator[OrthancPeer]:
    """Orthanc with DICOMweb at ``/dicom-web`` and basic auth (:data:`USER`,
    :data:`PASSWORD`); skipped without the plugin (a failure when CI=true)."""
    if not DICOMWEB_PLUGIN.is_file():
        if os.environ.get("CI") == "true":
            pytest.fail(f"{DICOMWEB_PLUGIN} missing (apt-get install orthanc-dicomweb)")
        pytest.skip(f"{DICOMWEB_PLUGIN} missing (apt-get install orthanc-dicomweb)")
    extra = {
        "Plugins": [str(DICOMWEB_PLUGIN)],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "StudiesMetadata": "MainDicomTags"},
    }
    with run_orthanc(
        work_dir, modalities=modalities, extra_config=extra, http_auth=(USER, PASSWORD)
    ) as peer:
        yield peer


def restart_orthanc(peer: OrthancPeer) -> None:
    """Start ``peer``'s Orthanc again (same config, ports and storage) after it was
    stopped, and wait until it answers."""
    assert peer.process.poll() is not None, "Orthanc is still running"
    log = (peer.work_dir / "orthanc.log").open("ab")
    with log:
        peer.process = subprocess.Popen(
            [ORTHANC, str(peer.work_dir / "orthanc.json")],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=peer.work_dir,
        )
    deadline = time.monotonic() + 30
    while True:
        with contextlib.suppress(OSError, urllib.error.URLError):
            peer.get_json("/system")
            break
        if time.monotonic() > deadline:
            raise TimeoutError("restarted Orthanc did not answer within 30 s")
        time.sleep(0.05)
    wait_for_port(peer.dicom_port, process=peer.process, log=peer.work_dir / "orthanc.log")


@contextlib.contextmanager
def tls_terminator(
    target_port: int, tls: TLSFiles, *, require_client_cert: bool = True
) -> Iterator[int]:
    """A TLS-terminating TCP proxy on a free loopback port in front of
    ``127.0.0.1:target_port`` (as nginx or a load balancer sits in front of a PACS's
    DICOMweb service); yields its port.

    Why not Orthanc's own HTTPS: the Debian Orthanc 1.10 build dies on the first TLS
    connection here (verified with curl: the process exits, "connection reset"), so the
    TLS side is Python's :mod:`ssl` - a real TLS 1.2+ server with the test CA's server
    certificate, requiring a client certificate signed by that CA when asked.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(tls.server_cert, tls.server_key)
    if require_client_cert:
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(cafile=tls.ca_cert)
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    stop = threading.Event()

    def pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(1 << 16):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def serve(raw: socket.socket) -> None:
        try:
            conn = ctx.wrap_socket(raw, server_side=True)
        except (ssl.SSLError, OSError):
            raw.close()  # handshake refused (no / untrusted client certificate)
            return
        upstream = socket.create_connection(("127.0.0.1", target_port))
        back = threading.Thread(target=pump, args=(upstream, conn), daemon=True)
        back.start()
        pump(conn, upstream)
        back.join(10)
        conn.close()
        upstream.close()

    def accept() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                raw, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=serve, args=(raw,), daemon=True).start()

    acceptor = threading.Thread(target=accept, daemon=True)
    acceptor.start()
    try:
        yield port
    finally:
        stop.set()
        acceptor.join(5)
        listener.close()
