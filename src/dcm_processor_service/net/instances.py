"""Inputs of the sender, reduced to one list of :class:`Instance` records.

Every input form (a file, a folder, a list of files, datasets, a DICOMDIR) becomes a
list of instances in input order, each either a *file* (path + where its encoded dataset
starts, read lazily when sent) or an in-memory *dataset*. Scanning reads only the File
Meta Information (SOP class, SOP instance, transfer syntax: what negotiation needs);
the header without pixel data (``stop_before_pixels``) is read only when a
``filter_callback`` must see it or a file has no usable File Meta Information. Pixel
data is never decoded unless the instance must be converted for the peer
(:func:`build_payload`).
"""

from __future__ import annotations

import copy
import logging
import os
import struct
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset
from pydicom.filewriter import write_dataset
from pydicom.uid import (
    UID,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from .._errors import DicomInputError, InvalidInputError
from ..sources.dicomdir import dicomdir_references
from .contexts import Route
from .dimse import FileRegion

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

#: SOP class of a DICOMDIR: a file-set directory, never sent as an instance.
MEDIA_STORAGE_DIRECTORY: Final = "1.2.840.10008.1.3.10"

FilterCallback = Callable[[Dataset], Any]
SourceLike = str | os.PathLike[str] | Dataset | Iterable[Any]


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
def _is_pathlike(value: object) -> bool:
    return isinstance(value, (str, os.PathLike))


def _walk(folder: Path) -> Iterator[Path]:
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        for name in sorted(files):
            yield Path(root, name)


@dataclass(frozen=True)
class DicomdirFile:
    """A DICOMDIR to expand into the files it references, whatever its file name
    (``DicomSender.send_dicom_from_dicomdir``); a path-like."""

    path: Path

    def __fspath__(self) -> str:
        return os.fspath(self.path)


def _expand(item: object, position: str) -> Iterator[tuple[str, Path | Dataset | None, str | None]]:
    """Yield (source label, path or dataset, error) for one input element."""
    if isinstance(item, Dataset):
        yield position, item, None
        return
    if not _is_pathlike(item):
        raise InvalidInputError(
            f"invalid input {position}: {type(item).__name__} - expected a file or folder "
            f"path or a pydicom Dataset"
        )
    path = Path(os.fspath(item))  # type: ignore[call-overload]
    if path.is_dir():
        for child in _walk(path):
            yield str(child), child, None
    elif path.is_file():
        if isinstance(item, DicomdirFile) or path.name.upper() == "DICOMDIR":
            # contained in the DICOMDIR's folder; a reference outside is a local failure
            for ref in dicomdir_references(path):
                yield ref.label, ref.path, ref.problem
        else:
            yield str(path), path, None
    else:
        yield str(path), None, "file not found"


def gather(
    source: SourceLike,
    filter_callback: FilterCallback | None = None,
) -> tuple[list[Instance], list[str]]:
    """Scan ``source`` into instances; return (instances, skipped sources).

    ``source``: a file or folder path (folders are walked recursively, sorted; a file
    named DICOMDIR is expanded to the files it references), a pydicom Dataset, or an
    iterable mixing those. Instances ``filter_callback`` returns falsy for, and DICOMDIR
    files met while walking, are *skipped* (not instances).
    """
    if isinstance(source, Dataset) or _is_pathlike(source):
        elements: Iterable[Any] = [source]
        single = True
    elif isinstance(source, (bytes, bytearray)):
        raise InvalidInputError("invalid input: bytes - pass a path, a Dataset or a list of them")
    else:
        try:
            elements = iter(source)  # type: ignore[arg-type]
        except TypeError:
            raise InvalidInputError(
                f"invalid input: {type(source).__name__} - expected a path, a pydicom Dataset "
                f"or an iterable of them"
            ) from None
        single = False

    instances: list[Instance] = []
    skipped: list[str] = []
    n_datasets = 0
    for i, element in enumerate(elements):
        position = "dataset" if single else f"item #{i}"
        for label, obj, error in _expand(element, position):
            if isinstance(obj, Dataset):
                label = f"dataset #{n_datasets}"
                n_datasets += 1
            inst = Instance(index=len(instances), source=label)
            if error is not None:
                inst.error = error
            elif isinstance(obj, Dataset):
                _scan_dataset(inst, obj)
            elif obj is not None:
                _scan_file(inst, obj)
            if inst.sop_class_uid == MEDIA_STORAGE_DIRECTORY:
                logger.debug("skipping %s: a DICOMDIR is not sent as an instance", label)
                skipped.append(label)
                continue
            if filter_callback is not None and inst.sendable:
                header = inst.dataset if inst.dataset is not None else _read_header(inst)
                if header is not None and not filter_callback(header):
                    skipped.append(label)
                    continue
            inst.index = len(instances)
            instances.append(inst)
    return instances, skipped


# -- scanning --------------------------------------------------------------------------
def _not_group_2(tag: Any, vr: Any, length: Any) -> bool:
    return bool(tag.group != 2)


_META_PROBE: Final = 8192  # bytes read to find the File Meta Information
_LONG_VRS: Final = frozenset(
    {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
)
_META_ELEMENTS: Final = {0x0002: 1, 0x0003: 2, 0x0010: 3}  # class, instance, syntax


def _uid_text(value: bytes) -> str:
    return value.decode("ascii", "replace").strip("\x00 ")


def _parse_meta(buf: bytes) -> tuple[str, str, str, int] | None:
    """Fast path: (SOP class, SOP instance, transfer syntax, dataset offset) from the
    File Meta Information (group 0002, Explicit VR Little Endian) in ``buf``, or None
    when it is unusual (then pydicom reads it)."""
    pos = 132
    found: dict[int, str] = {}
    while pos + 8 <= len(buf):
        group, elem = struct.unpack_from("<HH", buf, pos)
        if group != 2:
            break
        vr = buf[pos + 4 : pos + 6]
        if vr in _LONG_VRS:
            if pos + 12 > len(buf):
                return None
            (length,) = struct.unpack_from("<I", buf, pos + 8)
            start = pos + 12
        else:
            (length,) = struct.unpack_from("<H", buf, pos + 6)
            start = pos + 8
        if length == 0xFFFFFFFF or start + length > len(buf):
            return None
        if elem in _META_ELEMENTS:
            found[_META_ELEMENTS[elem]] = _uid_text(buf[start : start + length])
        pos = start + length
    else:
        if len(buf) >= _META_PROBE:  # the meta may go on beyond what was read
            return None
    if len(found) != 3 or not all(found.values()):
        return None
    return found[1], found[2], found[3], pos


def _dataset_ids(buf: bytes, pos: int, ts: str) -> tuple[str | None, str | None] | None:
    """Fast path: (SOPClassUID, SOPInstanceUID) from the start of the dataset at
    ``buf[pos:]`` (they are among its first elements), or None when unusual."""
    try:
        uid = UID(ts)
        if uid.is_deflated or not uid.is_transfer_syntax:
            return None
        little, implicit = uid.is_little_endian, uid.is_implicit_VR
    except ValueError:
        return None
    end = "<" if little else ">"
    found: dict[int, str] = {}
    while pos + 8 <= len(buf):
        group, elem = struct.unpack_from(end + "HH", buf, pos)
        tag = (group << 16) | elem
        if tag > 0x00080018:
            break
        if implicit:
            (length,) = struct.unpack_from("<I", buf, pos + 4)
            start = pos + 8
        elif buf[pos + 4 : pos + 6] in _LONG_VRS:
            if pos + 12 > len(buf):
                return None
            (length,) = struct.unpack_from(end + "I", buf, pos + 8)
            start = pos + 12
        else:
            (length,) = struct.unpack_from(end + "H", buf, pos + 6)
            start = pos + 8
        if length == 0xFFFFFFFF or start + length > len(buf):
            return None
        if tag in (0x00080016, 0x00080018):
            found[tag] = _uid_text(buf[start : start + length])
        pos = start + length
    else:
        return None  # the buffer ended before (0008,0018) was passed
    return found.get(0x00080016), found.get(0x00080018)


def _dataset_ids_slow(path: Path) -> tuple[str | None, str | None] | None:
    try:
        with warnings.catch_warnings():  # pydicom's complaints about odd files: ours follow
            warnings.simplefilter("ignore")
            ds = dcmread(
                path, stop_before_pixels=True, specific_tags=["SOPClassUID", "SOPInstanceUID"]
            )
    except Exception:  # the meta was readable: keep its UIDs
        return None
    values = (ds.get("SOPClassUID"), ds.get("SOPInstanceUID"))
    return tuple(str(v) if v else None for v in values)  # type: ignore[return-value]


def _parse_meta_slow(path: Path) -> tuple[str, str, str, int] | None:
    try:
        with path.open("rb") as fp:
            fp.seek(132)
            meta = read_dataset(
                fp, is_implicit_VR=False, is_little_endian=True, stop_when=_not_group_2
            )
            offset = fp.tell()
        values = [
            meta.get(k)
            for k in ("MediaStorageSOPClassUID", "MediaStorageSOPInstanceUID", "TransferSyntaxUID")
        ]
    except Exception:  # malformed: the caller falls back to a full header read
        return None
    if not all(values):
        return None
    sop_class, sop_instance, ts = (str(v).strip("\x00 ") for v in values)
    return sop_class, sop_instance, ts, offset


def _scan_file(inst: Instance, path: Path) -> None:
    inst.path = path
    try:
        with path.open("rb") as fp:
            head = fp.read(_META_PROBE)
    except OSError as exc:
        inst.error = f"cannot read file: {exc.strerror or exc}"
        return
    if len(head) >= 132 and head[128:132] == b"DICM":
        found = _parse_meta(head) or _parse_meta_slow(path)
        if found is not None:
            sop_class, sop_instance, ts, offset = found
            ids = _dataset_ids(head, offset, ts) or _dataset_ids_slow(path)
            if ids is not None:
                # The C-STORE must name the UIDs the dataset holds (peers such as Orthanc
                # check): when the File Meta Information disagrees, the dataset wins.
                for label, meta_value, value in (
                    ("SOP Class UID", sop_class, ids[0]),
                    ("SOP Instance UID", sop_instance, ids[1]),
                ):
                    if value and value != meta_value:
                        logger.warning(
                            "%s: File Meta Information %s %s differs from the dataset's %s - "
                            "using the dataset's",
                            path,
                            label,
                            meta_value,
                            value,
                        )
                sop_class, sop_instance = ids[0] or sop_class, ids[1] or sop_instance
            inst.sop_class_uid, inst.sop_instance_uid = sop_class, sop_instance
            inst.transfer_syntax = ts
            inst.offset = offset  # deflated data too: its bytes are sent as stored
            return
    # No (usable) File Meta Information: read the header and work from the dataset.
    try:
        ds = _quiet_header(path)
    except Exception as exc:
        inst.error = f"not a readable DICOM file: {exc}"
        return
    sop_class = ds.get("SOPClassUID")
    sop_instance = ds.get("SOPInstanceUID")
    if not sop_class or not sop_instance:
        inst.error = "not a DICOM file (no 'DICM' prefix and no SOP Class/Instance UID)"
        return
    inst.sop_class_uid = str(sop_class)
    inst.sop_instance_uid = str(sop_instance)
    inst.transfer_syntax = _syntax_of(ds) or str(ExplicitVRLittleEndian)
    inst.offset = None  # must be read fully and re-encoded


def _syntax_of(ds: Dataset) -> str | None:
    meta = getattr(ds, "file_meta", None)
    ts = meta.get("TransferSyntaxUID") if meta is not None else None
    if ts:
        return str(ts)
    implicit, little = ds.original_encoding
    if implicit is None or little is None:
        return None
    if implicit:
        return str(ImplicitVRLittleEndian)
    return str(ExplicitVRLittleEndian if little else ExplicitVRBigEndian)


def _scan_dataset(inst: Instance, ds: Dataset) -> None:
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
    ts = _syntax_of(ds)
    if ts is None:
        if "PixelData" in ds and ds["PixelData"].is_undefined_length:
            inst.error = (
                "the dataset holds encapsulated (compressed) Pixel Data but no "
                "file_meta.TransferSyntaxUID saying how it is compressed"
            )
            return
        ts = str(ExplicitVRLittleEndian)
    inst.transfer_syntax = ts


def _quiet_header(path: Path) -> Dataset:
    """The header (no pixel data) of a file; pydicom's warnings about odd encodings are
    silenced - whether the result is usable is judged from its content."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return dcmread(path, force=True, stop_before_pixels=True)


def _read_header(inst: Instance) -> Dataset | None:
    assert inst.path is not None
    try:
        return _quiet_header(inst.path)
    except Exception as exc:
        inst.error = f"not a readable DICOM file: {exc}"
        return None


# -- payloads --------------------------------------------------------------------------
def _encode(ds: Dataset, ts: str) -> bytes:
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
    return dcmread(inst.path, force=True)


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
