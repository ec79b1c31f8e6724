"""The package's public surface: everything in __all__ exists and nothing is a stub."""

from __future__ import annotations

import ast
import importlib
import inspect
from pathlib import Path

import dcm_processor_service as dps

COMPAT_NAMES = [
    "get_db_info",
    "get_session_id",
    "get_job_id",
    "get_job_event",
    "get_job_name",
    "get_job_service_name",
    "get_peer_id",
    "set_session_data",
    "get_session_data",
    "has_session_data",
    "remove_session_data",
    "upload_session_file",
    "download_session_file",
    "get_session_file",
    "has_session_file",
    "remove_session_file",
    "get_peer",
    "get_dicom_sender",
    "run_pre_services",
    "run_post_services",
]


def test_all_names_exist() -> None:
    for name in dps.__all__:
        assert hasattr(dps, name), name
    assert len(set(dps.__all__)) == len(dps.__all__)


def test_compat_api_is_exported() -> None:
    missing = [n for n in COMPAT_NAMES if n not in dps.__all__]
    assert not missing


def test_public_functions_are_documented() -> None:
    for name in dps.__all__:
        obj = getattr(dps, name)
        if inspect.isfunction(obj) or inspect.isclass(obj):
            assert inspect.getdoc(obj), f"{name} has no docstring"


def test_errors_share_one_root() -> None:
    for name in dps.__all__:
        obj = getattr(dps, name)
        if inspect.isclass(obj) and issubclass(obj, Exception):
            assert issubclass(obj, dps.DcmProcessorError), name


def _type_checking_imports() -> dict[str, str]:
    """``{name: submodule}`` of the ``if TYPE_CHECKING:`` imports in the package ``__init__``."""
    tree = ast.parse(Path(dps.__file__).read_text(encoding="utf-8"))
    found: dict[str, str] = {}
    for node in tree.body:
        if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING":
            for imp in node.body:
                assert isinstance(imp, ast.ImportFrom) and imp.level == 1, ast.unparse(imp)
                for alias in imp.names:
                    found[alias.asname or alias.name] = str(imp.module)
    return found


def test_lazy_names_are_visible_to_type_checkers() -> None:
    # IDEs and mypy do not run __getattr__: each lazily exported name must also be imported
    # under TYPE_CHECKING from the very module the lazy map loads it from
    assert _type_checking_imports() == dps._LAZY
    for name, module in dps._LAZY.items():
        assert getattr(dps, name) is getattr(
            importlib.import_module(f"dcm_processor_service.{module}"), name
        )


def test_all_is_a_static_list() -> None:
    # type checkers read __all__ only when it is a literal list of strings
    tree = ast.parse(Path(dps.__file__).read_text(encoding="utf-8"))
    assigned = [
        n.value
        for n in tree.body
        if isinstance(n, ast.Assign) and any(getattr(t, "id", None) == "__all__" for t in n.targets)
    ]
    assert len(assigned) == 1 and isinstance(assigned[0], ast.List)
    assert all(isinstance(e, ast.Constant) and isinstance(e.value, str) for e in assigned[0].elts)
    assert set(dps._LAZY) <= set(dps.__all__)


#: DICOMweb peers and query/retrieve (issue #14): lazily imported, real objects.
DICOMWEB_NAMES = {
    "DicomWebEndpoint": "dcm_processor_service.store.web_endpoint",
    "PeerAuthError": "dcm_processor_service._errors",
    "StowSender": "dcm_processor_service.net.dicomweb.stow",
    "find_studies": "dcm_processor_service.net.query",
    "find_series": "dcm_processor_service.net.query",
    "find_priors": "dcm_processor_service.net.query",
    "StudyMatch": "dcm_processor_service.net.query",
    "SeriesMatch": "dcm_processor_service.net.query",
    "retrieve_series": "dcm_processor_service.net.retrieve",
    "retrieve_study": "dcm_processor_service.net.retrieve",
}


def test_dicomweb_and_query_retrieve_names_are_exported() -> None:
    for name, module in DICOMWEB_NAMES.items():
        assert name in dps.__all__, name
        assert getattr(dps, name).__module__ == module, name
