"""Service manifests: the platform's validation rules, every problem reported at once,
entry forms, timeouts, and the ``dependsOn`` findings.

Manifests and packages are written into ``tmp_path``; nothing here runs a job.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

import pytest

from dcm_processor_service import ServiceError
from dcm_processor_service.runner import load_manifest, parse_timeout
from dcm_processor_service.runner.entries import EntryLoader
from dcm_processor_service.runner.graph import order_jobs, prune_dependencies
from dcm_processor_service.runner.manifest import inspect_manifest, manifest_for_function

PLATFORM_JOB = {
    "jobName": "a",
    "workerEntry": "worker",
    "registryEntry": "callback",
    "events": ["stable-series"],
}


def _service(tmp_path: Path, data: Any, *, packages: bool = True) -> Path:
    """A service folder with ``data`` as manifest and, with ``packages``, the
    platform's template packages ``registry`` and ``module``."""
    root = tmp_path / "svc"
    root.mkdir(exist_ok=True)
    if packages:
        for folder, name in (("registry", "callback"), ("module", "worker")):
            (root / folder).mkdir(exist_ok=True)
            (root / folder / "__init__.py").write_text(f"from .main import {name}\n")
            (root / folder / "main.py").write_text(f"def {name}(**kwargs):\n    return True\n")
    text = data if isinstance(data, str) else json.dumps(data)
    (root / "dcm-processor.json").write_text(text)
    return root


def _platform_manifest(**changes: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "name": "x",
        "version": "1.0.0",
        "service": {"registry": "registry", "module": "module", "jobs": [dict(PLATFORM_JOB)]},
    }
    data.update(changes)
    return data


def _with_job(**job: Any) -> dict[str, Any]:
    data = _platform_manifest()
    data["service"]["jobs"] = [{**PLATFORM_JOB, **job}]
    return data


def test_platform_template_manifest_loads_without_findings(tmp_path: Path) -> None:
    manifest = load_manifest(_service(tmp_path, _platform_manifest()))
    job = manifest.jobs[0]
    assert manifest.findings == ()
    assert (job.sort_position, job.timeout, job.params, job.depends_on) == (1, 3600, {}, ())
    assert job.worker is not None and job.worker.is_bare
    assert (job.worker.package_name, job.worker.from_import) == ("service_module", True)
    assert job.registry is not None and job.registry.package_name == "registry_a"
    assert manifest.module_dir == (tmp_path / "svc" / "module").resolve()


@pytest.mark.parametrize(
    ("data", "where", "match"),
    [
        ({"service": {"jobs": [PLATFORM_JOB]}}, "name", "missing required field"),
        ({"name": "x"}, "service", "missing required field"),
        ({"name": "x", "worker": {"path": "w"}}, "service", "this is a worker package"),
        ({"name": "x", "service": {}}, "service.jobs", "missing required field"),
        ({"name": "x", "service": {"jobs": []}}, "service.jobs", "is empty"),
        (
            {
                "name": "x",
                "service": {"jobs": [{"workerEntry": "worker", "events": ["stable-series"]}]},
            },
            r"service.jobs[0].jobName",
            "missing required field",
        ),
        (_with_job(workerEntry=None), "(a).workerEntry", "missing required field"),
        (_with_job(events=None), "(a).events", "missing required field"),
        (_with_job(events=["stable-universe"]), "(a).events", "unknown event 'stable-universe'"),
        (_with_job(events=[]), "(a).events", "is empty"),
        (_with_job(timeout="soon"), "(a).timeout", "invalid timeout 'soon'"),
        (_with_job(params=[1]), "(a).params", "must be an object, got list"),
        (_with_job(sortPosition="2"), "(a).sortPosition", "must be an integer or a number"),
        (_with_job(disabled="no"), "(a).disabled", "must be true or false"),
        (_with_job(dependsOn=[1]), "(a).dependsOn", "must name jobs"),
        (_with_job(jobName="a/b"), "jobName", "must not contain a path separator"),
        (_with_job(workerEntry="not there"), "(a).workerEntry", "invalid"),
        (
            _with_job(workerEntry="other"),
            "(a).workerEntry",
            r"__init__.py does not define or import 'other': add 'from .main import other'",
        ),
        (
            _with_job(workerEntry="main"),
            "(a).workerEntry",
            "main.py is a module, not a function",
        ),
        (
            _with_job(workerEntry="no_such_module_xyz.work"),
            "(a).workerEntry",
            "no module 'no_such_module_xyz'",
        ),
        (_with_job(workerEntry="missing.py:work"), "(a).workerEntry", "file .* does not exist"),
        (
            {**_platform_manifest(), "service": {"module": "nope", "jobs": [PLATFORM_JOB]}},
            "service.module",
            "names folder 'nope', which does not exist",
        ),
        ("{not json", "", "not valid JSON"),
        ("[1, 2]", "", "must be a JSON object"),
    ],
)
def test_errors_name_the_file_the_field_and_the_fix(
    tmp_path: Path, data: Any, where: str, match: str
) -> None:
    root = _service(tmp_path, data)
    with pytest.raises(ServiceError, match=match) as info:
        load_manifest(root)
    message = str(info.value)
    assert str(root / "dcm-processor.json") in message
    assert where in message


def test_every_error_is_reported_at_once(tmp_path: Path) -> None:
    data = _platform_manifest()
    data["service"]["jobs"] = [
        {**PLATFORM_JOB, "events": ["stable-universe"], "timeout": "soon"},
        {**PLATFORM_JOB, "jobName": "b", "workerEntry": "other", "params": "x"},
        {**PLATFORM_JOB, "jobName": "a"},
    ]
    with pytest.raises(ServiceError) as info:
        load_manifest(_service(tmp_path, data))
    message = str(info.value)
    assert "5 problems" in message
    for text in (
        "service.jobs[0] (a).events: unknown event 'stable-universe'",
        "service.jobs[0] (a).timeout: invalid timeout 'soon'",
        "service.jobs[1] (b).workerEntry: unknown",
        "service.jobs[1] (b).params: must be an object",
        "service.jobs[2].jobName: 'a' is used by another job",
    ):
        assert text in message


def test_platform_findings_run_here_with_one_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = tmp_path / "svc"
    (root / "code").mkdir(parents=True)
    (root / "code" / "jobs.py").write_text("def work(**kw):\n    return 1\n")
    (root / "code" / "filters.py").write_text("def ok(**kw):\n    return True\n")
    data = {
        "name": "legacy",
        "service": {
            "registry": "code",
            "module": "code",
            "jobs": [
                {
                    "jobName": "dotted",
                    "workerEntry": "jobs.work",
                    "registryEntry": "filters.ok",
                    "events": "stable-series",
                    "timeout": "10min",
                },
                {
                    "jobName": "unfiltered",
                    "workerEntry": "jobs.py:work",
                    "events": ["stable-study"],
                },
                {
                    "jobName": "cross",
                    "workerEntry": "jobs.work",
                    "events": ["stable-study"],
                    "dependsOn": "dotted",
                },
                {
                    "jobName": "ghost",
                    "workerEntry": "jobs.work",
                    "events": ["stable-series"],
                    "dependsOn": ["nobody"],
                },
            ],
        },
    }
    (root / "dcm-processor.json").write_text(json.dumps(data))
    with caplog.at_level(logging.WARNING, logger="dcm_processor_service.runner.manifest"):
        manifest = load_manifest(root)
    findings = {str(p) for p in manifest.findings}
    assert all(p.platform_only and p.severity == "platform" for p in manifest.findings)
    expected = [
        "version: missing - the platform requires a semantic version",
        "service.registry: folder 'code' has no __init__.py",
        "service.module: folder 'code' has no __init__.py",
        "service.jobs[0] (dotted).workerEntry: 'jobs.work' is not a bare name",
        'write "workerEntry": "work"',
        "service.jobs[0] (dotted).registryEntry: 'filters.ok' is not a bare name",
        'service.jobs[0] (dotted).events: must be a list - write ["stable-series"]',
        "service.jobs[0] (dotted).timeout: '10min' is not in the platform's format",
        "service.jobs[1] (unfiltered).registryEntry: missing - the platform drops a job",
        "service.jobs[1] (unfiltered).workerEntry: 'jobs.py:work' is not a bare name",
        "service.jobs[2] (cross).dependsOn: names 'dotted', which does not run on stable-study",
        "service.jobs[3] (ghost).dependsOn: names unknown job 'nobody'",
    ]
    for text in expected:
        assert any(text in f for f in findings), (text, findings)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "dcm-service check" in warnings[0].getMessage()
    assert "'jobs.work' is not a bare name" in warnings[0].getMessage()


def test_version_must_be_semver_and_folders_packages(tmp_path: Path) -> None:
    data = _platform_manifest(version="1.0")
    root = _service(tmp_path, data)
    (root / "registry" / "__init__.py").unlink()
    manifest, problems = inspect_manifest(data, root=root)
    texts = [str(p) for p in problems]
    assert "version: '1.0' is not a semantic version (MAJOR.MINOR.PATCH, e.g. '1.0.0')" in texts
    # a bare registryEntry needs the package: an error here too, not only a finding
    assert manifest is None
    assert any("(a).registryEntry: unknown" in t and "has no __init__.py" in t for t in texts)


def test_dependency_cycles_and_disabled_targets_are_findings(tmp_path: Path) -> None:
    data = _platform_manifest()
    data["service"]["jobs"] = [
        {**PLATFORM_JOB, "jobName": "a", "dependsOn": ["b"]},
        {**PLATFORM_JOB, "jobName": "b", "dependsOn": "a"},
        {**PLATFORM_JOB, "jobName": "c", "dependsOn": ["a"]},
        {**PLATFORM_JOB, "jobName": "off", "disabled": True},
        {**PLATFORM_JOB, "jobName": "needs-off", "dependsOn": ["off"]},
        {**PLATFORM_JOB, "jobName": "me", "dependsOn": ["me"]},
    ]
    manifest = load_manifest(_service(tmp_path, data))
    by_job = {p.where.split("(")[1].split(")")[0]: p.message for p in manifest.findings}
    assert "dependsOn cycle ('a', 'b', stable-series)" in by_job["a"]
    assert "dependsOn cycle" in by_job["b"]
    assert "c" not in by_job  # downstream of a cycle, not on it
    assert by_job["needs-off"] == "names disabled job 'off' - the job is never scheduled"
    assert by_job["me"] == "depends on itself - the job is never scheduled"


def test_prune_dependencies_follows_the_platform(tmp_path: Path) -> None:
    data = _platform_manifest()
    data["service"]["jobs"] = [
        {**PLATFORM_JOB, "jobName": "convert"},
        {**PLATFORM_JOB, "jobName": "seg", "dependsOn": "convert"},
        {**PLATFORM_JOB, "jobName": "report", "dependsOn": ["seg", "filtered"]},
        {**PLATFORM_JOB, "jobName": "filtered"},
        {**PLATFORM_JOB, "jobName": "after-report", "dependsOn": ["report"]},
        {**PLATFORM_JOB, "jobName": "study", "events": ["stable-study"]},
        {**PLATFORM_JOB, "jobName": "wants-study", "dependsOn": "study"},
    ]
    manifest = load_manifest(_service(tmp_path, data))
    jobs = {j.name: j for j in manifest.jobs}
    passed = [jobs[n] for n in ("after-report", "report", "seg", "convert", "wants-study")]
    kept, pruned = prune_dependencies(
        passed,
        all_jobs=jobs,
        event="stable-series",
        object_kind="series",
        why_not={"filtered": "its registry callback returned false"},
    )
    assert [j.name for j in kept] == ["convert", "seg"]  # seg only in the second round
    assert pruned == {
        "report": "dependsOn 'filtered', which was not scheduled for this series "
        "(its registry callback returned false)",
        "after-report": "dependsOn 'report', which was not scheduled for this series either",
        "wants-study": "dependsOn 'study', which does not run on stable-series "
        "(dependsOn only sees jobs of the same event)",
    }
    assert [j.name for j in order_jobs(kept, "stable-series")] == ["convert", "seg"]


def test_order_is_topological_with_sort_position_tie_break(tmp_path: Path) -> None:
    data = _platform_manifest()
    data["service"]["jobs"] = [
        {**PLATFORM_JOB, "jobName": "report", "dependsOn": ["seg", "stats"], "sortPosition": 0},
        {**PLATFORM_JOB, "jobName": "stats", "dependsOn": ["convert"], "sortPosition": 5},
        {**PLATFORM_JOB, "jobName": "seg", "dependsOn": ["convert"]},
        {**PLATFORM_JOB, "jobName": "convert", "sortPosition": 9},
        {**PLATFORM_JOB, "jobName": "free", "sortPosition": 3},
    ]
    manifest = load_manifest(_service(tmp_path, data))
    order = [j.name for j in order_jobs(manifest.jobs, "stable-series")]
    assert order == ["free", "convert", "seg", "stats", "report"]


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("30s", 30),
        ("10m", 600),
        ("1h", 3600),
        ("1h30m", 5400),
        ("2d", 172800),
        ("1w", 604800),
        ("10min", 600),
        (90, 90),
        ("1.5", 1.5),
        ("500ms", 0.5),
    ],
)
def test_parse_timeout(text: Any, seconds: float) -> None:
    assert parse_timeout(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "abc", "10x", "0s", "-5", True, "1h 30"])
def test_parse_timeout_rejects(text: Any) -> None:
    with pytest.raises(ServiceError, match="timeout"):
        parse_timeout(text)


def test_single_function_manifest_has_no_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "work.py").write_text("def go(**kw):\n    return 1\n")
    with caplog.at_level(logging.WARNING):
        manifest = manifest_for_function(f"{tmp_path / 'work.py'}:go", event="stable-study")
    assert [j.name for j in manifest.jobs] == ["go"] and manifest.jobs[0].events == (
        "stable-study",
    )
    assert manifest.findings and not caplog.records


def test_bare_entries_import_as_the_platforms_packages(tmp_path: Path) -> None:
    root = _service(tmp_path, _platform_manifest())
    (root / "module" / "main.py").write_text(
        "from .helpers import answer\n\ndef worker(**kwargs):\n    return answer()\n"
    )
    (root / "module" / "helpers.py").write_text("def answer():\n    return 42\n")
    manifest = load_manifest(root)
    before = set(sys.modules)
    with EntryLoader() as loader:
        worker = loader.load(manifest.jobs[0].worker)  # type: ignore[arg-type]
        callback = loader.load(manifest.jobs[0].registry)  # type: ignore[arg-type]
        assert worker() == 42  # the relative import inside the package works
        assert callback() is True
        assert worker.__module__ == "service_module.main"
        assert callback.__module__ == "registry_a.main"
        assert str(root / "module") not in sys.path
    assert not [
        n for n in set(sys.modules) - before if n.startswith(("service_module", "registry_"))
    ]
