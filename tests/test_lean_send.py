"""The send path without pydicom/pynetdicom/numpy/httpx: same bytes, same answers.

* our A-ASSOCIATE-RQ encoder writes the bytes pynetdicom's encoder writes for the same
  request (pynetdicom stays the reference here);
* the A-ASSOCIATE-AC / -RJ that real peers (dcmtk storescp, Orthanc, a pynetdicom SCP)
  send are decoded as pynetdicom decodes them;
* status categories (PS3.7 Annex C) and transfer syntax encodings agree with pynetdicom
  and pydicom for every code / every standard syntax;
* a send of real files to a real storescp - through the API and through
  ``dcm-service send`` - runs without importing pydicom, pynetdicom, numpy or httpx, and
  the peer receives every dataset byte for byte.
"""

from __future__ import annotations

import json
import socket
import struct
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom._uid_dict import UID_dictionary
from pydicom.uid import UID
from pynetdicom.pdu import A_ASSOCIATE_AC, A_ASSOCIATE_RJ, A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import (
    A_ASSOCIATE,
    ImplementationClassUIDNotification,
    ImplementationVersionNameNotification,
    MaximumLengthNotification,
)
from pynetdicom.presentation import build_context
from pynetdicom.status import code_to_category

from dcm_processor_service._uids import (
    DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN,
    ENCAPSULATED_SYNTAXES,
    NATIVE_SYNTAXES,
    is_compressed,
    syntax_encoding,
)
from dcm_processor_service.net.contexts import plan_contexts
from dcm_processor_service.net.pdu import (
    A_ABORT_PDU,
    APPLICATION_CONTEXT,
    IMPLEMENTATION_CLASS_UID,
    IMPLEMENTATION_VERSION_NAME,
    NegotiatedContext,
    ProposedContext,
    ProtocolError,
    decode_associate_ac,
    decode_associate_rj,
    encode_associate_rq,
)
from dcm_processor_service.net.results import InstanceResult, Outcome, StatusCategory
from dcm_processor_service.sources import read_identity
from support.peers import TEST_FILES, copy_with_new_uid, run_orthanc, run_storescp
from support.ul_peers import ScriptedSCP

pytestmark = pytest.mark.network

CT = "1.2.840.10008.5.1.4.1.1.2"
MR = "1.2.840.10008.5.1.4.1.1.4"
VERIFICATION = "1.2.840.10008.1.1"
ELE, ILE, EBE = "1.2.840.10008.1.2.1", "1.2.840.10008.1.2", "1.2.840.10008.1.2.2"
JPEG_BASELINE, J2K_LOSSLESS = "1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.90"
HEAVY = ("pydicom", "pynetdicom", "numpy", "httpx")

#: Files of several SOP classes and stored syntaxes (all sent as stored to storescp).
SAMPLES = (
    "CT_small.dcm",  # Explicit VR LE
    "MR_small.dcm",
    "rtdose.dcm",  # Implicit VR LE
    "MR_small_bigendian.dcm",  # Explicit VR BE
    "MR_small_jp2klossless.dcm",  # JPEG 2000
    "MR_small_RLE.dcm",  # RLE
    "examples_ybr_color.dcm",  # JPEG baseline, multi-frame
)  # (not a deflated file: its scan falls back to pydicom's reader)


# -- the reference: what pynetdicom writes and reads --------------------------------------
def _pynetdicom_rq(
    calling: str, called: str, contexts: Sequence[ProposedContext], max_pdu: int
) -> bytes:
    prim = A_ASSOCIATE()
    prim.application_context_name = UID(APPLICATION_CONTEXT)
    prim.calling_ae_title = calling
    prim.called_ae_title = called
    items = []
    for proposed in contexts:
        cx = build_context(proposed.abstract_syntax, list(proposed.transfer_syntaxes))
        cx.context_id = proposed.context_id
        items.append(cx)
    prim.presentation_context_definition_list = items
    max_length = MaximumLengthNotification()
    max_length.maximum_length_received = max_pdu
    impl_uid = ImplementationClassUIDNotification()
    impl_uid.implementation_class_uid = IMPLEMENTATION_CLASS_UID
    impl_name = ImplementationVersionNameNotification()
    impl_name.implementation_version_name = IMPLEMENTATION_VERSION_NAME
    prim.user_information = [max_length, impl_uid, impl_name]
    return bytes(A_ASSOCIATE_RQ(prim).encode())


def _pynetdicom_ac(
    data: bytes, proposed: Sequence[ProposedContext]
) -> tuple[dict[int, NegotiatedContext], int]:
    """The AC read by pynetdicom's PDU classes, with the rules of :func:`decode_associate_ac`."""
    ac = A_ASSOCIATE_AC()
    ac.decode(data)
    prim = ac.to_primitive()
    by_id = {p.context_id: p for p in proposed}
    out: dict[int, NegotiatedContext] = {}
    for cx in prim.presentation_context_definition_results_list:
        ours = by_id.get(cx.context_id or -1)
        if ours is None:
            continue
        ts = cx.transfer_syntax[0] if cx.transfer_syntax else None
        result = int(cx.result) if cx.result is not None else 2
        if result == 0 and ts is not None and ts not in ours.transfer_syntaxes:
            result = 4
        out[ours.context_id] = NegotiatedContext(
            ours.context_id, ours.abstract_syntax, str(ts) if ts else None, result
        )
    for ours in proposed:
        out.setdefault(
            ours.context_id, NegotiatedContext(ours.context_id, ours.abstract_syntax, None, 2)
        )
    return out, int(prim.maximum_length_received or 0)


def _associate(port: int, rq: bytes) -> bytes:
    """Send ``rq`` to a real peer on ``port``; return its whole answer PDU, then abort."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(rq)
        header = b""
        while len(header) < 6:
            chunk = sock.recv(6 - len(header))
            assert chunk, "the peer closed the connection without answering"
            header += chunk
        (length,) = struct.unpack(">I", header[2:6])
        body = b""
        while len(body) < length:
            chunk = sock.recv(length - len(body))
            assert chunk, "the peer closed the connection mid-PDU"
            body += chunk
        if header[0] == 0x02:
            sock.sendall(A_ABORT_PDU)
        return header + body


# -- A-ASSOCIATE-RQ ------------------------------------------------------------------------
def _sample_plan() -> list[ProposedContext]:
    pairs = [(CT, ELE), (CT, JPEG_BASELINE), (MR, EBE), (MR, ILE), (MR, J2K_LOSSLESS)]
    (group,) = plan_contexts(pairs, extra_sop_classes=[VERIFICATION], extra_syntaxes=[EBE]).groups
    return group


def _full_plan() -> list[ProposedContext]:
    pairs = [(f"1.2.840.10008.5.1.4.1.1.{n}", ELE) for n in range(1, 200)]
    return plan_contexts(pairs).groups[0]  # 128 contexts: the most one request carries


@pytest.mark.parametrize(
    ("calling", "called", "contexts", "max_pdu"),
    [
        ("A", "ANY-SCP", [ProposedContext(1, VERIFICATION, (ELE, ILE))], 0),
        ("DCMPROCESSOR", "SIXTEEN_CHARS_AE", _sample_plan(), 16384),
        ("MY AE", "PACS", _sample_plan(), 0xFFFFFFFF),
        ("CALLING", "CALLED", _full_plan(), 0),
    ],
    ids=["echo", "plan", "spaces-max", "128-contexts"],
)
def test_associate_rq_bytes_are_pynetdicoms(
    calling: str, called: str, contexts: list[ProposedContext], max_pdu: int
) -> None:
    ours = encode_associate_rq(calling, called, contexts, max_pdu)
    assert ours == _pynetdicom_rq(calling, called, contexts, max_pdu)
    assert len(contexts) <= 128 and ours[0] == 0x01


def test_associate_rq_refuses_an_ae_title_that_does_not_fit() -> None:
    contexts = [ProposedContext(1, VERIFICATION, (ELE,))]
    with pytest.raises(ValueError, match="calling AE title"):
        encode_associate_rq("A" * 17, "PACS", contexts, 0)
    with pytest.raises(ValueError, match="called AE title"):
        encode_associate_rq("ME", "", contexts, 0)


# -- A-ASSOCIATE-AC / -RJ from real peers ------------------------------------------------
def _check_ac(port: int, contexts: list[ProposedContext]) -> dict[int, NegotiatedContext]:
    pdu = _associate(port, encode_associate_rq("TESTSCU", "ANY-SCP", contexts, 16384))
    assert pdu[0] == 0x02, f"expected an A-ASSOCIATE-AC, got PDU type {pdu[0]}"
    ours = decode_associate_ac(pdu, contexts)
    assert ours == _pynetdicom_ac(pdu, contexts)
    return ours[0]


def test_storescp_associate_ac_is_read_as_pynetdicom_reads_it(tmp_path: Path) -> None:
    contexts = _sample_plan()
    accept = {CT: [JPEG_BASELINE], MR: [ILE]}  # the rest is rejected
    with run_storescp(tmp_path / "rx", accept=accept) as scp:
        negotiated = _check_ac(scp.port, contexts)
    accepted = {(c.abstract_syntax, c.transfer_syntax) for c in negotiated.values() if c.accepted}
    assert accepted == {(CT, JPEG_BASELINE), (MR, ILE), (VERIFICATION, ELE)}
    assert {c.result for c in negotiated.values() if not c.accepted} >= {4}


def test_orthanc_associate_ac_and_rj_are_read_as_pynetdicom_reads_them(tmp_path: Path) -> None:
    contexts = [*_sample_plan(), ProposedContext(99, "1.2.3.4.5.6", (ELE,))]
    with run_orthanc(tmp_path / "orthanc", check_called_aet=True) as orthanc:
        rq = encode_associate_rq("TESTSCU", "ORTHANC", contexts, 0)
        pdu = _associate(orthanc.dicom_port, rq)
        assert pdu[0] == 0x02
        negotiated, _peer_max = decode_associate_ac(pdu, contexts)
        assert (negotiated, _peer_max) == _pynetdicom_ac(pdu, contexts)
        assert negotiated[1].accepted and not negotiated[99].accepted
        rj = _associate(orthanc.dicom_port, encode_associate_rq("TESTSCU", "NOT-ME", contexts, 0))
    _check_rj(rj)


def test_pynetdicom_associate_ac_and_rj_are_read_as_pynetdicom_reads_them(
    tmp_path: Path,
) -> None:
    contexts = _sample_plan()
    with ScriptedSCP(tmp_path / "rx", max_pdu=4096) as scp:
        negotiated = _check_ac(scp.port, contexts)
        _, peer_max = decode_associate_ac(
            _associate(scp.port, encode_associate_rq("TESTSCU", "ANY", contexts, 0)), contexts
        )
    assert peer_max == 4096
    assert all(c.accepted for c in negotiated.values())
    with ScriptedSCP(tmp_path / "rx2", require_called_aet=True) as scp:
        _check_rj(_associate(scp.port, encode_associate_rq("TESTSCU", "OTHER", contexts, 0)))


def _check_rj(pdu: bytes) -> None:
    assert pdu[0] == 0x03, f"expected an A-ASSOCIATE-RJ, got PDU type {pdu[0]}"
    rj = A_ASSOCIATE_RJ()
    rj.decode(pdu)
    ours = decode_associate_rj(pdu)
    assert ours is not None
    assert (ours.result, ours.source, ours.reason) == (rj.result, rj.source, rj.reason_diagnostic)
    assert ours.reason_text == "called AE title not recognized"


@pytest.mark.parametrize(
    "mangle",
    [
        lambda pdu: pdu[:40],  # shorter than the fixed part
        lambda pdu: pdu[:-3],  # the last item runs past the end
        lambda pdu: pdu[:2] + struct.pack(">I", len(pdu)) + pdu[6:],  # length beyond the bytes
    ],
    ids=["short", "truncated-item", "bad-length"],
)
def test_a_malformed_associate_ac_is_a_protocol_error(tmp_path: Path, mangle: object) -> None:
    contexts = _sample_plan()
    with ScriptedSCP(tmp_path / "rx") as scp:
        pdu = _associate(scp.port, encode_associate_rq("TESTSCU", "ANY", contexts, 0))
    decode_associate_ac(pdu, contexts)  # the real one is fine
    with pytest.raises(ProtocolError):
        decode_associate_ac(mangle(pdu), contexts)  # type: ignore[operator]


# -- status codes and transfer syntaxes ----------------------------------------------------
def test_status_categories_are_pynetdicoms_for_every_code() -> None:
    expected = {"Success": StatusCategory.SUCCESS, "Warning": StatusCategory.WARNING}
    for code in range(0x10000):
        want = expected.get(code_to_category(code), StatusCategory.FAILURE)
        assert StatusCategory.of(code) is want, hex(code)
    with pytest.raises(ValueError, match="negative"):
        StatusCategory.of(-1)


def test_transfer_syntax_table_agrees_with_pydicom() -> None:
    """Every syntax our table answers for is pydicom's, with pydicom's answer; the ones
    it leaves to pydicom are Deflated (a compressed dataset) and the retired Papyrus
    syntax (or one newer than the table)."""
    standard = {k for k, v in UID_dictionary.items() if v[1] == "Transfer Syntax"}
    assert standard >= ENCAPSULATED_SYNTAXES | NATIVE_SYNTAXES
    for uid in map(UID, standard):
        encoding = syntax_encoding(uid)
        if encoding is not None:
            assert not uid.is_deflated, uid
            assert encoding == (uid.is_implicit_VR, uid.is_little_endian), uid
        compressed = is_compressed(uid)
        assert compressed is None or compressed == uid.is_compressed, uid
    left = {uid for uid in standard if syntax_encoding(uid) is None}
    assert left <= {DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN, "1.2.840.10008.1.20"}
    assert syntax_encoding("1.2.826.0.1.3680043.2.1143.1") is None  # private: pydicom's
    assert is_compressed("1.2.3") is None


def test_read_identity_agrees_with_pydicom_for_every_test_file() -> None:
    """The scan without pydicom (pydicom's reader only for what it cannot walk)."""
    checked = 0
    for path in sorted(TEST_FILES.glob("*.dcm")):
        try:
            ds = dcmread(path, stop_before_pixels=True)
            meta = ds.file_meta
            want = (ds.SOPClassUID, ds.SOPInstanceUID, meta.TransferSyntaxUID)
        except Exception:  # not a readable Part 10 instance: nothing to compare
            continue
        identity = read_identity(path)
        if identity is None:
            continue
        assert (identity.sop_class_uid, identity.sop_instance_uid, identity.transfer_syntax) == (
            str(want[0]),
            str(want[1]),
            str(want[2]),
        ), path.name
        checked += 1
    assert checked > 50


def test_instance_result_status_dataset_is_made_on_first_read() -> None:
    from dcm_processor_service.net.dimse import DimseStatus

    status = DimseStatus.of(
        0xB000, error_comment="coerced\\values", error_id=7, offending=[(0x0010, 0x0020)]
    )
    result = InstanceResult(
        "x", "1.2", CT, 0xB000, StatusCategory.WARNING, Outcome.STORED, status_dataset=status
    )
    ds = result.status_dataset
    assert ds is result.status_dataset  # made once, then kept
    assert (ds.Status, ds.ErrorComment, ds.ErrorID) == (0xB000, "coerced values", 7)
    assert ds.OffendingElement == 0x00100020
    empty = InstanceResult("y", None, None, 0, StatusCategory.SUCCESS, Outcome.STORED)
    assert len(empty.status_dataset) == 0 and empty.status_dataset is not ds


# -- a real send, with nothing heavy imported ----------------------------------------------
@pytest.fixture(scope="module")
def sample_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("lean") / "in"
    folder.mkdir()
    for name in SAMPLES:
        copy_with_new_uid(TEST_FILES / name, folder, name)
    return folder


def _dataset_bytes(path: Path) -> tuple[str, bytes]:
    """(SOP Instance UID, the encoded dataset after the File Meta Information)."""
    identity = read_identity(path)
    assert identity is not None
    return identity.sop_instance_uid, path.read_bytes()[identity.offset :]


def _loaded_heavy(stderr: str) -> list[str]:
    """Top-level heavy packages named in a ``python -X importtime`` trace."""
    names = {line.rsplit("|", 1)[-1].strip() for line in stderr.splitlines() if "|" in line}
    return sorted(n for n in names if n.split(".")[0] in HEAVY)


def _assert_received_as_sent(folder: Path, received: list[Path]) -> None:
    sent = dict(_dataset_bytes(p) for p in sorted(folder.iterdir()))
    got = dict(_dataset_bytes(p) for p in received)
    assert got.keys() == sent.keys()
    for uid, data in sent.items():
        assert got[uid] == data, uid


def test_api_send_of_files_imports_nothing_heavy(tmp_path: Path, sample_folder: Path) -> None:
    with run_storescp(tmp_path / "rx", extra_args=["+B"]) as scp:  # +B: bytes as received
        script = (
            "import json, sys\n"
            "import dcm_processor_service as d\n"
            f"report = d.DicomSender('TESTSCU', '127.0.0.1', {scp.port}, {scp.aet!r})"
            f".send({str(sample_folder)!r})\n"
            "print(json.dumps({'counts': report.counts(), 'ok': report.ok,\n"
            "    'heavy': sorted(m for m in sys.modules if m.split('.')[0] in %r)}))\n" % (HEAVY,)
        )
        done = subprocess.run(
            [sys.executable, "-c", script], capture_output=True, text=True, check=True
        )
        received = scp.files()
    answer = json.loads(done.stdout)
    assert answer["ok"] and answer["counts"]["stored"] == len(SAMPLES)
    assert answer["heavy"] == []
    _assert_received_as_sent(sample_folder, received)


def test_cli_send_of_files_imports_nothing_heavy(tmp_path: Path, sample_folder: Path) -> None:
    store = tmp_path / "store"
    cli = [sys.executable, "-m", "dcm_processor_service.cli"]
    with run_storescp(tmp_path / "rx", extra_args=["+B"]) as scp:
        subprocess.run(
            [
                *cli,
                "peers",
                "add",
                "--store",
                str(store),
                "scp",
                scp.aet,
                "127.0.0.1",
                str(scp.port),
            ],
            check=True,
            capture_output=True,
        )
        done = subprocess.run(
            [
                sys.executable,
                "-X",
                "importtime",
                *cli[1:],
                "send",
                "--store",
                str(store),
                "scp",
                str(sample_folder),
            ],
            capture_output=True,
            text=True,
        )
        received = scp.files()
    assert done.returncode == 0, done.stdout + done.stderr[-2000:]
    assert f"sent {len(SAMPLES)} of {len(SAMPLES)}" in done.stdout
    assert _loaded_heavy(done.stderr) == []
    _assert_received_as_sent(sample_folder, received)


def test_cli_commands_load_on_first_use_under_their_own_names() -> None:
    import click

    from dcm_processor_service.cli.app import _COMMANDS, cli

    ctx = click.Context(cli)
    assert cli.list_commands(ctx) == sorted(_COMMANDS)
    for name in _COMMANDS:
        command = cli.get_command(ctx, name)
        assert command is not None and command.name == name
        assert {"-v", "--json"} <= {opt for p in command.params for opt in p.opts} or isinstance(
            command, click.Group
        )
    assert cli.get_command(ctx, "no-such-command") is None
