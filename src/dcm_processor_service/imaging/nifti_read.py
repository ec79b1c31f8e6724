"""DICOM <-> NIfTI: dcm2niix-based conversion in, exact geometry and values out.

DICOM -> NIfTI (:func:`dicom_series_to_nifti`, :func:`series_files_to_nifti`) runs the
``dcm2niix`` binary of the ``dcm2niix`` PyPI package in a subprocess, in a private
temporary directory. When dcm2niix writes several volumes (echoes, overlays ``_ROIn``,
equalised ``_Eq`` or tilt-corrected ``_Tilt`` copies, localizers ``_iNNNNN``) the
*main* one is kept (:func:`choose_main_volume`).

NIfTI -> DICOM (:func:`nifti_to_dicom`) writes one single-frame CT, MR or Secondary
Capture image per slice along the NIfTI's third axis, with the geometry of the affine
(any orientation, oblique included; NIfTI RAS becomes DICOM LPS) and the values
preserved (see :mod:`._img_pixels` for how values map onto 16-bit pixels).
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, cast

import nibabel as nib
import numpy as np
import pydicom
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import (
    CTImageStorage,
    ExplicitVRLittleEndian,
    MRImageStorage,
    SecondaryCaptureImageStorage,
)

from .._errors import (
    ConversionError,
    DicomInputError,
    InvalidInputError,
    MissingDependencyError,
)
from ..index.metadata import get_simplified_json
from .derived import (
    AlgorithmInfo,
    _check_description,
    _check_series_number,
    _da,
    _now,
    _tm,
    derived_series_number,
    ensure_file_meta,
    has_transfer_syntax,
    make_series_dicom,
    new_uid,
    package_version,
    reference_dataset,
)
from .geometry import (
    FLIP_XY,
    choose_display_mapping,
    format_ds,
    plane_of_orientation,
)
from .pixels import PixelEncoding, choose_encoding

__all__ = [
    "SeriesInput",
    "choose_main_volume",
    "dcm2niix_args",
    "dicom_series_to_nifti",
    "find_dcm2niix",
    "nifti_to_dicom",
    "series_files_to_nifti",
]

logger = logging.getLogger(__name__)

#: A series given as a directory, or as DICOM file paths and/or pydicom datasets.
SeriesInput = str | os.PathLike[str] | Iterable[str | os.PathLike[str] | Dataset]

_SOP_CLASS_KIND: Final = {
    str(CTImageStorage): "CT",
    str(MRImageStorage): "MR",
    str(SecondaryCaptureImageStorage): "SC",
}
_KIND_SOP_CLASS: Final = {kind: uid for uid, kind in _SOP_CLASS_KIND.items()}
_SOP_CLASS_NAMES: Final = {
    "CT": "CT Image Storage",
    "MR": "MR Image Storage",
    "SC": "Secondary Capture Image Storage",
}


# --------------------------------------------------------------------------- dcm2niix


@functools.lru_cache(maxsize=1)
def find_dcm2niix() -> str:
    """Path of the dcm2niix binary: the ``dcm2niix`` PyPI package's, else one on PATH.

    Raises :class:`MissingDependencyError` when neither exists.
    """
    try:
        import dcm2niix  # the PyPI wrapper: exposes the bundled binary as ``bin``
    except ImportError:
        candidate = None
    else:
        candidate = getattr(dcm2niix, "bin", None)
    if candidate and os.path.isfile(candidate) and os.access(candidate, os.X_OK):
        return str(candidate)
    found = shutil.which("dcm2niix")
    if found:
        return found
    raise MissingDependencyError(
        "the dcm2niix binary was not found - install the 'dcm2niix' package "
        "(pip install dcm2niix, a dependency of dcm-processor-service) or put dcm2niix on PATH"
    )


def _compression_for(path: Path, compress: bool | None) -> bool:
    name = path.name.lower()
    if name.endswith(".nii.gz"):
        by_name = True
    elif name.endswith(".nii"):
        by_name = False
    else:
        raise InvalidInputError(
            f"invalid output file name {str(path)!r} - must end with '.nii' (uncompressed) "
            "or '.nii.gz' (gzip-compressed)"
        )
    if compress is not None and bool(compress) != by_name:
        raise InvalidInputError(
            f"'compress={compress}' contradicts the output file name {path.name!r} - use a "
            f"name ending with {'.nii.gz' if compress else '.nii'} or leave 'compress' unset"
        )
    return by_name


def _check_level(level: int | None) -> int | None:
    if level is None:
        return None
    if isinstance(level, bool) or not isinstance(level, int) or not 1 <= level <= 9:
        raise InvalidInputError(
            f"invalid 'compression_level' value {level!r} - must be an int in 1..9 "
            "(1 fastest, 9 smallest)"
        )
    return level


def dcm2niix_args(
    input_dir: str | os.PathLike[str],
    output_dir: str | os.PathLike[str],
    *,
    compress: bool,
    compression_level: int | None = None,
    filename: str = "%j",
) -> list[str]:
    """The dcm2niix command line this module runs (defaults file ignored, BIDS sidecar)."""
    args = [find_dcm2niix(), "-g", "i", "-b", "y", "-ba", "y", "-z", "y" if compress else "n"]
    if compress and compression_level is not None:
        args.append(f"-{compression_level}")
    args += ["-f", filename, "-o", os.fspath(output_dir), os.fspath(input_dir)]
    return args


def _dcm2niix_message(output: str) -> str:
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    errors = [line for line in lines if "error" in line.lower()]
    picked = errors or lines[-3:]
    return "; ".join(picked) or "no output"


def _run_dcm2niix(
    input_dir: Path,
    output_dir: Path,
    *,
    compress: bool,
    compression_level: int | None,
    timeout: float | None,
    source: str,
) -> list[Path]:
    args = dcm2niix_args(
        input_dir, output_dir, compress=compress, compression_level=compression_level
    )
    logger.debug("running %s", " ".join(args))
    try:
        done = subprocess.run(
            args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise ConversionError(
            f"dcm2niix did not finish converting {source} within {timeout} s"
        ) from exc
    except OSError as exc:
        raise ConversionError(f"cannot run dcm2niix ({args[0]}): {exc}") from exc
    output = done.stdout.decode("utf-8", errors="replace")
    for line in output.splitlines():
        if line.strip():
            logger.debug("dcm2niix: %s", line.rstrip())
    produced = sorted(
        p for p in output_dir.iterdir() if p.name.endswith((".nii", ".nii.gz")) and p.is_file()
    )
    if done.returncode != 0 or not produced:
        raise ConversionError(
            f"dcm2niix could not convert {source} (exit code {done.returncode}): "
            f"{_dcm2niix_message(output)}"
        )
    return produced


def _volume_key(path: Path) -> tuple[bool, int, float, int]:
    img: Any = nib.load(path)  # header only: the data stay on disk
    shape = img.shape
    zooms = img.header.get_zooms()[:3]
    voxel_volume = float(np.prod([float(z) for z in zooms])) if zooms else 1.0
    is_roi = "_ROI" in path.name
    return (not is_roi, int(np.prod(shape)), -voxel_volume, img.get_data_dtype().itemsize)


def choose_main_volume(paths: Sequence[str | os.PathLike[str]]) -> Path:
    """Pick the main volume among dcm2niix's outputs.

    Order of preference: not an overlay ROI (``_ROIn``), then the most voxels, then the
    finest spacing (smallest voxel volume), then the widest data type; ties keep the
    first by file name.
    """
    if not paths:
        raise InvalidInputError("no NIfTI files to choose from")
    candidates = sorted(Path(p) for p in paths)
    if len(candidates) == 1:
        return candidates[0]
    keyed = [(_volume_key(p), -i, p) for i, p in enumerate(candidates)]
    chosen = max(keyed)[2]
    logger.info(
        "dcm2niix wrote %d volumes (%s); using %s",
        len(candidates),
        ", ".join(p.name for p in candidates),
        chosen.name,
    )
    return chosen


def _stem(path: Path) -> str:
    name = path.name
    return name[: -len(".nii.gz")] if name.endswith(".nii.gz") else name[: -len(".nii")]


def _sidecar_path(nifti: Path) -> Path | None:
    """dcm2niix's JSON for ``nifti``: same stem, or that of the volume it derives from."""
    stem = _stem(nifti)
    while stem:
        candidate = nifti.with_name(stem + ".json")
        if candidate.is_file():
            return candidate
        stem = stem.rpartition("_")[0]
    return None


@dataclass
class _Staged:
    directory: Path
    paths: list[Path] | None = None  # files given explicitly (else: walk the directory)
    datasets: list[Dataset] | None = None
    label: str = ""


def _stage(series: SeriesInput, work: Path) -> _Staged:
    """Give dcm2niix a directory holding exactly the series' files."""
    if isinstance(series, (str, os.PathLike)):
        path = Path(series)
        if path.is_dir():
            return _Staged(path, label=f"'{path}'")
        if path.is_file():
            series = [path]
        else:
            raise InvalidInputError(
                f"invalid series path {str(path)!r} - no such directory or file"
            )
    if isinstance(series, Dataset):
        series = [series]
    items = list(series)
    if not items:
        raise InvalidInputError("invalid series value [] - need at least one DICOM file or dataset")
    staged = work / "in"
    staged.mkdir()
    paths: list[Path] = []
    datasets: list[Dataset] = []
    for index, item in enumerate(items):
        target = staged / f"{index:06d}.dcm"
        if isinstance(item, Dataset):
            ds = item
            if "SOPClassUID" not in ds or "SOPInstanceUID" not in ds:
                raise DicomInputError(
                    f"series dataset {index} lacks SOPClassUID/SOPInstanceUID - cannot "
                    "write it for conversion"
                )
            if has_transfer_syntax(ds):
                pydicom.dcmwrite(target, ds, enforce_file_format=True)
            else:  # in-memory dataset: native pixels; write a copy, leave the caller's alone
                view = Dataset(ds)
                view.file_meta = FileMetaDataset()
                view.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
                pydicom.dcmwrite(target, view, enforce_file_format=True)
            datasets.append(ds)
        elif isinstance(item, (str, os.PathLike)):
            source = Path(item)
            if not source.is_file():
                raise InvalidInputError(f"invalid series file {str(source)!r} - no such file")
            try:
                target.symlink_to(source.resolve())
            except OSError:
                shutil.copyfile(source, target)
            paths.append(source)
        else:
            raise InvalidInputError(
                f"invalid series item {index} of type {type(item).__name__} - must be a path "
                "or a pydicom Dataset"
            )
    return _Staged(staged, paths or None, datasets or None, label=f"{len(items)} DICOM input(s)")


def _candidate_files(staged: _Staged) -> list[Path]:
    if staged.paths is not None:
        return staged.paths
    if staged.datasets:
        return []
    return sorted(p for p in staged.directory.rglob("*") if p.is_file())


def _read_header(path: Path, tags: list[str] | None = None) -> Dataset | None:
    try:
        return pydicom.dcmread(path, stop_before_pixels=True, specific_tags=tags)
    except (InvalidDicomError, OSError, ValueError, EOFError):
        return None


def _first_dataset(staged: _Staged, series_uid: str) -> Dataset | None:
    """The first header (by file name for a directory) of the converted series.

    Falls back to the first readable header when no file names ``series_uid``. Files
    are scanned reading only their SeriesInstanceUID; the match is then read in full.
    """
    for ds in staged.datasets or []:
        if str(ds.get("SeriesInstanceUID", "")) == series_uid:
            return ds
    first: Path | None = None
    for path in _candidate_files(staged):
        quick = _read_header(path, ["SeriesInstanceUID"])
        if quick is None:
            continue
        first = first or path
        if str(quick.get("SeriesInstanceUID", "")) == series_uid:
            return _read_header(path)
    if staged.datasets:
        return staged.datasets[0]
    return _read_header(first) if first is not None else None


@dataclass
class _Converted:
    nifti: Path
    sidecar: dict[str, Any]
    n_slices: int
    series_uid: str


def _convert(
    series: SeriesInput,
    work: Path,
    *,
    compress: bool,
    compression_level: int | None,
    timeout: float | None,
) -> tuple[_Converted, _Staged]:
    staged = _stage(series, work)
    out = work / "out"
    out.mkdir()
    produced = _run_dcm2niix(
        staged.directory,
        out,
        compress=compress,
        compression_level=compression_level,
        timeout=timeout,
        source=staged.label,
    )
    main = choose_main_volume(produced)
    sidecar_file = _sidecar_path(main)
    sidecar: dict[str, Any] = {}
    if sidecar_file is not None:
        with sidecar_file.open(encoding="utf-8") as fh:
            sidecar = json.load(fh)
    shape = cast(Any, nib.load(main)).shape
    n_slices = int(shape[2]) if len(shape) >= 3 else 1
    series_uid = _stem(main).partition("_")[0]
    return _Converted(main, sidecar, n_slices, series_uid), staged


def dicom_series_to_nifti(
    series_path: SeriesInput,
    output_file: str | os.PathLike[str],
    *,
    compress: bool | None = None,
    compression_level: int | None = None,
    timeout: float | None = None,
) -> int:
    """Convert a DICOM series to one NIfTI file with dcm2niix; return its slice count.

    ``series_path`` is a directory (searched like dcm2niix does, 5 levels deep), a DICOM
    file, or a list of files and/or pydicom datasets. ``output_file`` must end with
    ``.nii.gz`` (compressed) or ``.nii`` (uncompressed - several times faster, since
    gzip is most of the work); ``compress`` may state the same explicitly.
    ``compression_level`` (1-9, dcm2niix default 6) trades speed for size. When dcm2niix
    writes several volumes the main one is kept (:func:`choose_main_volume`).

    The file appears atomically (written beside it, then renamed). Raises
    :class:`ConversionError` with dcm2niix's message when it fails,
    :class:`InvalidInputError` for bad arguments.
    """
    target = Path(output_file)
    compressed = _compression_for(target, compress)
    level = _check_level(compression_level)
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".dcm2niix-") as tmp:
        converted, _ = _convert(
            series_path,
            Path(tmp),
            compress=compressed,
            compression_level=level,
            timeout=timeout,
        )
        os.replace(converted.nifti, target)
    logger.debug("wrote %s (%d slices)", target, converted.n_slices)
    return converted.n_slices


def _json_path(nifti_path: Path) -> Path:
    return nifti_path.with_name(_stem(nifti_path) + ".json")


def _merged_sidecar(converted: _Converted, staged: _Staged) -> dict[str, Any]:
    sidecar = dict(converted.sidecar)
    first = _first_dataset(staged, converted.series_uid)
    if first is not None:
        sidecar.update(get_simplified_json(first, converted.n_slices))
    else:
        sidecar["Slices"] = converted.n_slices
    return sidecar


def series_files_to_nifti(
    dicom_files_or_dir: SeriesInput,
    filename: str | os.PathLike[str] | None = None,
    *,
    compress: bool | None = None,
    compression_level: int | None = None,
    timeout: float | None = None,
) -> tuple[Any, Any, Any]:
    """Convert a series with dcm2niix - the return contract of ``get_series_nifti``.

    With ``filename`` (``.nii`` or ``.nii.gz``): writes the NIfTI and a JSON sidecar
    beside it (same name, ``.json``) and returns ``(nifti_path, json_path, None)`` as
    strings. Without: returns ``(nibabel_image, sidecar_dict, float32_array)``, all in
    memory - no file is left behind. ``array`` holds the scaled voxel values and *is*
    the image's data (``image.dataobj``; change one and you change both), so memory
    holds one float32 copy of the volume; the image has dcm2niix's header (affine,
    units, description) with data type float32.

    The sidecar is dcm2niix's BIDS sidecar updated with
    :func:`~dcm_processor_service.dicom.simplified_json.get_simplified_json` of the
    chosen series' first file (by file name for a directory, else the first given):
    DICOM keywords win over BIDS keys of the same name, and ``Slices`` is the volume's
    slice count.
    """
    level = _check_level(compression_level)
    if filename is not None:
        target = Path(filename)
        compressed = _compression_for(target, compress)
        target.parent.mkdir(parents=True, exist_ok=True)
        json_target = _json_path(target)
        with tempfile.TemporaryDirectory(dir=target.parent, prefix=".dcm2niix-") as tmp:
            converted, staged = _convert(
                dicom_files_or_dir,
                Path(tmp),
                compress=compressed,
                compression_level=level,
                timeout=timeout,
            )
            sidecar = _merged_sidecar(converted, staged)
            json_tmp = Path(tmp) / "sidecar.json"
            json_tmp.write_text(json.dumps(sidecar, indent=2, allow_nan=False), encoding="utf-8")
            os.replace(converted.nifti, target)
            os.replace(json_tmp, json_target)
        return str(target), str(json_target), None

    if compress:
        raise InvalidInputError(
            "'compress=True' needs a 'filename' - in memory nothing is compressed"
        )
    with tempfile.TemporaryDirectory(prefix="dcm2niix-") as tmp:
        converted, staged = _convert(
            dicom_files_or_dir, Path(tmp), compress=False, compression_level=None, timeout=timeout
        )
        sidecar = _merged_sidecar(converted, staged)
        image, array = _load_in_memory(converted.nifti)
    return image, sidecar, array


def _load_in_memory(path: Path) -> tuple[nib.Nifti1Image, np.ndarray]:
    """Read a NIfTI into one float32 array and an image that shares it (no file kept).

    The data are read once through a memory map and scaled straight into float32, so
    the peak is the float32 array plus page cache - no raw copy, no float64 copy.
    The image's header is dcm2niix's with the data type set to float32 and no scaling,
    so saving the image writes exactly the values of the array.
    """
    on_disk: Any = nib.load(path, mmap=True)
    proxy = on_disk.dataobj
    raw = proxy.get_unscaled()
    array = np.empty_like(raw, dtype=np.float32)  # same (Fortran) layout: a straight copy
    np.copyto(array, raw, casting="unsafe")
    slope = float(getattr(proxy, "slope", 1.0))
    inter = float(getattr(proxy, "inter", 0.0))
    if slope != 1.0:
        array *= np.float32(slope)
    if inter != 0.0:
        array += np.float32(inter)
    del raw  # drop the memory map before the file goes
    header = on_disk.header.copy()
    header.set_data_dtype(np.float32)
    header.set_slope_inter(1.0, 0.0)
    image = nib.Nifti1Image(array, on_disk.affine, header)
    return image, array


# --------------------------------------------------------------------------- NIfTI -> DICOM


def _resolve_sop_class(modality: Any, sop_class_uid: Any) -> tuple[str, str, str]:
    """Return (modality, SOP class UID, kind CT/MR/SC)."""
    if not isinstance(modality, str) or not modality.strip():
        raise InvalidInputError(
            f"invalid 'modality' value {modality!r} - must be a DICOM modality such as 'CT', "
            "'MR' or 'OT'"
        )
    mod = modality.strip().upper()
    if len(mod) > 16 or not all(c.isalnum() or c == "_" for c in mod):
        raise InvalidInputError(
            f"invalid 'modality' value {modality!r} - must be at most 16 letters, digits or '_'"
        )
    if sop_class_uid is None:
        kind = mod if mod in ("CT", "MR") else "SC"
        return mod, _KIND_SOP_CLASS[kind], kind
    uid = str(sop_class_uid).strip()
    found = _SOP_CLASS_KIND.get(uid)
    if found is None:
        known = ", ".join(f"{u} ({_SOP_CLASS_NAMES[k]})" for u, k in _SOP_CLASS_KIND.items())
        raise InvalidInputError(
            f"invalid 'sop_class_uid' value {uid!r} - nifti_to_dicom writes one of: {known}"
        )
    if found in ("CT", "MR") and mod != found:
        raise InvalidInputError(
            f"'sop_class_uid' {uid} ({_SOP_CLASS_NAMES[found]}) needs modality {found!r}, "
            f"got {modality!r}"
        )
    return mod, uid, found


def _load_volume(img_nib: Any) -> tuple[np.ndarray, float, float, np.ndarray]:
    """(raw 3-D array, scl_slope, scl_inter, affine) without scaling the data."""
    if isinstance(img_nib, (str, os.PathLike)):
        try:
            img_nib = nib.load(img_nib)
        except Exception as exc:
            raise InvalidInputError(
                f"cannot read NIfTI file {os.fspath(img_nib)!r}: {exc}"
            ) from exc
    if not hasattr(img_nib, "affine") or not hasattr(img_nib, "dataobj"):
        raise InvalidInputError(
            f"invalid 'img_nib' value of type {type(img_nib).__name__} - must be a nibabel "
            "image (e.g. nibabel.Nifti1Image) or the path of a NIfTI file"
        )
    shape = tuple(int(n) for n in img_nib.shape)
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    if len(shape) != 3:
        raise InvalidInputError(
            f"invalid 'img_nib' shape {tuple(img_nib.shape)} - a 3-D volume (x, y, slices) is "
            "needed; split a 4-D series with nibabel.funcs.four_to_three or add a slice "
            "axis to a 2-D image"
        )
    if min(shape) < 1:
        raise InvalidInputError(f"invalid 'img_nib' shape {shape} - the volume is empty")
    affine = img_nib.affine
    if affine is None:
        raise InvalidInputError("invalid 'img_nib' - it has no affine (voxel to world mapping)")
    affine = np.asarray(affine, dtype=np.float64)
    if affine.shape != (4, 4) or not np.isfinite(affine).all():
        raise InvalidInputError(f"invalid 'img_nib' affine {affine.tolist()} - must be finite 4x4")
    dataobj = img_nib.dataobj
    if nib.is_proxy(dataobj) and hasattr(dataobj, "get_unscaled"):
        raw = np.asanyarray(dataobj.get_unscaled())
        slope = float(getattr(dataobj, "slope", 1.0) or 1.0)
        inter = float(getattr(dataobj, "inter", 0.0) or 0.0)
        if not math.isfinite(slope) or slope == 0.0:
            slope = 1.0
        if not math.isfinite(inter):
            inter = 0.0
    else:
        raw = np.asanyarray(dataobj)
        slope, inter = 1.0, 0.0
    if raw.ndim == 4:
        raw = raw[..., 0]
    if raw.dtype.kind not in "biuf" or raw.dtype.fields is not None:
        raise InvalidInputError(
            f"invalid 'img_nib' data type {raw.dtype} - only real scalar voxels (integer, "
            "float or bool) can become DICOM pixels"
        )
    return raw, slope, inter, affine


@dataclass(frozen=True)
class _Geometry:
    column_axis: int
    rows: int
    columns: int
    orientation: list[str]
    pixel_spacing: list[str]
    thickness: str
    origin: np.ndarray
    step: np.ndarray
    normal: np.ndarray
    plane: str
    patient_orientation: list[str]


def _direction_letters(vector: np.ndarray) -> str:
    letters = []
    for axis in np.argsort(-np.abs(vector)):
        value = vector[axis]
        if abs(value) < 1e-3:
            continue
        letters.append(("L", "P", "H")[axis] if value > 0 else ("R", "A", "F")[axis])
    return "".join(letters[:3])


def _geometry(affine: np.ndarray, shape: tuple[int, ...]) -> tuple[_Geometry, Any]:
    lps = FLIP_XY @ affine
    mapping = choose_display_mapping(lps, shape)
    index = lps @ mapping.index_to_voxel
    row_vec, col_vec, step, origin = index[:3, 0], index[:3, 1], index[:3, 2], index[:3, 3]
    d_col, d_row = float(np.linalg.norm(row_vec)), float(np.linalg.norm(col_vec))
    if d_col == 0.0 or d_row == 0.0 or float(np.linalg.norm(step)) == 0.0:
        raise InvalidInputError(
            f"invalid 'img_nib' affine {affine.tolist()} - an axis has zero length"
        )
    row_dir, col_dir = row_vec / d_col, col_vec / d_row
    cosine = float(row_dir @ col_dir)
    if abs(cosine) > 1e-4:
        raise InvalidInputError(
            f"invalid 'img_nib' affine - the in-plane axes are not perpendicular (angle "
            f"{math.degrees(math.acos(max(-1.0, min(1.0, cosine)))):.3f} degrees); DICOM pixels "
            "form a rectangular grid, so resample the volume first"
        )
    normal = np.cross(row_dir, col_dir)
    spacing = float(step @ normal)
    if abs(spacing) < 1e-6:
        raise InvalidInputError(
            f"invalid 'img_nib' affine {affine.tolist()} - the slice axis lies in the image plane"
        )
    shear = float(np.linalg.norm(step - spacing * normal))
    if shear > 1e-4 * abs(spacing):
        logger.info(
            "slices are sheared (e.g. gantry tilt, %.2f mm per slice): each position is exact, "
            "SliceThickness is the perpendicular spacing",
            shear,
        )

    def clean(v: np.ndarray) -> list[str]:
        return [format_ds(0.0 if abs(x) < 1e-12 else float(x)) for x in v]

    orientation = clean(row_dir) + clean(col_dir)
    geometry = _Geometry(
        column_axis=mapping.column_axis,
        rows=int(shape[1 - mapping.column_axis]),
        columns=int(shape[mapping.column_axis]),
        orientation=orientation,
        pixel_spacing=[format_ds(d_row), format_ds(d_col)],
        thickness=format_ds(abs(spacing)),
        origin=origin,
        step=step,
        normal=normal,
        plane=plane_of_orientation([float(v) for v in orientation]),
        patient_orientation=[_direction_letters(row_dir), _direction_letters(col_dir)],
    )
    return geometry, mapping


def _keyword_element(keyword: str, value: Any) -> DataElement:
    tag = tag_for_keyword(keyword)
    if tag is None:
        raise InvalidInputError(f"unknown DICOM keyword {keyword!r}")
    return DataElement(tag, dictionary_VR(tag), value)


def _template(
    *,
    kind: str,
    modality: str,
    sop_class: str,
    geometry: _Geometry,
    encoding: PixelEncoding,
    description: str,
    series_number: int,
    study_uid: str,
    series_uid: str,
    frame_uid: str,
    patient: Mapping[str, Any] | None,
    algorithm: AlgorithmInfo | None,
    moment: Any,
) -> list[DataElement]:
    """Elements shared by every slice of the series."""
    date, time = _da(moment), _tm(moment)
    values: dict[str, Any] = {
        "ImageType": ["DERIVED", "SECONDARY", geometry.plane],
        "InstanceCreationDate": date,
        "InstanceCreationTime": time,
        "SOPClassUID": sop_class,
        "StudyDate": date,
        "SeriesDate": date,
        "ContentDate": date,
        "StudyTime": time,
        "SeriesTime": time,
        "ContentTime": time,
        "AccessionNumber": "",
        "Modality": modality,
        "Manufacturer": algorithm.manufacturer if algorithm else "dcm-processor-service",
        "ReferringPhysicianName": "",
        "ManufacturerModelName": algorithm.name if algorithm else "dcm-processor-service",
        "SoftwareVersions": algorithm.version if algorithm else package_version(),
        "PatientName": "ANONYMOUS^",
        "PatientID": "ANON" + new_uid().replace(".", "")[-12:],
        "PatientBirthDate": "",
        "PatientSex": "",
        "StudyInstanceUID": study_uid,
        "SeriesInstanceUID": series_uid,
        "StudyID": "1",
        "Laterality": "",
        "SeriesNumber": series_number,
        "PatientOrientation": geometry.patient_orientation,
        "ImageOrientationPatient": geometry.orientation,
        "FrameOfReferenceUID": frame_uid,
        "PositionReferenceIndicator": "",
        "SamplesPerPixel": 1,
        "PhotometricInterpretation": "MONOCHROME2",
        "Rows": geometry.rows,
        "Columns": geometry.columns,
        "PixelSpacing": geometry.pixel_spacing,
        "BitsAllocated": encoding.bits_allocated,
        "BitsStored": encoding.bits_allocated,
        "HighBit": encoding.bits_allocated - 1,
        "PixelRepresentation": encoding.pixel_representation,
        "RescaleIntercept": encoding.rescale_intercept,
        "RescaleSlope": encoding.rescale_slope,
        "SliceThickness": geometry.thickness,
        "BurnedInAnnotation": "NO",
        "DerivationDescription": (
            f"Converted from NIfTI by dcm-processor-service {package_version()}"
            + (f"; {algorithm.name} {algorithm.version}" if algorithm else "")
        )[:1024],
    }
    if description:
        values["SeriesDescription"] = description
    if not encoding.exact:
        values["LossyImageCompression"] = "01"  # values were quantised to 16 bits
    width = encoding.value_max - encoding.value_min
    if width > 0:
        values["WindowCenter"] = format_ds((encoding.value_max + encoding.value_min) / 2)
        values["WindowWidth"] = format_ds(width + (1 if encoding.exact else 0))
        if width < 1:
            values["VOILUTFunction"] = "LINEAR_EXACT"
    if kind in ("CT", "MR"):
        values["PatientPosition"] = ""
    if kind == "CT":
        values.update({"KVP": "", "AcquisitionNumber": ""})
    elif kind == "MR":
        values.update(
            {
                "ScanningSequence": "RM",
                "SequenceVariant": "NONE",
                "ScanOptions": "",
                "MRAcquisitionType": "",
                "RepetitionTime": "",
                "EchoTime": "",
                "EchoTrainLength": "",
                "SpacingBetweenSlices": geometry.thickness,
            }
        )
    else:
        values.update({"ConversionType": "WSD", "RescaleType": "US"})
    elements = [_keyword_element(k, v) for k, v in values.items()]
    for keyword, value in (patient or {}).items():
        elements = [e for e in elements if e.keyword != keyword]
        elements.append(_keyword_element(keyword, value))
    if algorithm is not None:
        elements.append(
            DataElement(0x0018A001, "SQ", DicomSequence([algorithm.contributing_equipment(moment)]))
        )
    return elements


def nifti_to_dicom(
    img_nib: Any,
    modality: str,
    series_description: str = "",
    study_instance_uid: str | None = None,
    sop_class_uid: str | None = None,
    ref_dcm: Dataset | str | os.PathLike[str] | None = None,
    *,
    series_number: int | None = None,
    patient: Mapping[str, Any] | None = None,
    algorithm: AlgorithmInfo | None = None,
    frame_of_reference_uid: str | None = None,
) -> list[Dataset]:
    """Turn a 3-D NIfTI volume into a DICOM series, one image per slice (third axis).

    Geometry comes from ``img_nib.affine`` for any orientation, oblique included
    (RAS -> LPS): ImageOrientationPatient, ImagePositionPatient per slice,
    PixelSpacing, SliceThickness (and SpacingBetweenSlices for MR). The in-plane axes
    are ordered and flipped so viewers show the radiological convention; the geometry
    is exact either way. Values are preserved: integers that fit 16 bits exactly
    (signed when negative, unsigned otherwise, with RescaleIntercept when only an offset
    makes them fit); anything else through RescaleSlope/RescaleIntercept with rounding
    error at most slope/2 (marked ``LossyImageCompression=01``). NIfTI scaling on
    integer data becomes the rescale as is. The volume is converted slice by slice
    (no float64 copy of it).

    The SOP class follows ``sop_class_uid`` (CT, MR or Secondary Capture Image Storage)
    or the modality (CT, MR, anything else Secondary Capture). Without ``ref_dcm`` the
    header is complete on its own: new Study, Series and Frame of Reference UIDs (or
    ``study_instance_uid``), patient "ANONYMOUS" with a generated ID unless ``patient``
    (keyword -> value) says otherwise. With ``ref_dcm`` the series joins the
    reference's patient and study through
    :func:`~dcm_processor_service.dicom.derived.make_series_dicom` (and takes its frame
    of reference). ``algorithm`` records AI provenance.

    Raises :class:`InvalidInputError` for a volume that is not 3-D, a degenerate or
    sheared affine, or bad arguments; :class:`DicomInputError` for an unusable
    reference.
    """
    mod, sop_class, kind = _resolve_sop_class(modality, sop_class_uid)
    description = _check_description(series_description)
    number = None if series_number is None else _check_series_number(series_number)
    ref = reference_dataset(ref_dcm, "ref_dcm") if ref_dcm is not None else None
    if ref is not None and study_instance_uid and str(study_instance_uid) != ref.StudyInstanceUID:
        raise InvalidInputError(
            f"'study_instance_uid' {study_instance_uid!r} differs from the reference's "
            f"StudyInstanceUID {ref.StudyInstanceUID!r} - a series with 'ref_dcm' joins the "
            "reference's study; pass only one of them"
        )
    if patient is not None and not isinstance(patient, Mapping):
        raise InvalidInputError(
            f"invalid 'patient' value of type {type(patient).__name__} - must be a mapping "
            "of DICOM keyword to value"
        )
    raw, slope, inter, affine = _load_volume(img_nib)
    shape = tuple(int(n) for n in raw.shape)
    geometry, mapping = _geometry(affine, shape)
    n_slices = shape[2]

    def slices() -> Iterator[np.ndarray]:
        for k in range(n_slices):
            yield raw[:, :, k]

    encoding = choose_encoding(slices, raw.dtype, slope, inter, allow_8bit=kind == "SC")
    logger.debug(
        "nifti_to_dicom: %s %s slices, %s encoding, slope %s, intercept %s",
        shape,
        geometry.plane,
        encoding.mode,
        encoding.rescale_slope,
        encoding.rescale_intercept,
    )
    moment = _now()
    template = _template(
        kind=kind,
        modality=mod,
        sop_class=sop_class,
        geometry=geometry,
        encoding=encoding,
        description=description,
        series_number=number if number is not None else derived_series_number(None),
        study_uid=str(study_instance_uid) if study_instance_uid else new_uid(),
        series_uid=new_uid(),
        frame_uid=frame_of_reference_uid or new_uid(),
        patient=patient,
        algorithm=algorithm if ref is None else None,
        moment=moment,
    )
    pixel_vr = "OB" if encoding.bits_allocated == 8 else "OW"
    datasets: list[Dataset] = []
    for k in range(n_slices):
        ds = Dataset()
        for elem in template:
            value = elem.value
            if elem.VR == "SQ":
                value = DicomSequence([Dataset(item) for item in value])
            ds.add(DataElement(elem.tag, elem.VR, value))
        position = geometry.origin + k * geometry.step
        ds.SOPInstanceUID = new_uid()
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = [format_ds(float(x)) for x in position]
        ds.SliceLocation = format_ds(float(position @ geometry.normal))
        pixels = mapping.slice_pixels(raw[:, :, k])
        stored = encoding.encode(pixels)
        data = stored.astype(stored.dtype.newbyteorder("<"), copy=False).tobytes()
        ds.add(DataElement(0x7FE00010, pixel_vr, data))
        ensure_file_meta(ds, ExplicitVRLittleEndian)
        datasets.append(ds)
    if ref is not None:
        make_series_dicom(
            ref,
            datasets,
            description,
            series_number=number,
            algorithm=algorithm,
            same_frame_of_reference=frame_of_reference_uid is None,
        )
    return datasets
