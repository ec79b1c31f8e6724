"""Write a file so that no reader ever sees half of it.

:func:`atomic_write` writes to a temporary file in the target's folder and renames it
over the target once complete; on any failure the temporary file is removed. The
temporary name does not depend on the target's name (``.<16 hex digits>.part``), so a
target name that the file system accepts always gets a temporary name it accepts too
(``.NAME.part`` made a valid 250-character name fail with ``ENAMETOOLONG``). A target
name longer than its file system allows is refused before anything is written, with an
:class:`~dcm_processor_service.InvalidInputError` that names it.

Every ``.part`` file of the package is made here.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO, Final

from ._errors import InvalidInputError

__all__ = ["PART_SUFFIX", "atomic_write", "check_name_fits"]

#: Suffix of the temporary files (a crashed writer leaves ``.<hex>.part`` behind).
PART_SUFFIX: Final = ".part"
#: Bytes of a file name when the file system does not say (Linux, macOS, Windows).
_DEFAULT_NAME_MAX: Final = 255


def _name_max(folder: Path) -> int:
    try:
        return int(os.pathconf(folder, "PC_NAME_MAX"))
    except (AttributeError, ValueError, OSError):  # not POSIX, or the folder is missing
        return _DEFAULT_NAME_MAX


def _shown(name: str, limit: int = 80) -> str:
    return repr(name) if len(name) <= limit else repr(name[:limit]) + f"... ({len(name)} chars)"


def check_name_fits(target: str | os.PathLike[str]) -> None:
    """Raise :class:`InvalidInputError` when ``target``'s file name is longer than the
    file system of its folder allows (counted in bytes of the file system encoding)."""
    path = Path(target)
    size = len(os.fsencode(path.name))
    limit = _name_max(path.parent if path.parent.exists() else Path("."))
    if size > limit:
        raise InvalidInputError(
            f"file name {_shown(path.name)} is {size} bytes (UTF-8), longer than the {limit} "
            f"bytes the file system of {str(path.parent)!r} allows - give a shorter name"
        )


def _too_long(target: Path, exc: OSError) -> InvalidInputError:
    return InvalidInputError(
        f"path {_shown(str(target), 120)} is too long for the file system "
        f"({len(os.fsencode(str(target)))} bytes): {exc.strerror} - use a shorter folder or name"
    )


@contextlib.contextmanager
def atomic_write(target: str | os.PathLike[str], *, mode: int = 0o666) -> Iterator[BinaryIO]:
    """Yield a binary file whose content replaces ``target`` when the block ends
    without an error. ``mode`` is the new file's permission (before the umask; 0o600 for
    owner-only)."""
    path = Path(target)
    check_name_fits(path)
    part = path.with_name(f".{secrets.token_hex(8)}{PART_SUFFIX}")
    try:
        fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), mode)
    except OSError as exc:
        if exc.errno == errno.ENAMETOOLONG:
            raise _too_long(path, exc) from exc
        raise
    try:
        with os.fdopen(fd, "wb") as out:
            yield out
        os.replace(part, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            part.unlink()
        if isinstance(exc, OSError) and exc.errno == errno.ENAMETOOLONG:
            raise _too_long(path, exc) from exc
        raise
