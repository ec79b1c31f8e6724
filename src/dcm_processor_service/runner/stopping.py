"""How a run stops early: SIGINT, SIGTERM and SIGHUP, and what the records say why.

While :meth:`~.runner.Runner.run` runs in the main thread, the three signals raise
:class:`RunInterrupted` (a ``KeyboardInterrupt``) in it (:func:`stop_on_signals`), so
the run unwinds the same way for each: the running job's processes are ended, the
records say why (:func:`stop_reason`), and the exception reaches the caller.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from collections.abc import Iterator

from .._safe_text import bound_text, mask_secrets

__all__ = ["STOP_SIGNALS", "RunInterrupted", "stop_on_signals", "stop_reason"]

logger = logging.getLogger(__name__)

#: Signals that stop a run the way Ctrl-C does.
STOP_SIGNALS = ("SIGINT", "SIGTERM", "SIGHUP")


class RunInterrupted(KeyboardInterrupt):
    """The run was stopped by a signal (SIGINT, SIGTERM, SIGHUP); ``signum`` says which."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        super().__init__(f"interrupted by {signal.Signals(signum).name}")


def stop_reason(exc: BaseException) -> str:
    """Why a run stopped early, for the records."""
    if isinstance(exc, KeyboardInterrupt):
        return str(exc) or "interrupted by SIGINT"
    return bound_text(mask_secrets(f"the runner failed: {type(exc).__name__}: {exc}"))


@contextlib.contextmanager
def stop_on_signals(enabled: bool) -> Iterator[None]:
    """While the block runs, SIGINT, SIGTERM and SIGHUP raise :class:`RunInterrupted`
    (once: a second signal while the run stops is logged and ignored, so the clean-up
    completes). Only in the main thread, where Python delivers signals."""
    if not enabled or threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []

    def stop(signum: int, frame: object) -> None:
        if received:
            logger.warning("%s received while stopping: ignored", signal.Signals(signum).name)
            return
        received.append(signum)
        raise RunInterrupted(signum)

    previous = {}
    for name in STOP_SIGNALS:
        number = getattr(signal, name, None)
        if number is not None:
            previous[number] = signal.signal(number, stop)
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
