"""Exporting a session's outputs to a folder: its files, its data and its jobs.

After a session's jobs, the runner writes ``<output>/<patient>/`` with
:func:`export_session`: one folder per job holding the files it stored, the session's
data as ``session-data.json`` and its job records as ``jobs.json``. Every file appears
complete or not at all (written through a temporary file and renamed).
"""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path

from .._atomic_file import atomic_write
from .._errors import DcmProcessorError
from .._safe_text import mask_secrets
from ..store.base import CHUNK_SIZE, Store

__all__ = ["export_session", "safe_dir_name"]

logger = logging.getLogger(__name__)


def safe_dir_name(text: str) -> str:
    """``text`` as one safe folder or file name (letters, digits, ``._-``; at most 64
    characters; ``session`` when nothing is left)."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._")
    return cleaned[:64] or "session"


def _write_text(path: Path, text: str) -> Path:
    with atomic_write(path) as out:
        out.write(text.encode("utf-8"))
    return path


def export_session(
    store: Store,
    session_id: str,
    out_dir: str | os.PathLike[str],
    *,
    failed: list[dict[str, str]] | None = None,
) -> list[Path]:
    """Write the session's files to ``out_dir/<job name>/<file name>`` (a job that ran
    more than once gets ``<job name>-<job id>`` folders), its data to
    ``session-data.json`` and its jobs to ``jobs.json``. Returns the files written.

    Each file appears complete or not at all. With ``failed``, a file that cannot be
    written (a name too long for the file system, a full disk, damaged stored bytes)
    is appended there as ``{"name", "job_name", "reason"}`` and the export goes on;
    without it, the first such error is raised."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    records = store.list_files(session_id)
    runs_per_job: dict[str, set[str]] = {}
    for rec in records:
        runs_per_job.setdefault(rec.job_name or rec.job_id, set()).add(rec.job_id)
    for rec in records:
        job = rec.job_name or rec.job_id
        folder = out / (job if len(runs_per_job[job]) == 1 else f"{job}-{rec.job_id[:8]}")
        try:
            folder.mkdir(parents=True, exist_ok=True)
            with store.open_file(rec) as reader, atomic_write(folder / rec.name) as handle:
                while chunk := reader.read(CHUNK_SIZE):
                    handle.write(chunk)
        except (DcmProcessorError, OSError) as exc:
            if failed is None:
                raise
            reason = mask_secrets(f"{type(exc).__name__}: {exc}")
            failed.append({"name": rec.name, "job_name": job, "reason": reason})
            logger.warning("export of session file %s/%s failed: %s", job, rec.name, reason)
            continue
        written.append(folder / rec.name)
    data = [
        {
            "job_name": row["job_name"],
            "event": row["event"],
            "job_id": row["job_id"],
            "name": row["name"],
            "value": json.loads(row["value_json"]),
        }
        for row in store.list_data(session_id)
    ]
    written.append(_write_text(out / "session-data.json", json.dumps(data, indent=2, default=str)))
    jobs = [
        {
            "id": j.id,
            "name": j.name,
            "event": j.event,
            "status": j.status,
            "error": j.error,
            "progress": j.progress,
            "started_at": j.started_at,
            "finished_at": j.finished_at,
        }
        for j in store.list_jobs(session_id)
    ]
    written.append(_write_text(out / "jobs.json", json.dumps(jobs, indent=2, default=str)))
    return written
