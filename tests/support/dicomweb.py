"""Orthanc with its DICOMweb plugin (Debian ``orthanc-dicomweb``) for the DICOMweb and
query/retrieve tests: basic authentication on, loopback ports, and a restart on the same
storage (for "the peer went away mid-send" tests)."""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
import urllib.error
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from support.peers import ORTHANC, OrthancPeer, run_orthanc, wait_for_port

__all__ = [
    "DICOMWEB_PLUGIN",
    "PASSWORD",
    "USER",
    "dicomweb_url",
    "restart_orthanc",
    "run_orthanc_dicomweb",
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
