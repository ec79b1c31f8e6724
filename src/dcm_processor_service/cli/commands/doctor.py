"""``dcm-service doctor``: check this node (package, dcm2niix, drivers, environment,
store, peers) and say what is wrong and how to fix it. Exit code 1 when any check
failed, 0 otherwise (warnings included)."""

from __future__ import annotations

import click

from ..console import out, print_json
from ..options import CliState, pass_state, uses_store

__all__ = ["doctor"]

_MARKS = {"ok": "ok", "warn": "WARN", "fail": "FAIL", "skip": "skip"}


@click.command()
@click.option(
    "--timeout",
    default=5.0,
    show_default=True,
    type=click.FloatRange(min=0.1),
    help="Seconds to wait for the database server and for each peer.",
)
@click.option("--quiet", "-q", is_flag=True, help="Show only warnings and failures.")
@uses_store
@pass_state
def doctor(state: CliState, timeout: float, quiet: bool) -> int:
    """Check this node: package and dependency versions, the dcm2niix binary,
    highdicom and the store drivers, the environment a job would see, the store
    (reachable, schema, writable, free space, clock skew) and every peer of the store
    (C-ECHO or QIDO-RS latency, TLS certificates). Each problem comes with a fix. Exit code 1
    when any check failed."""
    from ...doctor import Status, run_doctor

    report = run_doctor(state.store_address(), timeout=timeout)
    if state.json:
        print_json(report.to_dict())
        return 0 if report.ok else 1
    width = max((len(f.check) for f in report.findings), default=0)
    for finding in report.findings:
        if quiet and finding.status in (Status.OK, Status.SKIP):
            continue
        out(f"{_MARKS[finding.status.value]:5} {finding.check:{width}}  {finding.message}")
        if finding.fix and finding.status in (Status.WARN, Status.FAIL):
            out(f"{'':5} {'':{width}}  fix: {finding.fix}")
    counts = report.counts()
    verdict = "healthy" if report.ok else "NOT healthy"
    out(
        f"\nnode {verdict}: {counts['ok']} ok, {counts['warn']} warning(s), "
        f"{counts['fail']} failure(s), {counts['skip']} skipped"
    )
    return 0 if report.ok else 1
