"""The package's public surface: everything in __all__ exists and nothing is a stub."""

from __future__ import annotations

import inspect

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
