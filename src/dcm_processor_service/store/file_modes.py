"""Owner-only file modes for what a store keeps on disk (patient data).

New folders are created 0700 and new files 0600. A folder or file of ours that an
older version left open to others is tightened when the store opens it (and logged);
files and folders of another owner are left as they are.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

__all__ = ["private_file", "private_folder"]

logger = logging.getLogger(__name__)


def _tighten(path: Path, mask: int) -> None:
    st = path.stat()
    if st.st_uid == os.geteuid() and st.st_mode & 0o077:
        os.chmod(path, stat.S_IMODE(st.st_mode) & mask)
        logger.info("made %s accessible to its owner only (it holds patient data)", path)


def private_folder(folder: Path) -> None:
    """Create ``folder`` (and missing parents) owner-only, or tighten it when it is ours."""
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    _tighten(folder, 0o700)


def private_file(path: Path) -> None:
    """Create ``path`` empty and owner-only when it does not exist, else tighten it when
    it is ours (so files derived from it, such as SQLite's ``-wal`` and ``-shm``, get
    the same mode)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except FileExistsError:
        _tighten(path, 0o600)
    else:
        os.close(fd)
