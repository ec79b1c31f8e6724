"""The API reference (``docs/reference/*.md``, rendered by mkdocstrings) documents every
public name: each name of the package's ``__all__`` and of the original module paths'
``__all__`` is the object of a ``::: path`` directive (or a member of a documented
module), and each SPEC §2 function says which errors it raises. CI builds the pages
themselves with ``mkdocs build --strict``.
"""

from __future__ import annotations

import importlib
import inspect
import re
from pathlib import Path
from typing import Any

import pytest

import dcm_processor_service as dps

REFERENCE = Path(__file__).resolve().parents[1] / "docs" / "reference"
ORIGINAL_MODULES = (
    "db_manager", "env_vars", "converters", "dicom_conversion", "dicom_network",
    "dicom_network.dicom_sender", "dicom_network.utils", "pre_services", "post_services",
)  # fmt: skip
#: SPEC §2 functions and methods: each docstring names the errors it raises.
SPEC_CALLABLES = (
    "get_db_info", "get_session_id", "get_job_id", "get_job_event", "get_job_name",
    "get_job_service_name", "get_peer_id", "set_session_data", "get_session_data",
    "has_session_data", "remove_session_data", "upload_session_file",
    "download_session_file", "get_session_file", "has_session_file", "remove_session_file",
    "get_peer", "get_dicom_sender", "get_series_dicom", "get_series_nifti",
    "dicom_series_to_nifti", "get_simplified_json", "make_series_dicom", "make_pdf_dicom",
    "nifti_to_dicom", "make_segmentation", "make_text_report", "make_measurement_report",
    "run_pre_services", "run_post_services", "DicomSender.send_dicom_from_path",
    "DicomSender.send_dicom_from_filelist", "DicomSender.send_dicom_from_dataset",
    "DicomSender.send_dicom_from_dicomdir", "DicomSender.send_echo", "DicomSender.send",
)  # fmt: skip
_DIRECTIVE = re.compile(r"^::: (\S+)\n((?:    .*\n|\n)*)", re.M)


def _resolve(path: str) -> Any:
    parts = path.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj: Any = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for attr in parts[cut:]:
            obj = getattr(obj, attr)
        return obj
    raise AssertionError(f"cannot resolve {path}")


def _documented() -> tuple[list[Any], set[str]]:
    """The objects the directives render, and their paths."""
    objects: list[Any] = []
    paths: set[str] = set()
    for page in sorted(REFERENCE.glob("*.md")):
        for path, options in _DIRECTIVE.findall(page.read_text(encoding="utf-8")):
            obj = _resolve(path)
            paths.add(path)
            objects.append(obj)
            if inspect.ismodule(obj):
                listed = re.findall(r"^\s+- (\w+)$", options, re.M)
                names = listed or [n for n in getattr(obj, "__all__", []) if not n.startswith("_")]
                for name in names:
                    objects.append(getattr(obj, name))
                    paths.add(f"{path}.{name}")
    return objects, paths


def _is_documented(obj: Any, qualified: str, objects: list[Any], paths: set[str]) -> bool:
    if qualified in paths:
        return True
    if isinstance(obj, (str, int, float, bool)):  # interned values: only by path
        return False
    return any(o is obj for o in objects)


def test_every_public_name_of_the_package_is_in_the_reference() -> None:
    objects, paths = _documented()
    missing = [
        name
        for name in dps.__all__
        if name != "__version__"
        and not _is_documented(getattr(dps, name), f"dcm_processor_service.{name}", objects, paths)
    ]
    assert missing == []


@pytest.mark.parametrize("module_name", ORIGINAL_MODULES)
def test_every_name_of_the_original_module_paths_is_in_the_reference(module_name: str) -> None:
    objects, paths = _documented()
    module = importlib.import_module(f"dcm_processor_service.{module_name}")
    missing = [
        name
        for name in module.__all__
        if not _is_documented(
            getattr(module, name), f"dcm_processor_service.{module_name}.{name}", objects, paths
        )
    ]
    assert missing == []
    table = (REFERENCE / "original-modules.md").read_text(encoding="utf-8")
    (row,) = [
        line
        for line in table.splitlines()
        if line.startswith(f"| `dcm_processor_service.{module_name}` |")
    ]
    for name in module.__all__:
        assert f"`{name}`" in row, f"{module_name}.{name} is not in the table"


def test_documented_names_have_docstrings() -> None:
    objects, _ = _documented()
    bare = [
        getattr(o, "__qualname__", repr(o))
        for o in objects
        if (inspect.isclass(o) or inspect.isfunction(o)) and not inspect.getdoc(o)
    ]
    assert bare == []


@pytest.mark.parametrize("name", SPEC_CALLABLES)
def test_spec_functions_document_their_errors(name: str) -> None:
    obj: Any = dps
    for part in name.split("."):
        obj = getattr(obj, part)
    doc = inspect.getdoc(obj) or ""
    assert re.search(r"Raises|raises|\b\w+Error\b", doc), f"{name}: no errors documented"
