"""DicomSender against real peers (dcmtk storescp, Orthanc) on loopback ports.

Every test talks to a real process; nothing about the peers is mocked. Pixel data is
compared with what was sent after reading the received instances back (storescp's output
files, Orthanc's REST API).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    generate_uid,
)
from pynetdicom.presentation import AllStoragePresentationContexts

from dcm_processor_service._errors import (
    AssociationAbortedError,
    AssociationRejectedError,
    InvalidInputError,
    NetworkError,
    PeerUnreachableError,
    StoreFailedError,
)
from dcm_processor_service.net.options import DEFAULT_CALLING_AET, default_calling_ae_title
from dcm_processor_service.net.results import (
    STATUS_IN_DOUBT,
    EchoResult,
    Outcome,
    SendReport,
    StatusCategory,
)
from dcm_processor_service.net.sender import DicomSender
from dcm_processor_service.store.records import Peer
from support.peers import (
    TEST_FILES,
    OrthancPeer,
    copy_with_new_uid,
    free_port,
    make_encapsulated_pdf,
    make_text_sr,
    run_orthanc,
    run_storescp,
)
from support.ul_peers import ScriptedSCP

pytestmark = pytest.mark.network

CT = "1.2.840.10008.5.1.4.1.1.2"
MR = "1.2.840.10008.5.1.4.1.1.4"
SEG = "1.2.840.10008.5.1.4.1.1.66.4"
US_MF = "1.2.840.10008.5.1.4.1.1.3.1"
RT_DOSE = "1.2.840.10008.5.1.4.1.1.481.2"
PDF = "1.2.840.10008.5.1.4.1.1.104.1"
BASIC_SR = "1.2.840.10008.5.1.4.1.1.88.11"
SC = "1.2.840.10008.5.1.4.1.1.7"
ELE = str(ExplicitVRLittleEndian)

#: sample name -> pydicom test file (kinds the issue asks for, and stored syntaxes).
SAMPLES = {
    "ct": "CT_small.dcm",  # CT, Explicit VR LE
    "mr": "MR_small.dcm",  # MR, Explicit VR LE
    "seg": "liver_1frame.dcm",  # SEG
    "rtdose": "rtdose.dcm",  # multi-frame, Implicit VR LE
    "us_jpeg": "examples_ybr_color.dcm",  # multi-frame, JPEG Baseline, YBR
    "mr_j2k": "MR_small_jp2klossless.dcm",  # JPEG 2000 lossless
    "mr_rle": "MR_small_RLE.dcm",  # RLE lossless
    "mr_jls": "MR_small_jpeg_ls_lossless.dcm",  # JPEG-LS lossless
    "mr_be": "MR_small_bigendian.dcm",  # Explicit VR Big Endian
    "sc_deflated": "image_dfl.dcm",  # Deflated Explicit VR LE
}


@pytest.fixture(scope="module")
def samples(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Copies of the samples with distinct SOP Instance UIDs, plus a PDF and an SR."""
    d = tmp_path_factory.mktemp("samples")
    out = {k: copy_with_new_uid(TEST_FILES / name, d / k, name) for k, name in SAMPLES.items()}
    for key, ds in (("pdf", make_encapsulated_pdf()), ("sr", make_text_sr())):
        path = d / key / f"{key}.dcm"
        path.parent.mkdir()
        ds.save_as(path, enforce_file_format=True)
        out[key] = path
    return out


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OrthancPeer]:
    """One Orthanc for the module: it knows two calling AE titles and nothing else."""
    with run_orthanc(
        tmp_path_factory.mktemp("orthanc"),
        always_allow=False,
        check_called_aet=True,
        modalities={
            "SDK": [DEFAULT_CALLING_AET, "127.0.0.1", 104],
            "TESTS": ["TESTSCU", "127.0.0.1", 104],
        },
    ) as peer:
        yield peer


def _uid(path: Path) -> str:
    return str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)


def _dataset_bytes(path: Path) -> bytes:
    """The encoded dataset of a file (everything after the File Meta Information)."""
    ds = dcmread(path, stop_before_pixels=True)
    raw = path.read_bytes()
    meta_end = 132 + 12 + int(ds.file_meta.FileMetaInformationGroupLength)
    return raw[meta_end:]


def _assert_same_content(received: Dataset, sent: Dataset) -> None:
    assert received.SOPClassUID == sent.SOPClassUID
    assert received.SOPInstanceUID == sent.SOPInstanceUID
    if "PixelData" in sent:
        assert np.array_equal(received.pixel_array, sent.pixel_array)
    if "EncapsulatedDocument" in sent:
        assert received.EncapsulatedDocument == sent.EncapsulatedDocument
    if "ContentSequence" in sent:
        assert received.ContentSequence[0].TextValue == sent.ContentSequence[0].TextValue


# -- C-ECHO ------------------------------------------------------------------------------------
def test_echo_returns_success_with_latency(tmp_path: Path) -> None:
    with run_storescp(tmp_path / "rx") as scp:
        result = DicomSender("TESTSCU", "127.0.0.1", scp.port, scp.aet).send_echo()
    assert isinstance(result, EchoResult)
    assert result.ok is True and bool(result) is True
    assert result.status == 0x0000
    assert result.error is None
    assert 0 < result.latency_s <= result.total_s < 5
    assert result.peer == f"STORESCP@127.0.0.1:{scp.port}"


def test_echo_to_closed_port_raises_unreachable() -> None:
    sender = DicomSender("TESTSCU", "127.0.0.1", free_port(), "NOBODY")
    with pytest.raises(PeerUnreachableError, match=r"NOBODY@127\.0\.0\.1:\d+ refused"):
        sender.send_echo()


# -- delivery of every kind of instance ------------------------------------------------------
def test_every_kind_arrives_at_storescp_byte_for_byte(
    tmp_path: Path, samples: dict[str, Path]
) -> None:
    files = list(samples.values())
    # +B: storescp writes the dataset exactly as received, so bytes can be compared.
    with run_storescp(tmp_path / "rx", extra_args=["+B"]) as scp:
        sender = DicomSender("TESTSCU", "127.0.0.1", scp.port, scp.aet)
        report = sender.send(files)
        received = {_uid(p): p for p in scp.files()}

    assert [r.source for r in report.results] == [str(p) for p in files]
    assert report.ok and not report.failed and not report.skipped
    assert report.associations == 1 and report.retries == 0
    for result, path in zip(report.results, files, strict=True):
        source = dcmread(path)
        assert result.sop_instance_uid == source.SOPInstanceUID
        assert result.sop_class_uid == source.SOPClassUID
        assert (result.status, result.category, result.sent) == (0, StatusCategory.SUCCESS, True)
        assert result.conversion == "none"
        assert result.transfer_syntax == source.file_meta.TransferSyntaxUID
        assert result.attempts == 1
        assert result.status_dataset.Status == 0
        # sent as stored: the received dataset bytes are the file's own
        assert _dataset_bytes(received[result.sop_instance_uid]) == _dataset_bytes(path)
        _assert_same_content(dcmread(received[result.sop_instance_uid]), source)
    assert report.bytes_sent > sum(len(_dataset_bytes(p)) for p in files)


def test_every_kind_arrives_at_orthanc(orthanc: OrthancPeer, samples: dict[str, Path]) -> None:
    files = list(samples.values())
    sender = DicomSender("TESTSCU", "127.0.0.1", orthanc.dicom_port, orthanc.aet)
    report = sender.send(files)
    assert [r.status for r in report.results] == [0] * len(files)
    assert report.ok
    for path in files:
        source = dcmread(path)
        _assert_same_content(orthanc.dataset(str(source.SOPInstanceUID)), source)


def test_sending_as_stored_decodes_no_pixel_data(
    tmp_path: Path, samples: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("pixel data was decoded")

    from pydicom.pixels.decoders.base import Decoder

    monkeypatch.setattr(Decoder, "as_array", forbidden)
    monkeypatch.setattr(Decoder, "iter_array", forbidden)
    monkeypatch.setattr(Dataset, "decompress", forbidden)
    compressed = [samples[k] for k in ("us_jpeg", "mr_j2k", "mr_rle", "mr_jls")]
    with run_storescp(tmp_path / "rx") as scp:
        report = DicomSender("TESTSCU", "127.0.0.1", scp.port, scp.aet).send(compressed)
        assert len(scp.files()) == 4
    assert [(r.status, r.conversion) for r in report.results] == [(0, "none")] * 4


# -- negotiation from the data, transcoding, per-instance failures -----------------------------
def test_explicit_le_only_peer_gets_converted_copies_and_refused_classes_fail(
    tmp_path: Path, samples: dict[str, Path]
) -> None:
    accept = {CT: [ELE], MR: [ELE], US_MF: [ELE], SC: [ELE], SEG: [ELE], BASIC_SR: [ELE]}
    order = [
        "ct",
        "mr_j2k",
        "mr_rle",
        "mr_jls",
        "mr_be",
        "us_jpeg",
        "sc_deflated",
        "rtdose",
        "pdf",
        "sr",
    ]
    files = [samples[k] for k in order]
    with run_storescp(tmp_path / "rx", accept=accept) as scp:
        sender = DicomSender("TESTSCU", "127.0.0.1", scp.port, scp.aet)
        statuses = sender.send_dicom_from_filelist(files)
        received = {str(ds.SOPInstanceUID): ds for ds in scp.datasets().values()}
    report = sender.last_report
    assert report is not None
    by_key = dict(zip(order, report.results, strict=True))

    expected_conversion = {
        "ct": "none",
        "mr_j2k": "decompress",
        "mr_rle": "decompress",
        "mr_jls": "decompress",
        "mr_be": "reencode",
        "us_jpeg": "decompress",
        "sc_deflated": "reencode",
        "sr": "none",
    }
    for key, conversion in expected_conversion.items():
        result = by_key[key]
        assert (result.status, result.conversion, result.transfer_syntax) == (0, conversion, ELE), (
            key
        )
        got = received[str(result.sop_instance_uid)]
        assert got.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
        _assert_same_content(got, dcmread(samples[key]))  # decoded pixels equal
    for key, sop in (("rtdose", RT_DOSE), ("pdf", PDF)):
        result = by_key[key]
        assert result.status == 0x0122 and result.category is StatusCategory.FAILURE
        assert result.sent is False and result.attempts == 0
        assert "accepted no presentation context" in (result.error or "")
        assert sop in (result.error or "")
        assert str(result.sop_instance_uid) not in received
    # the compatible result: one status dataset per instance, in order
    assert [int(ds.Status) for ds in statuses] == [0] * 7 + [0x0122, 0x0122, 0]
    assert "accepted no presentation context" in statuses[7].ErrorComment
    assert len(received) == 8
    with pytest.raises(StoreFailedError, match=r"2 of 10 instance\(s\) were not stored"):
        report.raise_for_failures()


def test_more_than_128_contexts_use_several_associations(tmp_path: Path) -> None:
    sop_classes = [str(cx.abstract_syntax) for cx in AllStoragePresentationContexts][:70]
    datasets = []
    for sop_class in sop_classes:
        ds = make_text_sr()
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = sop_class
        datasets.append(ds)
    with run_storescp(tmp_path / "rx") as scp:
        sender = DicomSender("TESTSCU", "127.0.0.1", scp.port, scp.aet)
        statuses = sender.send_dicom_from_dataset(datasets)
        received = {str(ds.SOPInstanceUID): str(ds.SOPClassUID) for ds in scp.datasets().values()}
    assert [int(s.Status) for s in statuses] == [0] * 70
    assert sender.last_report is not None and sender.last_report.associations == 2
    assert received == {str(ds.SOPInstanceUID): str(ds.SOPClassUID) for ds in datasets}


# -- input forms -------------------------------------------------------------------------------
def test_compat_methods_return_one_status_dataset_per_instance(
    tmp_path: Path, samples: dict[str, Path]
) -> None:
    folder = tmp_path / "folder"
    for key in ("ct", "mr", "seg"):
        copy_with_new_uid(samples[key], folder / key)
    (folder / "notes.txt").write_text("not DICOM")
    with run_storescp(tmp_path / "rx") as scp:
        sender = DicomSender("TESTSCU", "127.0.0.1", scp.port, scp.aet)

        from_path = sender.send_dicom_from_path(folder)
        # walked in sorted order, a folder's own files before its subfolders
        assert [int(ds.Status) for ds in from_path] == [0xC000, 0, 0, 0]
        assert "not a DICOM file" in from_path[0].ErrorComment
        assert sender.last_report is not None
        assert [r.source for r in sender.last_report.results] == [
            str(folder / "notes.txt"),
            str(folder / "ct" / "CT_small.dcm"),
            str(folder / "mr" / "MR_small.dcm"),
            str(folder / "seg" / "liver_1frame.dcm"),
        ]

        missing = tmp_path / "missing.dcm"
        from_list = sender.send_dicom_from_filelist([samples["ct"], missing])
        assert [int(ds.Status) for ds in from_list] == [0, 0xC000]
        assert from_list[1].ErrorComment == "not sent: does not exist"

        pdf, sr = make_encapsulated_pdf(), make_text_sr()
        before = pdf.to_json_dict()
        from_datasets = sender.send_dicom_from_dataset([pdf, sr])
        assert [int(ds.Status) for ds in from_datasets] == [0, 0]
        assert [r.source for r in sender.last_report.results] == ["dataset #0", "dataset #1"]
        assert pdf.to_json_dict() == before  # the caller's dataset is not modified

        single = sender.send_dicom_from_dataset(make_text_sr())
        assert len(single) == 1 and single[0].Status == 0
        received = scp.datasets()
    assert str(pdf.SOPInstanceUID) in received and str(sr.SOPInstanceUID) in received


def test_dicomdir_sends_the_referenced_instances(tmp_path: Path) -> None:
    dicomdir = TEST_FILES / "dicomdirtests" / "DICOMDIR"
    referenced = {
        str(ds.ReferencedSOPInstanceUIDInFile)
        for ds in dcmread(dicomdir).DirectoryRecordSequence
        if "ReferencedFileID" in ds
    }
    with run_storescp(tmp_path / "rx") as scp:
        sender = DicomSender("TESTSCU", "127.0.0.1", scp.port, scp.aet)
        statuses = sender.send_dicom_from_dicomdir(dicomdir)
        received = set(scp.datasets())
    assert len(statuses) == len(referenced) == 31
    assert all(ds.Status == 0 for ds in statuses)
    assert received == referenced


def test_filter_callback_sees_headers_and_selects(tmp_path: Path, samples: dict[str, Path]) -> None:
    seen: list[str] = []

    def only_mr(ds: Dataset) -> bool:
        assert "PixelData" not in ds  # headers only, pixel data is not read
        seen.append(str(ds.Modality))
        return ds.Modality == "MR"

    files = [samples["ct"], samples["mr"], samples["mr_rle"], samples["pdf"]]
    with run_storescp(tmp_path / "rx") as scp:
        sender = DicomSender("TESTSCU", "127.0.0.1", scp.port, scp.aet)
        report = sender.send(files, filter_callback=only_mr)
        received = set(scp.datasets())
    assert seen == ["CT", "MR", "MR", "DOC"]
    assert [r.source for r in report.results] == [str(samples["mr"]), str(samples["mr_rle"])]
    assert report.skipped == [str(samples["ct"]), str(samples["pdf"])]
    assert received == {r.sop_instance_uid for r in report.results}


def test_nothing_to_send_is_an_empty_report_not_an_error(
    tmp_path: Path, samples: dict[str, Path]
) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    # no peer is listening: nothing to send must not even connect
    sender = DicomSender("TESTSCU", "127.0.0.1", free_port(), "NOBODY")
    assert sender.send_dicom_from_path(empty) == []
    report = sender.last_report
    assert isinstance(report, SendReport)
    assert report.nothing_to_send and report.ok and report.associations == 0
    assert report.summary().startswith("nothing to send")

    filtered = sender.send([samples["ct"]], filter_callback=lambda ds: False)
    assert filtered.nothing_to_send and filtered.skipped == [str(samples["ct"])]


def test_dataset_built_in_memory_without_file_meta_is_sent(tmp_path: Path) -> None:
    ds = make_text_sr()
    del ds.file_meta
    with run_storescp(tmp_path / "rx") as scp:
        report = DicomSender("TESTSCU", "127.0.0.1", scp.port, scp.aet).send(ds)
        received = scp.datasets()
    assert report.results[0].status == 0
    assert report.results[0].transfer_syntax in (ELE, str(ImplicitVRLittleEndian))
    assert received[str(ds.SOPInstanceUID)].ContentSequence[0].TextValue == "No acute findings."


# -- failures of the peer ----------------------------------------------------------------------
def _series(folder: Path, n: int) -> list[Path]:
    base = dcmread(TEST_FILES / "CT_small.dcm")
    paths = []
    for i in range(n):
        base.SOPInstanceUID = base.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        base.InstanceNumber = i + 1
        path = folder / f"ct{i:03d}.dcm"
        path.parent.mkdir(parents=True, exist_ok=True)
        base.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def test_peer_killed_mid_send_and_restarted_gets_the_rest_exactly_once(tmp_path: Path) -> None:
    files = _series(tmp_path / "src", 30)
    out, mark, pid_file = tmp_path / "rx", tmp_path / "killed", tmp_path / "scp.pid"
    # After the 10th received instance storescp SIGKILLs itself (once) before it answers.
    kill = (
        f"sh -c 'if [ ! -e {mark} ] && [ $(ls {out} | wc -l) -ge 10 ]; then "
        f"touch {mark}; kill -9 $(cat {pid_file}); fi'"
    )
    with run_storescp(out, extra_args=["-xcr", kill, "-xs"]) as scp:
        pid_file.write_text(str(scp.process.pid))  # type: ignore[union-attr]

        def restart_when_dead() -> None:
            scp.process.wait()  # type: ignore[union-attr]
            time.sleep(0.3)  # the sender meets "connection refused" meanwhile
            scp.start()

        watcher = threading.Thread(target=restart_when_dead, daemon=True)
        watcher.start()
        sender = DicomSender("TESTSCU", "127.0.0.1", scp.port, scp.aet, backoff=0.2)
        report = sender.send(files)
        watcher.join(10)
        received = set(scp.datasets())

    assert mark.exists()
    assert [r.source for r in report.results] == [str(p) for p in files]  # each exactly once
    assert [r.status for r in report.results] == [0] * 30
    assert received == {r.sop_instance_uid for r in report.results}
    assert report.associations == 2
    assert report.retries >= 1
    resent = [r for r in report.results if r.attempts > 1]
    assert len(resent) == 1 and resent[0].attempts == 2  # only the unconfirmed one
    assert report.timings.backoff_s >= 0.2


def test_peer_aborting_every_association_raises_after_the_retries(tmp_path: Path) -> None:
    files = _series(tmp_path / "src", 3)
    # --abort-after: storescp receives each C-STORE, then aborts instead of answering.
    with run_storescp(tmp_path / "rx", extra_args=["--abort-after"]) as scp:
        sender = DicomSender("TESTSCU", "127.0.0.1", scp.port, scp.aet, max_retries=2, backoff=0.01)
        with pytest.raises(AssociationAbortedError, match="aborted the association") as info:
            sender.send(files)
        received = set(scp.datasets())
    report = info.value.report  # type: ignore[attr-defined]
    assert report is sender.last_report
    assert report.retries == 2 and report.associations == 3
    assert [r.source for r in report.results] == [str(p) for p in files]
    # #1 sent, aborted, sent once more (the default in-doubt resend), aborted again;
    # #2 sent, aborted - then the retries were used up; #3 never went out.
    assert [r.outcome for r in report.results] == [
        Outcome.IN_DOUBT,
        Outcome.IN_DOUBT,
        Outcome.NOT_SENT,
    ]
    assert [r.status for r in report.results] == [STATUS_IN_DOUBT, STATUS_IN_DOUBT, 0x0110]
    assert [r.attempts for r in report.results] == [2, 1, 0]
    assert [r.sent for r in report.results] == [True, True, False]
    assert all("aborted" in (r.error or "") for r in report.results)
    # storescp discards what it aborts on; the never-sent instance cannot be there
    assert received <= {r.sop_instance_uid for r in report.in_doubt}


# -- in doubt: sent, no response -----------------------------------------------------------------
def test_a_peer_that_stores_but_never_answers_is_reported_in_doubt(tmp_path: Path) -> None:
    """A pynetdicom SCP writes every C-STORE to disk and never answers. The report
    must say what the disk says: those instances reached the peer (in doubt - sent, no
    response), the last one never went out; nothing is "not sent" that was sent."""
    files = _series(tmp_path / "src", 3)
    uids = [_uid(p) for p in files]
    with ScriptedSCP(tmp_path / "rx", hang_stores=-1) as scp:
        sender = DicomSender(
            "TESTSCU", "127.0.0.1", scp.port, scp.ae_title, dimse_timeout=0.5, backoff=0.01
        )
        with pytest.raises(AssociationAbortedError, match="no response from") as info:
            sender.send(files)
        on_disk = scp.stored_uids()
    report = info.value.report  # type: ignore[attr-defined]
    # the default policy: an unanswered instance is sent once more; the retries
    # (max_retries=3, no progress) then ran out before the third instance
    assert on_disk == [uids[0], uids[0], uids[1], uids[1]]
    assert [r.outcome for r in report.results] == [
        Outcome.IN_DOUBT,
        Outcome.IN_DOUBT,
        Outcome.NOT_SENT,
    ]
    assert [r.attempts for r in report.results] == [2, 2, 0]
    assert [r.sent for r in report.results] == [True, True, False]
    assert [r.status for r in report.results] == [STATUS_IN_DOUBT, STATUS_IN_DOUBT, 0x0110]
    assert {r.sop_instance_uid for r in report.in_doubt} == set(on_disk)
    assert report.not_sent[0].sop_instance_uid == uids[2] and uids[2] not in on_disk
    doubt = report.in_doubt[0]
    assert doubt.error == (
        f"in doubt: sent, no response (no response from {scp.ae_title}@127.0.0.1:{scp.port} "
        f"within 0.5 s (association aborted)) - the peer may have stored it; C-STORE sent "
        f"2 time(s), 2 without a response"
    )
    assert (doubt.transfer_syntax, doubt.conversion) == (ELE, "none")
    assert doubt.status_dataset.ErrorComment == (
        "in doubt: sent, no response - the peer may have stored it"
    )
    assert report.counts() == {"stored": 0, "refused": 0, "in_doubt": 2, "not_sent": 1}
    assert "0 stored (0 with warnings), 0 refused, 2 in doubt (sent, no response), 1 not sent" in (
        report.summary()
    )
    assert report.associations == 4 and report.retries == 3
    with pytest.raises(
        StoreFailedError, match=r"3 of 3 instance\(s\) were not confirmed as stored"
    ):
        report.raise_for_failures()


def test_in_doubt_instances_are_not_resent_when_so_configured(tmp_path: Path) -> None:
    files = _series(tmp_path / "src", 3)
    with ScriptedSCP(tmp_path / "rx", hang_stores=-1) as scp:
        sender = DicomSender(
            "TESTSCU",
            "127.0.0.1",
            scp.port,
            scp.ae_title,
            dimse_timeout=0.5,
            max_retries=1,
            backoff=0.01,
            in_doubt_resends=0,
        )
        with pytest.raises(AssociationAbortedError) as info:
            sender.send(files)
        on_disk = scp.stored_uids()
    report = info.value.report  # type: ignore[attr-defined]
    assert on_disk == [_uid(files[0]), _uid(files[1])]  # each exactly once
    assert [(r.outcome, r.attempts) for r in report.results] == [
        (Outcome.IN_DOUBT, 1),
        (Outcome.IN_DOUBT, 1),
        (Outcome.NOT_SENT, 0),
    ]


def test_an_in_doubt_instance_resent_once_is_stored(tmp_path: Path) -> None:
    """Only the first C-STORE goes unanswered: the resend (same SOP Instance UID, which
    a PACS stores over the first copy) is confirmed; the report says stored, 2 attempts."""
    files = _series(tmp_path / "src", 3)
    uids = [_uid(p) for p in files]
    with ScriptedSCP(tmp_path / "rx", hang_stores=1) as scp:
        sender = DicomSender(
            "TESTSCU", "127.0.0.1", scp.port, scp.ae_title, dimse_timeout=0.5, backoff=0.01
        )
        statuses = sender.send_dicom_from_filelist(files)
        on_disk = scp.stored_uids()
    report = sender.last_report
    assert report is not None and report.ok
    assert [int(ds.Status) for ds in statuses] == [0, 0, 0]
    assert on_disk == [uids[0], uids[0], uids[1], uids[2]]
    assert [(r.outcome, r.attempts) for r in report.results] == [
        (Outcome.STORED, 2),
        (Outcome.STORED, 1),
        (Outcome.STORED, 1),
    ]
    assert report.retries == 1 and report.associations == 2


def test_the_send_command_shows_instances_in_doubt(tmp_path: Path, capsys) -> None:
    """``dcm-service send`` against storescp --abort-after (it takes each C-STORE and
    aborts instead of answering): text and JSON name the in-doubt instances apart from
    the one never sent, and the exit code is 1."""
    from dcm_processor_service.cli import main

    files = _series(tmp_path / "src", 3)
    store = ["--store", str(tmp_path / "store")]
    with run_storescp(tmp_path / "rx", extra_args=["--abort-after"]) as scp:
        add = ["peers", "add", "pacs", scp.aet, "127.0.0.1", str(scp.port), *store]
        assert main(add) == 0
        capsys.readouterr()
        assert main(["send", "pacs", *map(str, files), "--json", *store]) == 1
        result = json.loads(capsys.readouterr().out)
        assert main(["send", "pacs", str(files[0]), *store]) == 1
        text = capsys.readouterr()
    assert {k: result[k] for k in ("sent", "failed", "instances")} == {
        "sent": 0,
        "failed": 3,
        "instances": 3,
    }
    assert {k: result[k] for k in ("refused", "in_doubt", "not_sent")} == {
        "refused": 0,
        "in_doubt": 2,
        "not_sent": 1,
    }
    assert [(r["source"], r["outcome"], r["attempts"]) for r in result["not_stored"]] == [
        (str(files[0]), "in_doubt", 2),
        (str(files[1]), "in_doubt", 2),
        (str(files[2]), "not_sent", 0),
    ]
    assert "aborted the association" in result["error"]
    assert "sent 0 of 1 instance(s) to pacs; 1 in doubt (sent, no response)" in text.out
    assert f"  in doubt: {files[0]}: 0xCFFF in doubt: sent, no response" in text.err


def test_rejected_calling_ae_title_raises_with_the_reason(
    orthanc: OrthancPeer, samples: dict[str, Path]
) -> None:
    sender = DicomSender("INTRUDER", "127.0.0.1", orthanc.dicom_port, orthanc.aet, backoff=5)
    started = time.monotonic()
    with pytest.raises(AssociationRejectedError, match="calling AE title not recognized") as info:
        sender.send_dicom_from_path(samples["ct"])
    assert time.monotonic() - started < 2  # a permanent rejection is not retried
    assert (
        info.value.reason
        == "rejected-permanent: calling AE title not recognized (source: DICOM UL service-user)"
    )
    assert "'INTRUDER'" in str(info.value)
    assert info.value.report.results[0].status == 0x0110  # type: ignore[attr-defined]

    wrong_called = DicomSender("TESTSCU", "127.0.0.1", orthanc.dicom_port, "NOT-ORTHANC")
    with pytest.raises(AssociationRejectedError, match="called AE title not recognized"):
        wrong_called.send_echo()


def test_closed_port_raises_unreachable_after_the_retries(samples: dict[str, Path]) -> None:
    port = free_port()
    sender = DicomSender("TESTSCU", "127.0.0.1", port, "NOBODY", max_retries=2, backoff=0.01)
    with pytest.raises(PeerUnreachableError, match=f"refused.*port {port}") as info:
        sender.send_dicom_from_filelist([samples["ct"], samples["mr"]])
    report = info.value.report  # type: ignore[attr-defined]
    assert report.retries == 2 and report.associations == 0
    assert [r.status for r in report.results] == [0x0110, 0x0110]


def test_unknown_host_raises_unreachable_without_retrying(samples: dict[str, Path]) -> None:
    # A name glibc refuses before asking DNS, so the test stays on loopback.
    sender = DicomSender("TESTSCU", "no such host!", 104, "NOBODY", backoff=5)
    with pytest.raises(
        PeerUnreachableError, match="cannot resolve DICOM peer host 'no such host!'"
    ):
        sender.send(samples["ct"])
    with pytest.raises(PeerUnreachableError, match="cannot resolve"):
        sender.send_echo()


# -- speed-related behaviour -------------------------------------------------------------------
def test_parallel_associations_deliver_each_instance_once(
    orthanc: OrthancPeer, tmp_path: Path
) -> None:
    files = _series(tmp_path / "src", 24)
    sender = DicomSender("TESTSCU", "127.0.0.1", orthanc.dicom_port, orthanc.aet, parallel=3)
    report = sender.send(files)
    assert report.parallel == 3 and report.associations == 3
    assert [r.source for r in report.results] == [str(p) for p in files]
    assert [r.status for r in report.results] == [0] * 24
    for path in files:
        assert orthanc.instance_id(_uid(path)) is not None


def test_quickack_avoids_the_delayed_ack_wait_on_orthanc(
    orthanc: OrthancPeer, tmp_path: Path
) -> None:
    files = _series(tmp_path / "src", 8)
    slow = DicomSender(
        "TESTSCU", "127.0.0.1", orthanc.dicom_port, orthanc.aet, tcp_quickack=False
    ).send(files)
    fast = DicomSender("TESTSCU", "127.0.0.1", orthanc.dicom_port, orthanc.aet).send(files)
    assert slow.ok and fast.ok
    # Orthanc leaves Nagle on: each response waits for our delayed ACK (~40 ms) unless
    # we ACK at once.
    # (A difference, not a ratio: on a loaded machine Orthanc's own storage time
    # inflates both sends alike.)
    assert slow.timings.store_s > 8 * 0.02
    assert slow.timings.store_s - fast.timings.store_s > 8 * 0.02


# -- construction ------------------------------------------------------------------------------
def test_for_peer_uses_the_peer_record_and_the_calling_aet_setting(
    orthanc: OrthancPeer, monkeypatch: pytest.MonkeyPatch
) -> None:
    peer = Peer(name="pacs", aet=orthanc.aet, host="127.0.0.1", port=orthanc.dicom_port)
    sender = DicomSender.for_peer(peer)
    assert (sender.ae_title, sender.server_ae_title) == ("DCMPROCESSOR", "ORTHANC")
    assert (sender.server_host, sender.server_port, sender.enable_tls) == (
        "127.0.0.1",
        orthanc.dicom_port,
        False,
    )
    assert sender.send_echo().ok  # Orthanc knows DCMPROCESSOR

    monkeypatch.setenv("DCM_PROCESSOR_SERVICE_CALLING_AET", "TESTSCU")
    assert DicomSender.for_peer(peer).ae_title == "TESTSCU"
    assert DicomSender.for_peer(peer).send_echo().ok
    assert DicomSender.for_peer(peer, calling_ae_title="OTHER").ae_title == "OTHER"

    monkeypatch.setenv("DCM_PROCESSOR_SERVICE_CALLING_AET", "UNKNOWNAET")
    with pytest.raises(AssociationRejectedError, match="'UNKNOWNAET' is not allowed"):
        DicomSender.for_peer(peer, max_retries=0).send_echo()

    monkeypatch.setenv("DCM_PROCESSOR_SERVICE_CALLING_AET", "MUCH-TOO-LONG-AE-TITLE")
    with pytest.raises(InvalidInputError, match="DCM_PROCESSOR_SERVICE_CALLING_AET"):
        DicomSender.for_peer(peer)


def test_default_calling_ae_title_reads_both_spellings() -> None:
    assert default_calling_ae_title({}) == "DCMPROCESSOR"
    assert default_calling_ae_title({"DCM_PROCESSOR_SERVICE_CALLING_AET": "A"}) == "A"
    both = {"DCM_PROCESSOR_SERVICE_CALLING_AET": "A", "DCM-PROCESSOR-SERVICE-CALLING-AET": "B"}
    assert default_calling_ae_title(both) == "B"


def test_constructor_keeps_the_compatible_signature_and_defaults() -> None:
    sender = DicomSender("MYSCU", "pacs.example.org", 104)
    assert (sender.ae_title, sender.server_host, sender.server_port) == (
        "MYSCU",
        "pacs.example.org",
        104,
    )
    assert sender.server_ae_title == "ANY-SCP"
    assert sender.enable_tls is False and sender.last_report is None
    positional = DicomSender("A", "h", 104, "B", False, None, None, None, False, [CT], [ELE])
    assert positional.additional_sops == (CT,) and positional.additional_syntaxes == (ELE,)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"ae_title": ""}, "'ae_title'.*must not be empty"),
        ({"ae_title": "SEVENTEEN-CHARS-X"}, "'ae_title'.*16 characters"),
        ({"server_ae_title": "BACK\\SLASH"}, "'server_ae_title'.*without backslash"),
        ({"server_port": 0}, "'server_port'.*1-65535"),
        ({"server_port": "abc"}, "'server_port'.*integer"),
        ({"server_host": ""}, "'server_host'.*host name or IP"),
        ({"parallel": 0}, "'parallel'.*>= 1"),
        ({"max_retries": -1}, "'max_retries'.*>= 0"),
        ({"backoff": -0.5}, "'backoff'.*>= 0"),
        ({"max_pdu": 100}, "'max_pdu'.*4096"),
        ({"additional_sops": ["not-a-uid"]}, "'additional_sops'.*not a valid UID"),
        (
            {"enable_tls": True, "tls_ca_file": "/nonexistent/ca.pem"},
            "'tls_ca_file'.*does not exist",
        ),
    ],
)
def test_bad_arguments_are_rejected_at_construction(kwargs: dict[str, object], match: str) -> None:
    args: dict[str, object] = {"ae_title": "ME", "server_host": "127.0.0.1", "server_port": 104}
    args.update(kwargs)
    with pytest.raises(InvalidInputError, match=match):
        DicomSender(**args)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("source", "match"),
    [
        (42, "expected a path, a pydicom Dataset or an iterable"),
        (b"bytes", "bytes"),
    ],
)
def test_bad_send_sources_are_rejected(source: object, match: str) -> None:
    sender = DicomSender("ME", "127.0.0.1", free_port())
    with pytest.raises(InvalidInputError, match=match):
        sender.send(source)  # type: ignore[arg-type]


def test_a_bad_item_of_a_list_is_a_local_failure(samples: dict[str, Path]) -> None:
    """As in every reader of DICOM input (sources): the item is reported, the others
    are still read - here nothing is sendable, so no association is even opened."""
    sender = DicomSender("ME", "127.0.0.1", free_port())
    report = sender.send([3.5, b"raw"])  # type: ignore[list-item]
    assert [r.source for r in report.results] == ["3.5", "<item #1: bytes>"]
    assert "not a path or a pydicom Dataset (float)" in str(report.results[0].error)
    assert "raw bytes are not a source" in str(report.results[1].error)
    assert not report.ok and report.associations == 0


def test_compat_methods_reject_wrong_types_and_missing_paths(tmp_path: Path) -> None:
    sender = DicomSender("ME", "127.0.0.1", free_port())
    with pytest.raises(InvalidInputError, match="'path'.*no such file or folder"):
        sender.send_dicom_from_path(tmp_path / "nope")
    with pytest.raises(InvalidInputError, match=r"'datasets' item #1: str"):
        sender.send_dicom_from_dataset([make_text_sr(), "x.dcm"])  # type: ignore[list-item]
    with pytest.raises(InvalidInputError, match="no such DICOMDIR"):
        sender.send_dicom_from_dicomdir(tmp_path)
    with pytest.raises(InvalidInputError, match=r"'filelist' item #0"):
        sender.send_dicom_from_filelist([make_text_sr()])  # type: ignore[list-item]


@pytest.mark.parametrize(
    ("status", "category"),
    [
        (0x0000, StatusCategory.SUCCESS),
        (0xB000, StatusCategory.WARNING),
        (0xB007, StatusCategory.WARNING),
        (0x0122, StatusCategory.FAILURE),
        (0xA700, StatusCategory.FAILURE),
        (0xC123, StatusCategory.FAILURE),
        (0x1234, StatusCategory.FAILURE),  # unknown codes are not success
    ],
)
def test_status_categories(status: int, category: StatusCategory) -> None:
    assert StatusCategory.of(status) is category


def test_network_errors_belong_to_the_package_tree() -> None:
    for cls in (AssociationAbortedError, AssociationRejectedError, PeerUnreachableError):
        assert issubclass(cls, NetworkError)
    assert pydicom.__version__.startswith("3.")
