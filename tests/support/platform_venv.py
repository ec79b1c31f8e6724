"""The dcm-processor platform's own packages, in their own virtualenv, for tests that
run our services through the platform's code and for the MongoDB cross-checks
(``tests/platform_checks``, run inside it with its pytest).

:func:`platform_python` returns the interpreter of a virtualenv holding the platform:
``dcm-processor`` 2.0.1 (its service installer), ``dcm-processor-worker`` 0.0.1 and
``dcm-processor-job-scheduler`` 0.0.1 with their pinned dependencies
(``dcm-processor-db-provider``, ``dcm-processor-utils``, ``mongo-qas``, pydicom 3.0.1,
pymongo 4.16, requests 2.32.4, ...), ``mongomock`` (no MongoDB server can run here: the
platform's database is an in-process fake), and this package as an editable install,
so the virtualenv always runs the code under test. The pins clash with ours, hence a
separate virtualenv. :func:`original_package` gives the original package's source.

It is built once (about a minute, from the package index; ``DCM_PLATFORM_WHEELS`` may
name a folder of the platform's wheels to prefer) and cached under
``$DCM_SERVICE_TEST_CACHE`` (default ``~/.cache/dcm-processor-service-tests``), keyed by
the requirements, this checkout and the Python version. A lock file keeps concurrent
test sessions from building it twice.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path

__all__ = [
    "ORIGINAL_PACKAGE",
    "PLATFORM_REQUIREMENTS",
    "REPO_ROOT",
    "original_package",
    "platform_python",
]

REPO_ROOT = Path(__file__).resolve().parents[2]
PLATFORM_REQUIREMENTS = (
    "dcm-processor==2.0.1",
    "dcm-processor-worker==0.0.1",
    "dcm-processor-job-scheduler==0.0.1",
    "dcm-processor-db-provider==0.0.1",
    # the tools of the checks that run inside it (tests/platform_checks)
    "mongomock>=4.1",
    "pytest>=8",
    "pytest-timeout>=2.3",
)
_MARKER = ".dcm-service-platform-ok"
#: The original package this one is a drop-in for.
ORIGINAL_PACKAGE = "dcm-processor-service==0.0.1"


def _cache_root() -> Path:
    root = os.environ.get("DCM_SERVICE_TEST_CACHE")
    return Path(root) if root else Path.home() / ".cache" / "dcm-processor-service-tests"


def _key() -> str:
    text = "\n".join(
        [
            *PLATFORM_REQUIREMENTS,
            str(REPO_ROOT),
            (REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8"),
            sys.version,
        ]
    )
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _pip(python: Path, *args: str) -> None:
    wheels = os.environ.get("DCM_PLATFORM_WHEELS")
    extra = ["--find-links", wheels] if wheels else []
    proc = subprocess.run(
        [str(python), "-m", "pip", "install", "--disable-pip-version-check", "-q", *extra, *args],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=900,
    )
    if proc.returncode != 0:
        raise RuntimeError(
            f"pip install {' '.join(args)} failed in the platform virtualenv:\n{proc.stderr[-3000:]}"
        )


def _cached(name: str, build: Callable[[Path], None]) -> Path:
    """The cache folder ``name``, made by ``build(folder)`` unless a complete one is
    there (its marker file, written last, says so); a lock file keeps concurrent test
    sessions from building it twice, a failed build leaves nothing behind."""
    root = _cache_root()
    root.mkdir(parents=True, exist_ok=True)
    target = root / name
    if (target / _MARKER).is_file():
        return target
    with open(root / f".{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if not (target / _MARKER).is_file():
                shutil.rmtree(target, ignore_errors=True)
                try:
                    build(target)
                except BaseException:
                    shutil.rmtree(target, ignore_errors=True)
                    raise
                (target / _MARKER).write_text("ok\n")
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return target


def _build_venv(target: Path) -> None:
    # a virtualenv records its own path, so it is built in place
    subprocess.run(
        [sys.executable, "-m", "venv", str(target)], check=True, stdin=subprocess.DEVNULL
    )
    _pip(target / "bin" / "python", *PLATFORM_REQUIREMENTS, "-e", str(REPO_ROOT))


def platform_python() -> Path:
    """The interpreter of the (cached) platform virtualenv, built on first use."""
    return _cached(f"platform-venv-{_key()}", _build_venv) / "bin" / "python"


def _download_original(target: Path) -> None:
    target.mkdir(parents=True)
    wheels = os.environ.get("DCM_PLATFORM_WHEELS")
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "-q"]
    command += ["--disable-pip-version-check", "-d", str(target)]
    command += [*(["--find-links", wheels] if wheels else []), ORIGINAL_PACKAGE]
    proc = subprocess.run(
        command, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=300
    )
    if proc.returncode != 0:
        raise RuntimeError(f"pip download {ORIGINAL_PACKAGE} failed:\n{proc.stderr[-3000:]}")
    (wheel,) = target.glob("*.whl")
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(target)


def original_package() -> Path:
    """The source folder ``dcm_processor_service`` of the original package (its wheel
    from the package index, unpacked once into the cache; never imported - its import
    name is ours)."""
    return _cached("original-dcm-processor-service-0.0.1", _download_original) / (
        "dcm_processor_service"
    )
