"""``dcm-service new service`` (the platform's template, runnable at once) and
``dcm-service check`` (would the platform accept the service and run it?)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dcm_processor_service.cli import main
from dcm_processor_service.runner.check import check_service
from dcm_processor_service.runner.platform import REGISTRY_KEYWORDS, WORKER_KEYWORDS
from support.cli import cli_json
from support.platform_venv import REPO_ROOT
from support.services import sample_series


def test_new_service_writes_the_platform_template_that_runs_at_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, created = cli_json(
        capsys, "new", "service", "my-svc", "-p", str(tmp_path), "-e", "stable-study"
    )
    assert code == 0
    root = tmp_path / "my-svc"
    assert created == {
        "service": str(root),
        "files": [
            str(root / name)
            for name in (
                "dcm-processor.json",
                "README.md",
                "registry/__init__.py",
                "registry/main.py",
                "module/__init__.py",
                "module/main.py",
            )
        ],
    }
    manifest = json.loads((root / "dcm-processor.json").read_text())
    assert manifest == {
        "name": "my-svc",
        "version": "0.0.1",
        "summary": "",
        "tags": ["my-svc"],
        "service": {
            "registry": "registry",
            "module": "module",
            "required_services": [],
            "required_workers": [],
            "jobs": [
                {
                    "jobName": "my-svc",
                    "workerEntry": "worker",
                    "registryEntry": "callback",
                    "events": ["stable-study"],
                    "dependsOn": [],
                    "worker": None,
                    "timeout": "1h",
                    "params": {},
                    "sortPosition": 0,
                    "description": "",
                }
            ],
        },
    }
    assert (root / "registry" / "__init__.py").read_text() == "from .main import callback\n"
    assert (root / "module" / "__init__.py").read_text() == "from .main import worker\n"
    assert (root / "README.md").read_text() == "# my-svc\n"

    assert main(["check", str(root)]) == 0
    sample_series(tmp_path / "in")
    code, report = cli_json(
        capsys, "run", str(root), str(tmp_path / "in"), "--store", str(tmp_path / "store")
    )
    assert code == 0
    jobs = {j["job_name"]: j for j in report["sessions"][0]["jobs"]}  # type: ignore[index]
    assert jobs["my-svc"]["status"] == "succeeded"
    assert jobs["my-svc"]["event"] == "stable-study"
    assert jobs["my-svc"]["result"] == {"object": jobs["my-svc"]["object_id"]}


def test_new_service_refuses_an_existing_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("mine")
    assert main(["new", "service", "taken", "-p", str(tmp_path)]) == 2
    assert "already exists and is not an empty folder" in capsys.readouterr().err
    assert main(["new", "service", "a/b", "-p", str(tmp_path)]) == 2
    assert "path separator" in capsys.readouterr().err
    assert (tmp_path / "taken" / "notes.txt").read_text() == "mine"


def test_check_passes_the_example_service(capsys: pytest.CaptureFixture[str]) -> None:
    code, report = cli_json(capsys, "check", str(REPO_ROOT / "examples" / "threshold-service"))
    assert code == 0
    assert report["ok"] and report["problems"] == [] and report["jobs"] == 2  # type: ignore[index]
    assert len(report["passed"]) == 5  # type: ignore[index]


def _broken_service(root: Path) -> Path:
    (root / "registry").mkdir(parents=True)
    (root / "module").mkdir()
    (root / "registry" / "__init__.py").write_text("from .main import callback, narrow\n")
    (root / "registry" / "main.py").write_text(
        "def callback(session_id, job_name, headers, params, added_params):\n"
        "    return True\n\n"
        "def narrow(headers):\n    return True\n"
    )
    (root / "module" / "__init__.py").write_text("from .main import worker, positional\n")
    # 'import helpers' works only with the folder itself on sys.path - not on the platform
    (root / "module" / "main.py").write_text(
        "def worker(**kwargs):\n    import helpers\n    return 1\n\n"
        "def positional(session_id, job_name, headers, params, added_params):\n    return 1\n"
    )
    (root / "module" / "broken.py").write_text("import helpers\n")
    (root / "module" / "helpers.py").write_text("X = 1\n")
    (root / "legacy.py").write_text("import helpers\n\ndef work(**kwargs):\n    return 1\n")
    jobs = [
        {
            "jobName": "ok",
            "workerEntry": "worker",
            "registryEntry": "callback",
            "events": ["stable-series"],
            "params": {"labels": ["ok", 'say "hi"']},
        },
        {
            "jobName": "narrow",
            "workerEntry": "worker",
            "registryEntry": "narrow",
            "events": ["stable-series"],
        },
        {
            "jobName": "positional",
            "workerEntry": "positional",
            "registryEntry": "callback",
            "events": ["stable-series"],
        },
        {
            "jobName": "legacy",
            "workerEntry": "legacy.work",
            "events": ["stable-series"],
            "timeout": "10min",
        },
    ]
    manifest = {
        "name": "broken",
        "version": "1.0",
        "service": {"registry": "registry", "module": "module", "jobs": jobs},
    }
    (root / "dcm-processor.json").write_text(json.dumps(manifest))
    return root


def test_check_reports_every_problem(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    service = _broken_service(tmp_path / "svc")
    report = check_service(service)
    assert not report.ok
    problems = {(p.severity, str(p)) for p in report.problems}
    expected = [
        ("platform", "version: '1.0' is not a semantic version"),
        ("platform", "service.jobs[3] (legacy).workerEntry: 'legacy.work' is not a bare name"),
        ("platform", "service.jobs[3] (legacy).registryEntry: missing"),
        ("platform", "service.jobs[3] (legacy).timeout: '10min' is not in the platform's format"),
        (
            "platform",
            "service.jobs[0] (ok).params: params['labels'][1] contains a double quote - the "
            "platform's worker passes params inside its generated main file",
        ),
        (
            "error",
            "service.jobs[1] (narrow).registryEntry: 'narrow' cannot be called the way the "
            "scheduler calls it (got an unexpected keyword argument 'session_id')",
        ),
        (
            "error",
            "service.jobs[2] (positional).workerEntry: 'positional' cannot be called the way "
            "the worker calls it (got an unexpected keyword argument 'worker_id')",
        ),
    ]
    for severity, text in expected:
        assert any(s == severity and text in p for s, p in problems), (text, problems)
    assert f"accepts the scheduler's {len(REGISTRY_KEYWORDS)} keywords" in " ".join(report.passed)
    assert f"accepts the worker's {len(WORKER_KEYWORDS)} keywords" in " ".join(report.passed)
    assert main(["check", str(service)]) == 1
    out = capsys.readouterr().out
    assert "PLATFORM  version: '1.0' is not a semantic version" in out
    assert "ERROR     service.jobs[1] (narrow).registryEntry" in out
    assert "7 problem(s): 2 stop(s) it running anywhere" in out


def test_check_imports_the_way_the_platform_does(tmp_path: Path) -> None:
    """A package whose __init__ imports a sibling absolutely works only with the folder
    on sys.path, which the platform does not do: check says so."""
    service = _broken_service(tmp_path / "svc")
    (service / "module" / "__init__.py").write_text(
        "from .main import worker, positional\nfrom . import broken\n"
    )
    report = check_service(service)
    messages = [str(p) for p in report.problems]
    assert any(
        "service.jobs[0] (ok).workerEntry: cannot import 'worker': ModuleNotFoundError: "
        "No module named 'helpers'" in m
        for m in messages
    ), messages


def test_check_without_a_manifest_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["check", str(tmp_path)]) == 2
    assert "has no dcm-processor.json" in capsys.readouterr().err
    (tmp_path / "dcm-processor.json").write_text("{nope")
    assert main(["check", str(tmp_path)]) == 2
    assert "not valid JSON" in capsys.readouterr().err
