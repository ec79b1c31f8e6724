"""The ingest's fast header path gives exactly what the pydicom path gives.

:func:`~dcm_processor_service.index.fast_input.fast_instance_input` reads a file's
header without pydicom; whenever it answers (rather than ``None``: "read this file with
pydicom"), its :class:`InstanceInput` - every UID, every record ``Metadata`` value, the
instance ``Metadata``, the transfer syntax, the patient key, the order of the keys - or
its error must be the one of the pydicom path (``read_header`` + ``check_structure`` +
``instance_input``, the code the ingest ran before). Checked over every real DICOM file
the test suite has (pydicom's bundled test and character-set files, nibabel's DICOM test
files), generated series in both VR encodings, and files with unusual values; the value
decoder is also checked against pydicom's converters value by value.
"""

from __future__ import annotations

import dataclasses
import gzip
import io
import os
import random
import shutil
from pathlib import Path
from typing import Any

import nibabel
import pytest
from pydicom import config as pydicom_config
from pydicom import dcmread, dcmwrite
from pydicom.charset import convert_encodings
from pydicom.data.data_manager import DATA_ROOT
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import RawDataElement
from pydicom.tag import Tag
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ImplicitVRLittleEndian,
    RLELossless,
)
from pydicom.values import convert_value

from dcm_processor_service.index.fast_input import fast_instance_input
from dcm_processor_service.index.ingest import ingest
from dcm_processor_service.index.metadata import (
    HEADER_KEYWORDS,
    OMIT,
    instance_input,
    instance_value,
    record_value,
)
from dcm_processor_service.index.raw_values import UnusualValue, decode_value
from dcm_processor_service.index.verify import check_structure
from dcm_processor_service.sources import is_dicomdir, pydicom_warnings, read_header
from dcm_processor_service.store import Store
from support.dicomdata import TEST_FILES, files_in, write_ct_series

CHARSET_FILES = Path(DATA_ROOT) / "charset_files"
NIBABEL_FILES = Path(nibabel.__file__).parent / "nicom" / "tests" / "data"


# ----------------------------------------------------------------------- helpers
def pydicom_path(path: Path) -> Any:
    """What the ingest's pydicom path makes of a file: its InstanceInput, ``"dicomdir"``,
    or ``("error", reason)``."""
    with open(path, "rb") as fh, pydicom_warnings(path):
        try:
            header, part10 = read_header(fh, HEADER_KEYWORDS)
            if is_dicomdir(header):
                return "dicomdir"
            check_structure(fh, os.fstat(fh.fileno()).st_size, header, 132 if part10 else 0)
            return instance_input(header, peer_id="PEER", session_id="S1")
        except Exception as exc:
            return ("error", str(exc))


def fast_path(path: Path) -> Any:
    """What the fast path makes of it: ``None`` (left to pydicom), an InstanceInput, or
    ``("error", reason)``."""
    with open(path, "rb") as fh:
        try:
            return fast_instance_input(
                fh, os.fstat(fh.fileno()).st_size, peer_id="PEER", session_id="S1"
            )
        except Exception as exc:
            return ("error", str(exc))


def assert_same(path: Path, fast: Any, slow: Any) -> None:
    """The fast result equals the pydicom one field by field, keys in the same order."""
    if isinstance(slow, tuple) or isinstance(fast, tuple):
        assert fast == slow, path
        return
    assert not isinstance(slow, str), f"{path}: the fast path filed a DICOMDIR"
    for field in dataclasses.fields(slow):
        mine, theirs = getattr(fast, field.name), getattr(slow, field.name)
        assert mine == theirs, f"{path}: {field.name}: {mine!r} != {theirs!r}"
        if isinstance(theirs, dict):
            assert list(mine) == list(theirs), f"{path}: {field.name}: key order"
            for key, value in theirs.items():  # 1 == 1.0 == True: the types too
                assert type(mine[key]) is type(value), f"{path}: {field.name}[{key}]"


def compare_all(paths: list[Path]) -> int:
    """Compare both paths on every file; the number the fast path handled."""
    handled = 0
    for path in paths:
        fast = fast_path(path)
        if fast is None:
            continue
        handled += 1
        assert_same(path, fast, pydicom_path(path))
    return handled


def real_files(tmp_path: Path) -> list[Path]:
    """Every file of pydicom's test and character-set data and nibabel's DICOM test
    data (gzipped ones unpacked)."""
    paths = files_in(TEST_FILES) + files_in(CHARSET_FILES)
    for path in files_in(NIBABEL_FILES):
        if path.suffix == ".gz":
            unpacked = tmp_path / path.stem
            unpacked.write_bytes(gzip.decompress(path.read_bytes()))
            paths.append(unpacked)
        else:
            paths.append(path)
    return paths


# ------------------------------------------------------------- equality, files
def test_fast_path_equals_pydicom_path_on_every_real_file(tmp_path: Path) -> None:
    paths = real_files(tmp_path)
    assert len(paths) > 200
    handled = compare_all(paths)
    # the common case really is taken: most of the real DICOM files
    assert handled >= 90, f"the fast path handled only {handled} files"


@pytest.mark.parametrize("syntax", [None, ImplicitVRLittleEndian])
def test_fast_path_equals_pydicom_path_on_generated_series(tmp_path: Path, syntax: Any) -> None:
    paths = write_ct_series(tmp_path / "ct", 6, 16, 16)
    if syntax is not None:
        for path in paths:
            ds = dcmread(path)
            ds.file_meta.TransferSyntaxUID = syntax
            ds.save_as(path, enforce_file_format=True)
    assert compare_all(paths) == len(paths)


def _variant(tmp_path: Path, name: str, **values: Any) -> Path:
    """A generated CT file with ``values`` set (raw bytes set as they are)."""
    [path] = write_ct_series(tmp_path / name, 1, 8, 8)
    ds = dcmread(path)
    with pydicom_warnings(name):  # invalid values on purpose
        for keyword, value in values.items():
            if value is None:
                del ds[keyword]
            elif isinstance(value, bytes):
                tag = Tag(keyword)
                vr = ds[tag].VR if tag in ds else dictionary_VR(tag)
                ds[tag] = RawDataElement(tag, vr, len(value), value, 0, False, True)
            else:
                setattr(ds, keyword, value)
        ds.save_as(path, enforce_file_format=True)
    return path


VARIANTS: dict[str, dict[str, Any]] = {
    "empty values": {"PatientName": "", "PatientAge": "", "SeriesNumber": b"", "KVP": b""},
    "multi values": {"ImageType": ["A", "", "B "], "OtherPatientIDs": ["X", "Y"]},
    "person names": {"PatientName": "Doe^Jane^^", "OperatorsName": ["A^B", "C"]},
    "padded numbers": {"InstanceNumber": b" +7 ", "SliceThickness": b" 1.50E+0 "},
    "odd numbers": {"RescaleSlope": b"1,5", "EchoNumbers": b"1\\\\2"},  # left to pydicom
    "latin-1 text": {"SpecificCharacterSet": "ISO_IR 100", "PatientName": "Müller^Jürgen"},
    "utf-8 text": {"SpecificCharacterSet": "ISO_IR 192", "StudyDescription": "Schädel ∅"},
    "no charset": {"SpecificCharacterSet": None, "InstitutionName": b"Caf\xe9"},
    "ages": {"PatientAge": "018M"},
    "no SOP class": {"SOPClassUID": None},
    "bad UID": {"SeriesInstanceUID": "1.2.abc"},
    "no study UID": {"StudyInstanceUID": None, "PatientID": None},
    "binary numbers": {"DiffusionBValue": 1000.0, "Rows": 8},
    "non-finite": {"DiffusionBValue": float("nan"), "PatientWeight": b"1e999"},
}


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_fast_path_equals_pydicom_path_on_unusual_values(tmp_path: Path, name: str) -> None:
    path = _variant(tmp_path, name.replace(" ", "_"), **VARIANTS[name])
    fast, slow = fast_path(path), pydicom_path(path)
    if fast is not None:
        assert_same(path, fast, slow)
    if name not in ("odd numbers",):  # plain values: the fast path must take them
        assert fast is not None, name


# ------------------------------------------------------------- fallback cases
@pytest.mark.parametrize(
    ("syntax", "reason"),
    [(ExplicitVRBigEndian, "big endian"), (DeflatedExplicitVRLittleEndian, "deflated")],
)
def test_big_endian_and_deflated_files_are_left_to_pydicom(
    tmp_path: Path, syntax: Any, reason: str
) -> None:
    [path] = write_ct_series(tmp_path / "ct", 1, 8, 8)
    ds = dcmread(path)
    ds.file_meta.TransferSyntaxUID = syntax
    dcmwrite(path, ds, little_endian=syntax != ExplicitVRBigEndian, enforce_file_format=True)
    assert fast_path(path) is None, reason
    assert not isinstance(pydicom_path(path), tuple)


def test_non_latin_character_sets_are_left_to_pydicom() -> None:
    for name in ("chrH31.dcm", "chrJapMulti.dcm", "chrRuss.dcm", "chrGreek.dcm"):
        path = CHARSET_FILES / name
        if path.exists():
            assert fast_path(path) is None, name


def test_encapsulated_file_is_read_fast_and_verified(tmp_path: Path) -> None:
    src = TEST_FILES / "MR_small_RLE.dcm"
    fast = fast_path(src)
    assert fast is not None and fast.transfer_syntax_uid == RLELossless
    assert_same(src, fast, pydicom_path(src))
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(src.read_bytes()[:-300])
    assert fast_path(cut) == pydicom_path(cut)
    assert fast_path(cut)[1].startswith("truncated")


def test_truncated_files_give_the_pydicom_paths_reason(tmp_path: Path) -> None:
    [path] = write_ct_series(tmp_path / "ct", 1, 32, 32)
    data = path.read_bytes()
    for keep in (len(data) - 1, len(data) - 2048, 1000, 400, 140, 100):
        cut = tmp_path / f"cut{keep}.dcm"
        cut.write_bytes(data[:keep])
        fast, slow = fast_path(cut), pydicom_path(cut)
        assert isinstance(slow, tuple), keep
        assert fast is None or fast == slow, keep


def test_ingest_reports_bad_files_by_name_and_stores_the_rest(store: Store, tmp_path: Path) -> None:
    folder = tmp_path / "in"
    paths = write_ct_series(folder, 4, 16, 16)
    data = paths[0].read_bytes()
    (folder / "cut.dcm").write_bytes(data[: len(data) - 100])
    big = tmp_path / "big" / "be.dcm"
    big.parent.mkdir()
    shutil.copy(paths[1], big)
    ds = dcmread(big)
    ds.file_meta.TransferSyntaxUID = ExplicitVRBigEndian
    ds.SOPInstanceUID = "1.2.826.0.1.3680043.8.498.15"
    dcmwrite(folder / "be.dcm", ds, little_endian=False, enforce_file_format=True)
    report = ingest(folder, store=store)
    assert report.n_stored == 5
    [(where, reason)] = report.failed
    assert where == str(folder / "cut.dcm")
    assert reason.startswith("truncated: element (7FE0,0010)")
    stored = {s.path: s for s in report.stored}
    record = store.get_instance(stored[str(folder / "be.dcm")].instance_id)
    assert record["TransferSyntaxUID"] == ExplicitVRBigEndian


def test_settings_that_change_pydicom_values_turn_the_fast_path_off(tmp_path: Path) -> None:
    [path] = write_ct_series(tmp_path / "ct", 1, 8, 8)
    assert fast_path(path) is not None
    for setting in ("datetime_conversion", "use_DS_decimal"):
        setattr(pydicom_config, setting, True)
        try:
            assert fast_path(path) is None, setting
        finally:
            setattr(pydicom_config, setting, False)
    mode = pydicom_config.settings.reading_validation_mode
    pydicom_config.settings.reading_validation_mode = pydicom_config.RAISE
    try:
        assert fast_path(path) is None
    finally:
        pydicom_config.settings.reading_validation_mode = mode


# ------------------------------------------------------- the value decoder
_SAMPLES: dict[str, list[bytes]] = {
    "CS": [b"ORIGINAL\\PRIMARY ", b" A", b"A\\\\B", b"\x00", b"  "],
    "DA": [b"20240131", b"2024", b"20240131\\20240201 "],
    "TM": [b"101010.123 ", b"10"],
    "AS": [b"045Y", b"018M", b"X"],
    "UI": [b"1.2.840.10008.5.1.4.1.1.2\x00", b" 1.2 ", b"1.2\\3.4"],
    "LO": [b"Name ", b"A\\B \\C", b"Caf\xe9", b"\xc3\xa9t\xc3\xa9", b"\x1b$B", b"\xff\xfe"],
    "SH": [b"  x  ", b"a\\"],
    "LT": [b"line\\with backslash  ", b"\xe9\x00"],
    "PN": [b"Doe^John ", b"A^B==", b"A\\B", b"\xe9t\xe9^X", b"=x"],
    "IS": [b"12", b" -3 ", b"+0007", b"1\\2\\3", b"1.0", b"12345678901234", b"4294967296", b"", b" "],
    "DS": [b"1.5", b" -2.5E-3 ", b"1\\2.0\\.5", b"1.", b"nan", b"1e999", b"1,5", b"12345678901234567"],
    "US": [b"\x01\x00", b"\x01\x00\x02\x00", b"\x01"],
    "FD": [b"\x00\x00\x00\x00\x00\x00\xf0?", b"\x00" * 16, b"\x00" * 7],
}  # fmt: skip


def _random_text(rng: random.Random) -> bytes:
    alphabet = b"AZaz09 .^\\-+eE=\x00\xe9"
    return bytes(rng.choice(alphabet) for _ in range(rng.randint(0, 12)))


@pytest.mark.parametrize("charset", [None, "ISO_IR 100", "ISO_IR 192"])
def test_decoded_values_are_pydicoms(charset: str | None) -> None:
    rng = random.Random(15)
    codec = {None: "latin-1", "ISO_IR 100": "latin-1", "ISO_IR 192": "utf-8"}[charset]
    encodings = convert_encodings(charset) if charset else ["iso8859"]
    checked = 0
    for vr, samples in _SAMPLES.items():
        pool = samples + ([_random_text(rng) for _ in range(300)] if vr not in ("US", "FD") else [])
        for raw in pool:
            try:
                mine = decode_value(vr, raw, codec)
            except UnusualValue:
                continue
            element = RawDataElement(Tag(0x00100010), vr, len(raw), raw, 0, False, True)
            with pydicom_warnings("sample"):
                theirs = convert_value(vr, element, encodings)
            for keyword in {"PN": ("PatientName", "Other"), "AS": ("PatientAge",)}.get(
                vr, ("Other",)
            ):
                assert _same(record_value(keyword, vr, mine), record_value(keyword, vr, theirs)), (
                    vr,
                    raw,
                    keyword,
                )
            assert _same(instance_value(vr, mine, "x"), instance_value(vr, theirs, "x")), (vr, raw)
            checked += 1
    assert checked > 1000


def _same(a: Any, b: Any) -> bool:
    if a is OMIT or b is OMIT:
        return a is b
    if isinstance(a, float) and isinstance(b, float) and a != a:
        return b != b
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and a == b


def test_a_header_beyond_the_first_read_is_read_fast(tmp_path: Path) -> None:
    [path] = write_ct_series(tmp_path / "ct", 1, 8, 8)
    ds = dcmread(path)
    ds.add_new(0x00291010, "OB", b"\x01" * 100_000)  # a big private element before pixels
    ds.add_new(0x00091010, "LO", "creator")
    buffer = io.BytesIO()
    dcmwrite(buffer, ds, enforce_file_format=True)
    path.write_bytes(buffer.getvalue())
    fast = fast_path(path)
    assert fast is not None
    assert_same(path, fast, pydicom_path(path))


def test_deeply_nested_sequences_are_left_to_pydicom(tmp_path: Path) -> None:
    """A hostile nesting of undefined-length sequences does not overflow the walk: past
    MAX_NESTING levels the file goes to the pydicom path."""
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    from dcm_processor_service.index.header_scan import MAX_NESTING

    [path] = write_ct_series(tmp_path / "ct", 1, 8, 8)
    ds = dcmread(path)

    def nested(depth: int) -> Dataset:
        item = Dataset()
        item.is_undefined_length_sequence_item = True
        if depth:
            item.add_new(0x00091010, "LO", "creator")
            item.add_new(0x00091011, "SQ", Sequence([nested(depth - 1)]))
            item[0x00091011].is_undefined_length = True
        return item

    for depth, handled in ((MAX_NESTING - 2, True), (MAX_NESTING + 5, False)):
        copy = ds.copy()
        copy.add_new(0x00091010, "LO", "creator")
        copy.add_new(0x00091011, "SQ", Sequence([nested(depth)]))
        copy[0x00091011].is_undefined_length = True
        buffer = io.BytesIO()
        dcmwrite(buffer, copy, enforce_file_format=True)
        path.write_bytes(buffer.getvalue())
        fast = fast_path(path)
        assert (fast is not None) is handled, depth
        if handled:
            assert_same(path, fast, pydicom_path(path))
