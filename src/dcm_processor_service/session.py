"""Session data and session files: what jobs of one session share.

:class:`JobSession` is the typed API: a store plus the runtime context of one job.
The module-level functions (``set_session_data``, ``upload_session_file``, ...) are the
platform's compatible API (SPEC §2.3, §2.4); each builds a :class:`JobSession` from the
current environment and delegates.

Values are stored under (session, current job, name). Passing ``job_name`` reads what
another job of the same session *and event* stored.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import mimetypes
import os
from collections.abc import Iterable
from pathlib import Path
from typing import IO, Any

from ._atomic_file import atomic_write, check_name_fits
from ._context import RuntimeContext, current_context
from ._errors import InvalidInputError, NotFoundError, StorageError
from ._runtime import store_for
from ._validation import validate_name
from .store.base import JobRef, Store
from .store.blobs import copy_to_file, pump
from .store.records import FileRecord

__all__ = [
    "JobSession",
    "download_session_file",
    "get_session_data",
    "get_session_file",
    "has_session_data",
    "has_session_file",
    "remove_session_data",
    "remove_session_file",
    "set_session_data",
    "upload_session_file",
]

logger = logging.getLogger(__name__)

FileSource = str | os.PathLike[str] | bytes | bytearray | memoryview | IO[bytes]


def _to_json(value: Any, what: str) -> str:
    try:
        return json.dumps(value, allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(
            f"{what} is not JSON-serialisable ({exc}) - store dicts, lists, str, int, float "
            "(finite), bool or None; put binary data in a session file"
        ) from exc
    except RecursionError:
        raise InvalidInputError(
            f"{what} is nested too deeply to store (lists/dicts inside each other, deeper "
            "than Python's recursion limit of about 1000 levels) - flatten it, or put it "
            "in a session file"
        ) from None


def _from_json(text: str, what: str) -> Any:
    try:
        return json.loads(text)
    except RecursionError:
        raise StorageError(
            f"stored {what} is nested too deeply to decode (deeper than Python's recursion "
            "limit) - it was written by another program"
        ) from None


class JobSession:
    """Session data and files as seen by one job.

    ``JobSession.current()`` uses the runtime context of the running job; tests and
    the runner can pass an explicit store and context.
    """

    def __init__(self, store: Store, ctx: RuntimeContext) -> None:
        self.store = store
        self.ctx = ctx

    @classmethod
    def current(cls) -> JobSession:
        """The session of the running job (context from the environment)."""
        ctx = current_context()
        return cls(store_for(ctx), ctx)

    # ------------------------------------------------------------------ refs
    @property
    def owner(self) -> JobRef:
        """The current job as owner of what it writes (needs session and job id)."""
        return JobRef(
            session_id=self.ctx.require("session_id"),
            job_id=self.ctx.require("job_id"),
            job_name=self.ctx.job_name,
            event=self.ctx.job_event,
        )

    def _ref(self, job_name: str | None) -> JobRef:
        if job_name is None:
            return self.owner
        return JobRef(
            session_id=self.ctx.require("session_id"),
            job_name=validate_name(job_name, "job_name"),
            event=self.ctx.job_event,
        )

    # ------------------------------------------------------------------ data
    def set_data(self, name: str, value: Any) -> None:
        """Store ``value`` (JSON-serialisable) under ``name``, replacing any previous value."""
        validate_name(name, "session data name")
        self.store.set_data(self.owner, name, _to_json(value, f"session data {name!r}"))

    def get_data(self, name: str, default: Any = None, job_name: str | None = None) -> Any:
        """The value stored under ``name`` (by this job or by ``job_name``), or ``default``."""
        validate_name(name, "session data name")
        text = self.store.get_data(self._ref(job_name), name)
        return default if text is None else _from_json(text, f"session data {name!r}")

    def has_data(self, name: str, job_name: str | None = None) -> bool:
        """Whether a value is stored under ``name``."""
        validate_name(name, "session data name")
        return self.store.get_data(self._ref(job_name), name) is not None

    def remove_data(self, name: str) -> bool:
        """Remove this job's value ``name``; ``False`` if there was none."""
        validate_name(name, "session data name")
        return self.store.remove_data(self.owner, name)

    def list_data(self) -> list[dict[str, Any]]:
        """Every value of the session: job_name, event, name, value."""
        return [
            {k: row[k] for k in ("job_id", "job_name", "event", "name")}
            | {"value": _from_json(row["value_json"], f"session data {row['name']!r}")}
            for row in self.store.list_data(self.ctx.require("session_id"))
        ]

    # ----------------------------------------------------------------- files
    def upload_file(
        self,
        file: FileSource,
        name: str,
        meta: dict[str, Any] | None = None,
        content_type: str | None = None,
        ext: str | None = None,
    ) -> str:
        """Store ``file`` (a path, bytes, or a binary file object) as ``name``; streamed,
        checksummed, replacing the previous version atomically. Returns the file id."""
        validate_name(name, "session file name")
        if meta is not None and not isinstance(meta, dict):
            raise InvalidInputError(
                f"meta of session file {name!r} must be a dict, got {type(meta).__name__}"
            )
        meta_clean = json.loads(_to_json(meta or {}, f"meta of session file {name!r}"))
        if ext:
            meta_clean.setdefault("ext", ext if ext.startswith(".") else f".{ext}")
        with _open_source(file, name) as (source, source_name):
            ctype = content_type or _guess_type(name, ext, source_name)
            record = self.store.put_file(
                self.owner, name, source, content_type=ctype, meta=meta_clean
            )
        logger.debug(
            "stored session file %r (%d bytes, sha256 %s)", name, record.size, record.sha256
        )
        return record.id

    def file_record(self, name: str, job_name: str | None = None) -> FileRecord | None:
        """The typed record of file ``name``, or ``None``."""
        validate_name(name, "session file name")
        return self.store.get_file(self._ref(job_name), name)

    def download_file(
        self, name: str, filename: str | os.PathLike[str] | None = None, job_name: str | None = None
    ) -> str | io.BytesIO | None:
        """Write file ``name`` to ``filename`` (returned) or return it as ``BytesIO``;
        ``None`` when absent. The bytes are verified against the stored sha256; a
        download to ``filename`` appears there only once complete and verified."""
        for attempt in range(3):
            record = self.file_record(name, job_name)
            if record is None:
                return None
            try:
                return self._read(record, filename)
            except NotFoundError:
                # replaced between reading the record and opening the bytes: read again
                if attempt == 2:
                    raise
        return None  # pragma: no cover

    def _read(
        self, record: FileRecord, filename: str | os.PathLike[str] | None
    ) -> str | io.BytesIO:
        if filename is None:
            buffer = io.BytesIO()
            with self.store.open_file(record) as reader:
                pump(reader, buffer.write)
            buffer.seek(0)
            return buffer
        target = Path(filename)
        check_name_fits(target)  # before anything else touches a name the system refuses
        if target.is_dir():
            raise InvalidInputError(
                f"download target {str(target)!r} is a directory - give a file name"
            )
        with self.store.open_file(record) as reader, atomic_write(target) as out:
            copy_to_file(reader, out)
        return str(filename)

    def file_info(
        self, name: str, select: Iterable[str] | None = None, job_name: str | None = None
    ) -> dict[str, Any] | None:
        """Metadata of file ``name`` (id, name, size, content type, sha256, meta,
        timestamps), restricted to ``select`` fields when given; ``None`` when absent."""
        record = self.file_record(name, job_name)
        if record is None:
            return None
        info = record.to_dict()
        if select is not None:
            wanted = [select] if isinstance(select, str) else list(select)
            unknown = [k for k in wanted if k not in info]
            if unknown:
                raise InvalidInputError(
                    f"unknown session file field(s) {unknown}; known: {sorted(info)}"
                )
            info = {k: info[k] for k in wanted}
        return info

    def has_file(self, name: str, job_name: str | None = None) -> bool:
        """Whether file ``name`` exists."""
        return self.file_record(name, job_name) is not None

    def remove_file(self, name: str) -> bool:
        """Remove this job's file ``name``; ``False`` if there was none."""
        validate_name(name, "session file name")
        return self.store.remove_file(self.owner, name)

    def list_files(self) -> list[FileRecord]:
        """Every file of the session."""
        return self.store.list_files(self.ctx.require("session_id"))


def _guess_type(name: str, ext: str | None, source_name: str | None) -> str:
    for candidate in (
        f"x{ext if ext.startswith('.') else '.' + ext}" if ext else None,
        name,
        source_name,
    ):
        if candidate:
            if candidate.endswith((".nii.gz", ".nii")):
                return "application/x-nifti" if candidate.endswith(".nii") else "application/gzip"
            guessed, _ = mimetypes.guess_type(candidate)
            if guessed:
                return guessed
    return "application/octet-stream"


@contextlib.contextmanager
def _open_source(file: FileSource, name: str) -> Any:
    if isinstance(file, (bytes, bytearray, memoryview)):
        yield io.BytesIO(bytes(file)), None
    elif isinstance(file, (str, os.PathLike)):
        path = Path(file)
        try:
            handle = open(path, "rb")  # noqa: SIM115 - closed below
        except FileNotFoundError:
            raise InvalidInputError(
                f"cannot upload session file {name!r}: {str(path)!r} does not exist"
            ) from None
        except IsADirectoryError:
            raise InvalidInputError(
                f"cannot upload session file {name!r}: {str(path)!r} is a directory"
            ) from None
        with handle:
            yield handle, path.name
    elif hasattr(file, "read"):
        yield (
            file,
            getattr(file, "name", None) if isinstance(getattr(file, "name", None), str) else None,
        )
    else:
        raise InvalidInputError(
            f"cannot upload session file {name!r}: expected a path, bytes or a binary file object, "
            f"got {type(file).__name__}"
        )


# ------------------------------------------------------------- compatible API
def set_session_data(name: str, value: Any) -> None:
    """Store ``value`` under (session, current job, ``name``), replacing any previous value.

    Raises:
        InvalidInputError: ``name`` is empty, too long or has control characters.
        InvalidInputError: ``value`` is not JSON-serialisable (or is NaN/infinite).
        MissingContextError: outside a job: no session (``DCM-PROCESSOR-SERVICE-SESSION-ID``) or job id in the environment.
        StorageError: the store failed (:class:`StoreUnavailableError` when it cannot be reached).
    """
    JobSession.current().set_data(name, value)


def get_session_data(name: str, default: Any = None, job_name: str | None = None) -> Any:
    """The value of ``name`` for the current job, or for ``job_name`` of the same
    session and event; ``default`` when absent.

    Raises:
        InvalidInputError: ``name`` (or ``job_name``) is empty, too long or has control characters.
        MissingContextError: outside a job: no session (``DCM-PROCESSOR-SERVICE-SESSION-ID``) or job id in the environment.
        StorageError: the store failed (:class:`StoreUnavailableError` when it cannot be reached).
    """
    return JobSession.current().get_data(name, default, job_name)


def has_session_data(name: str, job_name: str | None = None) -> bool:
    """Whether ``name`` is stored for the current job (or ``job_name``).

    Raises:
        InvalidInputError: ``name`` (or ``job_name``) is empty, too long or has control characters.
        MissingContextError: outside a job: no session (``DCM-PROCESSOR-SERVICE-SESSION-ID``) or job id in the environment.
        StorageError: the store failed (:class:`StoreUnavailableError` when it cannot be reached).
    """
    return JobSession.current().has_data(name, job_name)


def remove_session_data(name: str) -> bool:
    """Remove the current job's value ``name``; ``False`` if there was none.

    Raises:
        InvalidInputError: ``name`` is empty, too long or has control characters.
        MissingContextError: outside a job: no session (``DCM-PROCESSOR-SERVICE-SESSION-ID``) or job id in the environment.
        StorageError: the store failed (:class:`StoreUnavailableError` when it cannot be reached).
    """
    return JobSession.current().remove_data(name)


def upload_session_file(
    file: FileSource,
    name: str,
    meta: dict[str, Any] | None = None,
    content_type: str | None = None,
    ext: str | None = None,
) -> str:
    """Store a path, bytes or binary file object as session file ``name``; returns its id.

    The bytes are streamed and checksummed; uploading ``name`` again replaces the
    previous version atomically.

    Raises:
        InvalidInputError: a bad ``name``, a path that does not exist or is a folder,
            ``file`` of another type, ``meta`` not a JSON-serialisable dict.
        MissingContextError: outside a job: no session (``DCM-PROCESSOR-SERVICE-SESSION-ID``) or job id in the environment.
        StorageError: the store failed (:class:`StoreUnavailableError` when it cannot be reached).
    """
    return JobSession.current().upload_file(file, name, meta, content_type, ext)


def download_session_file(
    name: str, filename: str | os.PathLike[str] | None = None, job_name: str | None = None
) -> str | io.BytesIO | None:
    """Session file ``name`` written to ``filename`` (returned) or as ``BytesIO``; ``None``
    when absent.

    A download to ``filename`` appears there only once complete and verified.

    Raises:
        InvalidInputError: a bad ``name``/``job_name``, ``filename`` is a folder.
        IntegrityError: the stored bytes do not match their recorded sha256 or size.
        MissingContextError: outside a job: no session (``DCM-PROCESSOR-SERVICE-SESSION-ID``) or job id in the environment.
        StorageError: the store failed (:class:`StoreUnavailableError` when it cannot be reached).
    """
    return JobSession.current().download_file(name, filename, job_name)


def get_session_file(
    name: str, select: Iterable[str] | None = None, job_name: str | None = None
) -> dict[str, Any] | None:
    """Metadata record of session file ``name`` (id, name, size, content type, sha256,
    ``meta``, timestamps; only the ``select`` fields when given) or ``None``.

    Raises:
        InvalidInputError: a bad ``name``/``job_name``, an unknown field in ``select``.
        MissingContextError: outside a job: no session (``DCM-PROCESSOR-SERVICE-SESSION-ID``) or job id in the environment.
        StorageError: the store failed (:class:`StoreUnavailableError` when it cannot be reached).
    """
    return JobSession.current().file_info(name, select, job_name)


def has_session_file(name: str, job_name: str | None = None) -> bool:
    """Whether session file ``name`` exists.

    Raises:
        InvalidInputError: ``name`` (or ``job_name``) is empty, too long or has control characters.
        MissingContextError: outside a job: no session (``DCM-PROCESSOR-SERVICE-SESSION-ID``) or job id in the environment.
        StorageError: the store failed (:class:`StoreUnavailableError` when it cannot be reached).
    """
    return JobSession.current().has_file(name, job_name)


def remove_session_file(name: str) -> bool:
    """Remove the current job's session file ``name``; ``False`` if there was none.

    Raises:
        InvalidInputError: ``name`` is empty, too long or has control characters.
        MissingContextError: outside a job: no session (``DCM-PROCESSOR-SERVICE-SESSION-ID``) or job id in the environment.
        StorageError: the store failed (:class:`StoreUnavailableError` when it cannot be reached).
    """
    return JobSession.current().remove_file(name)
