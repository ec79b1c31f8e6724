"""The local executor: each job in its own process on this machine, one after the other.

:class:`LocalExecutor` runs the submitted tasks in the order they were submitted (the
runner submits a graph in an order where every task comes after the tasks it needs),
skipping a task when one it comes ``after`` did not succeed. :func:`run_job_process`
runs one: it starts ``python -m dcm_processor_service.runner.job_process -`` with the
task's environment, in a new process group, with a per-job scratch folder as its
working directory, and writes the job's spec (entry, arguments - the store URL with its
password among them) to the process's stdin: no secret is written to disk.

It waits at most the job's timeout. The job's outcome is decided when the job process
exits (or the timeout fires), whatever its children do; then every process the job
started is ended (:func:`~..processes.end_processes`: its process group and every
process carrying its marker variable). The job's output is read by a thread that never
blocks the runner, masked (:func:`~dcm_processor_service._safe_text.mask_secrets`),
bounded per line, teed to an owner-only log file, and passed on line by line. While the
job runs, the listener hears about it every poll interval (the runner reads the job's
progress then, and keeps its heartbeat). The work folders are owner-only (0700), the
files in them too (0600).
"""

from __future__ import annotations

import codecs
import collections
import contextlib
import functools
import json
import logging
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

from ..._safe_text import TextBounder, bound_text, mask_secrets
from ...store.records import JobStatus
from ..processes import MARKER_VARIABLE, end_processes
from .base import SKIPPED, JobListener, JobOutcome, JobTask, check_after

__all__ = ["LocalExecutor", "OutputLines", "make_private_dir", "run_job_process"]

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
#: The job process's module (``python -m``).
JOB_PROCESS_MODULE = "dcm_processor_service.runner.job_process"


def _package_root() -> str:
    """The folder that holds the ``dcm_processor_service`` package of this process, so
    the job process imports the same code as the runner."""
    return str(Path(__file__).resolve().parents[3])  # src/dcm_processor_service/runner/executors


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


class OutputLines:
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
        lines = OutputLines()
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
    task: JobTask,
    work_dir: Path,
    *,
    on_output: Callable[[str], None] | None = None,
    on_poll: Callable[[float], None] | None = None,
    poll_interval: float = 0.25,
) -> JobOutcome:
    """Run ``task`` in a child process and wait for it (at most ``task.timeout`` seconds).

    The spec reaches the job process through a pipe. The result file, log file and
    scratch folder are named ``task.name`` inside ``work_dir``; ``task.key`` marks the
    job's processes (see :mod:`..processes`). ``on_output`` gets each line the job prints
    (secrets masked); ``on_poll`` is called with the elapsed seconds every
    ``poll_interval``. Whatever happens (a signal too), no process of the job is left.
    """
    name, timeout = task.name, task.timeout
    timeout_text = task.timeout_text or f"{timeout:g}s"
    make_private_dir(work_dir)
    scratch = make_private_dir(work_dir / name)
    result_path = work_dir / f"{name}.result.json"
    log_path = work_dir / f"{name}.log"
    result_path.unlink(missing_ok=True)
    data = json.dumps(task.process_spec(result_path), default=str).encode("utf-8")

    marker = task.key
    child_env = dict(task.env)
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
            [sys.executable, "-m", JOB_PROCESS_MODULE, "-"],
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
                logger.warning("job %s exceeded its timeout (%s): killing it", name, timeout_text)
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
        status=JobStatus.FAILED,
        exit_code=proc.returncode,
        duration=duration,
        output_tail=list(reader.tail),
        log_path=log_path,
    )
    if timed_out:
        outcome.status = JobStatus.TIMED_OUT
        outcome.error = f"timed out after {timeout_text} - the job process was killed"
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
        outcome.status = JobStatus.SUCCEEDED
        outcome.result = result.get("result")
    else:
        outcome.error = bound_text(mask_secrets(str(result.get("error") or "the job failed")))
        tb = result.get("traceback")
        outcome.traceback = bound_text(mask_secrets(str(tb))) if tb else None
    return outcome


class LocalExecutor:
    """Runs the submitted tasks on this machine, one after the other in the order they
    were submitted, each in its own process (:func:`run_job_process`).

    ``work_dir``: where each group (session) of tasks gets its owner-only folder of
    logs, results and scratch folders (default: a new temporary folder, made when the
    first task runs, and kept: the logs stay readable after the run).
    ``poll_interval``: seconds between two :meth:`JobListener.job_running` calls.
    """

    def __init__(
        self, work_dir: str | os.PathLike[str] | None = None, *, poll_interval: float = 0.25
    ) -> None:
        self.work_dir = Path(work_dir).resolve() if work_dir is not None else None
        self.poll_interval = poll_interval
        self._queue: collections.deque[JobTask] = collections.deque()
        self._submitted: set[str] = set()
        self._status: dict[str, str] = {}  # key -> status of the tasks that ended

    def submit(self, task: JobTask) -> None:
        """Queue ``task``: it runs after the tasks submitted before it."""
        check_after(task, self._submitted)
        self._submitted.add(task.key)
        self._queue.append(task)

    def outcomes(self, listener: JobListener) -> Iterator[tuple[str, JobOutcome]]:
        """Run the queued tasks in order and give back each outcome as it ends."""
        while self._queue:
            task = self._queue.popleft()
            if any(self._status.get(k) != JobStatus.SUCCEEDED for k in task.after):
                outcome = JobOutcome(status=SKIPPED)
            else:
                listener.job_started(task.key)
                outcome = run_job_process(
                    task,
                    self._root() / task.group,
                    on_output=functools.partial(listener.job_output, task.key),
                    on_poll=functools.partial(listener.job_running, task.key),
                    poll_interval=self.poll_interval,
                )
            self._status[task.key] = outcome.status
            yield task.key, outcome

    def cancel(self) -> None:
        """Forget the tasks not run yet (a running one was ended as the run stopped)."""
        self._submitted.difference_update(t.key for t in self._queue)
        self._queue.clear()

    def _root(self) -> Path:
        if self.work_dir is None:
            self.work_dir = Path(tempfile.mkdtemp(prefix="dcm-service-run-"))
        return self.work_dir
