"""The files a DICOMDIR references, contained in the DICOMDIR's folder.

A DICOMDIR (PS3.10 media directory) names its instances by *Referenced File ID*: path
components relative to the folder that holds the DICOMDIR. Media comes from outside the
hospital (a patient's CD, a USB stick, a download), so a reference is untrusted input: a
File ID such as ``..\\..\\..\\etc\\passwd``, an absolute path, or a symbolic link on the
medium that leads out of it would make the SDK read - and send to a PACS - files of the
host. :func:`dicomdir_references` is the one place where references are resolved; every
reader of DICOM input reaches it through :class:`~.walk.Inputs` (ingest, the sender, the
runner's input scan, the CLI).

Rule: a reference is used only when every component is a plain name (not empty, not
``.`` or ``..``, no path separator, no NUL) and the file it resolves to - following
symbolic links - lies below the folder that holds the DICOMDIR. Components are matched
case-insensitively when the exact case does not exist (media written on case-insensitive
file systems). A reference that breaks the rule, or
whose file does not exist, becomes a :class:`DicomdirReference` with a ``problem``
naming the DICOMDIR and the reference; the others still go through.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .._errors import DicomInputError

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

__all__ = ["DicomdirReference", "dicomdir_references", "resolve_file_id"]


@dataclass(frozen=True)
class DicomdirReference:
    """One Referenced File ID of a DICOMDIR: the file (``path``) or why it is not used
    (``problem``)."""

    dicomdir: str
    """The DICOMDIR file."""
    file_id: str
    """The reference as recorded, components joined with ``\\``."""
    path: Path | None = None
    """The referenced file, resolved and contained; ``None`` when ``problem`` is set."""
    problem: str | None = None

    @property
    def label(self) -> str:
        """What to call the reference in a report: its file, else DICOMDIR + File ID."""
        if self.path is not None:
            return str(self.path)
        return f"{self.dicomdir} -> {self.file_id}"


def _components(value: object) -> list[str]:
    from pydicom.multival import MultiValue  # loaded already: value comes from pydicom

    if isinstance(value, (MultiValue, list, tuple)):
        return [str(v) for v in value]
    return [str(value)]


def _match_case(folder: Path, name: str) -> Path | None:
    exact = folder / name
    if os.path.lexists(exact):
        return exact
    try:
        with os.scandir(folder) as entries:
            return next((Path(e.path) for e in entries if e.name.lower() == name.lower()), None)
    except OSError:
        return None


def resolve_file_id(dicomdir: str | os.PathLike[str], components: Sequence[str]) -> Path:
    """The file that ``components`` (a Referenced File ID) of ``dicomdir`` designate.

    Raises :class:`DicomInputError` naming the DICOMDIR and the reference when a
    component is not a plain name, when the file is outside the DICOMDIR's folder
    (through ``..``, an absolute path or a symbolic link), or when it does not exist.
    """
    where = os.fspath(dicomdir)
    file_id = "\\".join(components)
    folder = Path(where).parent
    root = Path(os.path.realpath(folder))
    for part in components:
        if part in ("", ".", "..") or any(c in part for c in "/\\\0"):
            raise DicomInputError(
                f"DICOMDIR {where} references {file_id!r}, which leads outside its folder "
                f"{root} (component {part!r} is not a plain name) - refused: a DICOMDIR may "
                "only reference files below its own folder"
            )
    path = folder
    for part in components:
        found = _match_case(path, part)
        if found is None:
            raise DicomInputError(
                f"referenced by DICOMDIR {where} as {file_id!r} but does not exist "
                f"({folder.joinpath(*components)})"
            )
        path = found
    real = Path(os.path.realpath(path))
    if not real.is_relative_to(root):
        raise DicomInputError(
            f"DICOMDIR {where} references {file_id!r}, which resolves to {real} through a "
            f"symbolic link, outside its folder {root} - refused: a DICOMDIR may only "
            "reference files below its own folder"
        )
    return path


def dicomdir_references(
    dicomdir: str | os.PathLike[str], dataset: Dataset | None = None
) -> list[DicomdirReference]:
    """Every file ``dicomdir`` references, in record order, each once.

    ``dataset``: the DICOMDIR already read (else it is read here). Raises
    :class:`DicomInputError` when the file cannot be read or is not a DICOMDIR; a
    reference that cannot be used is a :class:`DicomdirReference` with a ``problem``
    (see the module docs), never an exception.
    """
    where = os.fspath(dicomdir)
    if dataset is None:
        from pydicom import dcmread

        try:
            dataset = dcmread(where)
        except Exception as exc:
            raise DicomInputError(
                f"cannot read DICOMDIR {where!r}: {type(exc).__name__}: {exc}"
            ) from exc
    try:
        records = list(dataset.get("DirectoryRecordSequence") or [])
        if "DirectoryRecordSequence" not in dataset:
            raise DicomInputError(
                f"{where!r} is not a DICOMDIR - it has no Directory Record Sequence"
            )
        file_ids = [r.get("ReferencedFileID") for r in records]
    except DicomInputError:
        raise
    except Exception as exc:
        raise DicomInputError(
            f"unreadable DICOMDIR {where!r}: {type(exc).__name__}: {exc}"
        ) from exc
    out: dict[str, DicomdirReference] = {}
    for value in file_ids:
        if value:
            ref = _reference(where, value)
            out.setdefault(ref.file_id, ref)
    return list(out.values())


def _reference(dicomdir: str | os.PathLike[str], file_id: object) -> DicomdirReference:
    """One Referenced File ID (a pydicom value: one component or several) of
    ``dicomdir``, resolved by :func:`resolve_file_id` - a ``problem`` instead of an
    exception when it cannot be used."""
    where = os.fspath(dicomdir)
    components = _components(file_id)
    joined = "\\".join(components)
    try:
        return DicomdirReference(where, joined, path=resolve_file_id(where, components))
    except DicomInputError as exc:
        return DicomdirReference(where, joined, problem=str(exc))
