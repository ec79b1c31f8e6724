"""``dcm-service ingest INPUT...``: file DICOM into the store's index."""

from __future__ import annotations

import sys

import click

from ..console import Console, err, out, print_json
from ..options import CliState, pass_state, peer_option, uses_store

__all__ = ["ingest"]


@click.command()
@click.argument("inputs", nargs=-1, required=True, type=click.Path())
@peer_option("Peer the images came from (its id becomes PeerUID).")
@click.option(
    "--session",
    "session_id",
    default=None,
    help="Session the instances belong to (clean-up removes them).",
)
@uses_store
@pass_state
def ingest(
    state: CliState, inputs: tuple[str, ...], peer: str | None, session_id: str | None
) -> int:
    """File DICOM INPUT (folders, files, DICOMDIRs) into the store's index."""
    from ...index.ingest import IngestReport, iter_ingest
    from ...sources import collect_files

    files = collect_files(inputs).files  # checks the inputs; the count shows progress
    console = Console(sys.stderr, show_output=False, enabled=not state.json or sys.stderr.isatty())
    report = IngestReport()
    with state.open_store() as store:
        peer_id = store.get_peer(peer).id if peer else None
        if session_id:
            store.ensure_session(session_id, peer_id=peer_id)
        console.ingest_started(len(files))
        for i, outcome in enumerate(
            iter_ingest(list(inputs), store=store, peer_id=peer_id, session_id=session_id), 1
        ):
            report.add(outcome)
            console.ingest_advanced(min(i, len(files)), len(files))
        console.finish()
    if state.json:
        print_json(
            {
                "stored": report.n_stored,
                "series_ids": report.series_ids,
                "failed": [{"path": p, "reason": r} for p, r in report.failed],
                "conflicts": [{"path": p, "reason": r} for p, r in report.conflicts],
                "skipped": [{"path": p, "reason": r} for p, r in report.skipped],
            }
        )
    else:
        out(report.summary())
        for path, reason in report.failed:
            err(f"  not ingested: {path}: {reason}")
    if report.n_stored == 0 and report.failed:
        err("error: no DICOM instance was stored")
        return 2
    return 0 if report.ok else 1
