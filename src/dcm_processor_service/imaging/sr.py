"""Structured reports with highdicom: a text report and a TID 1500 measurement report.

* :func:`make_text_report` - an Enhanced SR whose content is a "Diagnostic Imaging
  Report" container with a "Findings" section (one TEXT "Finding" per string) and an
  optional "Impressions" section; the algorithm, when given, is the device observer.
* :func:`make_measurement_report` - a Comprehensive 3D SR following TID 1500
  "Measurement Report": one "Volumetric ROI Measurements" group per segment of a DICOM
  Segmentation, each referencing its segment, with the segment's volume (computed from
  the SEG frames and the source geometry, in cm3 = mL) and any extra measurements.

Both reference the source series (and the SEG) as evidence and join the source's
patient and study; their SeriesNumber is the source's + 3000 unless given.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from .._errors import ConversionError, DicomInputError, InvalidInputError
from ..dicom_values import check_lo, new_uid
from ..sources import read_dataset
from .geometry import series_index_affine
from .provenance import AlgorithmInfo
from .reference import copy_reference_tags, derived_series_number
from .source_images import import_highdicom, sorted_source_images

__all__ = [
    "MeasurementInfo",
    "make_measurement_report",
    "make_text_report",
    "segment_volumes",
]

logger = logging.getLogger(__name__)

#: LOINC "Diagnostic imaging report" (the root concept of TID 2000).
DIAGNOSTIC_IMAGING_REPORT = Code("18748-4", "LN", "Diagnostic imaging report")

SEGMENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"


@dataclass(frozen=True)
class MeasurementInfo:
    """An extra measurement of a segment: coded name, value and UCUM unit.

    Example: ``MeasurementInfo(codes.SCT.Diameter, 12.5, codes.UCUM.Millimeter)``.
    """

    name: Code
    value: float
    unit: Code


def _observer_context(hd: Any, algorithm: AlgorithmInfo) -> Any:
    return hd.sr.ObservationContext(
        observer_device_context=hd.sr.ObserverContext(
            observer_type=codes.DCM.Device,
            observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
                uid=new_uid(),
                name=algorithm.name,
                manufacturer_name=algorithm.manufacturer,
                model_name=algorithm.name,
                serial_number=algorithm.device_serial_number,
            ),
        )
    )


def _texts(value: str | Sequence[str] | None, what: str) -> list[str]:
    if value is None:
        return []
    items = [value] if isinstance(value, str) else list(value)
    for item in items:
        if not isinstance(item, str) or not item.strip():
            raise InvalidInputError(f"invalid '{what}' item {item!r} - must be non-empty text")
    return items


def _report(
    make: Callable[..., Dataset],
    what: str,
    sources: Sequence[Dataset],
    *,
    evidence: Sequence[Dataset],
    content: Any,
    series_number: int | None,
    series_description: str,
    algorithm: AlgorithmInfo,
    is_final: bool,
) -> Dataset:
    """``make`` (a highdicom SR class) with what every report of this package has: new
    UIDs, the series number (the source's + 3000 unless given), the algorithm as
    manufacturer and contributing equipment, the source's patient and study."""
    try:
        report = make(
            evidence=list(evidence),
            content=content,
            series_instance_uid=new_uid(),
            series_number=derived_series_number(sources[0], "sr", series_number),
            sop_instance_uid=new_uid(),
            instance_number=1,
            manufacturer=algorithm.manufacturer,
            is_complete=is_final,
            series_description=series_description or None,
            contributing_equipment=[algorithm.contributing_equipment()],
        )
    except (ValueError, TypeError, AttributeError) as exc:
        raise ConversionError(f"highdicom could not build the {what}: {exc}") from exc
    copy_reference_tags(sources[0], report)
    return report


def _text_section(hd: Any, section: Any, item: Any, texts: Sequence[str]) -> Any:
    """A CONTAINS container ``section`` holding one ``item`` text per entry of ``texts``."""
    container = hd.sr.ContainerContentItem(
        name=section, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS
    )
    container.ContentSequence = hd.sr.ContentSequence(
        [
            hd.sr.TextContentItem(
                name=item, value=text, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS
            )
            for text in texts
        ]
    )
    return container


def make_text_report(
    source_images: Sequence[Dataset | str | os.PathLike[str]],
    findings: str | Sequence[str],
    impressions: str | Sequence[str] | None = None,
    *,
    title: Code = DIAGNOSTIC_IMAGING_REPORT,
    series_description: str = "Report",
    series_number: int | None = None,
    algorithm: AlgorithmInfo | None = None,
    is_final: bool = False,
) -> Dataset:
    """An Enhanced SR text report about ``source_images`` (which it references).

    ``findings`` / ``impressions`` are a text or a list of texts. ``is_final`` marks the
    report COMPLETE (else PARTIAL); it is never marked VERIFIED (no human signed it).
    Returns a :class:`highdicom.sr.EnhancedSR` (a pydicom Dataset).

    Raises:
        InvalidInputError: no finding text, or a text or description that breaks
            its DICOM value rules.
        DicomInputError: a source image that is not a readable DICOM file.
        MissingDependencyError: highdicom is not installed.
    """
    hd = import_highdicom("structured reports")
    finding_texts = _texts(findings, "findings")
    if not finding_texts:
        raise InvalidInputError("invalid 'findings' value - need at least one finding text")
    impression_texts = _texts(impressions, "impressions")
    description = check_lo(series_description)
    sources = sorted_source_images(source_images)
    alg = algorithm or AlgorithmInfo.default()

    root = hd.sr.ContainerContentItem(name=title)
    children: list[Any] = []
    observer = _observer_context(hd, alg)
    children.extend(observer)
    children.append(_text_section(hd, codes.DCM.Findings, codes.DCM.Finding, finding_texts))
    if impression_texts:
        children.append(
            _text_section(hd, codes.DCM.Impressions, codes.DCM.Impression, impression_texts)
        )
    root.ContentSequence = hd.sr.ContentSequence(children)
    return _report(
        hd.sr.EnhancedSR,
        "text report",
        sources,
        evidence=sources,
        content=root,
        series_number=series_number,
        series_description=description,
        algorithm=alg,
        is_final=is_final,
    )


def segment_volumes(
    segmentation: Dataset, source_images: Sequence[Dataset | str | os.PathLike[str]]
) -> dict[int, float]:
    """Volume (mL) of each segment of a binary SEG, from its frames and the source grid.

    Every SEG frame is one source slice, so a segment's volume is its pixel count times
    the source voxel volume (pixel spacing times slice spacing).
    """
    seg = read_dataset(segmentation, "segmentation", pixels=True)
    if str(seg.get("SOPClassUID", "")) != SEGMENTATION_STORAGE:
        raise DicomInputError(
            f"'segmentation' has SOP class {seg.get('SOPClassUID', '?')} - a Segmentation "
            f"Storage object ({SEGMENTATION_STORAGE}) is needed"
        )
    if seg.get("SegmentationType") != "BINARY":
        raise InvalidInputError(
            f"segment volumes need a BINARY segmentation, got {seg.get('SegmentationType')!r}"
        )
    sources = sorted_source_images(source_images)
    if len(sources) > 1:
        affine = series_index_affine(sources)
        iop = np.asarray([float(v) for v in sources[0].ImageOrientationPatient])
        normal = np.cross(iop[:3], iop[3:])
        slice_spacing = abs(float(affine[:3, 2] @ normal))
    else:
        slice_spacing = float(
            sources[0].get("SpacingBetweenSlices") or sources[0].get("SliceThickness") or 1.0
        )
    row_spacing, column_spacing = (float(v) for v in sources[0].PixelSpacing)
    voxel_ml = row_spacing * column_spacing * slice_spacing / 1000.0
    frames = seg.pixel_array
    if frames.ndim == 2:
        frames = frames[np.newaxis]
    counts: dict[int, int] = {int(item.SegmentNumber): 0 for item in seg.SegmentSequence}
    shared = (
        seg.SharedFunctionalGroupsSequence[0] if "SharedFunctionalGroupsSequence" in seg else None
    )
    for index, group in enumerate(seg.PerFrameFunctionalGroupsSequence):
        # one-segment SEGs may put the segment identification in the shared groups
        holder = group if "SegmentIdentificationSequence" in group else shared
        if holder is None or "SegmentIdentificationSequence" not in holder:
            raise DicomInputError(f"SEG frame {index + 1} does not name its segment")
        number = int(holder.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        counts[number] = counts.get(number, 0) + int(np.count_nonzero(frames[index]))
    return {number: count * voxel_ml for number, count in counts.items()}


def _procedure_for(modality: str) -> Code:
    return {
        "CT": codes.LN.CTUnspecifiedBodyRegion,
        "MR": codes.LN.MRIUnspecifiedBodyRegion,
    }.get(modality, codes.SCT.ImagingProcedure)


def make_measurement_report(
    source_images: Sequence[Dataset | str | os.PathLike[str]],
    segmentation: Dataset | str | os.PathLike[str],
    measurements: Mapping[int, Sequence[MeasurementInfo]] | None = None,
    *,
    include_volume: bool = True,
    procedure_reported: Code | None = None,
    series_description: str = "Measurements",
    series_number: int | None = None,
    algorithm: AlgorithmInfo | None = None,
    is_final: bool = False,
) -> Dataset:
    """A TID 1500 measurement report of the segments of ``segmentation``.

    One volumetric ROI group per segment references the segment (and through it the
    source series); it holds the segment's volume in cm3 (= mL) when ``include_volume``
    and the extra ``measurements[segment_number]``. ``procedure_reported`` defaults from
    the source modality (CT/MR unspecified body region, else "Imaging procedure").
    Returns a :class:`highdicom.sr.Comprehensive3DSR` (a pydicom Dataset).

    Raises:
        InvalidInputError: ``measurements`` for a segment number the segmentation does
            not have, or an item that is not a :class:`MeasurementInfo`.
        DicomInputError: ``segmentation`` or a source image is not a readable DICOM
            file (or not a Segmentation).
        MissingDependencyError: highdicom is not installed.
    """
    hd = import_highdicom("structured reports")
    seg = read_dataset(segmentation, "segmentation", pixels=True)
    sources = sorted_source_images(source_images)
    description = check_lo(series_description)
    alg = algorithm or AlgorithmInfo.default()
    volumes = segment_volumes(seg, sources) if include_volume else {}
    extra = dict(measurements or {})
    segment_items = {int(item.SegmentNumber): item for item in seg.SegmentSequence}
    unknown = sorted(set(extra) - set(segment_items))
    if unknown:
        raise InvalidInputError(
            f"'measurements' name segment numbers {unknown} that the segmentation does not "
            f"have (it has {sorted(segment_items)})"
        )
    algorithm_id = hd.sr.AlgorithmIdentification(name=alg.name, version=alg.version)
    groups = []
    for number, item in sorted(segment_items.items()):
        items: list[Any] = []
        if include_volume:
            items.append(
                hd.sr.Measurement(
                    name=codes.SCT.Volume,
                    value=volumes.get(number, 0.0),
                    unit=codes.UCUM.CubicCentimeter,
                    algorithm_id=algorithm_id,
                )
            )
        for info in extra.get(number, ()):
            if not isinstance(info, MeasurementInfo):
                raise InvalidInputError(
                    f"invalid measurement {info!r} for segment {number} - must be a MeasurementInfo"
                )
            items.append(
                hd.sr.Measurement(
                    name=info.name,
                    value=float(info.value),
                    unit=info.unit,
                    algorithm_id=algorithm_id,
                )
            )
        finding = item.SegmentedPropertyTypeCodeSequence[0]
        groups.append(
            hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
                tracking_identifier=hd.sr.TrackingIdentifier(
                    uid=str(item.get("TrackingUID") or new_uid()),
                    identifier=str(item.get("TrackingID") or item.SegmentLabel)[:64],
                ),
                referenced_segment=hd.sr.ReferencedSegment.from_segmentation(seg, number),
                finding_type=hd.sr.CodedConcept(
                    finding.CodeValue, finding.CodingSchemeDesignator, finding.CodeMeaning
                ),
                algorithm_id=algorithm_id,
                measurements=items or None,
            )
        )
    modality = str(sources[0].get("Modality", ""))
    try:
        content = hd.sr.MeasurementReport(
            observation_context=_observer_context(hd, alg),
            procedure_reported=procedure_reported or _procedure_for(modality),
            imaging_measurements=groups,
        )
    except (ValueError, TypeError, AttributeError) as exc:
        raise ConversionError(f"highdicom could not build the measurement report: {exc}") from exc
    report = _report(
        hd.sr.Comprehensive3DSR,
        "measurement report",
        sources,
        evidence=[*sources, seg],
        content=content[0],
        series_number=series_number,
        series_description=description,
        algorithm=alg,
        is_final=is_final,
    )
    logger.debug("made TID 1500 report %s with %d segments", report.SOPInstanceUID, len(groups))
    return report
