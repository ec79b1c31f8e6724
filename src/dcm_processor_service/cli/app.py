"""``dcm-service``: the Click group, its global options, logging, and :func:`main`.

The only part of the package that writes to the terminal and configures logging.
Results go to stdout (tables, or JSON with ``--json``); progress, notices and errors
go to stderr. Exit codes: 0 ok, 1 a job or operation failed, 2 a usage or input error
(bad option, bad manifest, unknown entry point/peer/session, input without DICOM).

Commands (one module each under :mod:`.commands`)::

    dcm-service run SERVICE INPUT...      run a service (manifest folder or module:function)
    dcm-service new service NAME          write the platform's service template
    dcm-service check SERVICE             would the platform accept and run it?
    dcm-service demo                      sample data + example service + summary, in one go
    dcm-service demo-data OUT             write a synthetic CT series
    dcm-service ingest INPUT...           file DICOM into the store
    dcm-service send PEER [PATH...]       send files, folders or stored series to a peer
    dcm-service convert IN OUT            DICOM -> NIfTI or NIfTI -> DICOM
    dcm-service peers add|list|remove|echo
    dcm-service sessions list|show|clean
    dcm-service db init|gc
    dcm-service doctor                    check the node: what is wrong, how to fix it
    dcm-service --version                 our version and our dependencies'

``-v`` and ``--json`` are accepted on the group and on every command; so are the
store options (:mod:`.options`) on the group and every command that uses a store.
A command's module is imported when that command runs (or a help page lists it), and
command modules import what is heavy (the runner, numpy, pydicom's pixel handlers)
inside their functions: ``dcm-service send`` loads only what sending needs.

See ``docs/runner.md`` for the reference.
"""

from __future__ import annotations

import importlib
import logging
import signal
import sys
import traceback
from typing import Any

import click

from .._errors import (
    ConfigError,
    DcmProcessorError,
    DicomInputError,
    InvalidInputError,
    NotFoundError,
    ServiceError,
)
from .._safe_text import MaskingFormatter
from .console import ConsoleLogHandler, err
from .options import CliState, state_of, store_options

__all__ = ["cli", "main"]

_USAGE_ERRORS = (InvalidInputError, ConfigError, ServiceError, DicomInputError, NotFoundError)
_PACKAGE_LOGGER = "dcm_processor_service"
_VERBOSE_HELP = "More output: -v info and job output, -vv debug."


# ---------------------------------------------------------------------- logging
def configure_logging(state: CliState) -> None:
    """Install this call's log handler on the root logger, at the level ``-v`` asks
    for (replacing one installed before), every line masked: a library may echo the
    store URL or conninfo."""
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, ConsoleLogHandler)]:
        root.removeHandler(handler)
    handler = ConsoleLogHandler(sys.stderr)
    if state.verbose:
        handler.setFormatter(
            MaskingFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S")
        )
    else:
        handler.setFormatter(MaskingFormatter("%(levelname)s: %(message)s"))
    verbose = state.verbose
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    handler.setLevel(level)
    root.addHandler(handler)
    state.log_handler = handler
    package = logging.getLogger(_PACKAGE_LOGGER)
    state.saved_levels.setdefault(_PACKAGE_LOGGER, package.level)
    package.setLevel(level)


def restore_logging(state: CliState) -> None:
    """Undo :func:`configure_logging` (``main()`` runs in-process in tests and tools)."""
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, ConsoleLogHandler)]:
        root.removeHandler(handler)
    for name, level in state.saved_levels.items():
        logging.getLogger(name).setLevel(level)
    state.saved_levels.clear()
    state.log_handler = None


# --------------------------------------------------------------- global options
def _count_verbose(ctx: click.Context, param: click.Parameter, value: int) -> None:
    state = state_of(ctx)
    state.verbose = max(state.verbose, value)  # the group's or the command's, the larger
    configure_logging(state)


def _ask_json(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    state = state_of(ctx)
    state.json = state.json or value


def _global_options(json_help: str) -> list[click.Option]:
    return [
        click.Option(
            ["-v", "--verbose"],
            count=True,
            expose_value=False,
            callback=_count_verbose,
            help=_VERBOSE_HELP,
        ),
        click.Option(
            ["--json", "json_out"],
            is_flag=True,
            expose_value=False,
            callback=_ask_json,
            help=json_help,
        ),
    ]


# ------------------------------------------------------------------------ group
#: Command name -> (module of :mod:`.commands`, attribute): imported on first use.
_COMMANDS: dict[str, tuple[str, str]] = {
    "run": ("run", "run"),
    "new": ("service", "new"),
    "check": ("service", "check"),
    "demo": ("demo", "demo"),
    "demo-data": ("demo", "demo_data"),
    "ingest": ("ingest", "ingest"),
    "send": ("send", "send"),
    "convert": ("convert", "convert"),
    "peers": ("peers", "peers"),
    "sessions": ("sessions", "sessions"),
    "db": ("db", "db"),
    "doctor": ("doctor", "doctor"),
}


class _LazyGroup(click.Group):
    """A group whose commands (:data:`_COMMANDS`) are imported when first asked for,
    then given the global options."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*self.commands, *_COMMANDS})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in _COMMANDS:
            module, attribute = _COMMANDS[cmd_name]
            command = getattr(
                importlib.import_module(f"{__package__}.commands.{module}"), attribute
            )
            _add_global_options(command)
            self.add_command(command, cmd_name)
        return super().get_command(ctx, cmd_name)


def _print_version(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    """``--version``: ours and the versions a bug report needs, then exit."""
    if not value or ctx.resilient_parsing:
        return
    from ..doctor.versions import version_lines

    rows = version_lines()
    width = max(len(name) for name, _ in rows)
    click.echo(f"dcm-service {rows[0][1]}")
    for name, version in rows[1:]:
        click.echo(f"  {name:{width}}  {version}")
    ctx.exit(0)


@click.group(
    cls=_LazyGroup,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.option(
    "--version",
    is_flag=True,
    expose_value=False,
    is_eager=True,
    callback=_print_version,
    help="Show our version and those of pydicom, pynetdicom, highdicom, nibabel, dcm2niix "
    "and the store drivers, then exit.",
)
@store_options
def cli() -> None:
    """Run dcm-processor services locally, exactly as the platform's worker would,
    and manage the store, peers and sessions they use."""


cli.params[:0] = _global_options("Print results as JSON on stdout.")


def _add_global_options(command: click.Command) -> None:
    """Give every command below ``command`` ``-v`` and ``--json`` (after its own options)."""
    if isinstance(command, click.Group):
        for sub in command.commands.values():
            _add_global_options(sub)
    else:
        command.params.extend(_global_options("Print the result as JSON on stdout."))


# ------------------------------------------------------------------------- main
def _interrupted(exc: KeyboardInterrupt) -> int:
    """Report a run stopped by a signal; the exit code is 128 + the signal's number."""
    signum = int(getattr(exc, "signum", signal.SIGINT))
    err(f"interrupted by {signal.Signals(signum).name}")
    return 128 + signum


def main(argv: list[str] | None = None) -> int:
    """Run ``dcm-service`` with ``argv`` (default ``sys.argv[1:]``); return the exit code."""
    state = CliState()
    try:
        result: Any = cli.main(args=argv, prog_name="dcm-service", standalone_mode=False, obj=state)
    except click.exceptions.Abort as exc:
        if isinstance(exc.__cause__, KeyboardInterrupt):  # click wraps Ctrl-C (and our signals)
            return _interrupted(exc.__cause__)
        err("aborted")
        return 130
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except KeyboardInterrupt as exc:
        return _interrupted(exc)
    except DcmProcessorError as exc:
        err(f"error: {exc}")
        if state.verbose:
            err(traceback.format_exc())
        return 2 if isinstance(exc, _USAGE_ERRORS) else 1
    except Exception as exc:
        err(f"error: {type(exc).__name__}: {exc}")
        if state.verbose:
            err(traceback.format_exc())
        else:
            err("(run with -v for the traceback)")
        return 1
    finally:
        restore_logging(state)
    return result if isinstance(result, int) else 0
