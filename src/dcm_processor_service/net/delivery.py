"""The one send loop: instances to one peer over associations, with retries.

:func:`deliver` splits the instances into the association groups the presentation
contexts need (:func:`~.contexts.plan_contexts`), sends each group with up to
``workers`` associations at once, and records every instance exactly once in a
:class:`SendLedger`:

* each instance goes as stored when the peer accepted its syntax, else converted
  (:func:`~.contexts.choose_route`, :func:`~.instances.build_payload`), else it is
  recorded not sent;
* transient failures (refused, reset, aborted, timeouts) reopen the association after
  an exponential backoff (:class:`RetryPolicy`) and resume after the last confirmed
  instance; permanent ones stop the send;
* in-doubt policy: an instance whose C-STORE went out in full but got no response may
  have been stored; it is sent again ``in_doubt_resends`` times (a C-STORE of the same
  SOP Instance UID replaces the earlier copy) and, if it never gets an answer, recorded
  :attr:`~.results.Outcome.IN_DOUBT` - never "not sent";
* every association is released (or aborted after an error) in ``finally``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import NamedTuple

from .._errors import NetworkError
from .association import Association
from .contexts import Route, choose_route, plan_contexts, uid_name
from .dimse import DimseStatus, FileRegion, PayloadError
from .failures import is_in_doubt, is_transient
from .instances import Instance, build_payload
from .pdu import ProposedContext
from .results import (
    STATUS_CANNOT_CONVERT,
    STATUS_IN_DOUBT,
    STATUS_NOT_SENT,
    InstanceResult,
    Outcome,
    SendReport,
    StatusCategory,
)

__all__ = ["Connect", "RetryPolicy", "SendLedger", "deliver"]

logger = logging.getLogger(__name__)

#: Opens an association proposing the given contexts (raises a NetworkError).
Connect = Callable[[Sequence[ProposedContext]], Association]


class RetryPolicy(NamedTuple):
    """How a send copes with failures: transient failures are retried ``max_retries``
    times in a row, waiting ``backoff * 2**n`` seconds (at most ``backoff_max``); an
    instance whose C-STORE went out without a response is sent again
    ``in_doubt_resends`` times (0: reported in doubt at once)."""

    max_retries: int
    backoff: float
    backoff_max: float
    in_doubt_resends: int

    def delay(self, failures: int) -> float:
        """Seconds to wait after ``failures`` failed attempts in a row."""
        return min(self.backoff * (2**failures), self.backoff_max)


class _Unanswered(NamedTuple):
    """An instance whose C-STORE went out in full without a response (so far)."""

    times: int
    reason: str
    route: Route


class SendLedger:
    """The bookkeeping of one send, shared by its worker threads: every instance's
    result (each recorded exactly once), the C-STOREs that went out unanswered, and the
    report's counters and timings."""

    def __init__(self, peer: str, parallel: int) -> None:
        self.peer = peer
        self.lock = threading.Lock()
        self.results: dict[int, InstanceResult] = {}
        self.unanswered: dict[int, _Unanswered] = {}  # by instance index
        self.report = SendReport(peer=peer, parallel=parallel)

    def finish(self, total_s: float) -> SendReport:
        """The report, with every result recorded so far in input order."""
        self.report.results = [self.results[i] for i in sorted(self.results)]
        self.report.timings.total_s = total_s
        return self.report

    def add_time(self, name: str, seconds: float) -> None:
        """Add ``seconds`` to the timing ``name`` (a :class:`~.results.SendTimings` field)."""
        with self.lock:
            setattr(self.report.timings, name, getattr(self.report.timings, name) + seconds)

    def record(self, inst: Instance, result: InstanceResult) -> None:
        """Record the result of ``inst`` (a second result for it is a bug)."""
        with self.lock:
            if inst.index in self.results:  # never report an instance twice
                raise AssertionError(f"instance {inst.source} recorded twice")
            self.results[inst.index] = result
        if result.ok:
            logger.debug(
                "stored %s (%s) status 0x%04X", inst.source, inst.sop_instance_uid, result.status
            )
        elif result.outcome is Outcome.IN_DOUBT:
            logger.warning("%s %s", inst.source, result.error)
        else:
            logger.warning("%s not stored: %s", inst.source, result.error)

    def record_local(self, inst: Instance, status: int, reason: str) -> None:
        """Record ``inst`` as not sent, for a local reason (``status`` a local code)."""
        self.record(inst, _local_result(inst, status, Outcome.NOT_SENT, reason, reason))

    def note_unanswered(self, inst: Instance, route: Route, exc: BaseException) -> None:
        """Note that a C-STORE of ``inst`` went out in full and got no response."""
        with self.lock:
            before = self.unanswered.get(inst.index)
            times = 1 + (before.times if before else 0)
            self.unanswered[inst.index] = _Unanswered(times, str(exc), route)
        logger.warning(
            "%s (%s): C-STORE sent, no response (%s) - the peer may have stored it",
            inst.source,
            inst.sop_instance_uid,
            exc,
        )

    def settle_in_doubt(self, inst: Instance, resends: int) -> bool:
        """After a failed C-STORE of ``inst``: when it went out unanswered more than
        ``resends`` times, record it in doubt and return True; else False (it is to be
        sent again)."""
        with self.lock:
            doubt = self.unanswered.get(inst.index)
        if doubt is None or doubt.times <= resends:
            return False
        self._record_in_doubt(inst, doubt)
        return True

    def record_unfinished(self, inst: Instance, reason: str) -> None:
        """Record an instance the send gave up on: in doubt when one of its C-STOREs
        went out unanswered, else not sent (``reason`` says why the send stopped)."""
        with self.lock:
            doubt = self.unanswered.get(inst.index)
        if doubt is None:
            self.record_local(inst, STATUS_NOT_SENT, f"not sent: {reason}")
        else:
            self._record_in_doubt(inst, doubt)

    def _record_in_doubt(self, inst: Instance, doubt: _Unanswered) -> None:
        error = (
            f"in doubt: sent, no response ({doubt.reason}) - the peer may have stored it; "
            f"C-STORE sent {inst.attempts} time(s), {doubt.times} without a response"
        )
        comment = "in doubt: sent, no response - the peer may have stored it"
        result = _local_result(
            inst, STATUS_IN_DOUBT, Outcome.IN_DOUBT, error, comment, route=doubt.route
        )
        self.record(inst, result)


def _local_result(
    inst: Instance,
    status: int,
    outcome: Outcome,
    error: str,
    comment: str,
    *,
    route: Route | None = None,
) -> InstanceResult:
    """The result of an instance the peer gave no status for (not sent, or in doubt
    when it went out on ``route``): ``status`` is a local code."""
    return InstanceResult(
        source=inst.source,
        sop_instance_uid=inst.sop_instance_uid,
        sop_class_uid=inst.sop_class_uid,
        status=status,
        category=StatusCategory.FAILURE,
        outcome=outcome,
        error=error,
        sent=route is not None,
        transfer_syntax=route.transfer_syntax if route else None,
        conversion=route.conversion if route else None,
        attempts=inst.attempts,
        status_dataset=DimseStatus.of(status, error_comment=comment),
    )


def deliver(
    ledger: SendLedger,
    instances: list[Instance],
    *,
    workers: int,
    connect: Connect,
    policy: RetryPolicy,
    extra_sop_classes: Sequence[str] = (),
    extra_syntaxes: Sequence[str] = (),
) -> NetworkError | None:
    """Send ``instances`` over as many associations as their contexts need (one
    after the other), each with up to ``workers`` associations at once; record every
    instance in ``ledger``. Returns the network failure that left instances unsent
    after the retries (they are recorded not sent, or in doubt), else None."""
    sendable: list[Instance] = []
    for inst in instances:
        if inst.sendable:
            sendable.append(inst)
        else:
            ledger.record_local(inst, STATUS_CANNOT_CONVERT, f"not sent: {inst.error}")
    if not sendable:
        return None
    plan = plan_contexts(
        ((i.sop_class_uid, i.transfer_syntax) for i in sendable),  # type: ignore[misc]
        extra_sop_classes=extra_sop_classes,
        extra_syntaxes=extra_syntaxes,
    )
    fatal: NetworkError | None = None
    for group, contexts in enumerate(plan.groups):
        items = [i for i in sendable if plan.group_of.get(i.sop_class_uid or "") == group]
        if not items:
            continue
        if fatal is None:
            if len(plan.groups) > 1:
                logger.info(
                    "association group %d/%d: %d contexts, %d instance(s)",
                    group + 1,
                    len(plan.groups),
                    len(contexts),
                    len(items),
                )
            fatal = _send_group(ledger, contexts, items, workers, connect, policy)
        if fatal is not None:
            for inst in items:
                if inst.index not in ledger.results:
                    ledger.record_unfinished(inst, str(fatal))
    return fatal


def _send_group(
    ledger: SendLedger,
    contexts: Sequence[ProposedContext],
    items: list[Instance],
    workers: int,
    connect: Connect,
    policy: RetryPolicy,
) -> NetworkError | None:
    """Send ``items`` on associations proposing ``contexts``: ``workers`` threads
    (the caller's own when one) take instances from one queue; a transient failure
    reopens the association after a backoff and resumes with the unconfirmed
    instance; an instance sent unanswered more than ``policy.in_doubt_resends``
    times is recorded in doubt instead of being sent again."""
    queue: deque[Instance] = deque(items)
    stop = threading.Event()
    errors: list[BaseException] = []

    def backoff_or_give_up(exc: NetworkError, failures: int) -> bool:
        if stop.is_set() or not is_transient(exc) or failures >= policy.max_retries:
            return False
        delay = policy.delay(failures)
        with ledger.lock:
            ledger.report.retries += 1
        logger.warning("%s - retry %d/%d in %.2f s", exc, failures + 1, policy.max_retries, delay)
        t = time.perf_counter()
        stop.wait(delay)
        ledger.add_time("backoff_s", time.perf_counter() - t)
        return not stop.is_set()

    def fail(exc: BaseException) -> None:
        with ledger.lock:
            errors.append(exc)
        stop.set()

    def worker() -> None:
        failures = 0  # consecutive failed attempts without progress
        while not stop.is_set():
            with ledger.lock:
                if not queue:
                    return
            t = time.perf_counter()
            try:
                assoc = connect(contexts)
            except NetworkError as exc:
                ledger.add_time("connect_s", time.perf_counter() - t)
                if backoff_or_give_up(exc, failures):
                    failures += 1
                    continue
                fail(exc)
                return
            ledger.add_time("connect_s", time.perf_counter() - t)
            with ledger.lock:
                ledger.report.associations += 1
            try:
                while not stop.is_set() and assoc.is_open:
                    with ledger.lock:
                        inst = queue.popleft() if queue else None
                    if inst is None:
                        break
                    try:
                        _store_one(ledger, assoc, inst)
                    except BaseException:
                        if not ledger.settle_in_doubt(inst, policy.in_doubt_resends):
                            with ledger.lock:
                                queue.appendleft(inst)  # not confirmed: resend later
                        raise
                    failures = 0
            except NetworkError as exc:
                with ledger.lock:
                    finished = not queue
                if finished:  # the failure is in the results already: nothing to retry
                    logger.debug("association with %s ended: %s", ledger.peer, exc)
                    return
                if backoff_or_give_up(exc, failures):
                    failures += 1
                    continue
                fail(exc)
                return
            finally:
                if assoc.is_open:
                    t = time.perf_counter()
                    assoc.release()
                    ledger.add_time("release_s", time.perf_counter() - t)
                else:
                    assoc.abort()
                with ledger.lock:
                    ledger.report.bytes_sent += assoc.bytes_sent

    def guarded() -> None:
        try:
            worker()
        except BaseException as exc:  # a bug or KeyboardInterrupt: stop everyone
            fail(exc)

    n = max(1, min(workers, len(items)))
    if n == 1:
        worker()  # on the caller's thread: bugs propagate with their traceback
    else:
        threads = [
            threading.Thread(target=guarded, name=f"dicom-send-{i}", daemon=True) for i in range(n)
        ]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
    for exc in errors:
        if not isinstance(exc, NetworkError):
            raise exc
    if not queue:
        if errors:
            logger.warning("an association failed (%s) but every instance was delivered", errors[0])
        return None
    if errors:
        return errors[0]  # type: ignore[return-value]
    return NetworkError(f"{len(queue)} instance(s) were not sent to {ledger.peer}")


def _store_one(ledger: SendLedger, assoc: Association, inst: Instance) -> None:
    """C-STORE ``inst`` on ``assoc`` and record the peer's answer; a local failure
    (no accepted context, conversion, unreadable file) is recorded as not sent.
    Network failures raise (noted as unanswered when the request went out)."""
    assert inst.sop_class_uid and inst.sop_instance_uid and inst.transfer_syntax
    route = choose_route(
        inst.sop_class_uid,
        inst.transfer_syntax,
        assoc.contexts.values(),
        has_pixel_data=inst.has_pixel_data,
    )
    if not route.sendable:
        ledger.record_local(inst, route.status, route.reason or "not sent")
        return
    t = time.perf_counter()
    try:
        payload = build_payload(inst, route)  # the file region itself when sent as stored
    except Exception as exc:  # decoder/encoder errors of this one instance
        logger.debug("conversion of %s failed", inst.source, exc_info=True)
        target = uid_name(route.transfer_syntax or "")
        ledger.record_local(
            inst,
            STATUS_CANNOT_CONVERT,
            f"not sent: cannot convert from {uid_name(inst.transfer_syntax)} to "
            f"{target}: {type(exc).__name__}: {exc}",
        )
        return
    if not isinstance(payload, FileRegion):
        ledger.add_time("convert_s", time.perf_counter() - t)
    inst.attempts += 1
    t = time.perf_counter()
    try:
        rsp = assoc.c_store(
            route.context_id,  # type: ignore[arg-type]
            inst.sop_class_uid,
            inst.sop_instance_uid,
            payload,
        )
    except PayloadError as exc:
        ledger.record_local(inst, STATUS_CANNOT_CONVERT, f"not sent: {exc}")
        return
    except NetworkError as exc:
        if is_in_doubt(exc):
            ledger.note_unanswered(inst, route, exc)
        raise
    elapsed = time.perf_counter() - t
    ledger.add_time("store_s", elapsed)
    status = rsp.status
    category = StatusCategory.of(status)
    comment = rsp.error_comment
    error = None
    if category is not StatusCategory.SUCCESS:
        error = f"peer answered status 0x{status:04X} ({category.value})" + (
            f": {comment}" if comment else ""
        )
        if inst.index in ledger.unanswered:
            error += "; an earlier C-STORE of it got no response"
    ledger.record(
        inst,
        InstanceResult(
            source=inst.source,
            sop_instance_uid=inst.sop_instance_uid,
            sop_class_uid=inst.sop_class_uid,
            status=status,
            category=category,
            outcome=(Outcome.REFUSED if category is StatusCategory.FAILURE else Outcome.STORED),
            error=error,
            sent=True,
            transfer_syntax=route.transfer_syntax,
            conversion=route.conversion,
            attempts=inst.attempts,
            duration_s=elapsed,
            status_dataset=rsp,
        ),
    )
