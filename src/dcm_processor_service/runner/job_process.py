"""One job, one process: the launcher (runner side) and the entry point (job side).

The runner starts ``python -m dcm_processor_service.runner.job_process SPEC.json`` with
the platform's environment (the hyphenated ``DCM-PROCESSOR-SERVICE-*`` variables, see
:func:`~dcm_processor_service.context_environ`), in a new process group, with a
per-job scratch folder as its working directory. The job side imports the entry, calls
it with the worker's arguments, and writes ``{"ok", "result" | "error", "traceback"}``
to the result file named in the spec. The runner waits with the job's timeout, kills the
whole process group when it is exceeded, tees the job's output to a log file, and polls
the store for the job's progress while it waits.
"""

from __future__ import annotations

import collections
import contextlib
import inspect
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["JobOutcome", "main", "run_job_process"]

logger = logging.getLogger(__name__)

#: Characters of a traceback kept in the job record's ``error``.
ERROR_TAIL = 4000
#: Seconds a job gets to exit after SIGTERM before it is killed.
KILL_GRACE = 3.0
#: Libraries whose INFO logging is silenced in job processes (unless the level is DEBUG).
_QUIET_LIBRARIES = ("highdicom", "pydicom", "pynetdicom", "nibabel")


@dataclass
class JobOutcome:
    """What came out of one job process."""

    status: str  # succeeded | failed | timed-out
    result: Any = None
    error: str | None = None
    traceback: str | None = None
    exit_code: int | None = None
    duration: float = 0.0
    output_tail: list[str] = field(default_factory=list)
    log_path: Path | None = None


def _tail(text: str, limit: int = ERROR_TAIL) -> str:
    return text if len(text) <= limit else "...\n" + text[-limit:]


def _package_root() -> str:
    """The folder that holds the ``dcm_processor_service`` package of this process, so
    the job process imports the same code as the runner."""
    return str(Path(__file__).resolve().parents[2])


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    try:
        if os.name == "posix":
            os.killpg(proc.pid, signal.SIGTERM)
        else:  # pragma: no cover - not POSIX
            proc.terminate()
        try:
            proc.wait(KILL_GRACE)
        except subprocess.TimeoutExpired:
            if os.name == "posix":
                os.killpg(proc.pid, signal.SIGKILL)
            else:  # pragma: no cover
                proc.kill()
            proc.wait()
    except ProcessLookupError:
        pass
    if os.name == "posix":  # the leader exited: kill what it left behind in its group
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)


def run_job_process(
    spec: dict[str, Any],
    *,
    env: dict[str, str],
    timeout: float,
    work_dir: Path,
    name: str,
    timeout_text: str | None = None,
    on_output: Callable[[str], None] | None = None,
    on_poll: Callable[[float], None] | None = None,
    poll_interval: float = 0.25,
) -> JobOutcome:
    """Run one job in a child process and wait for it (at most ``timeout`` seconds).

    ``spec`` holds ``entry``, ``base_dir``, ``extra_paths``, ``args``, ``kwargs``,
    ``what`` and ``log_level``; the result file, log file and scratch folder are named
    ``name`` inside ``work_dir``. ``on_output`` gets each line the job prints;
    ``on_poll`` is called with the elapsed seconds every ``poll_interval``.
    """
    work_dir.mkdir(parents=True, exist_ok=True)
    scratch = work_dir / name
    scratch.mkdir(exist_ok=True)
    spec_path = work_dir / f"{name}.spec.json"
    result_path = work_dir / f"{name}.result.json"
    log_path = work_dir / f"{name}.log"
    result_path.unlink(missing_ok=True)
    spec_path.write_text(
        json.dumps({**spec, "result_path": str(result_path)}, default=str), encoding="utf-8"
    )

    child_env = dict(env)
    child_env["PYTHONUNBUFFERED"] = "1"
    child_env["PYTHONPATH"] = os.pathsep.join(
        p for p in (_package_root(), child_env.get("PYTHONPATH", "")) if p
    )
    tail: collections.deque[str] = collections.deque(maxlen=200)
    start = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-m", "dcm_processor_service.runner.job_process", str(spec_path)],
        env=child_env,
        cwd=scratch,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=os.name == "posix",
    )

    def pump() -> None:
        assert proc.stdout is not None
        with open(log_path, "w", encoding="utf-8") as log:
            for raw in iter(proc.stdout.readline, b""):
                line = raw.decode("utf-8", "replace").rstrip("\r\n")
                log.write(line + "\n")
                log.flush()
                tail.append(line)
                if on_output is not None:
                    try:
                        on_output(line)
                    except Exception:  # an observer must not break the job
                        logger.exception("output observer failed")

    reader = threading.Thread(target=pump, name=f"job-output-{name}", daemon=True)
    reader.start()
    timed_out = False
    try:
        while True:
            elapsed = time.monotonic() - start
            remaining = timeout - elapsed
            if remaining <= 0:
                timed_out = True
                logger.warning(
                    "job %s exceeded its timeout (%s): killing it",
                    name,
                    timeout_text or f"{timeout:g}s",
                )
                _kill_group(proc)
                break
            try:
                proc.wait(min(poll_interval, remaining))
                break
            except subprocess.TimeoutExpired:
                if on_poll is not None:
                    try:
                        on_poll(time.monotonic() - start)
                    except Exception:
                        logger.exception("progress observer failed")
    except BaseException:  # Ctrl-C in the runner: do not leave the job running
        _kill_group(proc)
        raise
    finally:
        reader.join(5)
        if proc.stdout is not None:
            proc.stdout.close()
    duration = time.monotonic() - start
    outcome = JobOutcome(
        status="failed",
        exit_code=proc.returncode,
        duration=duration,
        output_tail=list(tail),
        log_path=log_path,
    )
    if timed_out:
        outcome.status = "timed-out"
        outcome.error = (
            f"timed out after {timeout_text or f'{timeout:g}s'} - the job process was killed"
        )
        return outcome
    try:
        data = json.loads(result_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        last = next((ln for ln in reversed(tail) if ln.strip()), "")
        outcome.error = f"the job process exited with code {proc.returncode} without a result" + (
            f" - last output: {last}" if last else ""
        )
        return outcome
    if data.get("ok"):
        outcome.status = "succeeded"
        outcome.result = data.get("result")
    else:
        outcome.error = data.get("error") or "the job failed"
        outcome.traceback = data.get("traceback")
    return outcome


# ----------------------------------------------------------------- job side
def _jsonable(value: Any) -> Any:
    try:
        json.dumps(value, allow_nan=False)
        return value
    except (TypeError, ValueError):
        text = repr(value)
        return text if len(text) <= 2000 else text[:2000] + "..."


def _fit_kwargs(func: Callable[..., Any], kwargs: dict[str, Any]) -> dict[str, Any]:
    """All of ``kwargs`` if ``func`` takes ``**kwargs``, else only the names it declares
    (a worker written ``worker(session_id, job_name, headers, params, added_params)``
    still runs)."""
    try:
        sig = inspect.signature(func)
    except (TypeError, ValueError):
        return kwargs
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in sig.parameters.values()):
        return kwargs
    return {k: v for k, v in kwargs.items() if k in sig.parameters}


def _write_result(path: str, data: dict[str, Any]) -> None:
    part = f"{path}.part"
    with open(part, "w", encoding="utf-8") as out:
        json.dump(data, out, default=str)
    os.replace(part, path)


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
        "error": message.splitlines()[0] if message else type(exc).__name__,
        "traceback": _tail(tb),
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Job-process entry point: ``python -m dcm_processor_service.runner.job_process SPEC``.

    This process is the platform worker's stand-in, so it sets up logging for the job
    (to stderr, captured by the runner) at the level the spec names.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1:
        sys.stderr.write("usage: python -m dcm_processor_service.runner.job_process SPEC.json\n")
        return 2
    spec = json.loads(Path(args[0]).read_text(encoding="utf-8"))
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
    from .manifest import parse_entry, resolve_entry

    try:
        entry = parse_entry(
            spec["entry"],
            Path(spec["base_dir"]),
            extra_paths=[Path(p) for p in spec.get("extra_paths", [])],
            what=spec.get("what", "workerEntry"),
        )
        func = resolve_entry(entry, spec.get("what", "workerEntry"))
    except BaseException as exc:
        _write_result(result_path, _failure(exc))
        return 3
    code = 0
    try:
        value = func(*spec.get("args", []), **_fit_kwargs(func, spec.get("kwargs", {})))
        data: dict[str, Any] = {"ok": True, "result": _jsonable(value)}
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
