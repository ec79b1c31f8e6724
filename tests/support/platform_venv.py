"""A virtual environment with the dcm-processor platform's own packages, for the
cross-checks in ``tests/platform_checks``.

The platform's DB provider, ``dcm-processor-db-provider`` 0.0.1, pins
``pydicom==3.0.1`` and ``pymongo==4.16.0`` (and its scheduler and worker pin it), which
clash with the newer releases this package is tested with, so the cross-checks run in
an environment of their own: the platform's provider, scheduler and worker from the
package index, this package's dependencies (resolved against those pins), mongomock and
pytest. This package itself is not installed there: the checks import it from the
source tree (``PYTHONPATH``), so the environment does not depend on the checkout and
is built once per cache directory (``$XDG_CACHE_HOME`` or ``~/.cache``) and
requirement set. Building it needs the package index and ``libmagic`` (the provider
imports python-magic); ``scripts/bootstrap.sh --system`` installs the latter.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import subprocess
import sys
import venv
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path

__all__ = ["PLATFORM_REQUIREMENTS", "platform_python", "platform_requirements"]

#: The platform's packages (exact versions of the deployment being matched).
PLATFORM_REQUIREMENTS = (
    "dcm-processor-db-provider==0.0.1",
    "dcm-processor-job-scheduler==0.0.1",
    "dcm-processor-worker==0.0.1",
)
#: What the checks themselves need.
_TEST_REQUIREMENTS = ("mongomock>=4.1", "pytest>=8", "pytest-timeout>=2.3")


def platform_requirements() -> list[str]:
    """Everything installed into the environment: the platform's packages, this
    package's core and ``mongodb`` dependencies (as installed here), the test tools."""
    ours = []
    for requirement in metadata.requires("dcm-processor-service") or []:
        spec, _, marker = requirement.partition(";")
        if not marker.strip() or marker.replace(" ", "").replace("'", '"') == 'extra=="mongodb"':
            ours.append(spec.strip())
    return [*PLATFORM_REQUIREMENTS, *sorted(ours), *_TEST_REQUIREMENTS]


def _cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(Path.home(), ".cache")
    return Path(base) / "dcm-processor-service"


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Holds an exclusive lock on ``path`` (several test runs may build at once)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def platform_python() -> Path:
    """The Python of the (cached) platform environment, built on first use.

    Raises ``RuntimeError`` with pip's output when the environment cannot be built.
    """
    requirements = platform_requirements()
    key = hashlib.sha256("\n".join([sys.version, *requirements]).encode("utf-8")).hexdigest()[:16]
    root = _cache_root() / f"platform-venv-{key}"
    python = root / "bin" / "python"
    done = root / ".complete"
    with _locked(root.with_name(root.name + ".lock")):
        if done.exists():
            return python
        venv.EnvBuilder(clear=True, with_pip=True).create(root)
        result = subprocess.run(
            [
                str(python),
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                *requirements,
            ],
            capture_output=True,
            text=True,
            timeout=900,
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(
                f"could not build the platform environment in {root} "
                f"(pip install {' '.join(requirements)}):\n{result.stdout}\n{result.stderr}"
            )
        done.write_text("\n".join(requirements) + "\n")
    return python
