"""The original's ``send_dicom_from_*`` methods, shared by every sender.

:class:`SendMethods` implements the platform's four methods (SPEC §2.8) on top of a
sender's :meth:`send` and :meth:`with_overrides`, so the DIMSE sender
(:class:`~.sender.DicomSender`) and the STOW-RS sender
(:class:`~.dicomweb.stow.StowSender`) check their arguments and answer them the same way.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from .._errors import InvalidInputError, NetworkError
from ..sources import is_dataset
from .delivery import SendLedger
from .instances import DicomdirFile, FilterCallback, Instance, SourceLike, gather
from .results import SendReport

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

__all__ = ["Deliver", "SendMethods"]

logger = logging.getLogger(__name__)

#: Sends the scanned instances, recording each in the ledger; the error that ended it.
Deliver = Callable[[SendLedger, list[Instance]], NetworkError | None]


class SendMethods:
    """``send_dicom_from_path/filelist/dataset/dicomdir`` for a sender class that
    defines ``send(source, *, filter_callback)``, ``with_overrides(**overrides)`` and a
    ``last_report`` attribute."""

    last_report: SendReport | None

    @property
    def peer_label(self) -> str:
        """The peer as named in messages and reports."""
        raise NotImplementedError

    def send(
        self, source: SourceLike, *, filter_callback: FilterCallback | None = None
    ) -> SendReport:
        raise NotImplementedError

    def with_overrides(self, **overrides: Any) -> Any:
        raise NotImplementedError

    def _send_with(
        self, source: SourceLike, filter_callback: FilterCallback | None, workers: int, run: Deliver
    ) -> SendReport:
        """The frame of every send: scan ``source`` into instances, ``run`` them, keep
        the report in :attr:`last_report` (also when ``run`` raised), log its summary,
        and raise the error that ended the send with the report attached."""
        t0 = time.perf_counter()
        instances, skipped = gather(source, filter_callback)
        ledger = SendLedger(self.peer_label, workers)
        ledger.report.skipped = skipped
        ledger.report.timings.scan_s = time.perf_counter() - t0
        try:
            fatal = run(ledger, instances)
        finally:
            report = ledger.finish(time.perf_counter() - t0)
            self.last_report = report
        if report.nothing_to_send:
            logger.info("nothing to send to %s (%d skipped)", self.peer_label, len(skipped))
        else:
            logger.log(logging.INFO if report.ok else logging.WARNING, "%s", report.summary())
        if fatal is not None:
            fatal.report = report
            raise fatal
        return report

    def _compat_send(
        self, source: SourceLike, filter_callback: FilterCallback | None, overrides: dict[str, Any]
    ) -> list[Dataset]:
        sender = self.with_overrides(**overrides)
        try:
            return sender.send(source, filter_callback=filter_callback).status_datasets()
        finally:
            self.last_report = sender.last_report

    def send_dicom_from_path(
        self,
        path: str | os.PathLike[str],
        filter_callback: FilterCallback | None = None,
        **kwargs: Any,
    ) -> list[Dataset]:
        """Send a file, or every file under a folder (recursively); return one status
        dataset per instance. A DICOMDIR met in the folder is skipped. ``kwargs``: the
        per-call connection overrides of :meth:`with_overrides`.

        Raises:
            InvalidInputError: ``path`` does not exist.
            NetworkError: after the retries, instances are left unsent because the
                connection failed (DIMSE: :class:`PeerUnreachableError`,
                :class:`AssociationRejectedError`, :class:`AssociationAbortedError`,
                :class:`TLSError`; each with ``.report``, see the sender's ``send``).
        """
        from pathlib import Path

        if not isinstance(path, (str, os.PathLike)) or not Path(path).exists():
            raise InvalidInputError(f"invalid 'path' value {path!r} - no such file or folder")
        return self._compat_send(path, filter_callback, kwargs)

    def send_dicom_from_filelist(
        self,
        filelist: Iterable[str | os.PathLike[str]],
        filter_callback: FilterCallback | None = None,
        **kwargs: Any,
    ) -> list[Dataset]:
        """Send the listed files; a missing or unreadable file gets a failure status and
        the others are still sent. ``kwargs``: per-call connection overrides.

        Raises:
            InvalidInputError: an item of ``filelist`` is not a path.
            NetworkError: after the retries, instances are left unsent because the
                connection failed (DIMSE: :class:`PeerUnreachableError`,
                :class:`AssociationRejectedError`, :class:`AssociationAbortedError`,
                :class:`TLSError`; each with ``.report``, see the sender's ``send``).
        """
        files = [filelist] if isinstance(filelist, (str, os.PathLike)) else list(filelist)
        for i, item in enumerate(files):
            if not isinstance(item, (str, os.PathLike)):
                raise InvalidInputError(
                    f"invalid 'filelist' item #{i} {item!r} - must be a file path"
                )
        return self._compat_send(files, filter_callback, kwargs)

    def send_dicom_from_dataset(
        self,
        datasets: Dataset | Iterable[Dataset],
        filter_callback: FilterCallback | None = None,
        **kwargs: Any,
    ) -> list[Dataset]:
        """Send pydicom datasets (one, or an iterable); reported as ``"dataset #i"``.
        ``kwargs``: per-call connection overrides.

        Raises:
            InvalidInputError: an item is not a pydicom ``Dataset``.
            NetworkError: after the retries, instances are left unsent because the
                connection failed (DIMSE: :class:`PeerUnreachableError`,
                :class:`AssociationRejectedError`, :class:`AssociationAbortedError`,
                :class:`TLSError`; each with ``.report``, see the sender's ``send``).
        """
        items = [datasets] if is_dataset(datasets) else list(datasets)
        for i, item in enumerate(items):
            if not is_dataset(item):
                raise InvalidInputError(
                    f"invalid 'datasets' item #{i}: {type(item).__name__} - must be a pydicom Dataset"
                )
        return self._compat_send(items, filter_callback, kwargs)

    def send_dicom_from_dicomdir(
        self,
        filename: str | os.PathLike[str],
        filter_callback: FilterCallback | None = None,
        **kwargs: Any,
    ) -> list[Dataset]:
        """Send the instances a DICOMDIR references (``filename`` may also be the folder
        holding the DICOMDIR). ``kwargs``: per-call connection overrides.

        Raises:
            InvalidInputError: there is no DICOMDIR at ``filename``.
            NetworkError: after the retries, instances are left unsent because the
                connection failed (DIMSE: :class:`PeerUnreachableError`,
                :class:`AssociationRejectedError`, :class:`AssociationAbortedError`,
                :class:`TLSError`; each with ``.report``, see the sender's ``send``).
        """
        from pathlib import Path

        path = Path(filename)
        if path.is_dir():
            path = path / "DICOMDIR"
        if not path.is_file():
            raise InvalidInputError(f"invalid 'filename' value {filename!r} - no such DICOMDIR")
        return self._compat_send(DicomdirFile(path), filter_callback, kwargs)
