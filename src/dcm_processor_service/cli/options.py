"""The context object of one ``dcm-service`` call, and the options commands share.

Click hands every command the one :class:`CliState` of the call (the group's context
object, created by :func:`~.app.main`). Options write into it through callbacks
instead of becoming parameters of each command:

- the store options (``--store``, ``--db-provider``, ``--db-url``, ``--db-name``) are
  declared once here and accepted on the group and on each command that uses a store
  (:func:`uses_store`); a value given to the command wins over the group's;
- the global options (``-v``, ``--json``) are declared in :mod:`.app`, which adds them
  to the group and to every command.

A command takes the state with :data:`pass_state` and opens the store with
:meth:`CliState.open_store`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click
from click.core import ParameterSource

from ..store.address import StoreAddress, is_sqlite

if TYPE_CHECKING:
    from ..store.base import Store
    from .console import Console, ConsoleLogHandler

__all__ = [
    "DEFAULT_STORE_DIR",
    "EVENT_CHOICE",
    "CliState",
    "pass_state",
    "peer_address_option",
    "peer_option",
    "state_of",
    "store_options",
    "uses_store",
]

F = TypeVar("F", bound=Callable[..., Any])

DEFAULT_STORE_DIR = ".dcm-service"

#: The platform's job events, as a choice of ``--event`` options.
EVENT_CHOICE = click.Choice(["stable-series", "stable-study", "stable-patient"])


@dataclass
class CliState:
    """What one call of ``dcm-service`` has gathered from its options."""

    verbose: int = 0
    json: bool = False
    store_dir: str = DEFAULT_STORE_DIR
    db_provider: str | None = None
    db_url: str | None = None
    db_name: str | None = None
    #: The log handler :mod:`.app` installed for this call, and the levels it replaced.
    log_handler: ConsoleLogHandler | None = None
    saved_levels: dict[str, int] = field(default_factory=dict)
    _address: StoreAddress | None = field(default=None, repr=False)

    def store_address(self) -> StoreAddress:
        """The store the options name (the embedded SQLite store in ``--store`` unless
        ``--db-url`` is given). Raises :class:`click.UsageError` for ``--db-provider``
        other than sqlite without ``--db-url``."""
        if self._address is None:
            if not self.db_url and not is_sqlite(self.db_provider):
                raise click.UsageError(f"--db-provider {self.db_provider} needs --db-url")
            self._address = StoreAddress.from_options(
                self.db_provider, self.db_url, self.db_name, folder=self.store_dir
            )
        return self._address

    def store_folder(self) -> Path | None:
        """The folder of the embedded store when it comes from ``--store`` (no
        ``--db-url``): where ``run`` keeps its job logs by default."""
        return None if self.db_url else Path(self.store_address().url)

    def open_store(self) -> Store:
        """Open the store the options name."""
        return self.store_address().open()

    @contextmanager
    def progress_on(self, console: Console) -> Iterator[Console]:
        """Draw ``console``'s progress, with log records printed above its status line."""
        handler = self.log_handler
        if handler is not None:
            handler.console = console
        try:
            yield console
        finally:
            if handler is not None:
                handler.console = None
            console.finish()


def state_of(ctx: click.Context) -> CliState:
    """The state of the call ``ctx`` belongs to (created if a caller gave none)."""
    return ctx.ensure_object(CliState)


#: Decorator: hand the command the :class:`CliState` as its first argument.
pass_state = click.make_pass_decorator(CliState, ensure=True)


def _remember(ctx: click.Context, param: click.Parameter, value: Any) -> None:
    """Option callback: keep a value the user gave (not a default) in the state."""
    if (
        value is not None
        and ctx.get_parameter_source(param.name or "") is not ParameterSource.DEFAULT
    ):
        setattr(state_of(ctx), param.name or "", value)


def _state_option(*decls: str, **attrs: Any) -> Callable[[F], F]:
    """An option whose value goes into the state instead of the command's arguments."""
    return click.option(*decls, expose_value=False, callback=_remember, **attrs)


#: The store options, declared once: on the group and on each command using a store.
_STORE_OPTIONS = (
    _state_option(
        "--store",
        "store_dir",
        default=DEFAULT_STORE_DIR,
        show_default=True,
        type=click.Path(file_okay=False),
        help="Folder of the embedded SQLite store.",
    ),
    _state_option(
        "--db-provider",
        default=None,
        help="Storage provider: sqlite (default), postgresql, mongodb.",
    ),
    _state_option(
        "--db-url",
        default=None,
        help="Store URL for --db-provider (default: the embedded SQLite store in --store).",
    ),
    _state_option("--db-name", default=None, help="Database name (provider-specific)."),
)


def store_options(func: F) -> F:
    """Add ``--store``/``--db-*`` (their values go into the state)."""
    for option in reversed(_STORE_OPTIONS):
        func = option(func)
    return func


def uses_store(func: F) -> F:
    """For a command that works on a store: add the store options, and check them
    before the command runs (a bad combination is a usage error, exit code 2)."""

    @functools.wraps(func)
    def command(*args: Any, **kwargs: Any) -> Any:
        state_of(click.get_current_context()).store_address()
        return func(*args, **kwargs)

    return store_options(command)  # type: ignore[return-value]


def peer_option(help_text: str) -> Callable[[F], F]:
    """``--peer NAME``: a peer of the store (what it is for, in ``help_text``)."""
    return click.option("--peer", default=None, metavar="NAME", help=help_text)


def peer_address_option(help_text: str) -> Callable[[F], F]:
    """``--peer-address AET@HOST:PORT``: a DICOM node given by address."""
    return click.option("--peer-address", default=None, metavar="AET@HOST:PORT", help=help_text)
