"""The platform and this package on one MongoDB database, each reading and acting on
what the other wrote (issue #17; the "MongoDB layout checked against the platform's
provider" item of #10).

The checks themselves are ``tests/platform_checks/test_crosscheck.py``: one test per
check, the same list in each direction (``test_platform_to_ours_*``,
``test_ours_to_platform_*``). They need the platform's own packages, whose pinned
pydicom and pymongo clash with this package's test environment, so this test runs them
in a separate, cached environment (``support.platform_venv``, built from the package
index on first use) and counts the results each way. They run on mongomock, an
in-process fake (no MongoDB server can run here); what only a real server could show is
listed in ``docs/storage.md``.
"""

from __future__ import annotations

import os
import subprocess
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

import pytest

from support.platform_venv import platform_python

REPO = Path(__file__).resolve().parents[1]
CHECKS = REPO / "tests" / "platform_checks"
DIRECTIONS = ("platform_to_ours", "ours_to_platform")


def _results(junit: Path) -> dict[str, str]:
    """Outcome of each check by test name: passed, failed, error or skipped."""
    outcomes = {}
    for case in ET.parse(junit).getroot().iter("testcase"):
        kinds = {child.tag for child in case} & {"failure", "error", "skipped"}
        outcomes[case.get("name", "")] = kinds.pop() if kinds else "passed"
    return outcomes


@pytest.mark.slow
def test_platform_and_this_package_read_and_act_on_each_others_writes(tmp_path: Path) -> None:
    try:
        python = platform_python()
    except RuntimeError as exc:
        if os.environ.get("CI") == "true":
            raise
        pytest.skip(f"the platform's packages cannot be installed here: {exc}")
    junit = tmp_path / "checks.xml"
    env = {
        **os.environ,
        "DCM_PLATFORM_CHECKS": "1",
        "PYTHONPATH": str(REPO / "src"),  # this checkout, not an installed copy
    }
    run = subprocess.run(
        [
            str(python),
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            f"--junitxml={junit}",
            str(CHECKS),
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert junit.exists(), f"the checks did not run:\n{run.stdout}\n{run.stderr}"
    results = _results(junit)
    counts = {
        direction: Counter(
            outcome for name, outcome in results.items() if name.startswith(f"test_{direction}_")
        )
        for direction in DIRECTIONS
    }
    checks = {
        d: {n.removeprefix(f"test_{d}_") for n in results if n.startswith(f"test_{d}_")}
        for d in DIRECTIONS
    }
    summary = ", ".join(
        f"{d.replace('_', ' ')}: {counts[d]['passed']} of {sum(counts[d].values())} pass"
        for d in DIRECTIONS
    )
    print(f"platform cross-checks - {summary}")
    not_passed = sorted(name for name, outcome in results.items() if outcome != "passed")
    assert not_passed == [], f"{summary}; not passing: {not_passed}\n{run.stdout[-6000:]}"
    assert set(results) == {f"test_{d}_{c}" for d in DIRECTIONS for c in checks[d]}
    assert checks["platform_to_ours"] == checks["ours_to_platform"]  # the same list each way
    assert len(checks["platform_to_ours"]) >= 15
