"""Input DICOM for the runner: expand folders, files and DICOMDIRs, and group the
instances by patient (one session per patient, as the platform does).

Only headers are read here (no pixel data). The patient key is the DICOM index's
(:func:`~dcm_processor_service.dicom.index.patient_key`, SPEC §4): PatientID +
IssuerOfPatientID, else PatientName + PatientBirthDate + PatientSex, else
StudyInstanceUID.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .._errors import DicomInputError, InvalidInputError

__all__ = ["InputScan", "PatientGroup", "expand_inputs", "scan_inputs"]

logger = logging.getLogger(__name__)

_DICOMDIR_SOP_CLASS = "1.2.840.10008.1.3.10"
_HEADER_TAGS = [
    "SOPInstanceUID",
    "SOPClassUID",
    "PatientID",
    "IssuerOfPatientID",
    "PatientName",
    "PatientBirthDate",
    "PatientSex",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "DirectoryRecordSequence",
]


@dataclass
class PatientGroup:
    """The files of one patient."""

    key: str
    label: str
    files: list[Path] = field(default_factory=list)


@dataclass
class InputScan:
    """Input files by patient, plus the files that are not DICOM instances."""

    groups: list[PatientGroup]
    not_dicom: list[tuple[str, str]]
    total_files: int

    @property
    def dicom_files(self) -> int:
        """How many files are DICOM instances."""
        return sum(len(g.files) for g in self.groups)


def _walk(folder: Path) -> Iterator[Path]:
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if name.startswith("."):
                logger.debug("skipping hidden file %s", Path(root) / name)
                continue
            yield Path(root) / name


def expand_inputs(inputs: Sequence[str | os.PathLike[str]]) -> list[Path]:
    """Every file named by ``inputs`` (folders walked recursively, hidden files skipped),
    without duplicates. A DICOMDIR stays a DICOMDIR: whoever reads it (the scan below,
    ingest) follows its references, contained in its folder."""
    if not inputs:
        raise InvalidInputError("no input given - name a folder, DICOM files or a DICOMDIR")
    out: dict[Path, None] = {}
    for item in inputs:
        path = Path(item).expanduser()
        if not path.exists():
            raise InvalidInputError(f"input {str(item)!r} does not exist")
        if path.is_dir():
            found = list(_walk(path))
            if not found:
                raise InvalidInputError(f"input folder {str(item)!r} is empty")
            out.update(dict.fromkeys(p.resolve() for p in found))
        else:
            out[path.resolve()] = None
    return list(out)


def _text(value: object) -> str:
    return str(value).strip() if value not in (None, "") else ""


def scan_inputs(inputs: Sequence[str | os.PathLike[str]]) -> InputScan:
    """Read the header of every input file and group the DICOM instances by patient.

    Raises :class:`InvalidInputError` for a missing input or an empty folder and
    :class:`DicomInputError` when no input file is a DICOM instance.
    """
    from pydicom import dcmread
    from pydicom.errors import InvalidDicomError

    from ..index.ingest import patient_key
    from ..sources.dicomdir import dicomdir_references

    files = expand_inputs(inputs)
    groups: dict[str, PatientGroup] = {}
    not_dicom: list[tuple[str, str]] = []
    extra: list[Path] = []
    for path in _with_extra(files, extra):
        try:
            if path.stat().st_size == 0:
                raise InvalidDicomError("empty file")
            with warnings.catch_warnings():  # pydicom warns a lot on non-DICOM bytes
                warnings.simplefilter("ignore")
                ds = dcmread(path, stop_before_pixels=True, specific_tags=_HEADER_TAGS, force=True)
        except (InvalidDicomError, OSError, EOFError, ValueError) as exc:
            not_dicom.append((str(path), f"not a DICOM file: {exc}"))
            continue
        except Exception as exc:  # pydicom raises many kinds on garbage
            not_dicom.append((str(path), f"not a readable DICOM file: {type(exc).__name__}: {exc}"))
            continue
        sop_class = _text(getattr(ds, "SOPClassUID", "")) or _text(
            getattr(getattr(ds, "file_meta", None), "MediaStorageSOPClassUID", "")
        )
        if sop_class == _DICOMDIR_SOP_CLASS or "DirectoryRecordSequence" in ds:
            logger.debug("%s is a DICOMDIR: adding the files it references", path)
            try:
                references = dicomdir_references(path)
            except DicomInputError as exc:
                not_dicom.append((str(path), str(exc)))
                continue
            for ref in references:
                if ref.path is None:
                    not_dicom.append((ref.label, str(ref.problem)))
                else:
                    extra.append(ref.path.resolve())
            continue
        if not _text(getattr(ds, "SOPInstanceUID", "")):
            not_dicom.append((str(path), "not a DICOM instance: no SOPInstanceUID"))
            continue
        try:
            key = patient_key(ds)
        except DicomInputError as exc:
            not_dicom.append((str(path), str(exc)))
            continue
        group = groups.get(key)
        if group is None:
            label = (
                _text(getattr(ds, "PatientID", ""))
                or _text(getattr(ds, "PatientName", ""))
                or f"patient-{len(groups) + 1}"
            )
            group = groups[key] = PatientGroup(key=key, label=label)
        group.files.append(path)
    total = len(files) + len(extra)
    scan = InputScan(groups=list(groups.values()), not_dicom=not_dicom, total_files=total)
    if not scan.groups:
        first = f" (e.g. {not_dicom[0][0]}: {not_dicom[0][1]})" if not_dicom else ""
        raise DicomInputError(
            f"no DICOM instances in the input: {total} file(s) read, none is DICOM{first}"
        )
    return scan


def _with_extra(files: list[Path], extra: list[Path]) -> Iterable[Path]:
    seen = set(files)
    yield from files
    i = 0
    while i < len(extra):  # DICOMDIRs found while walking append here
        path = extra[i]
        i += 1
        if path not in seen:
            seen.add(path)
            yield path
