"""Helpers the original package exposed in ``dicom_network.utils`` that have no place
in the typed API, built on it (re-exported by :mod:`dcm_processor_service.dicom_network.utils`).

Each keeps the original's name, parameters and return shape; where the original
silently produced a wrong value, this one gives the right value or raises (see
``docs/migrating.md``).
"""

from __future__ import annotations

import math
import re
from typing import Any, Final

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.valuerep import DSfloat, format_number_as_ds

from ._errors import InvalidInputError
from .dicom_values import new_uid
from .imaging.derived import ENCAPSULATED_PDF_STORAGE, make_pdf_dicom
from .imaging.reference import (
    EQUIPMENT_KEYWORDS,
    IMAGE_SERIES_KEYWORDS,
    PATIENT_KEYWORDS,
    STUDY_KEYWORDS,
)
from .index.order import image_plane, slice_normal

__all__ = [
    "COPY_TAGS",
    "format_patient_age",
    "generate_dicom_from_pdf",
    "get_orientation",
    "get_patient_orientation",
    "post_process_all_ds",
]

#: Keywords copied from the reference dataset, by SOP class of the derived object
#: (``"others"``: every other class): Encapsulated PDF gets patient and study,
#: derived image series also equipment and the series' body part/position/laterality.
COPY_TAGS: Final[dict[str, list[str]]] = {
    ENCAPSULATED_PDF_STORAGE: [*PATIENT_KEYWORDS, *STUDY_KEYWORDS],
    "others": [*PATIENT_KEYWORDS, *STUDY_KEYWORDS, *EQUIPMENT_KEYWORDS, *IMAGE_SERIES_KEYWORDS],
}

_AS_RE: Final = re.compile(r"^\d{3}[DWMY]$")
_AGE_RE: Final = re.compile(r"^\s*(\d{1,3})\s*([DWMY]?)\s*$", re.IGNORECASE)


def format_patient_age(age: Any) -> str | None:
    """A PatientAge (AS) value: ``"045Y"`` stays, ``"45"``/``"45Y"``/``45`` become
    ``"045Y"``, ``"3M"`` becomes ``"003M"``; ``None`` stays ``None``. Raises
    :class:`InvalidInputError` for anything else (the original returned it unchanged)."""
    if age is None:
        return None
    if isinstance(age, bool) or not isinstance(age, (str, int)):
        raise InvalidInputError(
            f"invalid 'age' value {age!r} - must be a number of years or an AS string like '045Y'"
        )
    text = str(age).strip()
    if _AS_RE.match(text):
        return text
    match = _AGE_RE.match(text)
    if match is None:
        raise InvalidInputError(
            f"invalid 'age' value {age!r} - write a number of years (45) or an AS string "
            "('045Y', '003M', '010W', '020D')"
        )
    return f"{int(match.group(1)):03d}{(match.group(2) or 'Y').upper()}"


def generate_dicom_from_pdf(pdf_data: Any) -> Dataset:
    """An Encapsulated PDF object for ``pdf_data`` (base64, bytes or a path) with empty
    patient identity, in a new study - the original's shape: the caller must copy the
    patient and study in before sending it. ``make_pdf_dicom(ref, pdf_data)`` does that
    in one step and is the safer call."""
    placeholder = Dataset()
    placeholder.StudyInstanceUID = new_uid()
    placeholder.PatientID = "-"  # make_pdf_dicom insists on an identity; emptied below
    ds = make_pdf_dicom(placeholder, pdf_data)
    ds.PatientID = ""
    return ds


def _iop(ds: Any) -> list[float] | None:
    iop = getattr(ds, "ImageOrientationPatient", None)
    if iop is None or len(iop) != 6:
        return None
    return [float(v) for v in iop]


def get_orientation(ds: Any, tol: float = 0.1) -> str | None:
    """``"AXIAL"``, ``"CORONAL"``, ``"SAGITTAL"`` or ``"OBLIQUE"`` from the dataset's
    ImageOrientationPatient (``None`` without one): a slice is in a main plane when its
    normal's largest component is at least ``1 - tol``."""
    iop = _iop(ds)
    if iop is None:
        return None
    if not isinstance(tol, (int, float)) or not 0 <= tol <= 1:
        raise InvalidInputError(f"invalid 'tol' value {tol!r} - must be in 0-1")
    return image_plane(iop, math.degrees(math.acos(1.0 - tol))).upper()


def _letters(x: float, y: float, z: float) -> str:
    out = []
    for axis in sorted(range(3), key=lambda i: -abs((x, y, z)[i])):
        value = (x, y, z)[axis]
        if abs(value) >= 1e-3:
            out.append(("L", "P", "H")[axis] if value > 0 else ("R", "A", "F")[axis])
    return "".join(out[:3])


def get_patient_orientation(ds: Any) -> list[str] | None:
    """PatientOrientation (0020,0020) from ImageOrientationPatient: the patient
    directions of the rows and the columns, e.g. ``["L", "P"]`` for an axial slice
    (oblique directions get up to three letters, most significant first); ``None``
    without ImageOrientationPatient."""
    iop = _iop(ds)
    if iop is None:
        return None
    slice_normal(iop)  # raises for a malformed orientation
    return [_letters(*iop[:3]), _letters(*iop[3:])]


def post_process_all_ds(ds: Dataset) -> None:
    """Rewrite every top-level DS value of ``ds`` in place so it fits the 16 characters
    DS allows, keeping as much precision as fits (the original cut the text, which could
    change a value's magnitude)."""
    for elem in ds:
        if elem.VR != "DS" or elem.value is None or elem.value == "":
            continue
        values = elem.value if isinstance(elem.value, (list, MultiValue)) else [elem.value]
        fixed = [DSfloat(format_number_as_ds(float(v)), auto_format=False) for v in values]
        elem.value = fixed if isinstance(elem.value, (list, MultiValue)) else fixed[0]
