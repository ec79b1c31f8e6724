"""Conformance of our DICOM upper layer (``net/``, requestor side, PS3.8).

The peer is a real pynetdicom SCP on an ephemeral loopback port, told to misbehave
(:class:`support.ul_peers.ScriptedSCP`). Where pynetdicom cannot be made to misbehave
the way a test needs - trickling bytes, rejecting with an arbitrary reason, colliding
on release, staying silent, aborting mid-stream - the peer is a raw-socket peer written
in the test (:class:`support.ul_peers.RawPeer`); each such test says so. Nothing is
mocked: every byte crosses a real TCP connection.

Timeouts are deadlines for a whole step (the A-ASSOCIATE-AC, a DIMSE response, the
release, a block we send); the trickling peers check that a peer sending one byte at a
time cannot stretch them.
"""

from __future__ import annotations

import struct
import time
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from dcm_processor_service._errors import (
    AssociationAbortedError,
    AssociationRejectedError,
    PeerUnreachableError,
)
from dcm_processor_service.net.association import Association, State, Timeouts
from dcm_processor_service.net.failures import is_in_doubt, is_transient
from dcm_processor_service.net.pdu import ProposedContext
from dcm_processor_service.net.results import Outcome
from dcm_processor_service.net.sender import DicomSender
from support.peers import TEST_FILES, copy_with_new_uid, make_text_sr
from support.ul_peers import (
    A_RELEASE_RP,
    A_RELEASE_RQ,
    ChoppingProxy,
    RawConnection,
    RawPeer,
    ScriptedSCP,
    associate_ac,
    pdu_types,
    response_to,
    timed,
)

pytestmark = pytest.mark.network

VERIFICATION = "1.2.840.10008.1.1"
CT = "1.2.840.10008.5.1.4.1.1.2"
ELE = str(ExplicitVRLittleEndian)
IMPLICIT = "1.2.840.10008.1.2"
CONTEXTS = [ProposedContext(1, VERIFICATION, (IMPLICIT,)), ProposedContext(3, CT, (ELE,))]
RELEASE_RQ = b"\x05\x00\x00\x00\x00\x04\x00\x00\x00\x00"  # PS3.8 9.3.6
RELEASE_RP = b"\x06\x00\x00\x00\x00\x04\x00\x00\x00\x00"  # PS3.8 9.3.7


def _abort_pdu(source: int, reason: int) -> bytes:
    """A-ABORT (PS3.8 9.3.8)."""
    return struct.pack(">BBIBBBB", 0x07, 0, 4, 0, 0, source, reason)


def _open(port: int, **timeouts: float) -> Association:
    return Association.request(
        "127.0.0.1",
        port,
        calling_ae_title="CONFORMANCE",
        called_ae_title="PEER",
        contexts=CONTEXTS,
        timeouts=Timeouts(**timeouts),
    )


def _encoded(ds: Dataset) -> bytes:
    """``ds`` encoded in Explicit VR Little Endian (a dataset, no File Meta)."""
    out = DicomBytesIO()
    out.is_little_endian, out.is_implicit_VR = True, False
    write_dataset(out, ds)
    return out.getvalue()


def _ct(rows: int = 512, frames: int = 1) -> Dataset:
    """CT_small's header with ``frames`` frames of ``rows``² random int16 pixels."""
    ds = dcmread(TEST_FILES / "CT_small.dcm")
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.Rows = ds.Columns = rows
    ds.NumberOfFrames = frames
    pixels = np.random.default_rng(11).integers(-1000, 3000, (frames, rows, rows), np.int16)
    ds.PixelData = pixels.tobytes()
    return ds


def _after_meta(path: Path) -> bytes:
    """The encoded dataset of a DICOM file (the bytes after its File Meta Information)."""
    meta = dcmread(path, stop_before_pixels=True).file_meta
    return path.read_bytes()[132 + 12 + int(meta.FileMetaInformationGroupLength) :]


def _release_when_asked(conn: RawConnection) -> None:
    pdu = conn.read_pdu()
    if pdu is not None and pdu[0] == A_RELEASE_RQ:
        conn.send(RELEASE_RP)


# -- P-DATA fragmentation ------------------------------------------------------------------
@pytest.mark.parametrize("max_pdu", [4096, 64])
def test_p_data_fragments_respect_the_peers_max_pdu(tmp_path: Path, max_pdu: int) -> None:
    """PS3.8 9.3.5 / D.1: no P-DATA-TF we send is longer than the peer's Maximum Length
    Received - command sets included - and what the peer reassembles is what we sent."""
    ct = _ct(rows=128)
    ct_file = tmp_path / "ct.dcm"
    ct.save_as(ct_file, enforce_file_format=True)
    sr = make_text_sr("Fragmented, then reassembled.")
    with ScriptedSCP(tmp_path / "rx", max_pdu=max_pdu) as scp:
        sender = DicomSender("CONFORMANCE", "127.0.0.1", scp.port, scp.ae_title)
        report = sender.send([ct_file, sr])  # a file streamed as stored, a dataset in memory
        lengths = scp.pdata_received()
        stored = list(scp.stored)
    assert [r.outcome for r in report.results] == [Outcome.STORED] * 2
    payload = len(_after_meta(ct_file)) + len(_encoded(sr))
    assert len(lengths) >= payload // (max_pdu - 6)  # really fragmented
    assert max(lengths) <= max_pdu
    assert [s.sop_instance_uid for s in stored] == [ct.SOPInstanceUID, sr.SOPInstanceUID]
    # value by value: every element the peer decoded equals the one we sent
    for sent, got in ((ct, dcmread(stored[0].path)), (sr, dcmread(stored[1].path))):
        assert sorted(got.keys()) == sorted(sent.keys())
        for element in sent:
            assert got[element.tag].value == element.value, element.keyword
    assert _after_meta(stored[0].path) == _after_meta(ct_file)  # byte for byte


def test_responses_in_many_small_pdus_are_reassembled(tmp_path: Path) -> None:
    """We announce a Maximum Length Received of 32 bytes: pynetdicom then cuts every
    response command set into PDVs of 26 bytes, one per P-DATA-TF."""
    ds = _ct(rows=16)
    with ScriptedSCP(tmp_path / "rx", store_status=0xB000) as scp:
        assoc = Association.request(
            "127.0.0.1",
            scp.port,
            calling_ae_title="CONFORMANCE",
            called_ae_title="PEER",
            contexts=CONTEXTS,
            max_pdu=32,
        )
        echo = assoc.c_echo()
        store = assoc.c_store(3, CT, ds.SOPInstanceUID, _encoded(ds))
        released = assoc.release()
        sent = [n for name, n in scp.pdus_sent if name == "P_DATA_TF"]
    assert int(echo.Status) == 0x0000
    assert int(store.Status) == 0xB000  # the status of the right response, reassembled
    assert released and assoc.state is State.IDLE
    assert len(sent) >= 8 and max(sent) <= 32


def test_responses_split_over_many_tcp_segments_are_reassembled(tmp_path: Path) -> None:
    """A proxy (written in the test) relays pynetdicom's PDUs 3 bytes per TCP write."""
    files = [copy_with_new_uid(TEST_FILES / "CT_small.dcm", tmp_path / f"s{i}") for i in range(3)]
    with ScriptedSCP(tmp_path / "rx") as scp, ChoppingProxy(scp.port, chunk=3) as proxy:
        sender = DicomSender("CONFORMANCE", "127.0.0.1", proxy.port, scp.ae_title)
        echo = sender.send_echo()
        report = sender.send(files)
        stored = scp.stored_uids()
    assert echo.ok
    assert [r.outcome for r in report.results] == [Outcome.STORED] * 3
    assert stored == [r.sop_instance_uid for r in report.results]
    # A-ASSOCIATE-AC (2x), 4 responses and 2 A-RELEASE-RP, each in pieces of 3 bytes
    assert proxy.writes > 2 * 150 // 3


# -- A-ABORT -------------------------------------------------------------------------------
@pytest.mark.parametrize("then", ["closes", "keeps reading"])
def test_a_abort_while_a_dataset_is_streaming(tmp_path: Path, then: str) -> None:
    """Raw peer (pynetdicom's A-ABORT goes out only after it read what was buffered):
    after 5 P-DATA-TF PDUs of a 32 MiB C-STORE it sends A-ABORT and either closes at
    once or, as PS3.8 Sta13 has it, keeps reading until we close. We stop sending,
    name the abort reason, and report the instance as not sent (it never went out in
    full), without waiting for a timeout."""
    after_abort: list[int] = []

    def script(conn: RawConnection) -> None:
        conn.accept_association()
        for _ in range(5):
            conn.read_pdu()
        conn.send(_abort_pdu(source=2, reason=6))
        if then == "keeps reading":
            before = len(conn.received)
            conn.note("closed" if conn.closed_within(10) else "still open")
            after_abort.append(sum(len(p) for _, p in conn.received[before:]))

    big = tmp_path / "big.dcm"
    _ct(rows=2048, frames=4).save_as(big, enforce_file_format=True)
    with RawPeer(script) as peer, timed() as elapsed:
        sender = DicomSender("CONFORMANCE", "127.0.0.1", peer.port, "RAW", max_retries=0)
        with pytest.raises(AssociationAbortedError) as info:
            sender.send(big)
    assert str(info.value).endswith(
        "aborted the association while we were sending: invalid PDU parameter value "
        "(abort source: the peer's DICOM UL provider)"
    )
    result = info.value.report.results[0]  # type: ignore[attr-defined]
    assert (result.outcome, result.sent, result.attempts) == (Outcome.NOT_SENT, False, 1)
    assert elapsed[0] < 5
    if then == "keeps reading":
        assert [what for _, what in peer.connections[0].events] == ["closed"]
        assert after_abort[0] <= 4 * 1024 * 1024 + 64 * 1024  # at most one block more


def test_a_store_aborted_while_streaming_is_sent_again_in_full(tmp_path: Path) -> None:
    """Raw peer: the first association is aborted mid-dataset, the second one takes
    the instance and answers. The instance is stored, once, on the second attempt."""
    received: list[int] = []

    def script(conn: RawConnection) -> None:
        first = len(received) == 0
        received.append(0)
        if first:
            conn.accept_association()
            for _ in range(3):
                conn.read_pdu()
            conn.send(_abort_pdu(source=0, reason=0))
            return
        conn.accept_association()
        ctx, command, size = conn.read_message()
        received[-1] = size
        conn.send(response_to(ctx, command))
        _release_when_asked(conn)

    ds = _ct(rows=1024, frames=2)
    with RawPeer(script) as peer:
        sender = DicomSender("CONFORMANCE", "127.0.0.1", peer.port, "RAW", backoff=0.01)
        report = sender.send(ds)
    result = report.results[0]
    assert (result.outcome, result.attempts, report.retries) == (Outcome.STORED, 2, 1)
    assert received == [0, len(_encoded(ds))]


# -- release --------------------------------------------------------------------------------
def test_release_collision_is_answered_as_the_requestor() -> None:
    """Raw peer (pynetdicom cannot be timed to collide): our A-RELEASE-RQ crosses the
    peer's. PS3.8 9.2.3 / AR-8 -> Sta9 -> AR-9 -> Sta11: the requestor answers with
    A-RELEASE-RP, waits for the peer's A-RELEASE-RP, and only then closes."""

    def script(conn: RawConnection) -> None:
        conn.accept_association()
        assert conn.read_pdu() == (A_RELEASE_RQ, RELEASE_RQ)
        conn.send(RELEASE_RQ)  # the collision
        assert conn.read_pdu() == (A_RELEASE_RP, RELEASE_RP)
        # the requestor must wait for our A-RELEASE-RP, not close
        conn.note("closed early" if conn.closed_within(0.5) else "waited")
        conn.send(RELEASE_RP)
        conn.note("closed" if conn.closed_within(5) else "left open")

    with RawPeer(script) as peer:
        assoc = _open(peer.port)
        with timed() as elapsed:
            released = assoc.release()
    conn = peer.connections[0]
    assert pdu_types(conn.received) == ["A-ASSOCIATE-RQ", "A-RELEASE-RQ", "A-RELEASE-RP"]
    assert [what for _, what in conn.events] == ["waited", "closed"]
    assert elapsed[0] >= 0.5
    assert released is True
    assert assoc.state is State.IDLE and not assoc.is_open


def test_release_collision_without_the_peers_answer_ends_at_the_acse_timeout() -> None:
    """Raw peer: it collides, takes our A-RELEASE-RP, and never sends its own."""

    def script(conn: RawConnection) -> None:
        conn.accept_association()
        conn.read_pdu()
        conn.send(RELEASE_RQ)
        conn.read_pdu()
        conn.closed_within(10)

    with RawPeer(script) as peer:
        assoc = _open(peer.port, acse=1.0)
        with timed() as elapsed:
            released = assoc.release()
    assert released is False and assoc.state is State.IDLE
    assert pdu_types(peer.connections[0].received)[-1] == "A-ABORT"
    assert 1.0 <= elapsed[0] < 2.5


def test_late_p_data_during_release_is_ignored(tmp_path: Path) -> None:
    """Raw peer: a P-DATA-TF arrives after our A-RELEASE-RQ (PS3.8 AR-7), then the
    A-RELEASE-RP."""

    def script(conn: RawConnection) -> None:
        conn.accept_association()
        conn.read_pdu()
        conn.send(b"\x04\x00\x00\x00\x00\x08\x00\x00\x00\x04\x01\x03\x00\x00")
        conn.send(RELEASE_RP)

    with RawPeer(script) as peer:
        assert _open(peer.port).release() is True


# -- DIMSE timeout --------------------------------------------------------------------------
def test_dimse_timeout_aborts_and_leaves_the_store_in_doubt(tmp_path: Path) -> None:
    """pynetdicom stores the instance to disk and never answers."""
    ds = _ct(rows=64)
    with ScriptedSCP(tmp_path / "rx", hang_stores=-1) as scp:
        assoc = _open(scp.port, dimse=1.0)
        with timed() as elapsed, pytest.raises(AssociationAbortedError) as info:
            assoc.c_store(3, CT, ds.SOPInstanceUID, _encoded(ds))
        stored = scp.stored_uids()
        time.sleep(0.2)  # let pynetdicom's reader see our A-ABORT
        received = [name for name, _ in scp.pdus_received]
    assert str(info.value) == f"no response from {assoc.label} within 1.0 s (association aborted)"
    assert is_in_doubt(info.value) and is_transient(info.value)
    assert 1.0 <= elapsed[0] < 2.5
    assert not assoc.is_open
    assert stored == [ds.SOPInstanceUID]  # the peer has it although it never said so
    assert received[-1] == "A_ABORT_RQ"


def test_dimse_timeout_on_c_echo(tmp_path: Path) -> None:
    with ScriptedSCP(tmp_path / "rx", hang_echo=True) as scp:
        assoc = _open(scp.port, dimse=0.5)
        with timed() as elapsed, pytest.raises(AssociationAbortedError, match="within 0.5 s"):
            assoc.c_echo()
    assert 0.5 <= elapsed[0] < 2.0


# -- association rejection --------------------------------------------------------------------
_SOURCES = {
    1: "DICOM UL service-user",
    2: "DICOM UL service-provider (ACSE)",
    3: "DICOM UL service-provider (presentation)",
}
# PS3.8 Table 9-21: every defined (source, reason) and one reserved reason
_REASONS = [
    (1, 1, "no reason given"),
    (1, 2, "application context name not supported"),
    (1, 3, "calling AE title not recognized"),
    (1, 7, "called AE title not recognized"),
    (2, 1, "no reason given"),
    (2, 2, "protocol version not supported"),
    (3, 1, "temporary congestion"),
    (3, 2, "local limit exceeded"),
    (1, 5, "reason code 5"),
]


@pytest.mark.parametrize("result", [1, 2], ids=["permanent", "transient"])
@pytest.mark.parametrize(("source", "reason", "words"), _REASONS)
def test_every_rejection_reason_is_named(result: int, source: int, reason: int, words: str) -> None:
    """Raw peer (pynetdicom's acceptor only produces four of these combinations)."""
    rj = struct.pack(">BBIBBBB", 0x03, 0, 4, 0, result, source, reason)

    def script(conn: RawConnection) -> None:
        conn.read_pdu()
        conn.send(rj)

    kind = {1: "rejected-permanent", 2: "rejected-transient"}[result]
    with RawPeer(script) as peer, pytest.raises(AssociationRejectedError) as info:
        _open(peer.port)
    assert info.value.reason == f"{kind}: {words} (source: {_SOURCES[source]})"
    assert f"association rejected by DICOM peer PEER@127.0.0.1:{peer.port}: {words}" in str(
        info.value
    )
    assert is_transient(info.value) is (result == 2)


@pytest.mark.parametrize(("result", "connections"), [(1, 1), (2, 3)])
def test_the_sender_retries_only_transient_rejections(result: int, connections: int) -> None:
    """Raw peer: rejects every association (temporary congestion), permanently or
    transiently; only the transient rejection is retried."""

    def script(conn: RawConnection) -> None:
        conn.read_pdu()
        conn.send(struct.pack(">BBIBBBB", 0x03, 0, 4, 0, result, 3, 1))

    sr = make_text_sr()
    with RawPeer(script) as peer:
        sender = DicomSender(
            "CONFORMANCE", "127.0.0.1", peer.port, "RAW", max_retries=2, backoff=0.01
        )
        with pytest.raises(AssociationRejectedError, match="temporary congestion") as info:
            sender.send(sr)
        assert len(peer.connections) == connections
    assert info.value.report.results[0].outcome is Outcome.NOT_SENT  # type: ignore[attr-defined]


def test_pynetdicom_rejections_are_named(tmp_path: Path) -> None:
    """The rejections a real pynetdicom acceptor sends: unknown called AE title
    (permanent) and too many associations (transient, local limit exceeded)."""
    with ScriptedSCP(tmp_path / "rx", require_called_aet=True, max_associations=1) as scp:
        with pytest.raises(AssociationRejectedError) as wrong_aet:
            _open(scp.port)  # called AE title PEER, the SCP is SCRIPTED
        held = Association.request(
            "127.0.0.1",
            scp.port,
            calling_ae_title="CONFORMANCE",
            called_ae_title=scp.ae_title,
            contexts=CONTEXTS,
        )
        try:
            with pytest.raises(AssociationRejectedError) as busy:
                Association.request(
                    "127.0.0.1",
                    scp.port,
                    calling_ae_title="CONFORMANCE",
                    called_ae_title=scp.ae_title,
                    contexts=CONTEXTS,
                )
        finally:
            assert held.release()
    assert wrong_aet.value.reason == (
        "rejected-permanent: called AE title not recognized (source: DICOM UL service-user)"
    )
    assert not is_transient(wrong_aet.value)
    assert busy.value.reason == (
        "rejected-transient: local limit exceeded "
        "(source: DICOM UL service-provider (presentation))"
    )
    assert is_transient(busy.value)


def test_a_abort_instead_of_an_association_answer() -> None:
    """Raw peer: answers the A-ASSOCIATE-RQ with A-ABORT."""

    def script(conn: RawConnection) -> None:
        conn.read_pdu()
        conn.send(_abort_pdu(source=2, reason=2))

    with RawPeer(script) as peer, pytest.raises(AssociationAbortedError) as info:
        _open(peer.port)
    assert str(info.value).endswith(
        "aborted the association request: unexpected PDU (abort source: the peer's DICOM "
        "UL provider)"
    )


# -- silent and trickling peers: every wait is bounded -------------------------------------
def test_a_peer_that_never_answers_the_association_request() -> None:
    """Raw peer: accepts the connection, reads the A-ASSOCIATE-RQ, says nothing."""

    def script(conn: RawConnection) -> None:
        conn.read_pdu()
        conn.closed_within(10)

    never = "did not answer the association request"
    with (
        RawPeer(script) as peer,
        timed() as elapsed,
        pytest.raises(PeerUnreachableError, match=never),
    ):
        _open(peer.port, acse=1.0)
    assert 1.0 <= elapsed[0] < 2.5


def test_a_trickled_associate_ac_is_bounded_by_the_acse_timeout() -> None:
    """Raw peer: sends a valid A-ASSOCIATE-AC one byte every 0.1 s (about 20 s in all).
    The ACSE timeout is a deadline for the whole answer, not for each byte."""

    def script(conn: RawConnection) -> None:
        rq = conn.read_pdu()
        assert rq is not None
        conn.trickle(associate_ac(rq[1], 16382), 0.1)

    with RawPeer(script) as peer, timed() as elapsed, pytest.raises(PeerUnreachableError) as info:
        _open(peer.port, acse=1.0)
    assert str(info.value) == (
        f"DICOM peer PEER@127.0.0.1:{peer.port} did not answer the association request within 1.0 s"
    )
    assert 1.0 <= elapsed[0] < 2.5


def test_a_trickled_response_is_bounded_by_the_dimse_timeout() -> None:
    """Raw peer: takes the C-STORE, then sends its C-STORE-RSP one byte every 0.1 s."""

    def script(conn: RawConnection) -> None:
        conn.accept_association()
        ctx, command, _ = conn.read_message()
        conn.trickle(response_to(ctx, command), 0.1)

    ds = _ct(rows=64)
    with RawPeer(script) as peer:
        assoc = _open(peer.port, dimse=1.0)
        with timed() as elapsed, pytest.raises(AssociationAbortedError) as info:
            assoc.c_store(3, CT, ds.SOPInstanceUID, _encoded(ds))
    assert "no response from" in str(info.value) and "within 1.0 s" in str(info.value)
    assert is_in_doubt(info.value)
    assert 1.0 <= elapsed[0] < 2.5


def test_a_trickled_release_answer_is_bounded_by_the_acse_timeout() -> None:
    """Raw peer: sends its A-RELEASE-RP one byte every 0.3 s (3 s in all)."""

    def script(conn: RawConnection) -> None:
        conn.accept_association()
        conn.read_pdu()
        conn.trickle(RELEASE_RP, 0.3)

    with RawPeer(script) as peer:
        assoc = _open(peer.port, acse=1.0)
        with timed() as elapsed:
            released = assoc.release()
    assert released is False and not assoc.is_open
    assert 1.0 <= elapsed[0] < 2.5


def test_a_peer_reading_slowly_is_bounded_by_the_network_timeout() -> None:
    """Raw peer: reads 256 KiB every 0.1 s (2.5 MiB/s, 13 s for 32 MiB) - each of our
    sends makes progress, which must not restart the clock: every block of up to
    4 MiB has to be taken within the network timeout."""

    def script(conn: RawConnection) -> None:
        conn.accept_association()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not conn.stop.wait(0.1):
            got = 0
            while got < 256 * 1024:
                chunk = conn.sock.recv(256 * 1024 - got)
                if not chunk:
                    return
                got += len(chunk)

    ds = _ct(rows=2048, frames=4)  # 32 MiB
    with RawPeer(script) as peer:
        assoc = _open(peer.port, network=1.0, dimse=1.0)
        with timed() as elapsed, pytest.raises(AssociationAbortedError) as info:
            assoc.c_store(3, CT, ds.SOPInstanceUID, _encoded(ds))
    assert elapsed[0] < 4.0
    assert str(info.value) == (
        f"{assoc.label} did not take the data we sent within 1.0 s (association aborted)"
    )
    assert not is_in_doubt(info.value)  # the request never went out in full


def test_the_sender_gives_up_on_a_trickling_peer_within_its_retries() -> None:
    """Raw peer: trickles every A-ASSOCIATE-AC. The whole send is bounded by
    (1 + max_retries) x acse_timeout + the backoff."""

    def script(conn: RawConnection) -> None:
        rq = conn.read_pdu()
        assert rq is not None
        conn.trickle(associate_ac(rq[1], 16382), 0.1)

    with RawPeer(script) as peer, timed() as elapsed:
        sender = DicomSender(
            "CONFORMANCE",
            "127.0.0.1",
            peer.port,
            "RAW",
            acse_timeout=0.5,
            max_retries=2,
            backoff=0.05,
        )
        with pytest.raises(PeerUnreachableError, match="within 0.5 s"):
            sender.send(make_text_sr())
    assert len(peer.connections) == 3
    assert elapsed[0] < 3 * 0.5 + 0.15 + 1.0
