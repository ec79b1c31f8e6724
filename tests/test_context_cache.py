"""The runtime context is read once and reused while the environment holds the same
values: every change of ``os.environ`` (by the job, by ``use_context``, in another
thread, in a forked child) is still seen at once."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

import dcm_processor_service as dps
from dcm_processor_service import RuntimeContext, current_context, use_context
from support.processes import in_forked_child

SESSION = "DCM-PROCESSOR-SERVICE-SESSION-ID"
SESSION_UNDERSCORE = "DCM_PROCESSOR_SERVICE_SESSION_ID"
JOB = "DCM-PROCESSOR-SERVICE-JOB-ID"


def test_reused_while_unchanged_and_read_again_on_every_change(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(SESSION, "s1")
    first = current_context()
    assert first.session_id == "s1"
    assert current_context() is first  # nothing changed: the same context
    os.environ[SESSION] = "s2"
    assert current_context().session_id == "s2"
    os.environ[JOB] = "j9"
    assert (current_context().session_id, current_context().job_id) == ("s2", "j9")
    del os.environ[SESSION]
    assert current_context().session_id is None
    os.environ[SESSION_UNDERSCORE] = "under"  # the other spelling counts too
    assert current_context().session_id == "under"
    os.environ[SESSION] = "hyphen"  # ...and the hyphenated one still wins
    assert current_context().session_id == "hyphen"
    os.environ[SESSION] = ""  # empty: the underscore spelling again
    assert current_context().session_id == "under"
    os.environ[SESSION] = "s1"
    del os.environ[SESSION_UNDERSCORE]
    del os.environ[JOB]
    assert current_context() == first  # back to the first values


def test_values_that_are_not_ascii(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SESSION, "sitzung-ä-😀")
    assert current_context().session_id == "sitzung-ä-😀"


def test_invalid_values_raise_on_every_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DCM-PROCESSOR-SERVICE-JOB-EVENT", "no-such-event")
    for _ in range(2):
        with pytest.raises(dps.InvalidInputError, match="no-such-event"):
            current_context()
    os.environ["DCM-PROCESSOR-SERVICE-JOB-EVENT"] = "stable-study"
    assert current_context().job_event == "stable-study"


def test_use_context_blocks_nested_and_restored() -> None:
    assert current_context() == RuntimeContext()
    with use_context(session_id="outer", job_id="j1"):
        assert current_context().session_id == "outer"
        with use_context(session_id="inner"):
            assert current_context() == RuntimeContext(session_id="inner")
        assert (current_context().session_id, current_context().job_id) == ("outer", "j1")
    assert current_context() == RuntimeContext()


def test_other_threads_see_every_change(monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker thread reads while the main thread changes the environment (and the
    other way round): each read gives the values of that moment."""
    monkeypatch.setenv(SESSION, "main-0")
    seen: list[str | None] = []
    step, done = threading.Event(), threading.Event()

    def worker() -> None:
        for _ in range(3):
            step.wait(10)
            step.clear()
            seen.append(current_context().session_id)
            done.set()
        os.environ[SESSION] = "from-worker"
        done.set()

    thread = threading.Thread(target=worker)
    thread.start()
    for i in range(3):
        os.environ[SESSION] = f"main-{i + 1}"
        assert current_context().session_id == f"main-{i + 1}"  # cached in this thread
        step.set()
        assert done.wait(10)
        done.clear()
    thread.join(10)
    assert seen == ["main-1", "main-2", "main-3"]
    assert current_context().session_id == "from-worker"


def test_forked_child_sees_its_own_changes(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(SESSION, "parent")
    assert current_context().session_id == "parent"  # cached in the parent
    out = tmp_path / "child.txt"

    def child() -> int:
        before = current_context().session_id
        os.environ[SESSION] = "child"
        out.write_text(f"{before} {current_context().session_id}")
        return 0

    assert in_forked_child(child) == 0
    assert out.read_text() == "parent child"
    assert current_context().session_id == "parent"  # the child's change stays there


def test_session_data_follows_a_job_switch_in_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Values written before and after the job changes os.environ land under the
    session and job of their moment."""
    monkeypatch.setenv("DCM-PROCESSOR-SERVICE-DB-PROVIDER", "sqlite")
    monkeypatch.setenv("DCM-PROCESSOR-SERVICE-DB-URL", str(tmp_path / "store"))
    monkeypatch.setenv(SESSION, "sa")
    monkeypatch.setenv(JOB, "ja")
    dps.set_session_data("k", "first")
    os.environ[SESSION] = "sb"
    dps.set_session_data("k", "second")
    os.environ[JOB] = "jb"
    assert dps.get_session_data("k") is None
    dps.set_session_data("k", "third")
    store = dps.store_for()
    values = {(r["job_id"], r["value_json"]) for r in store.list_data("sa")}
    assert values == {("ja", '"first"')}
    values = {(r["job_id"], r["value_json"]) for r in store.list_data("sb")}
    assert values == {("ja", '"second"'), ("jb", '"third"')}
