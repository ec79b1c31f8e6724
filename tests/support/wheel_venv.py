"""The package as a user gets it: the built wheel in a fresh virtual environment.

:func:`build_wheel` builds the wheel of this checkout (``pip wheel --no-deps``, with
build isolation, as a user's ``pip install`` would); ``$DCM_SERVICE_WHEEL`` may name a
wheel built before (CI builds the sdist and the wheel first and tests that one).
:func:`make_wheel_venv` creates a virtual environment without pip and installs the
wheel with its dependencies into it (``pip --python``, no byte-compiling at install:
about ten seconds from pip's cache; the commands compile what they import, once). Nothing of the source tree is importable there: commands
run with ``cwd`` outside the checkout and without ``PYTHONPATH``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

__all__ = ["WheelVenv", "build_wheel", "make_wheel_venv"]

REPO_ROOT = Path(__file__).resolve().parents[2]
#: Extras installed with the wheel: the PostgreSQL driver (the doctor is checked
#: against a PostgreSQL store), nothing else.
WHEEL_EXTRAS = "postgresql"


def _run(args: list[str], what: str, timeout: float = 900) -> None:
    proc = subprocess.run(
        args, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=timeout
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{what} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")


def build_wheel(out_dir: Path) -> Path:
    """The wheel of this checkout (or ``$DCM_SERVICE_WHEEL``), built into ``out_dir``."""
    given = os.environ.get("DCM_SERVICE_WHEEL")
    if given:
        return Path(given).resolve()
    _run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "-q",
            "-w",
            str(out_dir),
            str(REPO_ROOT),
        ],
        "building the wheel",
    )
    (wheel,) = out_dir.glob("dcm_processor_service-*.whl")
    return wheel


@dataclass(frozen=True)
class WheelVenv:
    """A virtual environment holding the wheel: ``bin`` has ``dcm-service``, ``python``."""

    root: Path
    wheel: Path

    @property
    def bin(self) -> Path:
        return self.root / "bin"

    @property
    def site_packages(self) -> Path:
        (found,) = (self.root / "lib").glob("python3*/site-packages")
        return found

    def env(self, **extra: str) -> dict[str, str]:
        """An environment that finds only this venv's commands (and the system's), with
        no ``PYTHONPATH`` and no job context variables. Byte-code is written (the wheel
        was installed without compiling: the first import of a module compiles it once,
        not every command again)."""
        env = {
            k: v
            for k, v in os.environ.items()
            if k not in ("PYTHONPATH", "PYTHONDONTWRITEBYTECODE")
            and not k.upper().startswith(("DCM-PROCESSOR", "DCM_PROCESSOR"))
        }
        env["PATH"] = f"{self.bin}{os.pathsep}/usr/bin{os.pathsep}/bin"
        env.update(extra)
        return env

    def run(
        self, *args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 300
    ) -> subprocess.CompletedProcess[str]:
        """Run ``dcm-service ARGS`` from this venv in ``cwd``."""
        return subprocess.run(
            [str(self.bin / "dcm-service"), *args],
            cwd=cwd,
            env=env or self.env(),
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
            timeout=timeout,
        )


def make_wheel_venv(root: Path, wheel: Path) -> WheelVenv:
    """A fresh virtual environment at ``root`` with ``wheel`` (+ its dependencies and
    the :data:`WHEEL_EXTRAS`) installed - not editable, no pip inside."""
    _run([sys.executable, "-m", "venv", "--without-pip", str(root)], "creating the venv")
    _run(
        [
            sys.executable, "-m", "pip", "--python", str(root / "bin" / "python"), "install",
            "-q", "--no-compile", "--disable-pip-version-check", f"{wheel}[{WHEEL_EXTRAS}]",
        ],
        "installing the wheel",
    )  # fmt: skip
    return WheelVenv(root, wheel)
