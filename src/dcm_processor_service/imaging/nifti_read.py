"""DICOM -> NIfTI with dcm2niix: :func:`dicom_series_to_nifti` and
:func:`series_files_to_nifti`.

The ``dcm2niix`` binary of the ``dcm2niix`` PyPI package runs in a subprocess, on a
folder as it is (dcm2niix too skips hidden entries; the folder's files are found by
:mod:`dcm_processor_service.sources`, the one reader of DICOM input, which logs the
hidden entries it skips), or on a private temporary folder holding exactly the listed
files (linked) and datasets (written). When dcm2niix writes several volumes (echoes, overlays ``_ROIn``, equalised
``_Eq`` or tilt-corrected ``_Tilt`` copies, localizers ``_iNNNNN``) the *main* one is
kept (:func:`choose_main_volume`). The JSON sidecar adds
:func:`~dcm_processor_service.get_simplified_json` of the series' first instance in slice
order (:func:`~dcm_processor_service.index.order.order_slices`).
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import nibabel as nib
import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian

from .._errors import ConversionError, DicomInputError, InvalidInputError, MissingDependencyError
from ..dicom_values import has_transfer_syntax
from ..index.metadata import get_simplified_json
from ..index.order import order_slices
from ..sources import Failed, InputFile, Inputs, Skipped, read_file, read_leading_values

__all__ = [
    "SeriesInput",
    "choose_main_volume",
    "dcm2niix_args",
    "dicom_series_to_nifti",
    "find_dcm2niix",
    "series_files_to_nifti",
]

logger = logging.getLogger(__name__)

#: A series given as a directory, or as DICOM file paths and/or pydicom datasets.
SeriesInput = str | os.PathLike[str] | Iterable[str | os.PathLike[str] | Dataset]

#: What is read of each file to find the series' first instance in slice order.
_ORDER_TAGS = [
    "SeriesInstanceUID",
    "SOPInstanceUID",
    "InstanceNumber",
    "ImageOrientationPatient",
    "ImagePositionPatient",
]


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
    paths: list[Path] = field(default_factory=list)
    datasets: list[Dataset] = field(default_factory=list)
    label: str = ""


def _folder_files(folder: Path) -> list[Path]:
    """The files of a series folder, by the one input policy (:mod:`..sources`)."""
    files: list[Path] = []
    skipped: list[Skipped] = []
    for entry in Inputs().expand(str(folder)):
        if isinstance(entry, InputFile):
            files.append(Path(entry.path))
        elif isinstance(entry, Skipped):
            skipped.append(entry)
        elif isinstance(entry, Failed):
            logger.warning("not converted: %s: %s", entry.path, entry.reason)
    if skipped:
        logger.info(
            "series folder %s: %d entr%s skipped, e.g. %s (%s)",
            folder,
            len(skipped),
            "y" if len(skipped) == 1 else "ies",
            *skipped[0],
        )
    return files


def _stage(series: SeriesInput, work: Path) -> _Staged:
    """Give dcm2niix a directory holding the series: a folder as it is (dcm2niix, like
    the one input reader, skips hidden entries; its files, found by
    :mod:`..sources`, are the candidates of the sidecar's first slice), else a new
    folder holding exactly the listed files (linked) and datasets (written)."""
    if isinstance(series, (str, os.PathLike)):
        path = Path(series)
        if path.is_dir():
            return _Staged(path, paths=_folder_files(path), label=f"'{path}'")
        if not path.is_file():
            raise InvalidInputError(
                f"invalid series path {str(path)!r} - no such directory or file"
            )
        series = [path]
    items = [series] if isinstance(series, Dataset) else list(series)
    if not items:
        raise InvalidInputError("invalid series value [] - need at least one DICOM file or dataset")
    staged = _Staged(work / "in", label=f"{len(items)} DICOM input(s)")
    staged.directory.mkdir()
    for index, item in enumerate(items):
        target = staged.directory / f"{index:06d}.dcm"
        if isinstance(item, Dataset):
            if "SOPClassUID" not in item or "SOPInstanceUID" not in item:
                raise DicomInputError(
                    f"series dataset {index} lacks SOPClassUID/SOPInstanceUID - cannot "
                    "write it for conversion"
                )
            view = item
            if not has_transfer_syntax(item):  # native pixels: write a copy, not the caller's
                view = Dataset(item)
                view.file_meta = FileMetaDataset()
                view.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
            pydicom.dcmwrite(target, view, enforce_file_format=True)
            staged.datasets.append(item)
        elif isinstance(item, (str, os.PathLike)):
            source = Path(item)
            if not source.is_file():
                raise InvalidInputError(f"invalid series file {str(source)!r} - no such file")
            try:
                target.symlink_to(os.path.abspath(source))
            except OSError:
                shutil.copyfile(source, target)
            staged.paths.append(source)
        else:
            raise InvalidInputError(
                f"invalid series item {index} of type {type(item).__name__} - must be a path "
                "or a pydicom Dataset"
            )
    return staged


def _header(path: Path, tags: list[str] | None = None) -> Dataset | None:
    try:
        return read_file(path, tags=tags)
    except (DicomInputError, OSError):
        return None


def _order_values(path: Path) -> Mapping[str, Any] | Dataset | None:
    """What the slice order needs of one file: read from its first bytes (a few ms for a
    whole series), else by pydicom; None when it is not readable DICOM."""
    try:
        values = read_leading_values(path, _ORDER_TAGS)
    except OSError:
        return None
    return values if values is not None else _header(path, _ORDER_TAGS)


def _first_dataset(staged: _Staged, series_uid: str) -> Dataset | None:
    """The header of the converted series' first instance in slice order (each file is
    read for its series and geometry only; the first is then read in full). Falls back
    to the first readable header when no input names ``series_uid``."""
    candidates: list[tuple[Mapping[str, Any] | Dataset, Path | None]] = [
        (d, None) for d in staged.datasets
    ]
    for file in staged.paths:
        quick = _order_values(file)
        if quick is not None:
            candidates.append((quick, file))
    if not candidates:
        return None
    matching = [c for c in candidates if str(c[0].get("SeriesInstanceUID", "")) == series_uid]
    if matching:
        candidates = matching
    first, where = candidates[order_slices([values for values, _ in candidates])[0]]
    return _header(where) if where is not None else first  # type: ignore[return-value]


@dataclass
class _Converted:
    nifti: Path
    sidecar: dict[str, Any]
    n_slices: int
    series_uid: str


@contextlib.contextmanager
def _conversion(
    series: SeriesInput,
    beside: Path | None,
    *,
    compress: bool,
    compression_level: int | None,
    timeout: float | None,
) -> Iterator[tuple[_Converted, _Staged, Path]]:
    """Run dcm2niix on ``series`` in a temporary folder (``beside``'s parent folder, so
    results can be renamed into place; else the system's) and yield (the main volume,
    the staged input, the folder); everything is removed afterwards."""
    parent = None if beside is None else beside.parent
    if parent is not None:
        parent.mkdir(parents=True, exist_ok=True)
    prefix = "dcm2niix-" if parent is None else ".dcm2niix-"
    with tempfile.TemporaryDirectory(dir=parent, prefix=prefix) as tmp:
        work = Path(tmp)
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
        yield _Converted(main, sidecar, n_slices, series_uid), staged, work


def dicom_series_to_nifti(
    series_path: SeriesInput,
    output_file: str | os.PathLike[str],
    *,
    compress: bool | None = None,
    compression_level: int | None = None,
    timeout: float | None = None,
) -> int:
    """Convert a DICOM series to one NIfTI file with dcm2niix; return its slice count.

    ``series_path`` is a directory (its files, found recursively; hidden entries are
    skipped), a DICOM file, or a list of files and/or pydicom datasets. ``output_file``
    must end with ``.nii.gz`` (compressed) or ``.nii`` (uncompressed - several times
    faster, since gzip is most of the work); ``compress`` may state the same explicitly.
    ``compression_level`` (1-9, dcm2niix default 6) trades speed for size. When dcm2niix
    writes several volumes the main one is kept (:func:`choose_main_volume`).

    The file appears atomically (written beside it, then renamed). Raises
    :class:`ConversionError` with dcm2niix's message when it fails,
    :class:`InvalidInputError` for bad arguments.
    """
    target = Path(output_file)
    compressed = _compression_for(target, compress)
    level = _check_level(compression_level)
    with _conversion(
        series_path, target, compress=compressed, compression_level=level, timeout=timeout
    ) as (converted, _, _):
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
    :func:`~dcm_processor_service.get_simplified_json` of the chosen series' first
    instance in slice order: DICOM keywords win over BIDS keys of the same name, and
    ``Slices`` is the volume's slice count.
    """
    level = _check_level(compression_level)
    if filename is None and compress:
        raise InvalidInputError(
            "'compress=True' needs a 'filename' - in memory nothing is compressed"
        )
    target = None if filename is None else Path(filename)
    compressed = False if target is None else _compression_for(target, compress)
    with _conversion(
        dicom_files_or_dir,
        target,
        compress=compressed,
        compression_level=level if target is not None else None,
        timeout=timeout,
    ) as (converted, staged, work):
        sidecar = _merged_sidecar(converted, staged)
        if target is None:
            image, array = _load_in_memory(converted.nifti)
            return image, sidecar, array
        json_target = _json_path(target)
        json_tmp = work / "sidecar.json"
        json_tmp.write_text(json.dumps(sidecar, indent=2, allow_nan=False), encoding="utf-8")
        os.replace(converted.nifti, target)
        os.replace(json_tmp, json_target)
    return str(target), str(json_target), None


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
