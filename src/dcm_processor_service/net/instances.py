"""Inputs of the sender, reduced to one list of :class:`Instance` records.

Every input form (a file, a folder, a list of files, datasets, a DICOMDIR), expanded by
:mod:`dcm_processor_service.sources` (the one reader of DICOM input), becomes a
list of instances in input order, each either a *file* (path + where its encoded dataset
starts, read lazily when sent) or an in-memory *dataset*. Scanning reads only the File
Meta Information (SOP class, SOP instance, transfer syntax: what negotiation needs);
the header without pixel data (``stop_before_pixels``) is read only when a
``filter_callback`` must see it or a file has no usable File Meta Information. Pixel
data is never decoded unless the instance must be converted for the peer
(:func:`build_payload`). Files sent as stored never import pydicom or numpy: they are
imported by the first dataset, header read or conversion that needs them.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, TypeAlias

from .._errors import DicomInputError
from .._uids import EXPLICIT_VR_LITTLE_ENDIAN
from ..sources import (
    MEDIA_STORAGE_DIRECTORY,
    DicomdirFile,
    Entry,
    Failed,
    InputFile,
    Inputs,
    Skipped,
    SourceLike,
    is_dicomdir,
    read_file,
    read_identity,
)
from .contexts import Route
from .dimse import FileRegion

if TYPE_CHECKING:
    from pathlib import Path

    from pydicom.dataset import Dataset

__all__ = [
    "MEDIA_STORAGE_DIRECTORY",
    "DicomdirFile",
    "FilterCallback",
    "Instance",
    "SourceLike",
    "build_payload",
    "gather",
]

logger = logging.getLogger(__name__)

FilterCallback: TypeAlias = "Callable[[Dataset], Any]"


@dataclass
class Instance:
    """One thing to send (or the reason it cannot be)."""

    index: int
    source: str
    path: Path | None = None
    dataset: Dataset | None = None
    sop_class_uid: str | None = None
    sop_instance_uid: str | None = None
    transfer_syntax: str | None = None
    offset: int | None = None  # the encoded dataset starts here in ``path`` (raw send)
    has_pixel_data: bool = True
    error: str | None = None  # scan failure: reported as a local failure
    attempts: int = 0

    @property
    def sendable(self) -> bool:
        """True when scanning found everything needed to send it."""
        return self.error is None and self.sop_class_uid is not None


# -- gathering -------------------------------------------------------------------------
def gather(
    source: SourceLike,
    filter_callback: FilterCallback | None = None,
) -> tuple[list[Instance], list[str]]:
    """Scan ``source`` into instances; return (instances, skipped sources).

    ``source``: a file or folder path, a DICOMDIR, a pydicom Dataset, or an iterable
    mixing those, expanded by :mod:`dcm_processor_service.sources` (folders walked,
    hidden entries skipped, a DICOMDIR named by the caller followed - contained in its
    folder - and one met in a folder skipped). Instances ``filter_callback`` returns
    falsy for are skipped too. An entry that cannot be read becomes an instance with an
    ``error`` (a local failure of the send).
    """
    from pathlib import Path  # here, not at import: a bare import of the sender stays light

    inputs = Inputs()
    instances: list[Instance] = []
    skipped: list[str] = []
    n_datasets = 0

    def take(entries: Iterable[Entry]) -> None:
        nonlocal n_datasets
        for entry in entries:
            if isinstance(entry, Skipped):
                logger.debug("skipping %s: %s", entry.path, entry.reason)
                skipped.append(entry.path)
                continue
            if isinstance(entry, Failed):
                inst = Instance(index=len(instances), source=entry.path, error=entry.reason)
            elif isinstance(entry, InputFile):
                inst = Instance(index=len(instances), source=entry.path)
                _scan_file(inst, Path(entry.path))
                if inst.sop_class_uid == MEDIA_STORAGE_DIRECTORY:
                    take(inputs.dicomdir(entry))  # followed when named, else skipped
                    continue
            else:  # a pydicom Dataset
                inst = Instance(index=len(instances), source=f"dataset #{n_datasets}")
                n_datasets += 1
                _scan_dataset(inst, entry)
            if filter_callback is not None and inst.sendable:
                header = inst.dataset if inst.dataset is not None else _read_header(inst)
                if header is not None and not filter_callback(header):
                    skipped.append(inst.source)
                    continue
            instances.append(inst)

    take(inputs.expand(source))
    return instances, skipped


# -- scanning --------------------------------------------------------------------------
def _scan_file(inst: Instance, path: Path) -> None:
    inst.path = path
    try:
        identity = read_identity(path)
    except OSError as exc:
        inst.error = f"cannot read file: {exc.strerror or exc}"
        return
    if identity is not None:
        inst.sop_class_uid, inst.sop_instance_uid, inst.transfer_syntax, offset = identity
        inst.offset = offset  # deflated data too: its bytes are sent as stored
        return
    # No (usable) File Meta Information: read the header and work from the dataset.
    from ..dicom_values import transfer_syntax_of

    ds = _read_header(inst)
    if ds is None:
        return
    if is_dicomdir(ds):
        inst.sop_class_uid = MEDIA_STORAGE_DIRECTORY
        return
    sop_class = ds.get("SOPClassUID")
    sop_instance = ds.get("SOPInstanceUID")
    if not sop_class or not sop_instance:
        inst.error = "not a DICOM instance (no SOP Class UID)"
        return
    inst.sop_class_uid = str(sop_class)
    inst.sop_instance_uid = str(sop_instance)
    inst.transfer_syntax = transfer_syntax_of(ds) or EXPLICIT_VR_LITTLE_ENDIAN
    inst.offset = None  # must be read fully and re-encoded


def _scan_dataset(inst: Instance, ds: Dataset) -> None:
    from ..dicom_values import is_encapsulated, transfer_syntax_of

    inst.dataset = ds
    sop_class = ds.get("SOPClassUID")
    sop_instance = ds.get("SOPInstanceUID")
    if not sop_class or not sop_instance:
        missing = [
            k for k, v in (("SOPClassUID", sop_class), ("SOPInstanceUID", sop_instance)) if not v
        ]
        inst.error = f"the dataset has no {' / '.join(missing)}"
        return
    inst.sop_class_uid = str(sop_class)
    inst.sop_instance_uid = str(sop_instance)
    inst.has_pixel_data = "PixelData" in ds
    ts = transfer_syntax_of(ds)
    if ts is None:
        if is_encapsulated(ds):
            inst.error = (
                "the dataset holds encapsulated (compressed) Pixel Data but no "
                "file_meta.TransferSyntaxUID saying how it is compressed"
            )
            return
        ts = EXPLICIT_VR_LITTLE_ENDIAN
    inst.transfer_syntax = ts


def _read_header(inst: Instance) -> Dataset | None:
    """The header (no pixel data) of a file instance, or None with ``inst.error`` set."""
    assert inst.path is not None
    try:
        return read_file(inst.path)
    except DicomInputError as exc:
        inst.error = str(exc)
    except OSError as exc:
        inst.error = f"cannot read file: {exc.strerror or exc}"
    return None


# -- payloads --------------------------------------------------------------------------
def _encode(ds: Dataset, ts: str) -> bytes:
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset
    from pydicom.uid import UID

    uid = UID(ts)
    fp = DicomBytesIO()
    fp.is_implicit_VR = uid.is_implicit_VR
    fp.is_little_endian = uid.is_little_endian
    write_dataset(fp, ds)
    data = fp.getvalue()
    if uid.is_deflated:
        import zlib

        compressor = zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, -zlib.MAX_WBITS)
        data = compressor.compress(data) + compressor.flush()
        if len(data) % 2:
            data += b"\x00"
    return bytes(data)


_SWAP_WIDTH: Final = {"OW": 2, "OF": 4, "OL": 4, "OD": 8, "OV": 8}


def _swap_to_little_endian(ds: Dataset) -> None:
    """Byte-swap the binary (OW/OF/OL/OD/OV) values of a dataset read as big endian, so
    that writing it little endian keeps its values (pydicom writes those bytes as-is)."""
    import numpy as np

    bits = int(ds.get("BitsAllocated", 16) or 16)
    for elem in ds:
        if elem.VR == "SQ":
            for item in elem.value:
                _swap_to_little_endian(item)
            continue
        width = _SWAP_WIDTH.get(str(elem.VR))
        if not width or not isinstance(elem.value, (bytes, bytearray)) or not elem.value:
            continue
        if elem.tag == 0x7FE00010 and bits in (32, 64):
            width = bits // 8
        if len(elem.value) % width:
            raise DicomInputError(f"{elem.keyword or elem.tag}: odd length for byte swapping")
        arr = np.frombuffer(elem.value, dtype=f">u{width}")
        elem.value = arr.astype(f"<u{width}").tobytes()


def _read_full(inst: Instance) -> Dataset:
    assert inst.path is not None
    return read_file(inst.path, pixels=True)


def build_payload(inst: Instance, route: Route) -> bytes | FileRegion:
    """The encoded dataset to send for ``inst`` along ``route``.

    Sent as stored: the file region itself (no parsing) or the dataset encoded in its
    own syntax. Converted: the full dataset is read (or the caller's dataset deep-copied,
    never modified), pixel data decompressed / byte-swapped / losslessly compressed as
    the route says - keeping the SOP Instance UID - and encoded in the target syntax.
    """
    assert route.transfer_syntax is not None and inst.transfer_syntax is not None
    target = route.transfer_syntax
    if route.conversion == "none":
        if inst.path is not None and inst.offset is not None:
            return FileRegion(inst.path, inst.offset)
        ds = inst.dataset if inst.dataset is not None else _read_full(inst)
        return _encode(ds, target)

    from pydicom.dataset import Dataset
    from pydicom.uid import UID, ExplicitVRLittleEndian

    # Never modify the caller's dataset: conversions work on a copy.
    ds = copy.deepcopy(inst.dataset) if inst.dataset is not None else _read_full(inst)
    source = UID(inst.transfer_syntax)
    if source.is_compressed:
        if not hasattr(ds, "file_meta"):
            ds.file_meta = Dataset()  # type: ignore[assignment]
        ds.file_meta.TransferSyntaxUID = source
        ds.decompress(generate_instance_uid=False)
    elif not source.is_little_endian and UID(target).is_little_endian:
        _swap_to_little_endian(ds)
    if route.conversion == "compress":
        if hasattr(ds, "file_meta"):
            ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.compress(UID(target), generate_instance_uid=False)
    return _encode(ds, target)
