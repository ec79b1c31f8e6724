"""Query/retrieve over DIMSE with pynetdicom: C-FIND, C-GET, and C-MOVE to ourselves.

All three use the Study Root Query/Retrieve Information Model. :func:`c_find` returns
the peer's matches as datasets. :func:`c_get` retrieves a study or series on the same
association: it first asks (C-FIND, IMAGE level) which SOP classes the data holds, so it
proposes exactly those storage contexts in the SCP role (every transfer syntax: the
instances arrive as the peer stores them); :func:`c_move` is for peers that offer no
C-GET: it listens on ``move_port`` with our AE title while the peer sends the
instances there (the peer must know our AE title, host and port). Either way each
instance is written to a file as it arrives (File Meta Information + the dataset's bytes
as received, never decoded), so memory holds one instance at a time.

TLS peers: the same verified :class:`ssl.SSLContext` as the sender
(:func:`~dcm_processor_service.net.tls.build_client_ssl_context`).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filewriter import write_file_meta_info
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, build_role, evt
from pynetdicom.association import Association
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)

from .._errors import AssociationRejectedError, NetworkError, PeerUnreachableError
from ..store.records import Peer
from .tls import build_client_ssl_context

__all__ = ["c_find", "c_get", "c_move"]

logger = logging.getLogger(__name__)

#: Pending statuses of C-FIND / C-GET / C-MOVE responses
_PENDING = (0xFF00, 0xFF01)


def _label(peer: Peer) -> str:
    return f"{peer.name} ({peer.aet}@{peer.host}:{peer.port}{' TLS' if peer.tls else ''})"


def _associate(
    ae: AE, peer: Peer, ext_neg: list[Any] | None = None, handlers: list[Any] | None = None
) -> Association:
    tls_args = None
    if peer.tls:
        ctx = build_client_ssl_context(
            ca_file=peer.ca_file, cert_file=peer.cert_file, key_file=peer.key_file
        )
        tls_args = (ctx, peer.host)
    assoc = ae.associate(
        peer.host,
        peer.port,
        ae_title=peer.aet,
        ext_neg=ext_neg,
        tls_args=tls_args,
        evt_handlers=handlers,
    )
    if assoc.is_established:
        return assoc
    if assoc.is_rejected:
        raise AssociationRejectedError(
            f"peer {_label(peer)} rejected the query/retrieve association (is our AE title "
            f"{ae.ae_title!r} known to the peer?)",
            reason="rejected",
        )
    error = PeerUnreachableError(f"cannot open an association with peer {_label(peer)}")
    error.transient = True
    raise error


def _new_ae(calling_aet: str) -> AE:
    ae = AE(ae_title=calling_aet)
    ae.acse_timeout = 30
    ae.dimse_timeout = 120
    ae.network_timeout = 60
    return ae


def _check_final(status: Dataset | None, what: str, peer: Peer) -> None:
    if status is None or "Status" not in status:
        error = NetworkError(f"{what} on peer {_label(peer)}: no answer (association lost)")
        error.transient = True
        raise error
    code = int(status.Status)
    if code not in (0x0000, 0xB000) and code not in _PENDING:
        comment = status.get("ErrorComment")
        raise NetworkError(
            f"{what} on peer {_label(peer)} failed with status 0x{code:04X}"
            + (f": {comment}" if comment else "")
        )


def c_find(peer: Peer, identifier: Dataset, calling_aet: str) -> list[Dataset]:
    """C-FIND ``identifier`` (its ``QueryRetrieveLevel`` set) on ``peer``."""
    ae = _new_ae(calling_aet)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    assoc = _associate(ae, peer)
    matches: list[Dataset] = []
    try:
        final: Dataset | None = None
        for status, found in assoc.send_c_find(
            identifier, StudyRootQueryRetrieveInformationModelFind
        ):
            final = status
            if status is not None and int(status.get("Status", -1)) in _PENDING and found:
                matches.append(found)
        _check_final(final, "C-FIND", peer)
    finally:
        assoc.release()
    return matches


class _Receiver:
    """Writes each C-STORE it receives to ``folder`` (``NNNNNN.dcm``), as received."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.paths: list[Path] = []
        self.lock = threading.Lock()

    def __call__(self, event: Any) -> int:
        meta = FileMetaDataset(event.file_meta)
        with self.lock:
            path = self.folder / f"{len(self.paths):06d}.dcm"
            self.paths.append(path)
        with open(path, "wb") as fh:
            fh.write(b"\x00" * 128 + b"DICM")
            write_file_meta_info(fh, meta, enforce_standard=True)  # type: ignore[arg-type]
            fh.write(event.request.DataSet.getvalue())
        return 0x0000


def _retrieve_identifier(study_uid: str, series_uid: str | None) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = "SERIES" if series_uid else "STUDY"
    ds.StudyInstanceUID = study_uid
    if series_uid:
        ds.SeriesInstanceUID = series_uid
    return ds


def _sop_classes(peer: Peer, study_uid: str, series_uid: str | None, calling_aet: str) -> set[str]:
    query = Dataset()
    query.QueryRetrieveLevel = "IMAGE"
    query.StudyInstanceUID = study_uid
    query.SeriesInstanceUID = series_uid or ""
    query.SOPInstanceUID = ""
    query.SOPClassUID = ""
    return {str(m.SOPClassUID) for m in c_find(peer, query, calling_aet) if m.get("SOPClassUID")}


def _run_retrieve(
    sender: Callable[[Dataset], Iterable[tuple[Dataset | None, Dataset | None]]],
    identifier: Dataset,
    what: str,
    peer: Peer,
) -> None:
    final: Dataset | None = None
    for status, _ in sender(identifier):
        final = status
    _check_final(final, what, peer)
    failed = int(final.get("NumberOfFailedSuboperations", 0) or 0) if final else 0
    if failed:
        raise NetworkError(
            f"{what} on peer {_label(peer)}: {failed} instance(s) could not be sent to us"
        )


def c_get(
    peer: Peer, study_uid: str, series_uid: str | None, folder: Path, calling_aet: str
) -> list[Path]:
    """C-GET a study (or one of its series) into ``folder``; the files written."""
    folder.mkdir(parents=True, exist_ok=True)
    classes = _sop_classes(peer, study_uid, series_uid, calling_aet)
    if not classes:
        return []
    ae = _new_ae(calling_aet)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
    for sop_class in sorted(classes)[:127]:
        ae.add_requested_context(sop_class, ALL_TRANSFER_SYNTAXES)
    roles = [build_role(c, scp_role=True) for c in sorted(classes)[:127]]
    receiver = _Receiver(folder)
    assoc = _associate(ae, peer, ext_neg=roles, handlers=[(evt.EVT_C_STORE, receiver)])
    try:
        _run_retrieve(
            lambda ds: assoc.send_c_get(ds, StudyRootQueryRetrieveInformationModelGet),
            _retrieve_identifier(study_uid, series_uid),
            "C-GET",
            peer,
        )
    finally:
        assoc.release()
    return receiver.paths


def c_move(
    peer: Peer,
    study_uid: str,
    series_uid: str | None,
    folder: Path,
    calling_aet: str,
    move_port: int,
    listen_host: str = "127.0.0.1",
) -> list[Path]:
    """C-MOVE a study (or series) to ourselves: a storage SCP with AE title
    ``calling_aet`` listens on ``listen_host:move_port`` while the peer sends."""
    folder.mkdir(parents=True, exist_ok=True)
    receiver = _Receiver(folder)
    scp = _new_ae(calling_aet)
    for context in _storage_contexts():
        scp.add_supported_context(context, ALL_TRANSFER_SYNTAXES)
    server = scp.start_server(
        (listen_host, move_port), block=False, evt_handlers=[(evt.EVT_C_STORE, receiver)]
    )
    try:
        ae = _new_ae(calling_aet)
        ae.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
        assoc = _associate(ae, peer)
        try:
            _run_retrieve(
                lambda ds: assoc.send_c_move(
                    ds, calling_aet, StudyRootQueryRetrieveInformationModelMove
                ),
                _retrieve_identifier(study_uid, series_uid),
                "C-MOVE",
                peer,
            )
        finally:
            assoc.release()
    finally:
        if server is not None:
            server.shutdown()
    return receiver.paths


def _storage_contexts() -> list[str]:
    from pynetdicom import AllStoragePresentationContexts

    return [str(c.abstract_syntax) for c in AllStoragePresentationContexts]
