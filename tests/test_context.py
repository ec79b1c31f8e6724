"""Runtime context: both spellings, precedence, missing values, accessors."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

import dcm_processor_service as dps
from dcm_processor_service import MissingContextError, RuntimeContext, use_context
from dcm_processor_service._context import _ENV_TABLE

VALUES = {
    "db_provider": "sqlite",
    "db_url": "/tmp/x",
    "db_name": "dbn",
    "session_id": "sess-1",
    "job_id": "job-1",
    "job_event": "stable-study",
    "job_name": "segment",
    "job_service_name": "svc",
    "peer_id": "peer-9",
}

ACCESSORS = {
    "session_id": dps.get_session_id,
    "job_id": dps.get_job_id,
    "job_event": dps.get_job_event,
    "job_name": dps.get_job_name,
    "job_service_name": dps.get_job_service_name,
    "peer_id": dps.get_peer_id,
}


@pytest.mark.parametrize("style", ["hyphen", "underscore"])
def test_every_variable_in_both_spellings(style: str) -> None:
    env = {
        (var if style == "hyphen" else var.replace("-", "_")): VALUES[field]
        for field, var in _ENV_TABLE.items()
    }
    ctx = RuntimeContext.from_env(env)
    for field, value in VALUES.items():
        assert getattr(ctx, field) == value


def test_hyphenated_wins_over_underscore() -> None:
    env = {
        "DCM-PROCESSOR-SERVICE-SESSION-ID": "hyphen",
        "DCM_PROCESSOR_SERVICE_SESSION_ID": "under",
    }
    assert RuntimeContext.from_env(env).session_id == "hyphen"
    env["DCM-PROCESSOR-SERVICE-SESSION-ID"] = ""
    assert RuntimeContext.from_env(env).session_id == "under"


@pytest.mark.parametrize("field", sorted(ACCESSORS))
def test_accessors_read_the_process_environment(
    field: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(os.environ, _ENV_TABLE[field].replace("-", "_"), VALUES[field])
    assert ACCESSORS[field]() == VALUES[field]


@pytest.mark.parametrize("field", sorted(ACCESSORS))
def test_missing_value_names_the_variable(field: str) -> None:
    with pytest.raises(MissingContextError, match=_ENV_TABLE[field]) as info:
        ACCESSORS[field]()
    assert info.value.variable == _ENV_TABLE[field]


def test_get_db_info() -> None:
    assert dps.get_db_info() == (None, None, None)
    with use_context(db_provider="sqlite", db_url="/x", db_name="n"):
        assert dps.get_db_info() == ("sqlite", "/x", "n")


def test_invalid_event_is_rejected() -> None:
    with pytest.raises(dps.InvalidInputError, match="stable-series"):
        RuntimeContext.from_env({"DCM-PROCESSOR-SERVICE-JOB-EVENT": "whenever"})


def test_use_context_sets_and_restores(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(os.environ, "DCM_PROCESSOR_SERVICE_JOB_ID", "outer")
    with use_context(RuntimeContext(**VALUES)) as ctx:
        assert os.environ["DCM-PROCESSOR-SERVICE-JOB-ID"] == "job-1"
        assert "DCM_PROCESSOR_SERVICE_JOB_ID" not in os.environ
        assert dps.current_context() == ctx
    assert os.environ["DCM_PROCESSOR_SERVICE_JOB_ID"] == "outer"
    assert "DCM-PROCESSOR-SERVICE-JOB-ID" not in os.environ


def test_context_is_immutable() -> None:
    ctx = RuntimeContext(**VALUES)
    with pytest.raises(AttributeError):
        ctx.session_id = "other"  # type: ignore[misc]
    assert ctx.replace(session_id="other").session_id == "other"
    with pytest.raises(dps.InvalidInputError, match="nope"):
        ctx.replace(nope="x")


def test_hyphenated_variables_reach_a_child_process() -> None:
    """The worker injects hyphenated names into a process environment (no shell)."""
    env = dps.context_environ(RuntimeContext(**VALUES))
    code = "import dcm_processor_service as d; print(d.get_session_id(), d.get_job_event())"
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.split() == ["sess-1", "stable-study"]


def test_child_environment_replaces_only_context_variables() -> None:
    base = {
        "DCM_PROCESSOR_SERVICE_SESSION_ID": "stale",
        "DCM-PROCESSOR-SERVICE-JOB-ID": "stale",
        "DCM_PROCESSOR_SERVICE_CALLING_AET": "MYAET",
        "PATH": "/bin",
    }
    env = dps.context_environ(RuntimeContext(session_id="fresh"), base)
    assert env == {
        "DCM-PROCESSOR-SERVICE-SESSION-ID": "fresh",
        "DCM_PROCESSOR_SERVICE_CALLING_AET": "MYAET",
        "PATH": "/bin",
    }
