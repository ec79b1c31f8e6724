"""One job, one process: the launcher (runner side) and the entry point (job side).

The runner starts ``python -m dcm_processor_service.runner.job_process -`` with the
platform's environment (the hyphenated ``DCM-PROCESSOR-SERVICE-*`` variables, see
:func:`~dcm_processor_service.context_environ`), in a new process group, with a
per-job scratch folder as its working directory, and writes the job's spec (entry,
arguments - the store URL with its password among them) to the process's stdin: no
secret is written to disk. The job side imports the entry as the platform's worker does
(the module folder as package ``service_module``), calls it with exactly the platform's
keyword arguments, and writes ``{"ok", "result" | "error", "traceback"}`` to the result
file named in the spec; a result the platform could not store (not JSON-serialisable)
fails the job.

The runner waits at most the job's timeout. The job's outcome is decided when the job
process exits (or the timeout fires), whatever its children do; then every process the
job started is ended (:func:`~.processes.end_processes`: its process group and every
process carrying its marker variable). The job's output is read by a thread that never
blocks the runner, masked (:func:`~dcm_processor_service._safe_text.mask_secrets`),
bounded per line, teed to an owner-only log file, and passed on line by line. The work
folders are owner-only (0700), the files in them too (0600).
"""

from __future__ import annotations

import codecs
import collections
import contextlib
import json
import logging
import os
import subprocess
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from .._atomic_file import atomic_write
from .._safe_text import TextBounder, bound_text, mask_secrets
from .processes import MARKER_VARIABLE, end_processes

__all__ = ["JobOutcome", "main", "run_job_process"]

logger = logging.getLogger(__name__)

#: Seconds a job's processes get to exit after SIGTERM before they are killed.
KILL_GRACE = 3.0
#: Characters of one output line kept (a longer line keeps its head and tail).
LINE_LIMIT = 32 * 1024
#: Lines of output kept in memory for the error detail.
TAIL_LINES = 200
#: Seconds the output reader gets to reach the end of the output once the job's
#: processes are ended (a process that escaped keeps it open: it is then abandoned).
DRAIN_GRACE = 2.0
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


def _package_root() -> str:
    """The folder that holds the ``dcm_processor_service`` package of this process, so
    the job process imports the same code as the runner."""
    return str(Path(__file__).resolve().parents[2])


def make_private_dir(path: Path) -> Path:
    """Create ``path`` and its missing parents owner-only (0700); return it."""
    missing = []
    for folder in (path, *path.parents):
        if folder.exists():
            break
        missing.append(folder)
    for folder in reversed(missing):
        with contextlib.suppress(FileExistsError):
            folder.mkdir(mode=0o700)
    return path


class _OutputLines:
    """Decodes a job's output and splits it into lines, each at most ``limit``
    characters (head and tail kept). A carriage return starts the line over, as on a
    terminal, so a progress bar leaves its last state, not every redraw."""

    def __init__(self, limit: int = LINE_LIMIT) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self._line = TextBounder(limit)
        self._carriage_return = False

    def _add(self, piece: str) -> None:
        if self._carriage_return and piece:
            self._line.take()  # the '\r' was not part of '\r\n': the line starts over
        self._carriage_return = piece.endswith("\r")
        piece = piece.rstrip("\r")
        if "\r" in piece:
            self._line.take()
            piece = piece.rsplit("\r", 1)[1]
        self._line.add(piece)

    def feed(self, data: bytes, final: bool = False) -> list[str]:
        """The lines completed by ``data`` (all the rest too when ``final``)."""
        *complete, rest = self._decoder.decode(data, final).split("\n")
        lines = []
        for piece in complete:
            self._add(piece)
            self._carriage_return = False
            lines.append(self._line.take())
        self._add(rest)
        if final and self._line:
            lines.append(self._line.take())
        return lines


class _OutputReader(threading.Thread):
    """Reads the job's output pipe until its end (or until told to stop), masks and
    bounds every line, writes it to the log, keeps the last lines, calls ``on_output``.
    Owns the pipe and the log file and closes both."""

    def __init__(
        self, fd: int, log: IO[str], name: str, on_output: Callable[[str], None] | None
    ) -> None:
        super().__init__(name=f"job-output-{name}", daemon=True)
        self._fd = fd
        self._log = log
        self._on_output = on_output
        self.tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
        self.stopped = threading.Event()

    def _deliver(self, line: str) -> None:
        line = mask_secrets(line)
        self._log.write(line + "\n")
        self._log.flush()
        self.tail.append(line)
        if self._on_output is not None:
            try:
                self._on_output(line)
            except Exception:  # an observer must not break the job
                logger.exception("output observer failed")

    def run(self) -> None:
        lines = _OutputLines()
        try:
            while not self.stopped.is_set():
                try:
                    data = os.read(self._fd, 64 * 1024)
                except OSError:
                    data = b""
                if self.stopped.is_set():
                    break
                for line in lines.feed(data, final=not data):
                    self._deliver(line)
                if not data:
                    break
        finally:
            os.close(self._fd)
            self._log.close()


def _send_spec(pipe: IO[bytes], data: bytes) -> None:
    with contextlib.suppress(OSError), pipe:  # OSError: the job died before reading it
        pipe.write(data)


def run_job_process(
    spec: dict[str, Any],
    *,
    env: dict[str, str],
    timeout: float,
    work_dir: Path,
    name: str,
    timeout_text: str | None = None,
    marker: str | None = None,
    on_output: Callable[[str], None] | None = None,
    on_poll: Callable[[float], None] | None = None,
    poll_interval: float = 0.25,
) -> JobOutcome:
    """Run one job in a child process and wait for it (at most ``timeout`` seconds).

    ``spec`` holds ``entry_point`` (:meth:`EntryPoint.to_spec`), ``kwargs`` (the
    worker's keyword arguments), ``what`` and ``log_level``; it reaches the job process
    through a pipe. The result file, log file and scratch folder are named ``name``
    inside ``work_dir``. ``marker`` (default: a new random one) marks the job's
    processes, see :mod:`.processes`. ``on_output`` gets each line the job prints (secrets masked);
    ``on_poll`` is called with the elapsed seconds every ``poll_interval``.
    """
    make_private_dir(work_dir)
    scratch = make_private_dir(work_dir / name)
    result_path = work_dir / f"{name}.result.json"
    log_path = work_dir / f"{name}.log"
    result_path.unlink(missing_ok=True)
    data = json.dumps({**spec, "result_path": str(result_path)}, default=str).encode("utf-8")

    marker = marker or uuid.uuid4().hex
    child_env = dict(env)
    child_env["PYTHONUNBUFFERED"] = "1"
    child_env["PYTHONPATH"] = os.pathsep.join(
        p for p in (_package_root(), child_env.get("PYTHONPATH", "")) if p
    )
    child_env[MARKER_VARIABLE] = marker
    log = os.fdopen(
        os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600),
        "w",
        encoding="utf-8",
    )
    read_end, write_end = os.pipe()
    start = time.monotonic()
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "dcm_processor_service.runner.job_process", "-"],
            env=child_env,
            cwd=scratch,
            stdin=subprocess.PIPE,
            stdout=write_end,
            stderr=write_end,
            start_new_session=os.name == "posix",
        )
    except BaseException:
        os.close(read_end)
        log.close()
        raise
    finally:
        os.close(write_end)
    reader = _OutputReader(read_end, log, name, on_output)
    reader.start()
    assert proc.stdin is not None
    threading.Thread(target=_send_spec, args=(proc.stdin, data), daemon=True).start()

    timed_out = False
    ended_at: float | None = None
    try:
        while True:
            remaining = timeout - (time.monotonic() - start)
            if remaining <= 0:
                timed_out = True
                logger.warning(
                    "job %s exceeded its timeout (%s): killing it",
                    name,
                    timeout_text or f"{timeout:g}s",
                )
                break
            try:
                proc.wait(min(poll_interval, remaining))
                ended_at = time.monotonic()
                break
            except subprocess.TimeoutExpired:
                if on_poll is not None:
                    try:
                        on_poll(time.monotonic() - start)
                    except Exception:
                        logger.exception("progress observer failed")
    finally:  # the job ended, timed out, or the runner is interrupted: end all it started
        left = end_processes(
            proc.pid if os.name == "posix" else None, marker, grace=KILL_GRACE, reap=proc.poll
        )
        if proc.poll() is None:  # pragma: no cover - not POSIX: no process group
            proc.kill()
        proc.wait()
        if ended_at is not None and left:
            logger.info("job %s left %d process(es) running: ended", name, left)
        reader.join(DRAIN_GRACE)
        if reader.is_alive():
            reader.stopped.set()
            logger.warning(
                "a process started by job %s still holds its output: the rest of it is "
                "not captured",
                name,
            )
    duration = (ended_at or time.monotonic()) - start
    outcome = JobOutcome(
        status="failed",
        exit_code=proc.returncode,
        duration=duration,
        output_tail=list(reader.tail),
        log_path=log_path,
    )
    if timed_out:
        outcome.status = "timed-out"
        outcome.error = (
            f"timed out after {timeout_text or f'{timeout:g}s'} - the job process was killed"
        )
        return outcome
    try:
        result = json.loads(result_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        last = next((ln for ln in reversed(outcome.output_tail) if ln.strip()), "")
        outcome.error = bound_text(
            f"the job process exited with code {proc.returncode} without a result"
            + (f" - last output: {last}" if last else "")
        )
        return outcome
    if result.get("ok"):
        outcome.status = "succeeded"
        outcome.result = result.get("result")
    else:
        outcome.error = bound_text(mask_secrets(str(result.get("error") or "the job failed")))
        tb = result.get("traceback")
        outcome.traceback = bound_text(mask_secrets(str(tb))) if tb else None
    return outcome


# ----------------------------------------------------------------- job side
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


def main(argv: Sequence[str] | None = None) -> int:
    """Job-process entry point: ``python -m dcm_processor_service.runner.job_process SPEC``
    (``-``: the spec is read from stdin, as the runner passes it).

    This process is the platform worker's stand-in, so it sets up logging for the job
    (to stderr, captured by the runner) at the level the spec names.
    """
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
    from .manifest import EntryPoint, resolve_entry
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
