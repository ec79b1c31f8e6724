"""Sending to a DICOMweb peer by STOW-RS: :class:`StowSender`.

The same methods and results as the DIMSE :class:`~dcm_processor_service.DicomSender`
(``send`` -> :class:`~dcm_processor_service.SendReport`, the original's
``send_dicom_from_*``, ``send_echo`` -> :class:`~dcm_processor_service.EchoResult`), so a
service does not care which kind of peer it sends to. How a send goes:

1. **scan** - the inputs are reduced to instances exactly as for DIMSE
   (:func:`~dcm_processor_service.net.instances.gather`: File Meta Information only);
2. **batch** - instances are grouped into requests of at most ``batch_instances``
   instances and ``batch_bytes`` bytes (one instance larger than that goes alone);
3. **post** - each batch is one ``POST {url}/studies`` with a ``multipart/related`` body
   of exact length (:class:`~.multipart.MultipartWriter`): files go as stored, read in
   1 MiB blocks, so memory does not grow with the study; a dataset (or a file without
   File Meta Information) is encoded as a Part 10 file when its batch is sent;
4. **read the answer** - the STOW-RS response's Referenced SOP Sequence (stored, with a
   Warning Reason when there is one) and Failed SOP Sequence (refused, with its Failure
   Reason as the status) become one :class:`~dcm_processor_service.InstanceResult` per
   instance; an instance the answer does not mention is *in doubt*;
5. **retry** - transient failures (refused connection, dropped connection, timeouts,
   HTTP 408/429/5xx) are retried after ``backoff * 2**n`` seconds, ``max_retries``
   times in a row without progress; a batch that went out in full without an answer
   is in doubt and is sent again ``in_doubt_resends`` times (STOW-RS of the same SOP
   Instance UID replaces the earlier copy). Batches the peer answered are never sent
   again: a retry resumes with the first unanswered batch.

What stops the send (the peer unreachable after the retries, credentials refused,
TLS) raises with the partial report as ``exc.report`` (also in :attr:`last_report`):
every instance is in it exactly once, as stored, refused, in doubt or not sent, so
sending ``[r.source for r in report.failed]`` again resumes the send.
"""

from __future__ import annotations

import io
import logging
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import httpx
from pydicom import dcmread, dcmwrite
from pydicom.dataset import Dataset

from ..._errors import DicomInputError, InvalidInputError, NetworkError
from ...store.records import Peer
from ...store.web_endpoint import DicomWebEndpoint
from ..delivery import RetryPolicy, SendLedger
from ..dimse import status_dataset
from ..instances import FilterCallback, Instance, SourceLike
from ..options import check_count, check_seconds
from ..results import (
    STATUS_CANNOT_CONVERT,
    STATUS_IN_DOUBT,
    STATUS_NOT_SENT,
    EchoResult,
    InstanceResult,
    Outcome,
    SendReport,
    StatusCategory,
)
from ..send_api import SendMethods
from .auth import open_client
from .errors import raise_for_status, transport_error
from .multipart import MultipartWriter

__all__ = ["StowSender"]

logger = logging.getLogger(__name__)

#: STOW-RS response attributes (PS3.18 Table 10.5.3-1)
_REFERENCED_SOP_SEQUENCE = "00081199"
_FAILED_SOP_SEQUENCE = "00081198"
_SOP_INSTANCE_UID = "00081155"
_FAILURE_REASON = "00081197"
_WARNING_REASON = "00081196"


class StowSender(SendMethods):
    """Send DICOM instances to a DICOMweb peer by STOW-RS.

    ``endpoint``: the peer's :class:`~dcm_processor_service.store.DicomWebEndpoint`.
    Tuning (keyword-only): ``batch_instances``/``batch_bytes`` (the most instances and
    bytes per request), ``max_retries``/``backoff``/``backoff_max``/``in_doubt_resends``
    (as for :class:`~dcm_processor_service.DicomSender`), ``connect_timeout``,
    ``read_timeout`` (the longest wait for the answer to a batch), ``write_timeout``
    (the longest wait for the peer to take the next block of a request).
    """

    def __init__(
        self,
        endpoint: DicomWebEndpoint,
        *,
        name: str | None = None,
        batch_instances: int = 50,
        batch_bytes: int = 64 << 20,
        max_retries: int = 3,
        backoff: float = 0.5,
        backoff_max: float = 10.0,
        in_doubt_resends: int = 1,
        connect_timeout: float | None = 10.0,
        read_timeout: float | None = 300.0,
        write_timeout: float | None = 60.0,
    ) -> None:
        if not isinstance(endpoint, DicomWebEndpoint):
            raise InvalidInputError(
                f"invalid 'endpoint' value {endpoint!r} - must be a DicomWebEndpoint"
            )
        self.endpoint = endpoint
        self.name = name
        self.batch_instances = check_count(batch_instances, "batch_instances", minimum=1)
        self.batch_bytes = check_count(batch_bytes, "batch_bytes", minimum=1)
        self.policy = RetryPolicy(
            check_count(max_retries, "max_retries", minimum=0),
            check_seconds(backoff, "backoff"),
            check_seconds(backoff_max, "backoff_max"),
            check_count(in_doubt_resends, "in_doubt_resends", minimum=0),
        )
        self.timeouts = {
            "connect_timeout": connect_timeout,
            "read_timeout": read_timeout,
            "write_timeout": write_timeout,
        }
        #: The report of the last send (also set when the send raised).
        self.last_report: SendReport | None = None

    @classmethod
    def for_peer(cls, peer: Peer, **options: Any) -> StowSender:
        """A sender for a peer record with a DICOMweb endpoint (``options``: the
        keyword-only tuning parameters)."""
        if not isinstance(peer, Peer) or peer.dicomweb is None:
            raise InvalidInputError(
                f"invalid 'peer' value {peer!r:.120} - must be a Peer with a DICOMweb endpoint"
            )
        return cls(peer.dicomweb, name=peer.name, **options)

    @property
    def peer_label(self) -> str:
        """``name (URL)`` (or the URL) as used in messages."""
        url = self.endpoint.url
        return f"{self.name} ({url})" if self.name else url

    def __repr__(self) -> str:
        return f"StowSender({self.peer_label})"

    def with_overrides(self, **overrides: Any) -> StowSender:
        """The original's per-call overrides (host, port, AE title, TLS) are DIMSE
        settings: a DICOMweb sender accepts none of them (``None`` values are ignored)."""
        given = sorted(k for k, v in overrides.items() if v is not None)
        if given:
            raise InvalidInputError(
                f"cannot override {', '.join(given)} for DICOMweb peer {self.peer_label} - "
                "these are DIMSE connection settings; change the peer's DICOMweb endpoint instead"
            )
        return self

    def _client(self) -> httpx.Client:
        return open_client(self.endpoint, **self.timeouts)

    # -- sending --------------------------------------------------------------------------
    def send(
        self,
        source: SourceLike,
        *,
        filter_callback: FilterCallback | None = None,
        parallel: int | None = None,
    ) -> SendReport:
        """Send ``source`` by STOW-RS and return the :class:`SendReport` (``source`` and
        ``filter_callback`` as for :meth:`DicomSender.send`; ``parallel`` is accepted for
        the same signature: batches go one after the other).

        Raises, after the retries, :class:`PeerUnreachableError`,
        :class:`AssociationAbortedError` (connection lost / no answer), :class:`TLSError`,
        :class:`PeerAuthError` (401/403) or :class:`NetworkError` (another HTTP error),
        each with ``.report``.
        """
        if parallel is not None:
            check_count(parallel, "parallel", minimum=1)

        def run(ledger: SendLedger, instances: list[Instance]) -> NetworkError | None:
            sendable = []
            for inst in instances:
                if inst.sendable:
                    sendable.append(inst)
                else:
                    ledger.record_local(inst, STATUS_CANNOT_CONVERT, inst.error or "not readable")
            return self._send_batches(ledger, sendable) if sendable else None

        return self._send_with(source, filter_callback, 1, run)

    def _batches(self, instances: list[Instance]) -> Iterator[list[Instance]]:
        batch: list[Instance] = []
        size = 0
        for inst in instances:
            inst_size = inst.path.stat().st_size if inst.path is not None else 0
            if batch and (
                len(batch) >= self.batch_instances or size + inst_size > self.batch_bytes
            ):
                yield batch
                batch, size = [], 0
            batch.append(inst)
            size += inst_size
        if batch:
            yield batch

    def _send_batches(self, ledger: SendLedger, instances: list[Instance]) -> NetworkError | None:
        batches = list(self._batches(instances))
        t = time.perf_counter()
        client = self._client()
        ledger.add_time("connect_s", time.perf_counter() - t)
        try:
            for number, batch in enumerate(batches):
                fatal = self._send_batch(client, ledger, batch)
                if fatal is not None:
                    for later in batches[number + 1 :]:
                        for inst in later:
                            ledger.record_local(
                                inst, STATUS_NOT_SENT, f"not sent: the send stopped ({fatal})"
                            )
                    return fatal
        finally:
            client.close()
        return None

    def _body(self, ledger: SendLedger, batch: list[Instance]) -> MultipartWriter:
        body = MultipartWriter()
        t = time.perf_counter()
        for inst in batch:
            part = _part(inst)
            if isinstance(part, bytes):
                body.add_bytes(part)
            else:
                body.add_file(part)
        ledger.add_time("convert_s", time.perf_counter() - t)
        return body

    def _send_batch(
        self, client: httpx.Client, ledger: SendLedger, batch: list[Instance]
    ) -> NetworkError | None:
        """POST one batch (with the retries) and record each of its instances; the
        error that ends the send, if any."""
        failures = 0
        resends = 0
        went_out = False  # the whole body reached the peer at least once
        while True:
            try:
                body = self._body(ledger, batch)
            except Exception as exc:  # an instance cannot be read or encoded: the others go
                return self._drop_unreadable(client, ledger, batch, exc)
            for inst in batch:
                inst.attempts += 1
            t = time.perf_counter()
            error: NetworkError | None = None
            try:
                rsp = client.post(
                    "/studies",
                    content=body,
                    headers={
                        "Content-Type": body.content_type,
                        "Content-Length": str(body.content_length),
                        "Accept": "application/dicom+json",
                    },
                )
                ledger.report.bytes_sent += body.content_length
                ledger.report.associations += 1
                raise_for_status(rsp, self.peer_label, f"STOW-RS of {len(batch)} instance(s)")
            except httpx.TransportError as exc:
                went_out = went_out or body.finished
                error = transport_error(exc, self.peer_label, in_doubt=body.finished)
            except DicomInputError as exc:  # a file changed while its request went out
                for inst in batch:
                    ledger.record_local(
                        inst, STATUS_NOT_SENT, f"not sent: request abandoned: {exc}"
                    )
                return None
            except NetworkError as exc:
                if rsp.status_code in (400, 409) and _stow_json(rsp) is not None:
                    pass  # per-instance failures in the answer: read below
                else:
                    error = exc
            elapsed = time.perf_counter() - t
            ledger.add_time("store_s", elapsed)
            if error is None:
                self._record_answer(ledger, batch, rsp, elapsed)
                return None
            retry = error.transient and (
                resends < self.policy.in_doubt_resends
                if error.in_doubt
                else failures < self.policy.max_retries
            )
            if not retry:
                self._record_unanswered(ledger, batch, error, went_out)
                return error
            if error.in_doubt:
                resends += 1
            else:
                failures += 1
            delay = self.policy.delay(failures)
            logger.warning("%s - retrying in %.1f s", error, delay)
            ledger.report.retries += 1
            time.sleep(delay)
            ledger.add_time("backoff_s", delay)

    def _drop_unreadable(
        self, client: httpx.Client, ledger: SendLedger, batch: list[Instance], exc: Exception
    ) -> NetworkError | None:
        """Building the body of ``batch`` failed: record the instances that cannot be
        read or encoded as not sent, and send the others."""
        good = []
        for inst in batch:
            try:
                _part(inst)
                good.append(inst)
            except Exception as bad:
                ledger.record_local(inst, STATUS_CANNOT_CONVERT, f"not sent: cannot read it: {bad}")
        logger.debug("a batch could not be built (%s); sending the others", exc)
        if len(good) == len(batch):  # no single culprit: never loop
            for inst in good:
                ledger.record_local(inst, STATUS_CANNOT_CONVERT, f"not sent: {exc}")
            return None
        return self._send_batch(client, ledger, good) if good else None

    def _record_unanswered(
        self, ledger: SendLedger, batch: list[Instance], error: NetworkError, went_out: bool
    ) -> None:
        for inst in batch:
            if went_out:
                reason = (
                    "in doubt: its STOW-RS request went out in full but no answer came "
                    f"({error}) - the peer may have stored it"
                )
                status, outcome = STATUS_IN_DOUBT, Outcome.IN_DOUBT
            else:
                reason = f"not sent: {error}"
                status, outcome = STATUS_NOT_SENT, Outcome.NOT_SENT
            ledger.record(inst, _result(inst, status, outcome, reason, sent=went_out))

    def _record_answer(
        self,
        ledger: SendLedger,
        batch: list[Instance],
        rsp: httpx.Response,
        elapsed: float,
    ) -> None:
        answer = _stow_json(rsp) or {}
        stored = {
            uid: _first_int(item, _WARNING_REASON)
            for item in _items(answer, _REFERENCED_SOP_SEQUENCE)
            if (uid := _first_str(item, _SOP_INSTANCE_UID))
        }
        refused = {
            uid: _first_int(item, _FAILURE_REASON)
            for item in _items(answer, _FAILED_SOP_SEQUENCE)
            if (uid := _first_str(item, _SOP_INSTANCE_UID))
        }
        for inst in batch:
            uid = inst.sop_instance_uid
            share = elapsed / len(batch)
            error: str | None
            if uid in refused:
                reason = refused[uid]
                status = reason if reason is not None else STATUS_CANNOT_CONVERT
                error = f"peer refused it: STOW-RS failure reason 0x{status:04X}"
                ledger.record(
                    inst, _result(inst, status, Outcome.REFUSED, error, sent=True, duration=share)
                )
            elif uid in stored:
                warning = stored[uid]
                status = warning if warning is not None else 0
                error = None if warning is None else f"stored with warning reason 0x{warning:04X}"
                ledger.record(
                    inst, _result(inst, status, Outcome.STORED, error, sent=True, duration=share)
                )
            elif rsp.status_code == 200 and not answer:
                # success and no body: the peer says every instance was stored
                ledger.record(
                    inst, _result(inst, 0, Outcome.STORED, None, sent=True, duration=share)
                )
            else:
                error = (
                    "in doubt: the peer's STOW-RS answer (HTTP "
                    f"{rsp.status_code}) does not mention it - the peer may have stored it"
                )
                ledger.record(
                    inst, _result(inst, STATUS_IN_DOUBT, Outcome.IN_DOUBT, error, sent=True)
                )

    # -- the QIDO-RS probe --------------------------------------------------------------------
    def send_echo(self, **kwargs: Any) -> EchoResult:
        """Check the peer the DICOMweb way: a QIDO-RS ``GET {url}/studies?limit=1``.

        Returns a truthy :class:`EchoResult` (``status`` 0) when the peer answered 200 or
        204; raises :class:`PeerUnreachableError`, :class:`TLSError` or
        :class:`PeerAuthError` like :meth:`send` (no retries: it is a health check); any
        other HTTP answer gives a falsy result with ``error`` set.
        """
        self.with_overrides(**kwargs)
        t0 = time.perf_counter()
        with self._client() as client:
            t1 = time.perf_counter()
            try:
                rsp = client.get(
                    "/studies", params={"limit": "1"}, headers={"Accept": "application/dicom+json"}
                )
            except httpx.TransportError as exc:
                raise transport_error(exc, self.peer_label, in_doubt=False) from None
            latency = time.perf_counter() - t1
        ok = rsp.status_code in (200, 204)
        error = None
        if not ok:
            try:
                raise_for_status(rsp, self.peer_label, "a QIDO-RS probe")
            except NetworkError as exc:
                if rsp.status_code in (401, 403):
                    raise
                error = str(exc)
            error = error or f"peer answered HTTP {rsp.status_code}"
        result = EchoResult(
            ok,
            0 if ok else rsp.status_code,
            latency,
            time.perf_counter() - t0,
            self.peer_label,
            error,
        )
        logger.info(
            "QIDO-RS probe %s: %s in %.1f ms",
            self.peer_label,
            "ok" if ok else error,
            latency * 1000,
        )
        return result


# -- helpers ----------------------------------------------------------------------------------
def _part(inst: Instance) -> Path | bytes:
    """What goes into the body for ``inst``: a Part 10 file as stored (checked to be
    there), or the Part 10 encoding of a dataset (or of a file without File Meta)."""
    if inst.path is not None and inst.offset is not None:
        inst.path.stat()
        return inst.path
    ds: Dataset = inst.dataset if inst.dataset is not None else dcmread(inst.path, force=True)  # type: ignore[arg-type]
    out = io.BytesIO()
    dcmwrite(out, ds, enforce_file_format=True)
    return out.getvalue()


def _result(
    inst: Instance,
    status: int,
    outcome: Outcome,
    error: str | None,
    *,
    sent: bool,
    duration: float = 0.0,
) -> InstanceResult:
    category = (
        StatusCategory.FAILURE
        if outcome is not Outcome.STORED
        else (StatusCategory.SUCCESS if status == 0 else StatusCategory.WARNING)
    )
    return InstanceResult(
        source=inst.source,
        sop_instance_uid=inst.sop_instance_uid,
        sop_class_uid=inst.sop_class_uid,
        status=status,
        category=category,
        outcome=outcome,
        error=error,
        sent=sent,
        transfer_syntax=inst.transfer_syntax,
        conversion="none",
        attempts=inst.attempts,
        duration_s=duration,
        status_dataset=status_dataset(status, error_comment=error),
    )


def _stow_json(rsp: httpx.Response) -> dict[str, Any] | None:
    """The answer's DICOM JSON dataset, or None when it has none."""
    if not rsp.content:
        return None
    try:
        data = rsp.json()
    except ValueError:
        return None
    if isinstance(data, list) and len(data) == 1:
        data = data[0]
    return data if isinstance(data, dict) else None


def _items(answer: Mapping[str, Any], tag: str) -> list[Mapping[str, Any]]:
    value = (answer.get(tag) or {}).get("Value") or []
    return [item for item in value if isinstance(item, Mapping)]


def _first(item: Mapping[str, Any], tag: str) -> Any:
    values = (item.get(tag) or {}).get("Value") or [None]
    return values[0]


def _first_str(item: Mapping[str, Any], tag: str) -> str | None:
    value = _first(item, tag)
    return str(value) if value else None


def _first_int(item: Mapping[str, Any], tag: str) -> int | None:
    value = _first(item, tag)
    try:
        return int(value) if value is not None else None
    except (TypeError, ValueError):
        return None
