"""Run test code without the privilege of ignoring file modes, also as root.

Root reads and writes files whatever their mode, so "permission denied" cannot happen
to a test suite running as root (CI does) and such tests used to be skipped there.
:func:`run_unprivileged` runs a Python snippet in a child process that has dropped that
privilege: as root, the child runs with the capabilities that bypass file permission
checks (``CAP_DAC_OVERRIDE``, ``CAP_DAC_READ_SEARCH``) removed from its bounding and
inheritable sets (util-linux ``setpriv``), so the kernel checks the files' modes for it
like for any user - a file of mode 0 cannot be opened, a folder of mode 0500 cannot be
written. (Switching to ``nobody`` instead would need the interpreter to be reachable by
``nobody``, which a Python installed under ``/root`` is not.) Not as root, the child
runs as the current user, who has no such privilege anyway.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from typing import Any

__all__ = ["run_unprivileged"]

_DROPPED = "-dac_override,-dac_read_search"


def _prefix() -> list[str]:
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        raise AssertionError(
            "setpriv (util-linux) is needed to drop root's file-permission privilege in "
            "tests - apt-get install util-linux"
        )
    return [setpriv, f"--bounding-set={_DROPPED}", f"--inh-caps={_DROPPED}", "--"]


_PROLOGUE = """\
import sys
with open("/proc/self/status") as _status:
    _caps = int(next(l for l in _status if l.startswith("CapEff:")).split()[1], 16)
assert not _caps & (1 << 1 | 1 << 2), "CAP_DAC_OVERRIDE / CAP_DAC_READ_SEARCH still held"
"""


def run_unprivileged(code: str, *args: str, timeout: float = 120) -> Any:
    """Run ``code`` (Python; ``sys.argv[1:]`` = ``args``) in a child process without
    the file-permission privilege (checked in the child before ``code`` runs). ``code``
    must print one JSON value as its last line, which is returned."""
    proc = subprocess.run(
        [*_prefix(), sys.executable, "-c", _PROLOGUE + textwrap.dedent(code), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        env={k: v for k, v in os.environ.items() if not k.startswith("DCM")},
    )
    assert proc.returncode == 0, f"unprivileged child failed:\n{proc.stderr[-3000:]}"
    return json.loads(proc.stdout.strip().splitlines()[-1])
