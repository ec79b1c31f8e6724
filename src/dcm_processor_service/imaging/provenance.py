"""Who made a derived object: :class:`AlgorithmInfo`, recorded as AI provenance.

Every writer (derived series, PDF, NIfTI -> DICOM, SEG, SR) takes ``algorithm=``: the
object then records the algorithm's name and version in ``ContributingEquipmentSequence``
(purpose "Processing Equipment") and, for segmentations, in each segment's algorithm
identification; structured reports name it as the device observer.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from ..dicom_values import check_lo, now, package_version

if TYPE_CHECKING:
    from highdicom import ContributingEquipment

__all__ = ["AlgorithmInfo"]


@dataclass(frozen=True)
class AlgorithmInfo:
    """Who made a derived object: recorded as AI provenance on every writer.

    ``name`` and ``version`` identify the algorithm (e.g. a model and its weights
    version); ``manufacturer`` is the organisation that made it. ``family`` is a code
    from CID 7162 (default "Artificial Intelligence"); ``parameters`` are recorded in
    a segmentation's algorithm identification.
    """

    name: str
    version: str
    manufacturer: str = "dcm-processor-service"
    family: Code = field(default_factory=lambda: codes.DCM.ArtificialIntelligence)
    source: str | None = None
    parameters: Mapping[str, str] | None = None
    description: str | None = None
    device_serial_number: str = "0"

    def __post_init__(self) -> None:
        for what in ("name", "version", "manufacturer"):
            check_lo(getattr(self, what), f"AlgorithmInfo.{what}", required=True)

    @classmethod
    def default(cls) -> AlgorithmInfo:
        """This package itself, for writers that must name an algorithm (SEG)."""
        return cls(name="dcm-processor-service", version=package_version())

    def contributing_equipment(self, when: _dt.datetime | None = None) -> ContributingEquipment:
        """An item of ContributingEquipmentSequence (purpose: Processing Equipment)."""
        from highdicom import ContributingEquipment

        return ContributingEquipment(
            manufacturer=self.manufacturer,
            purpose_of_reference=codes.DCM.ProcessingEquipment,
            manufacturer_model_name=self.name,
            software_versions=self.version,
            device_serial_number=self.device_serial_number,
            contribution_datetime=(when or now()).replace(microsecond=0),
            contribution_description=(self.description or f"{self.name} {self.version}")[:64],
        )
