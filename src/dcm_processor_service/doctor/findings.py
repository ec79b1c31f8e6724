"""What ``dcm-service doctor`` reports: one :class:`Finding` per check, gathered in a
:class:`DoctorReport`.

Every finding that is not ``ok`` says what is wrong (``message``) and how to fix it
(``fix``); ``details`` holds the measured values (versions, latency, days left, bytes
free) for ``--json`` and monitoring.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

__all__ = ["DoctorReport", "Finding", "Status"]


class Status(str, Enum):
    """How a check came out. Only ``fail`` makes the doctor's exit code non-zero."""

    OK = "ok"
    WARN = "warn"  #: works now, but needs attention (an old schema, a certificate expiring soon)
    FAIL = "fail"  #: a job on this node would fail
    SKIP = "skip"  #: not applicable here, or not measurable (says why)


@dataclass(frozen=True)
class Finding:
    """The outcome of one check.

    Attributes:
        check: what was checked, as ``area`` or ``area/subject`` (``store/schema``,
            ``peer/pacs/echo``).
        status: the outcome.
        message: what was found, in words.
        fix: how to fix it (set whenever ``status`` is ``warn`` or ``fail``).
        details: measured values, JSON-serialisable.
    """

    check: str
    status: Status
    message: str
    fix: str | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.status in (Status.WARN, Status.FAIL) and not self.fix:
            raise ValueError(f"finding {self.check!r} ({self.status.value}) needs a fix")

    def to_dict(self) -> dict[str, Any]:
        """The finding as JSON-serialisable data."""
        return {
            "check": self.check,
            "status": self.status.value,
            "message": self.message,
            "fix": self.fix,
            "details": self.details,
        }


@dataclass
class DoctorReport:
    """All findings of one doctor run, in the order the checks ran."""

    findings: list[Finding] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """No check failed (warnings and skips do not count)."""
        return not any(f.status is Status.FAIL for f in self.findings)

    def counts(self) -> dict[str, int]:
        """How many findings have each status (every status present, zeros too)."""
        counted = Counter(f.status for f in self.findings)
        return {status.value: counted.get(status, 0) for status in Status}

    def to_dict(self) -> dict[str, Any]:
        """The report as JSON-serialisable data (``--json``)."""
        return {
            "ok": self.ok,
            "counts": self.counts(),
            "findings": [f.to_dict() for f in self.findings],
        }
