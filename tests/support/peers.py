"""Real DICOM peers for tests and benchmarks: dcmtk ``storescp``, Orthanc, and a
throwaway TLS PKI made with the ``openssl`` CLI.

Every peer listens on a free ephemeral port of 127.0.0.1 and is stopped in ``finally``.
dcmtk is called by full path (``/usr/bin/storescp``): pynetdicom installs console
scripts of the same names with different options. ``storescp`` gets ``TCP_NODELAY=1``
in its environment (dcmtk disables Nagle only when asked; without it every C-STORE
response waits ~40 ms for a delayed ACK).

:func:`require_binary` skips a test when a binary is missing - except in CI
(``CI=true``), where that is a failure.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pydicom.data.data_manager import DATA_ROOT
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

__all__ = [
    "ECHOSCU",
    "OPENSSL",
    "ORTHANC",
    "STORESCP",
    "STORESCU",
    "TEST_FILES",
    "OrthancPeer",
    "StoreSCP",
    "TLSFiles",
    "copy_with_new_uid",
    "free_port",
    "issue_certificate",
    "make_ca",
    "make_encapsulated_pdf",
    "make_text_sr",
    "make_tls_files",
    "require_binary",
    "run_orthanc",
    "run_storescp",
    "wait_for_port",
]

STORESCP = "/usr/bin/storescp"
STORESCU = "/usr/bin/storescu"
ECHOSCU = "/usr/bin/echoscu"
ORTHANC = "/usr/sbin/Orthanc"
OPENSSL = "/usr/bin/openssl"
LOOPBACK = "127.0.0.1"

_INSTALL_HINT = {
    STORESCP: "apt-get install dcmtk",
    STORESCU: "apt-get install dcmtk",
    ECHOSCU: "apt-get install dcmtk",
    ORTHANC: "apt-get install orthanc",
    OPENSSL: "apt-get install openssl",
}


def require_binary(path: str) -> str:
    """Return ``path``; skip the test when it is not an executable (fail under CI)."""
    if os.access(path, os.X_OK):
        return path
    import pytest

    reason = f"{path} not found - install it with {_INSTALL_HINT.get(path, 'apt-get')}"
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(reason)
    pytest.skip(reason)
    raise AssertionError("unreachable")


def free_port() -> int:
    """An ephemeral TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


def wait_for_port(
    port: int,
    *,
    host: str = LOOPBACK,
    timeout: float = 15.0,
    process: subprocess.Popen[Any] | None = None,
    log: Path | None = None,
) -> None:
    """Wait until ``host:port`` accepts TCP connections; raise if ``process`` exits first."""
    deadline = time.monotonic() + timeout
    while True:
        if process is not None and process.poll() is not None:
            text = log.read_text(errors="replace")[-2000:] if log and log.exists() else ""
            raise RuntimeError(
                f"process exited with {process.returncode} before listening on {port}:\n{text}"
            )
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"nothing listens on {host}:{port} after {timeout} s")
        time.sleep(0.02)


def _stop(process: subprocess.Popen[Any], timeout: float = 5.0) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


# -- TLS -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TLSFiles:
    """PEM files of a throwaway PKI: CA, a server certificate, a client certificate."""

    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(
        [require_binary(OPENSSL), *args],
        cwd=cwd,
        check=True,
        capture_output=True,
        stdin=subprocess.DEVNULL,
    )


def make_ca(
    directory: str | os.PathLike[str], name: str = "ca", *, days: int = 2
) -> tuple[Path, Path]:
    """A self-signed CA in ``directory``, valid for ``days``: returns (certificate, key)."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    cert, key = d / f"{name}.crt", d / f"{name}.key"
    _openssl(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key.name, "-out", cert.name,
        "-days", str(days), "-subj", f"/CN=dcm-processor-service test CA {name}",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        "-addext", "subjectKeyIdentifier=hash",
        cwd=d,
    )  # fmt: skip
    return cert, key


def issue_certificate(
    directory: str | os.PathLike[str],
    name: str,
    ca: tuple[Path, Path],
    *,
    dns: Sequence[str] = (),
    ips: Sequence[str] = (),
    client: bool = False,
    days: int = 2,
) -> tuple[Path, Path]:
    """A certificate signed by ``ca`` = (cert, key) with the given subjectAltNames;
    ``client=True`` makes a TLS client certificate. It is valid for ``days`` from now
    (``days=-1``: it expired a day ago). Returns (certificate, key)."""
    d = Path(directory)
    cert, key, csr, ext = d / f"{name}.crt", d / f"{name}.key", d / f"{name}.csr", d / f"{name}.ext"
    sans = [f"DNS:{n}" for n in dns] + [f"IP:{i}" for i in ips]
    lines = [
        "basicConstraints=CA:FALSE",
        "keyUsage=critical,digitalSignature,keyEncipherment",
        f"extendedKeyUsage={'clientAuth' if client else 'serverAuth'}",
        "subjectKeyIdentifier=hash",
        "authorityKeyIdentifier=keyid,issuer",
    ]
    if sans:
        lines.append("subjectAltName=" + ",".join(sans))
    ext.write_text("\n".join(lines) + "\n")
    cn = (list(dns) + list(ips) + [name])[0]
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", key.name, "-out", csr.name,
             "-subj", f"/CN={cn}", cwd=d)  # fmt: skip
    _openssl(
        "x509", "-req", "-in", csr.name, "-CA", str(ca[0]), "-CAkey", str(ca[1]),
        "-CAcreateserial", "-out", cert.name, "-days", str(days), "-extfile", ext.name,
        cwd=d,
    )  # fmt: skip
    return cert, key


def make_tls_files(
    directory: str | os.PathLike[str],
    *,
    server_dns: Sequence[str] = ("localhost",),
    server_ips: Sequence[str] = (LOOPBACK,),
) -> TLSFiles:
    """A CA, a server certificate for ``server_dns``/``server_ips`` and a client
    certificate, all in ``directory``."""
    ca = make_ca(directory)
    server = issue_certificate(directory, "server", ca, dns=server_dns, ips=server_ips)
    client = issue_certificate(directory, "client", ca, dns=("dcm-processor-client",), client=True)
    return TLSFiles(ca[0], ca[1], server[0], server[1], client[0], client[1])


# -- dcmtk storescp --------------------------------------------------------------------------
@dataclass
class StoreSCP:
    """A running dcmtk ``storescp``; ``restart()`` starts it again on the same port."""

    aet: str
    port: int
    out_dir: Path
    args: list[str]
    env: dict[str, str]
    log_path: Path
    host: str = LOOPBACK
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> StoreSCP:
        """Start (again) and wait until the port accepts connections."""
        log = self.log_path.open("ab")
        try:
            self.process = subprocess.Popen(
                self.args,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self.env,
            )
        finally:
            log.close()
        wait_for_port(self.port, process=self.process, log=self.log_path)
        return self

    def stop(self) -> None:
        """Stop the process (SIGTERM, then SIGKILL)."""
        if self.process is not None:
            _stop(self.process)

    def kill(self) -> None:
        """Kill the process at once (a peer crashing mid-transfer)."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(5)

    def restart(self) -> StoreSCP:
        """Stop and start on the same port."""
        self.stop()
        return self.start()

    def files(self) -> list[Path]:
        """The files received so far."""
        return sorted(p for p in self.out_dir.iterdir() if p.is_file())

    def datasets(self) -> dict[str, Dataset]:
        """Received instances by SOP Instance UID."""
        out = {}
        for path in self.files():
            ds = dcmread(path)
            out[str(ds.SOPInstanceUID)] = ds
        return out

    def log(self) -> str:
        """What storescp printed."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def _storescp_config(path: Path, accept: Mapping[str, Sequence[str]]) -> None:
    lines = ["[[TransferSyntaxes]]"]
    groups: dict[tuple[str, ...], str] = {}
    for syntaxes in [("1.2.840.10008.1.2.1", "1.2.840.10008.1.2"), *map(tuple, accept.values())]:
        if syntaxes not in groups:
            groups[syntaxes] = f"TS{len(groups)}"
            lines.append(f"[{groups[syntaxes]}]")
            lines += [f"TransferSyntax{i + 1} = {ts}" for i, ts in enumerate(syntaxes)]
    lines += ["", "[[PresentationContexts]]", "[Contexts]"]
    lines.append(
        f"PresentationContext1 = 1.2.840.10008.1.1\\{groups[('1.2.840.10008.1.2.1', '1.2.840.10008.1.2')]}"
    )
    for i, (sop_class, syntaxes) in enumerate(accept.items(), start=2):
        lines.append(f"PresentationContext{i} = {sop_class}\\{groups[tuple(syntaxes)]}")
    lines += ["", "[[Profiles]]", "[Default]", "PresentationContexts = Contexts", ""]
    path.write_text("\n".join(lines))


@contextlib.contextmanager
def run_storescp(
    out_dir: str | os.PathLike[str],
    *,
    aet: str = "STORESCP",
    port: int | None = None,
    tls: TLSFiles | None = None,
    require_client_cert: bool = True,
    accept: Mapping[str, Sequence[str]] | None = None,
    accept_all_syntaxes: bool = True,
    promiscuous: bool = True,
    tcp_nodelay: bool = True,
    extra_args: Sequence[str] = (),
) -> Iterator[StoreSCP]:
    """Run dcmtk ``storescp`` writing what it receives to ``out_dir``.

    ``accept`` maps SOP class UID -> the only transfer syntaxes accepted for it (any
    other SOP class is refused) through a generated ``-xf`` config file; otherwise every
    storage SOP class is accepted (``-pm`` also unknown ones) with all transfer syntaxes
    (``+xa``) or only uncompressed ones (``accept_all_syntaxes=False``). ``tls`` turns on
    TLS with the server certificate, trusting ``tls.ca_cert`` for client certificates,
    which are required unless ``require_client_cert=False``.
    """
    binary = require_binary(STORESCP)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    work = out.parent / f".{out.name}-storescp"
    work.mkdir(exist_ok=True)
    port = port or free_port()
    args = [binary, "-aet", aet, "-od", str(out), "-dhl"]
    if accept is not None:
        cfg = work / "storescp.cfg"
        _storescp_config(cfg, accept)
        args += ["-xf", str(cfg), "Default"]
    else:
        if accept_all_syntaxes:
            args.append("+xa")
        if promiscuous:
            args.append("-pm")
    if tls is not None:
        args += ["+tls", str(tls.server_key), str(tls.server_cert), "+cf", str(tls.ca_cert)]
        args.append("-rc" if require_client_cert else "-vc")
    args += [*extra_args, str(port)]
    env = dict(os.environ)
    if tcp_nodelay:
        env["TCP_NODELAY"] = "1"
    else:
        env.pop("TCP_NODELAY", None)
    scp = StoreSCP(
        aet=aet, port=port, out_dir=out, args=args, env=env, log_path=work / "storescp.log"
    )
    try:
        yield scp.start()
    finally:
        scp.stop()


# -- Orthanc ---------------------------------------------------------------------------------
@dataclass
class OrthancPeer:
    """A running Orthanc: DICOM on ``dicom_port``, REST on ``url``."""

    aet: str
    dicom_port: int
    http_port: int
    work_dir: Path
    process: subprocess.Popen[bytes]
    host: str = LOOPBACK
    config: dict[str, Any] = field(default_factory=dict)
    #: (user, password) for the REST API when the config enables authentication
    http_auth: tuple[str, str] | None = None

    def _open(self, req: str | urllib.request.Request) -> Any:
        """urlopen with the REST credentials, if any."""
        if not isinstance(req, urllib.request.Request):
            req = urllib.request.Request(req)
        if self.http_auth is not None:
            import base64

            pair = ":".join(self.http_auth).encode()
            req.add_header("Authorization", "Basic " + base64.b64encode(pair).decode())
        return urllib.request.urlopen(req, timeout=30)

    @property
    def url(self) -> str:
        """Base URL of the REST API."""
        return f"http://{LOOPBACK}:{self.http_port}"

    def get(self, path: str) -> bytes:
        """GET a REST path; the raw body."""
        with self._open(self.url + path) as rsp:
            return bytes(rsp.read())

    def get_json(self, path: str) -> Any:
        """GET a REST path; the decoded JSON."""
        return json.loads(self.get(path))

    def post_json(self, path: str, body: Any) -> Any:
        """POST JSON to a REST path; the decoded JSON answer."""
        req = urllib.request.Request(
            self.url + path,
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        with self._open(req) as rsp:
            return json.loads(rsp.read())

    def instances(self) -> list[str]:
        """Orthanc ids of all stored instances."""
        return list(self.get_json("/instances"))

    def instance_id(self, sop_instance_uid: str) -> str | None:
        """The Orthanc id of the instance with this SOP Instance UID, or None."""
        req = urllib.request.Request(self.url + "/tools/lookup", data=sop_instance_uid.encode())
        with self._open(req) as rsp:
            hits = json.loads(rsp.read())
        return next((h["ID"] for h in hits if h.get("Type") == "Instance"), None)

    def instance_file(self, instance_id: str) -> bytes:
        """The stored DICOM file of an instance."""
        return self.get(f"/instances/{instance_id}/file")

    def dataset(self, sop_instance_uid: str) -> Dataset:
        """The stored instance, read back with pydicom."""
        from io import BytesIO

        found = self.instance_id(sop_instance_uid)
        if found is None:
            raise KeyError(f"Orthanc has no instance {sop_instance_uid}")
        return dcmread(BytesIO(self.instance_file(found)))

    def delete_all(self) -> None:
        """Delete every patient (so one Orthanc can serve several tests)."""
        for patient in self.get_json("/patients"):
            req = urllib.request.Request(f"{self.url}/patients/{patient}", method="DELETE")
            self._open(req).close()

    def stop(self, graceful: bool = False) -> None:
        """Stop Orthanc: SIGKILL (its data is thrown away), or with ``graceful`` SIGTERM
        (which takes ~3 s) then SIGKILL."""
        if graceful:
            _stop(self.process, timeout=10)
        elif self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)


@contextlib.contextmanager
def run_orthanc(
    work_dir: str | os.PathLike[str],
    *,
    aet: str = "ORTHANC",
    tls: TLSFiles | None = None,
    require_client_cert: bool = True,
    modalities: Mapping[str, Sequence[Any]] | None = None,
    always_allow: bool = True,
    check_called_aet: bool = False,
    extra_config: Mapping[str, Any] | None = None,
    http_auth: tuple[str, str] | None = None,
) -> Iterator[OrthancPeer]:
    """Run Orthanc with its packaged defaults plus a minimal config (per TESTING.md).

    ``always_allow=False`` makes Orthanc accept associations only from the calling AE
    titles in ``modalities`` (``{"NAME": [aet, host, port]}``): every
    ``DicomAlwaysAllow*`` is switched off. ``tls`` enables DICOM TLS with the server
    certificate, trusting ``tls.ca_cert`` for client certificates (required unless
    ``require_client_cert=False``). ``http_auth`` = (user, password) switches on the REST
    API's basic authentication with that one user (the helper's own calls use it too).
    Waits until ``/system`` answers.
    """
    binary = require_binary(ORTHANC)
    work = Path(work_dir)
    storage = work / "orthanc-db"
    storage.mkdir(parents=True, exist_ok=True)
    dicom_port, http_port = free_port(), free_port()
    config: dict[str, Any] = {
        "Name": "TEST",
        "StorageDirectory": str(storage),
        "IndexDirectory": str(storage),
        "HttpPort": http_port,
        "DicomPort": dicom_port,
        "DicomAet": aet,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "Plugins": [],
        "DicomModalities": dict(modalities or {"SCU": ["STORESCU", LOOPBACK, 11112]}),
        "DicomCheckCalledAet": check_called_aet,
    }
    if not always_allow:
        for key in ("Echo", "Store", "Find", "FindWorklist", "Move", "Get"):
            config[f"DicomAlwaysAllow{key}"] = False
    if tls is not None:
        config.update(
            {
                "DicomTlsEnabled": True,
                "DicomTlsCertificate": str(tls.server_cert),
                "DicomTlsPrivateKey": str(tls.server_key),
                "DicomTlsTrustedCertificates": str(tls.ca_cert),
                "DicomTlsRemoteCertificateRequired": require_client_cert,
            }
        )
    if http_auth is not None:
        config["AuthenticationEnabled"] = True
        config["RegisteredUsers"] = {http_auth[0]: http_auth[1]}
    config.update(extra_config or {})
    cfg = work / "orthanc.json"
    cfg.write_text(json.dumps(config, indent=2))
    log_path = work / "orthanc.log"
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            [binary, str(cfg)],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=work,
        )
    peer = OrthancPeer(
        aet, dicom_port, http_port, work, process, config=config, http_auth=http_auth
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            if process.poll() is not None:
                raise RuntimeError(
                    f"Orthanc exited with {process.returncode}:\n{log_path.read_text(errors='replace')[-3000:]}"
                )
            with contextlib.suppress(OSError, urllib.error.URLError):
                peer.get_json("/system")
                break
            if time.monotonic() > deadline:
                raise TimeoutError("Orthanc REST API did not answer within 30 s")
            time.sleep(0.05)
        wait_for_port(dicom_port, process=process, log=log_path)
        yield peer
    finally:
        peer.stop()


# -- test data -------------------------------------------------------------------------------
#: pydicom's bundled test files (glob this; never call get_testdata_file: it goes online).
TEST_FILES = Path(DATA_ROOT) / "test_files"


def copy_with_new_uid(
    src: str | os.PathLike[str], dst_dir: str | os.PathLike[str], name: str | None = None
) -> Path:
    """Copy a DICOM file into ``dst_dir`` with a fresh SOP Instance UID (in the dataset
    and the File Meta Information), keeping its transfer syntax; return the new path.
    pydicom's samples share UIDs (the MR_small variants), which peers would overwrite."""
    ds = dcmread(src)
    uid = generate_uid()
    ds.SOPInstanceUID = uid
    ds.file_meta.MediaStorageSOPInstanceUID = uid
    out = Path(dst_dir) / (name or Path(src).name)
    out.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(out, enforce_file_format=True)
    return out


def _base_dataset(sop_class: str, modality: str) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = sop_class
    ds.PatientName = "Network^Test"
    ds.PatientID = "NET-TEST-1"
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "O"
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.StudyDate = ds.ContentDate = "20240101"
    ds.StudyTime = ds.ContentTime = "120000"
    ds.StudyID = "1"
    ds.AccessionNumber = "A1"
    ds.ReferringPhysicianName = ""
    ds.Modality = modality
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.Manufacturer = "dcm-processor-service tests"
    return ds


def make_encapsulated_pdf(text: str = "dcm-processor-service test report") -> Dataset:
    """An Encapsulated PDF Storage instance holding a tiny valid PDF."""
    body = f"BT /F1 12 Tf 72 720 Td ({text}) Tj ET".encode()
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
        b"/Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length " + str(len(body)).encode() + b" >>\nstream\n" + body + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    pdf = bytearray(b"%PDF-1.4\n")
    offsets = []
    for i, obj in enumerate(objects, start=1):
        offsets.append(len(pdf))
        pdf += f"{i} 0 obj\n".encode() + obj + b"\nendobj\n"
    xref = len(pdf)
    pdf += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
    pdf += b"".join(f"{o:010d} 00000 n \n".encode() for o in offsets)
    pdf += (
        f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode()
    )
    if len(pdf) % 2:
        pdf += b"\n"
    ds = _base_dataset("1.2.840.10008.5.1.4.1.1.104.1", "DOC")
    ds.ConversionType = "WSD"
    ds.BurnedInAnnotation = "YES"
    ds.DocumentTitle = "Test report"
    ds.ConceptNameCodeSequence = []
    ds.MIMETypeOfEncapsulatedDocument = "application/pdf"
    ds.EncapsulatedDocument = bytes(pdf)
    return ds


def make_text_sr(text: str = "No acute findings.") -> Dataset:
    """A Basic Text SR instance with one TEXT content item."""
    ds = _base_dataset("1.2.840.10008.5.1.4.1.1.88.11", "SR")
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = (
        "18748-4",
        "LN",
        "Diagnostic imaging report",
    )
    ds.ValueType = "CONTAINER"
    ds.ConceptNameCodeSequence = [code]
    ds.ContinuityOfContent = "SEPARATE"
    ds.CompletionFlag = "COMPLETE"
    ds.VerificationFlag = "UNVERIFIED"
    item = Dataset()
    item.RelationshipType = "CONTAINS"
    item.ValueType = "TEXT"
    finding = Dataset()
    finding.CodeValue, finding.CodingSchemeDesignator, finding.CodeMeaning = (
        "121071",
        "DCM",
        "Finding",
    )
    item.ConceptNameCodeSequence = [finding]
    item.TextValue = text
    ds.ContentSequence = [item]
    ds.ReferencedPerformedProcedureStepSequence = []
    ds.PerformedProcedureCodeSequence = []
    return ds
