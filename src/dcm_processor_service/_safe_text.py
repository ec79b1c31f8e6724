"""Text that is safe to show: secrets masked, length bounded.

Everything the package writes for humans - log records, a job's captured output, error
fields of job records, the run report - passes through these two functions:

* :func:`mask_secrets` replaces passwords with ``***``: the password of any
  ``scheme://user:password@host`` URL, any ``password=...`` of a libpq connection
  string (or URL query), and every literal secret registered with
  :func:`register_secret` (the runner registers the store URL's password, so even a
  library that echoes it some other way is masked). :class:`MaskingFormatter` applies it
  to whole log records, traceback included.
* :func:`bound_text` keeps the head and the tail of a long text and says how much was
  left out in between, so a job that raises with a 20 MB message or prints 100 MB
  without a newline still produces an error field of a few kB. :class:`TextBounder`
  does the same for text that arrives in pieces (a job's output line), holding no more
  than the limit in memory.
"""

from __future__ import annotations

import logging
import re
import threading
from typing import Final
from urllib.parse import unquote, urlsplit

__all__ = [
    "TEXT_LIMIT",
    "MaskingFormatter",
    "TextBounder",
    "bound_text",
    "mask_secrets",
    "register_secret",
    "register_url_password",
]

#: Characters kept of an error text (job record ``error``, report ``error``/``traceback``).
TEXT_LIMIT: Final = 4000
#: Share of the kept characters taken from the head (the rest comes from the tail, where
#: a traceback ends with the exception).
_HEAD_SHARE: Final = 0.25
#: Secrets shorter than this are not replaced literally (they would mask ordinary words).
_MIN_SECRET: Final = 3

MASK: Final = "***"

# scheme://user:PASSWORD@host  (the password is what sits between the first ':' of the
# user info and the '@' that ends it)
_URL_PASSWORD = re.compile(r"(?P<keep>\b[A-Za-z][A-Za-z0-9+.-]*://[^\s:/@?#]*:)[^\s@/?#]*(?=@)")
# password=value  or  password = 'quoted value'  (libpq key/value strings, URL queries)
_KEY_PASSWORD = re.compile(
    r"(?P<keep>\b(?:PG)?password\s*=\s*)(?:'(?:[^'\\]|\\.|'')*'|[^\s&'][^\s&]*)", re.IGNORECASE
)

_lock = threading.Lock()
_registered: set[str] = set()


def register_secret(value: str | None) -> None:
    """Mask ``value`` literally from now on in this process (no-op for ``None`` and for
    values shorter than 3 characters)."""
    if value and len(value) >= _MIN_SECRET:
        with _lock:
            _registered.add(value)


def register_url_password(url: str | None) -> None:
    """Register the password of ``url`` (``scheme://user:password@...`` or a libpq
    ``password=`` string), decoded and as written, with :func:`register_secret`."""
    if not url:
        return
    if "://" in url:
        try:
            password = urlsplit(url).password
        except ValueError:
            password = None
        if password:
            register_secret(password)
            register_secret(unquote(password))
    for match in _KEY_PASSWORD.finditer(url):
        register_secret(match.group(0)[len(match.group("keep")) :].strip("'"))


def mask_secrets(text: str) -> str:
    """``text`` with URL passwords, ``password=`` values and registered secrets replaced
    by ``***``."""
    text = _URL_PASSWORD.sub(lambda m: m.group("keep") + MASK, text)
    text = _KEY_PASSWORD.sub(lambda m: m.group("keep") + MASK, text)
    with _lock:
        secrets = sorted(_registered, key=len, reverse=True)
    for secret in secrets:
        if secret in text:
            text = text.replace(secret, MASK)
    return text


def _shares(limit: int) -> tuple[int, int]:
    head = int(limit * _HEAD_SHARE)
    return head, limit - head


def _joined(head: str, omitted: int, tail: str) -> str:
    return f"{head}[... {omitted} characters omitted ...]{tail}" if omitted else head + tail


def bound_text(text: str, limit: int = TEXT_LIMIT) -> str:
    """``text`` when it has at most ``limit`` characters, else its head and its tail
    around a note saying how many characters were left out (about ``limit`` in all)."""
    if len(text) <= limit:
        return text
    head, tail = _shares(limit)
    return _joined(text[:head], len(text) - head - tail, text[-tail:])


class TextBounder:
    """:func:`bound_text` for text that arrives in pieces: keeps only the head and the
    tail (never more than ``limit`` characters), counts what falls in between."""

    def __init__(self, limit: int) -> None:
        self._head_size, self._tail_size = _shares(limit)
        self._head = ""
        self._tail = ""
        self._omitted = 0

    def __bool__(self) -> bool:
        return bool(self._head or self._tail or self._omitted)

    def add(self, piece: str) -> None:
        """Append ``piece``."""
        room = self._head_size - len(self._head)
        if room > 0:
            self._head += piece[:room]
            piece = piece[room:]
        if piece:
            self._tail += piece
            extra = len(self._tail) - self._tail_size
            if extra > 0:
                self._omitted += extra
                self._tail = self._tail[extra:]

    def take(self) -> str:
        """The bounded text so far; starts over empty."""
        text = _joined(self._head, self._omitted, self._tail)
        self._head, self._tail, self._omitted = "", "", 0
        return text


class MaskingFormatter(logging.Formatter):
    """A formatter whose output (message, traceback, stack) has its secrets masked."""

    def format(self, record: logging.LogRecord) -> str:
        return mask_secrets(super().format(record))
