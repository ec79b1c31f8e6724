"""From what a caller names to the entries to read: folders, files, DICOMDIRs, datasets.

:class:`Inputs` expands one call's sources lazily into :data:`Entry` values, with one
policy for every reader (ingest, the sender, the runner, the CLI):

* **Folders** are walked recursively: a folder's own files first, then its subfolders,
  each in name order. A linked folder is followed once (a link loop is skipped).
* **Hidden entries** — a file or folder found in a walk whose name starts with ``.`` —
  are :class:`Skipped` (``"hidden entry"``), never read and never a failure. A path the
  caller names explicitly is read whatever its name.
* **Not a file**: a broken symbolic link, a FIFO, a socket or a device found in a walk
  or named is :class:`Failed` (never opened: opening a FIFO would block); so is a path
  that does not exist, or a folder that cannot be listed.
* **The same file reached twice** in one call (a folder and a DICOMDIR in it, a path
  given twice, a link) is yielded once.
* **DICOMDIR** (recognised by its content, whatever its name): the reader calls
  :meth:`Inputs.dicomdir` once it has seen the header. A DICOMDIR the caller named is
  followed - its references, contained in its folder
  (:func:`~dcm_processor_service.sources.dicomdir.dicomdir_references`); one met in a
  folder walk is :class:`Skipped` (the walk finds its files anyway). A
  :class:`DicomdirFile` is always read as a DICOMDIR.
* **Datasets** (pydicom ``Dataset``) are yielded as they are; a pydicom ``FileSet``
  yields its instances' files; an iterable may mix all of these. An item of an
  iterable that is none of these is :class:`Failed` (the other items are still read);
  a source that is not even an iterable raises :class:`InvalidInputError`.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple, TypeAlias

from .._errors import DicomInputError, InvalidInputError
from .read import is_dataset, is_fileset

if TYPE_CHECKING:
    from pathlib import Path

    from pydicom.dataset import Dataset
    from pydicom.fileset import FileSet

__all__ = [
    "DICOMDIR_SKIPPED",
    "HIDDEN",
    "DicomdirFile",
    "Entry",
    "Failed",
    "InputFile",
    "InputFiles",
    "Inputs",
    "Skipped",
    "SourceLike",
    "collect_files",
    "is_hidden",
]

#: What the readers accept: a path (folder, file, DICOMDIR), a pydicom Dataset or
#: FileSet, or an iterable of those.
#: (A string at run time: naming pydicom's classes must not import pydicom.)
SourceLike: TypeAlias = "str | os.PathLike[str] | Dataset | FileSet | Iterable[Any]"


class Skipped(NamedTuple):
    """An entry deliberately not read (hidden, a DICOMDIR met in a folder, a link
    loop): ``(path, reason)``."""

    path: str
    reason: str


class Failed(NamedTuple):
    """An entry that cannot be read: ``(path, reason)``."""

    path: str
    reason: str


@dataclass(frozen=True)
class InputFile:
    """A file to read: ``explicit`` when the caller named it (then a DICOMDIR is
    followed), not when it was found in a folder or referenced by a DICOMDIR."""

    path: str
    explicit: bool = False


@dataclass(frozen=True)
class DicomdirFile:
    """A path to read as a DICOMDIR whatever its name; a path-like."""

    path: Path

    def __fspath__(self) -> str:
        return os.fspath(self.path)


#: One expanded entry.
Entry: TypeAlias = "InputFile | Dataset | Skipped | Failed"

#: The reason of a DICOMDIR's :class:`Skipped` (a directory of a medium, not an instance).
DICOMDIR_SKIPPED = "DICOMDIR (a media directory, not an instance)"
#: The reason of a hidden entry's :class:`Skipped`.
HIDDEN = "hidden entry"


def is_hidden(name: str) -> bool:
    """Whether a folder entry is hidden (its name starts with ``.``): skipped by walks."""
    return name.startswith(".")


def _file_type(mode: int) -> str:
    for test, name in (
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
    ):
        if test(mode):
            return name
    return "not a regular file"


def _broken_link(path: str) -> Failed:
    return Failed(path, f"broken symbolic link (to {os.readlink(path)!r})")


class Inputs:
    """The expansion of one call's sources: remembers the folders walked and the files
    yielded, so that each is read once (see the module docs for the policy)."""

    def __init__(self) -> None:
        self._folders: set[tuple[int, int]] = set()
        self._files: set[tuple[int, int]] = set()

    # ------------------------------------------------------------------ sources
    def expand(self, source: Any) -> Iterator[Entry]:
        """The entries of ``source`` (a path, a Dataset, a FileSet, a DicomdirFile, or
        an iterable of those), lazily. Raises :class:`InvalidInputError` for a source
        of another type (items of an iterable are :class:`Failed` instead)."""
        if is_dataset(source):
            yield source
        elif isinstance(source, DicomdirFile):
            yield from self._dicomdir(os.fspath(source), None)
        elif isinstance(source, (str, os.PathLike)):
            yield from self._path(os.fspath(source))
        elif is_fileset(source):
            # pydicom refuses, when it loads a DICOMDIR, references outside its folder
            for instance in source:
                yield from self._file(str(instance.path), explicit=False)
        elif isinstance(source, (bytes, bytearray, memoryview)):
            raise InvalidInputError(
                "invalid input: bytes - pass a path, a pydicom Dataset or a list of them"
            )
        elif isinstance(source, Iterable):
            for index, item in enumerate(source):
                if isinstance(item, (str, os.PathLike)) or is_dataset(item) or is_fileset(item):
                    yield from self.expand(item)
                elif isinstance(item, (bytes, bytearray, memoryview)):
                    yield Failed(
                        f"<item #{index}: {type(item).__name__}>",
                        "raw bytes are not a source - pass a path or a dataset",
                    )
                else:
                    yield Failed(
                        repr(item)[:80], f"not a path or a pydicom Dataset ({type(item).__name__})"
                    )
        else:
            raise InvalidInputError(
                f"invalid input {source!r:.80} ({type(source).__name__}) - expected a path, a "
                "pydicom Dataset or an iterable of them (paths, datasets, FileSets)"
            )

    def dicomdir(self, item: InputFile, dataset: Dataset | None = None) -> Iterator[Entry]:
        """What to do with ``item``, a file a reader found to be a DICOMDIR (``dataset``:
        its content, if already read): follow its contained references when the caller
        named it, else skip it."""
        if not item.explicit:
            yield Skipped(item.path, DICOMDIR_SKIPPED)
            return
        yield from self._dicomdir(item.path, dataset)

    # ---------------------------------------------------------------- internals
    def _dicomdir(self, path: str, dataset: Dataset | None) -> Iterator[Entry]:
        from .dicomdir import dicomdir_references  # only DICOMDIRs need it

        try:
            references = dicomdir_references(path, dataset)
        except DicomInputError as exc:
            yield Failed(path, str(exc))
            return
        for ref in references:
            if ref.path is None:
                yield Failed(ref.label, str(ref.problem))
            else:
                yield from self._file(str(ref.path), explicit=False)

    def _file(
        self, path: str, *, explicit: bool, st: os.stat_result | None = None
    ) -> Iterator[Entry]:
        """``path`` unless the same file (device and inode: links, hard links, a path
        given twice) was yielded already."""
        try:
            st = st or os.stat(path)
        except OSError as exc:
            yield Failed(path, f"cannot inspect: {exc.strerror or exc}")
            return
        key = (st.st_dev, st.st_ino)
        if key in self._files:
            return
        self._files.add(key)
        yield InputFile(path, explicit)

    def _path(self, path: str) -> Iterator[Entry]:
        try:
            st = os.stat(path)
        except FileNotFoundError:
            yield _broken_link(path) if os.path.islink(path) else Failed(path, "does not exist")
            return
        except OSError as exc:
            yield Failed(path, f"cannot inspect: {exc.strerror or exc}")
            return
        if stat.S_ISDIR(st.st_mode):
            yield from self._walk(path)
        elif stat.S_ISREG(st.st_mode):
            yield from self._file(path, explicit=True, st=st)
        else:
            yield Failed(path, f"{_file_type(st.st_mode)}, not a file")

    def _walk(self, root: str) -> Iterator[Entry]:
        try:
            st = os.stat(root)
            key = (st.st_dev, st.st_ino)
            if key in self._folders:
                yield Skipped(root, "folder already walked (symbolic link loop)")
                return
            self._folders.add(key)
            with os.scandir(root) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            yield Failed(root, f"cannot list folder: {exc.strerror or exc}")
            return
        folders = []
        for entry in entries:
            if is_hidden(entry.name):
                yield Skipped(entry.path, HIDDEN)
                continue
            try:
                if entry.is_dir():
                    folders.append(entry.path)
                elif entry.is_file():
                    yield from self._file(entry.path, explicit=False, st=entry.stat())
                elif entry.is_symlink() and not os.path.exists(entry.path):
                    yield _broken_link(entry.path)
                else:
                    yield Failed(entry.path, f"{_file_type(entry.stat().st_mode)}, not a file")
            except OSError as exc:
                yield Failed(entry.path, f"cannot inspect: {exc.strerror or exc}")
        for folder in folders:
            yield from self._walk(folder)


@dataclass
class InputFiles:
    """The files of paths named on a command line, found without reading them; a
    DICOMDIR among them is followed with :meth:`dicomdir` once read."""

    files: list[InputFile] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    failed: list[Failed] = field(default_factory=list)
    inputs: Inputs = field(default_factory=Inputs, repr=False)

    def dicomdir(self, item: InputFile, dataset: Dataset | None = None) -> Iterator[Entry]:
        """:meth:`Inputs.dicomdir` for ``item`` (never a file already listed)."""
        return self.inputs.dicomdir(item, dataset)


def collect_files(inputs: Sequence[str | os.PathLike[str]]) -> InputFiles:
    """Expand paths named by a user (folders, files, DICOMDIRs) into their files, by the
    module's policy, without reading any file.

    Raises :class:`InvalidInputError` when nothing is named, a named path does not
    exist, or a named folder holds no file to read (hidden entries are not files to
    read: they are listed in ``skipped``).
    """
    if not inputs:
        raise InvalidInputError("no input given - name a folder, DICOM files or a DICOMDIR")
    out = InputFiles()
    for item in inputs:
        path = os.path.expanduser(os.fspath(item))
        if not os.path.lexists(path):
            raise InvalidInputError(f"input {os.fspath(item)!r} does not exist")
        hidden = 0
        found = False  # anything but a hidden entry
        for entry in out.inputs.expand(path):
            if isinstance(entry, InputFile):
                out.files.append(entry)
            elif isinstance(entry, Skipped):
                out.skipped.append(entry)
            elif isinstance(entry, Failed):
                out.failed.append(entry)
            hidden += isinstance(entry, Skipped) and entry.reason == HIDDEN
            found = found or not (isinstance(entry, Skipped) and entry.reason == HIDDEN)
        if not found and os.path.isdir(path):
            extra = (
                f" ({hidden} hidden entr{'y' if hidden == 1 else 'ies'} skipped)" if hidden else ""
            )
            raise InvalidInputError(f"input folder {os.fspath(item)!r} is empty{extra}")
    return out
