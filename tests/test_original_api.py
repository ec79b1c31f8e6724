"""Every public name of the original package, from its original module path, with the
original's parameters and return shapes.

``ORIGINAL`` lists the original ``dcm-processor-service`` 0.0.1's public names by module;
:func:`test_the_list_matches_the_original_source` checks that list against the
original's own source (its wheel from the package index, read with ``ast``, never
imported), and :func:`test_original_signatures_are_accepted` that our functions take the
original's parameters. The rest checks the shapes against real components: a store,
dcmtk ``storescp`` and a pynetdicom SCP on loopback ports.
"""

from __future__ import annotations

import ast
import base64
import importlib
import inspect
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread, uid
from pydicom.dataset import Dataset

import dcm_processor_service as dps
from dcm_processor_service import InvalidInputError, MissingContextError, Peer, use_context
from support.peers import run_storescp
from support.platform_venv import original_package
from support.services import sample_series

ORIGINAL: dict[str, set[str]] = {
    "dcm_processor_service": {
        "set_session_data",
        "get_session_data",
        "has_session_data",
        "remove_session_data",
        "upload_session_file",
        "download_session_file",
        "get_peer",
        "get_session_file",
        "has_session_file",
        "remove_session_file",
        "get_dicom_sender",
        "get_series_dicom",
        "get_series_nifti",
        "get_simplified_json",
        "dicom_series_to_nifti",
        "run_pre_services",
        "run_post_services",
        "make_pdf_dicom",
        "make_series_dicom",
        "nifti_to_dicom",
    },
    "dcm_processor_service.env_vars": {
        "get_db_info",
        "get_session_id",
        "get_job_id",
        "get_job_event",
        "get_job_name",
        "get_job_service_name",
        "get_peer_id",
    },
    "dcm_processor_service.db_manager": {
        "DicomSender",
        "get_db_info",
        "get_job_id",
        "get_session_id",
        "get_job_event",
        "get_mgr",
        "get_session_data",
        "set_session_data",
        "has_session_data",
        "remove_session_data",
        "upload_session_file",
        "download_session_file",
        "get_session_file",
        "has_session_file",
        "remove_session_file",
        "get_peer",
        "get_dicom_sender",
    },
    "dcm_processor_service.converters": {
        "get_mgr",
        "dicom_series_to_nifti",
        "get_simplified_json",
        "get_series_dicom",
        "get_series_nifti",
    },
    "dcm_processor_service.dicom_conversion": {"get_simplified_json", "dicom_series_to_nifti"},
    "dcm_processor_service.pre_services": {"callback"},
    "dcm_processor_service.post_services": {"get_mgr", "callback", "run_clean_up_service"},
    "dcm_processor_service.dicom_network": {
        "generate_dicom_from_pdf",
        "make_pdf_dicom",
        "make_series_dicom",
        "nifti_to_dicom",
        "DicomSender",
    },
    "dcm_processor_service.dicom_network.dicom_sender": {
        "REQUESTED_SOP_CLASSES",
        "REQUESTED_TRANSFER_SYNTAXES",
        "STATUS_CONTEXT_NOT_ACCEPTED",
        "DicomSender",
    },
    "dcm_processor_service.dicom_network.utils": {
        "COPY_TAGS",
        "generate_dicom_from_pdf",
        "format_patient_age",
        "post_process_all_ds",
        "get_orientation",
        "get_patient_orientation",
        "make_pdf_dicom",
        "make_series_dicom",
        "nifti_to_dicom",
    },
}
#: Original names deliberately not provided, with the reason (docs/migrating.md).
NOT_PROVIDED = {
    ("dcm_processor_service.db_manager", "DBMGR"): "a module-level connection singleton",
    ("dcm_processor_service.db_manager", "DBManager"): "the platform's database client class",
    ("dcm_processor_service.dicom_network.utils", "get_slope_and_intercept_pydicom"): (
        "internal step of the original nifti_to_dicom (int16 rescaling)"
    ),
    ("dcm_processor_service.dicom_network.utils", "write_dicom_slice"): (
        "internal step of the original nifti_to_dicom (hard-coded slice geometry)"
    ),
}


def _original_names(package: Path) -> dict[str, set[str]]:
    """Public names each module of the original binds at top level: its definitions,
    assignments and the names it imports from its own package (``from .x import y``);
    names it imports from other distributions are in :data:`NOT_PROVIDED`."""
    out: dict[str, set[str]] = {}
    for path in sorted(package.rglob("*.py")):
        parts = path.relative_to(package.parent).with_suffix("").parts
        module = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        names: set[str] = set()
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                names.add(node.name)
            elif isinstance(node, (ast.Assign, ast.AnnAssign)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                names.update(t.id for t in targets if isinstance(t, ast.Name))
            elif isinstance(node, ast.ImportFrom) and (
                node.level > 0 or (node.module or "").startswith("dcm_processor_db_provider")
            ):
                names.update(a.asname or a.name for a in node.names)
        out[module] = {n for n in names if not n.startswith("_")}
    return out


def _original_functions(package: Path) -> dict[str, ast.FunctionDef]:
    """``module.function`` and ``module.Class.method`` of the original -> its node."""
    out: dict[str, ast.FunctionDef] = {}
    for path in sorted(package.rglob("*.py")):
        parts = path.relative_to(package.parent).with_suffix("").parts
        module = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            if isinstance(node, ast.FunctionDef) and not node.name.startswith("_"):
                out[f"{module}.{node.name}"] = node
            if isinstance(node, ast.ClassDef):
                for item in node.body:
                    if isinstance(item, ast.FunctionDef) and (
                        item.name == "__init__" or not item.name.startswith("_")
                    ):
                        out[f"{module}.{node.name}.{item.name}"] = item
    return out


@pytest.fixture(scope="module")
def original() -> Path:
    return original_package()


def test_every_original_name_imports_from_its_module() -> None:
    for module_name, names in ORIGINAL.items():
        module = importlib.import_module(module_name)
        for name in sorted(names):
            assert hasattr(module, name), f"{module_name}.{name}"
            assert name in module.__all__ or module_name == "dcm_processor_service", name
        if module_name != "dcm_processor_service":
            assert set(module.__all__) == names, module_name
    for module_name, name in NOT_PROVIDED:
        assert not hasattr(importlib.import_module(module_name), name)


def test_the_list_matches_the_original_source(original: Path) -> None:
    found = _original_names(original)
    assert set(found) == set(ORIGINAL)
    for module_name, names in found.items():
        missing = {(module_name, n) for n in names} - {
            (module_name, n) for n in ORIGINAL[module_name]
        }
        assert missing <= set(NOT_PROVIDED), (module_name, missing - set(NOT_PROVIDED))


def test_original_signatures_are_accepted(original: Path) -> None:
    """Each original function's parameters (by position and by name) fit ours."""
    checked = 0
    for dotted, node in _original_functions(original).items():
        module_name, attr = dotted.rsplit(".", 1)
        owner_name = None
        if module_name not in ORIGINAL:  # a method: module.Class.method
            module_name, owner_name = module_name.rsplit(".", 1)
        if (module_name, owner_name or attr) in NOT_PROVIDED:
            continue
        module = importlib.import_module(module_name)
        ours = getattr(getattr(module, owner_name), attr) if owner_name else getattr(module, attr)
        params = list(inspect.signature(ours).parameters.values())
        kinds = {p.kind for p in params}
        theirs = [a.arg for a in node.args.args if a.arg != "self"]
        positional = [
            p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
        ]
        if owner_name:
            positional = positional[1:]  # self
        if inspect.Parameter.VAR_POSITIONAL not in kinds:
            assert positional[: len(theirs)] == theirs, dotted
        if node.args.kwarg is not None:
            assert inspect.Parameter.VAR_KEYWORD in kinds, f"{dotted} takes **kwargs"
        checked += 1
    assert checked >= 30


# --------------------------------------------------------------------------- shapes
def test_env_vars_read_the_context() -> None:
    from dcm_processor_service import env_vars

    with use_context(
        db_provider="sqlite",
        db_url="/tmp/x",
        db_name="n",
        session_id="s",
        job_id="j",
        job_event="stable-study",
        job_name="jn",
        job_service_name="svc",
        peer_id="p",
    ):
        assert env_vars.get_db_info() == ("sqlite", "/tmp/x", "n")
        assert (
            env_vars.get_session_id(),
            env_vars.get_job_id(),
            env_vars.get_job_event(),
            env_vars.get_job_name(),
            env_vars.get_job_service_name(),
            env_vars.get_peer_id(),
        ) == ("s", "j", "stable-study", "jn", "svc", "p")
    assert env_vars.get_db_info() == (None, None, None)
    with pytest.raises(MissingContextError, match="DCM-PROCESSOR-SERVICE-SESSION-ID"):
        env_vars.get_session_id()


def test_session_api_through_db_manager(tmp_path: Path) -> None:
    from dcm_processor_service import db_manager, post_services, pre_services

    with use_context(
        db_provider="sqlite",
        db_url=str(tmp_path / "store") + "/",
        session_id="s1",
        job_id="j1",
        job_name="seg",
        job_event="stable-series",
    ):
        assert pre_services.callback(session_id="s1")["status"] == "running"
        db_manager.set_session_data("n", {"a": 1})
        assert db_manager.get_session_data("n") == {"a": 1}
        assert db_manager.has_session_data("n", job_name="seg") is True
        file_id = db_manager.upload_session_file(b"bytes", "f.bin")
        assert isinstance(file_id, str)
        info = db_manager.get_session_file("f.bin")
        assert info["_id"] == file_id and info["length"] == 5 and info["filename"] == "f.bin"
        assert db_manager.download_session_file("f.bin").read() == b"bytes"
        target = tmp_path / "copy.bin"
        assert db_manager.download_session_file("f.bin", str(target)) == str(target)
        assert db_manager.download_session_file("absent") is None
        assert db_manager.get_session_file("absent") is None
        store = db_manager.get_mgr()
        assert isinstance(store, dps.Store) and store.get_session("s1").id == "s1"
        assert post_services.run_clean_up_service(session_id="s1")["data"] == 1
        assert post_services.callback is dps.run_post_services


def test_peer_is_a_mapping_and_get_peer_without_a_session_peer(tmp_path: Path) -> None:
    from dcm_processor_service import db_manager

    with use_context(db_provider="sqlite", db_url=str(tmp_path / "s") + "/", session_id="s"):
        peer = dps.add_peer("pacs", "PACS", "127.0.0.1", 4242, whitelist_aet=["MOD"])
        assert db_manager.get_peer() is None  # the session has no peer
        assert db_manager.get_dicom_sender() is None
        found = db_manager.get_peer("pacs")
    assert isinstance(found, Peer) and found == peer
    assert found["host"] == "127.0.0.1" and found.get("aet") == "PACS"
    assert found["port"] == 4242 and found.get("tls") is False and found.get("cert_file") is None
    assert found["whitelist_aet"] == ["MOD"] and found["_id"] == peer.id
    assert "host" in found and "nope" not in found and found.get("nope", 7) == 7
    assert set(found) == {
        "_id",
        "name",
        "aet",
        "host",
        "port",
        "tls",
        "cert_file",
        "key_file",
        "ca_file",
        "whitelist_aet",
        "whitelist_ip",
    }
    assert dict(found) == found.to_dict() and len(found) == 11
    with pytest.raises(KeyError):
        found["nope"]
    with pytest.raises(MissingContextError, match="SESSION-ID"):
        dps.get_peer()  # outside a job: no session either


def test_get_simplified_json_takes_ds(tmp_path: Path) -> None:
    from dcm_processor_service.dicom_conversion import get_simplified_json

    path = sample_series(tmp_path / "s", slices=1)[0]
    ds = dcmread(path)
    by_keyword = get_simplified_json(ds=ds, n_slices=3)
    assert by_keyword == get_simplified_json(ds, 3) == get_simplified_json(dataset=ds, n_slices=3)
    assert by_keyword["PatientID"] == "PAT-1" and by_keyword["Slices"] == 3
    with pytest.raises(InvalidInputError, match="not both"):
        get_simplified_json(ds, dataset=ds)
    with pytest.raises(InvalidInputError, match="missing 'ds'"):
        get_simplified_json()


def test_sender_echo_status_and_per_call_overrides(tmp_path: Path) -> None:
    from pynetdicom import AE, evt
    from pynetdicom.sop_class import CTImageStorage, Verification

    from dcm_processor_service.dicom_network.dicom_sender import DicomSender
    from support.peers import free_port

    received: list[str] = []

    def on_store(event: Any) -> int:
        received.append(event.dataset.SOPInstanceUID)
        return 0x0000

    scp = AE(ae_title="RIGHT")
    scp.require_called_aet = True  # a wrong called AE title is rejected
    scp.add_supported_context(Verification)
    scp.add_supported_context(
        CTImageStorage, [uid.ExplicitVRLittleEndian, uid.ImplicitVRLittleEndian]
    )
    port = free_port()
    server = scp.start_server(
        ("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)]
    )
    try:
        files = sample_series(tmp_path / "ct", slices=2)
        wrong = DicomSender("ME", "127.0.0.1", free_port(), "WRONG", max_retries=0)
        echo = wrong.send_echo(port=port, aet="RIGHT")
        assert echo.Status == 0x0000 and echo.status == 0 and bool(echo)
        statuses = wrong.send_dicom_from_filelist(
            [str(f) for f in files], port=port, ae_title="RIGHT", tls=None
        )
        assert [s.Status for s in statuses] == [0, 0]
        assert wrong.last_report is not None and len(wrong.last_report.results) == 2
        datasets = [dcmread(f) for f in files]
        assert [
            s.Status for s in wrong.send_dicom_from_dataset(datasets, port=port, aet="RIGHT")
        ] == [0, 0]
        assert [
            s.Status
            for s in wrong.send_dicom_from_path(
                str(files[0]), host="127.0.0.1", port=port, aet="RIGHT"
            )
        ] == [0]
        assert wrong.server_port != port and wrong.server_ae_title == "WRONG"  # unchanged
        with pytest.raises(InvalidInputError, match="unknown connection override.*'hots'"):
            wrong.send_echo(hots="x")
        with pytest.raises(dps.AssociationRejectedError):
            wrong.send_echo(port=port)  # called AE title WRONG
    finally:
        server.shutdown()
    assert len(received) == 5


def test_status_context_not_accepted_is_what_the_sender_reports(tmp_path: Path) -> None:
    from dcm_processor_service.dicom_network import dicom_sender

    files = sample_series(tmp_path / "ct", slices=1)
    accept = {uid.MRImageStorage: [uid.ExplicitVRLittleEndian]}  # no CT context
    with run_storescp(tmp_path / "rx", accept=accept) as scp:
        sender = dicom_sender.DicomSender("ME", "127.0.0.1", scp.port, scp.aet)
        statuses = sender.send_dicom_from_filelist([str(files[0])])
    assert [s.Status for s in statuses] == [dicom_sender.STATUS_CONTEXT_NOT_ACCEPTED]
    names = [
        "CTImageStorage",
        "EncapsulatedPDFStorage",
        "EnhancedCTImageStorage",
        "SecondaryCaptureImageStorage",
        "SegmentationStorage",
        "RTStructureSetStorage",
        "ParametricMapStorage",
        "BasicTextSRStorage",
        "EnhancedSRStorage",
        "ComprehensiveSRStorage",
        "Comprehensive3DSRStorage",
    ]
    assert [str(getattr(uid, n)) for n in names] == dicom_sender.REQUESTED_SOP_CLASSES
    assert [
        str(uid.ExplicitVRLittleEndian),
        str(uid.ImplicitVRLittleEndian),
    ] == dicom_sender.REQUESTED_TRANSFER_SYNTAXES


PDF = b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n"


def test_dicom_network_utils_helpers(tmp_path: Path) -> None:
    from dcm_processor_service.dicom_network import utils

    assert [utils.format_patient_age(a) for a in ("045Y", "45", "45y", 7, "3M", None)] == [
        "045Y",
        "045Y",
        "045Y",
        "007Y",
        "003M",
        None,
    ]
    with pytest.raises(InvalidInputError, match="'age'"):
        utils.format_patient_age("about forty")

    axial = Dataset()
    axial.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    sagittal = Dataset()
    sagittal.ImageOrientationPatient = [0, 1, 0, 0, 0, -1]
    tilted = Dataset()
    tilted.ImageOrientationPatient = [1, 0, 0, 0, 0.7071, 0.7071]
    assert [utils.get_orientation(d) for d in (axial, sagittal, tilted, Dataset())] == [
        "AXIAL",
        "SAGITTAL",
        "OBLIQUE",
        None,
    ]
    assert utils.get_patient_orientation(axial) == ["L", "P"]
    assert utils.get_patient_orientation(sagittal) == ["P", "F"]
    assert utils.get_patient_orientation(Dataset()) is None

    ds = Dataset()
    with warnings.catch_warnings():  # overlong DS values, as a computation leaves them
        warnings.simplefilter("ignore")
        ds.SliceThickness = "1.23456789012345e-05"  # 20 characters
        ds.PixelSpacing = [0.123456789012345678, 2]
    utils.post_process_all_ds(ds)
    assert float(ds.SliceThickness) == pytest.approx(1.23456789012345e-05, rel=1e-9)
    assert all(len(str(v)) <= 16 for v in [ds.SliceThickness, *ds.PixelSpacing])
    assert float(ds.PixelSpacing[0]) == pytest.approx(0.123456789012345678, rel=1e-12)

    pdf = utils.generate_dicom_from_pdf(base64.b64encode(PDF).decode())
    assert pdf.SOPClassUID == uid.EncapsulatedPDFStorage
    assert pdf.EncapsulatedDocument.rstrip(b"\0") == PDF and pdf.StudyInstanceUID
    assert pdf.PatientID == "" and pdf.PatientName == ""  # the caller fills the patient in
    ref = dcmread(sample_series(tmp_path / "ref", slices=1)[0])
    in_study = utils.make_pdf_dicom(ref, base64.b64encode(PDF).decode(), "Report")
    for keyword in utils.COPY_TAGS[uid.EncapsulatedPDFStorage]:
        if keyword in ref and keyword != "PatientAge":
            assert in_study[keyword].value == ref[keyword].value, keyword
    assert set(utils.COPY_TAGS[uid.EncapsulatedPDFStorage]) < set(utils.COPY_TAGS["others"])


def test_original_modules_import_cheaply() -> None:
    """Importing every original module path loads no heavy library (each job imports
    them)."""
    modules = ", ".join(m for m in ORIGINAL if m != "dcm_processor_service")
    code = (
        f"import sys, {modules}\n"
        "print(sorted(m for m in ('numpy', 'pydicom', 'pynetdicom', 'nibabel', 'highdicom') "
        "if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
