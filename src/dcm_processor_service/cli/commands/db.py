"""``dcm-service db init|gc``: store administration."""

from __future__ import annotations

import click

from ..console import out, print_json
from ..options import CliState, pass_state, uses_store

__all__ = ["db", "db_gc", "db_init"]


@click.group()
def db() -> None:
    """Store administration."""


@db.command("init")
@uses_store
@pass_state
def db_init(state: CliState) -> int:
    """Create (or upgrade) the store's schema."""
    with state.open_store() as store:
        version = store.migrate()
        where = store.describe()
    if state.json:
        print_json({"store": where, "schema_version": version})
    else:
        out(f"{where} ready (schema version {version})")
    return 0


@db.command("gc")
@click.option("--dry-run", is_flag=True, help="Report what would be removed; remove nothing.")
@click.option(
    "--min-age",
    type=click.FloatRange(min=0),
    default=None,
    metavar="SECONDS",
    help="MongoDB only: how long an unfinished upload must have been silent to be removed "
    "(default 3600). SQLite and PostgreSQL need no age: a live writer holds a lock.",
)
@uses_store
@pass_state
def db_gc(state: CliState, dry_run: bool, min_age: float | None) -> int:
    """Remove what crashed writers left: stored bytes no record references.

    Never touches data a writer that is still running is committing."""
    with state.open_store() as store:
        report = store.collect_garbage(dry_run=dry_run, min_age_s=min_age)
    if state.json:
        print_json(report.to_dict())
    else:
        out(report.summary())
    return 0
