"""Input DICOM for the runner: the instances of the input, grouped by patient (one
session per patient, as the platform does).

The input is expanded by :mod:`dcm_processor_service.sources` (the one reader of DICOM
input: folders walked, hidden entries skipped and reported, DICOMDIR references
contained). Only headers are read here (no pixel data). The patient key is the DICOM
index's (:func:`~dcm_processor_service.index.metadata.patient_key`, SPEC §4):
PatientID + IssuerOfPatientID, else PatientName + PatientBirthDate + PatientSex, else
StudyInstanceUID.
"""

from __future__ import annotations

import logging
import os
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .._errors import DicomInputError

__all__ = ["InputScan", "PatientGroup", "scan_inputs"]

logger = logging.getLogger(__name__)

#: Read from each input file besides what the patient key needs.
_SCAN_TAGS = ["SOPInstanceUID", "SOPClassUID", "SeriesInstanceUID", "DirectoryRecordSequence"]


@dataclass
class PatientGroup:
    """The files of one patient."""

    key: str
    label: str
    files: list[Path] = field(default_factory=list)


@dataclass
class InputScan:
    """Input files by patient, the files that are not DICOM instances, and the entries
    skipped (hidden entries, DICOMDIRs met in a folder)."""

    groups: list[PatientGroup]
    not_dicom: list[tuple[str, str]]
    total_files: int
    skipped: list[tuple[str, str]] = field(default_factory=list)

    @property
    def dicom_files(self) -> int:
        """How many files are DICOM instances."""
        return sum(len(g.files) for g in self.groups)


def _text(value: object) -> str:
    return str(value).strip() if value not in (None, "") else ""


def scan_inputs(inputs: Sequence[str | os.PathLike[str]]) -> InputScan:
    """Read the header of every input file and group the DICOM instances by patient.

    Raises :class:`InvalidInputError` for a missing input or an empty folder and
    :class:`DicomInputError` when no input file is a DICOM instance.
    """
    from ..index.metadata import PATIENT_KEY_KEYWORDS, patient_key
    from ..sources import Failed, InputFile, Skipped, collect_files, is_dicomdir, read_file

    tags = [*_SCAN_TAGS, *PATIENT_KEY_KEYWORDS]
    collected = collect_files(inputs)
    not_dicom = [(path, reason) for path, reason in collected.failed]
    skipped = [(path, reason) for path, reason in collected.skipped]
    groups: dict[str, PatientGroup] = {}
    queue = deque(collected.files)  # a DICOMDIR's references are read after the inputs
    total = 0
    while queue:
        entry = queue.popleft()
        total += 1
        try:
            ds = read_file(entry.path, tags=tags)
        except DicomInputError as exc:
            not_dicom.append((entry.path, str(exc)))
            continue
        except OSError as exc:
            not_dicom.append((entry.path, f"read error: {exc.strerror or exc}"))
            continue
        if is_dicomdir(ds):
            for found in collected.dicomdir(entry):
                if isinstance(found, InputFile):
                    queue.append(found)
                elif isinstance(found, Skipped):
                    skipped.append((found.path, found.reason))
                elif isinstance(found, Failed):
                    not_dicom.append((found.path, found.reason))
            continue
        try:
            key = patient_key(ds)
        except DicomInputError as exc:
            not_dicom.append((entry.path, str(exc)))
            continue
        group = groups.get(key)
        if group is None:
            label = (
                _text(getattr(ds, "PatientID", ""))
                or _text(getattr(ds, "PatientName", ""))
                or f"patient-{len(groups) + 1}"
            )
            group = groups[key] = PatientGroup(key=key, label=label)
        group.files.append(Path(entry.path).resolve())
    if skipped:
        logger.info("skipped %d input entr(y/ies), e.g. %s: %s", len(skipped), *skipped[0])
    scan = InputScan(list(groups.values()), not_dicom, total, skipped)
    if not scan.groups:
        first = f" (e.g. {not_dicom[0][0]}: {not_dicom[0][1]})" if not_dicom else ""
        raise DicomInputError(
            f"no DICOM instances in the input: {total} file(s) read, none is DICOM{first}"
        )
    return scan
