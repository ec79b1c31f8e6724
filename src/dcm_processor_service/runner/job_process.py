"""One job's process: ``python -m dcm_processor_service.runner.job_process -``.

This is the platform worker's stand-in. An executor (:mod:`.executors.local`) starts it
with the platform's environment (the hyphenated ``DCM-PROCESSOR-SERVICE-*`` variables,
see :func:`~dcm_processor_service.context_environ`) and writes the job's spec to its
stdin (no secret is written to disk), a JSON object:

``entry_point``
    the worker (:meth:`~.entries.EntryPoint.to_spec`);
``what``
    how error messages name it (``workerEntry of job 'x'``);
``kwargs``
    the worker's keyword arguments, exactly the platform's;
``log_level``
    the job's logging level;
``result_path``
    where to write the outcome.

The process imports the entry as the platform's worker does (the module folder as
package ``service_module``), calls it with the keyword arguments, and writes ``{"ok",
"result" | "error", "traceback"}`` to ``result_path`` (owner-only); a result the
platform could not store (not JSON-serialisable) fails the job. Exit code: 0 done, 1 the
worker failed, 2 usage, 3 the worker could not be imported or called.

When :data:`PARENT_VARIABLE` names the process that started it (a cluster worker sets
it), the job process ends with that process (Linux: the kernel kills it when its parent
dies), so a worker killed mid-job leaves no job running behind the retry.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .._atomic_file import atomic_write
from .._safe_text import bound_text

__all__ = ["PARENT_VARIABLE", "main"]

#: Environment variable naming the PID whose death ends the job process (see the module doc).
PARENT_VARIABLE = "DCM_SERVICE_DIE_WITH_PARENT"

#: Libraries whose INFO logging is silenced in job processes (unless the level is DEBUG).
_QUIET_LIBRARIES = ("highdicom", "pydicom", "pynetdicom", "nibabel")


def _unstorable_result(value: Any) -> str | None:
    """Why the platform could not store ``value`` (its worker writes the result with
    ``json.dump``), or ``None`` when it can."""
    try:
        json.dumps(value)
    except (TypeError, ValueError, RecursionError) as exc:
        return (
            f"the worker returned a value the platform cannot store ({exc}) - it writes the "
            "result with json.dump: return dicts, lists, str, int, float, bool or None "
            "(numpy values: .tolist() / float()), and keep files in session files"
        )
    return None


def _write_result(path: str, data: dict[str, Any]) -> None:
    with atomic_write(path, mode=0o600) as out:
        out.write(json.dumps(data, default=str).encode("utf-8"))


def _failure(exc: BaseException) -> dict[str, Any]:
    frames = exc.__traceback__
    while (
        frames is not None
        and frames.tb_next is not None
        and frames.tb_frame.f_code.co_filename == __file__
    ):
        frames = frames.tb_next  # start the traceback at the service's code
    tb = "".join(traceback.format_exception(type(exc), exc, frames))
    message = f"{type(exc).__name__}: {exc}".strip()
    return {
        "ok": False,
        "error": bound_text(message.splitlines()[0]) if message else type(exc).__name__,
        "traceback": bound_text(tb),
    }


def _die_with_parent() -> None:
    """End this process when the process named by :data:`PARENT_VARIABLE` dies."""
    import os

    text = os.environ.get(PARENT_VARIABLE, "")
    if not text.isdigit() or not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal

    pr_set_pdeathsig = 1
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, int(signal.SIGKILL), 0, 0, 0)
    if os.getppid() != int(text):  # the parent died before the kernel was told
        os._exit(1)


def main(argv: Sequence[str] | None = None) -> int:
    """Job-process entry point: ``python -m dcm_processor_service.runner.job_process SPEC``
    (``-``: the spec is read from stdin, as the runner passes it).

    This process is the platform worker's stand-in, so it sets up logging for the job
    (to stderr, captured by the runner) at the level the spec names.
    """
    _die_with_parent()
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1:
        sys.stderr.write("usage: python -m dcm_processor_service.runner.job_process SPEC.json\n")
        return 2
    spec = json.loads(sys.stdin.buffer.read() if args[0] == "-" else Path(args[0]).read_bytes())
    level = logging.getLevelName(str(spec.get("log_level", "INFO")).upper())
    level = level if isinstance(level, int) else logging.INFO
    logging.basicConfig(
        level=level, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if level > logging.DEBUG:  # chatty libraries: their INFO is noise in a job log
        for name in _QUIET_LIBRARIES:
            logging.getLogger(name).setLevel(max(level, logging.WARNING))
    result_path = spec["result_path"]
    from .._runtime import close_stores
    from .entries import EntryPoint, resolve_entry
    from .platform import signature_problem

    what = spec.get("what", "workerEntry")
    kwargs: dict[str, Any] = spec.get("kwargs", {})
    try:
        func = resolve_entry(EntryPoint.from_spec(spec["entry_point"]), what)
        problem = signature_problem(func, list(kwargs))
        if problem is not None:
            raise TypeError(
                f"{what} {spec['entry_point']['text']!r} cannot be called the way the platform "
                f"calls it ({problem}) - it passes the keywords {', '.join(kwargs)}; accept "
                "them, e.g. def worker(session_id, job_name, headers, params, added_params, "
                "**kwargs)"
            )
    except BaseException as exc:
        _write_result(result_path, _failure(exc))
        return 3
    code = 0
    try:
        value = func(**kwargs)
        unstorable = _unstorable_result(value)
        data: dict[str, Any] = (
            {"ok": True, "result": value}
            if unstorable is None
            else {"ok": False, "error": unstorable, "traceback": None}
        )
        code = 0 if unstorable is None else 1
    except SystemExit as exc:
        if exc.code in (0, None):
            data = {"ok": True, "result": None}
        else:
            data = _failure(exc)
            data["error"] = f"the job called sys.exit({exc.code!r})"
            code = 1
    except BaseException as exc:
        data = _failure(exc)
        code = 1
    finally:
        with contextlib.suppress(Exception):
            close_stores()
    _write_result(result_path, data)
    sys.stdout.flush()
    sys.stderr.flush()
    return code


if __name__ == "__main__":
    sys.exit(main())
