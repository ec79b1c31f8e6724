"""``dcm-service new service NAME`` (the platform's template) and ``dcm-service check
SERVICE`` (would the platform accept and run it?)."""

from __future__ import annotations

import click

from ..console import out, print_json
from ..options import EVENT_CHOICE, CliState, pass_state

__all__ = ["check", "new", "new_service"]


@click.group()
def new() -> None:
    """Create a service from the platform's template."""


@new.command("service")
@click.argument("name")
@click.option(
    "-p",
    "--path",
    "directory",
    type=click.Path(file_okay=False),
    default=".",
    show_default=True,
    help="Where to create the NAME folder.",
)
@click.option(
    "-e",
    "--event",
    "events",
    multiple=True,
    type=EVENT_CHOICE,
    help="An event the job handles (repeatable; default stable-series).",
)
@pass_state
def new_service(state: CliState, name: str, directory: str, events: tuple[str, ...]) -> int:
    """Write the platform's service template into PATH/NAME: dcm-processor.json, a
    registry package exporting 'callback' and a module package exporting 'worker'.
    It deploys to the platform as it is and runs at once with dcm-service run."""
    from ...runner.template import write_service_template

    files = write_service_template(name, directory, events=events or ("stable-series",))
    root = files[0].parent
    if state.json:
        print_json({"service": str(root), "files": [str(f) for f in files]})
    else:
        out(f"created service {name} in {root}:")
        for path in files:
            out(f"  {path.relative_to(root)}")
        out(f"next: dcm-service check {root} && dcm-service demo --service {root}")
    return 0


@click.command()
@click.argument("service", type=click.Path())
@pass_state
def check(state: CliState, service: str) -> int:
    """Check whether the platform would accept SERVICE and run every job: the
    manifest's rules, entries that import the way the platform imports them, and
    signatures that accept the platform's keywords. Exit code 1 on any problem."""
    from ...runner.check import check_service

    report = check_service(service)
    if state.json:
        print_json(report.to_dict())
        return 0 if report.ok else 1
    out(f"service {report.name or '?'} {report.version or '?'} ({report.manifest_path})")
    for line in report.passed:
        out(f"  ok        {line}")
    for problem in report.problems:
        out(f"  {problem.severity.upper():9} {problem}")
    if report.ok:
        out("the platform accepts this service and can run every job")
        return 0
    errors = sum(1 for p in report.problems if not p.platform_only)
    out(
        f"{len(report.problems)} problem(s): "
        + (f"{errors} stop(s) it running anywhere, " if errors else "")
        + "'platform' ones run here but not on the platform (see docs/migrating.md)"
    )
    return 1
