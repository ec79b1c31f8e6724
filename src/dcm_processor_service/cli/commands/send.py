"""``dcm-service send PEER [PATH...] [--series ID ...]``: send DICOM to a peer."""

from __future__ import annotations

import click

from ..._errors import DcmProcessorError, NetworkError
from ..console import err, out, print_json
from ..options import CliState, pass_state, uses_store

__all__ = ["send"]


@click.command()
@click.argument("peer")
@click.argument("paths", nargs=-1, type=click.Path(exists=True))
@click.option(
    "--series",
    "series_ids",
    multiple=True,
    help="A series of the store (record _id or SeriesInstanceUID). Repeatable.",
)
@click.option(
    "--dimse",
    "force_dimse",
    is_flag=True,
    help="Send by DIMSE (C-STORE) even when the peer has a DICOMweb endpoint.",
)
@uses_store
@pass_state
def send(
    state: CliState,
    peer: str,
    paths: tuple[str, ...],
    series_ids: tuple[str, ...],
    force_dimse: bool,
) -> int:
    """Send DICOM files, folders, or stored series to PEER (a peer of the store): by
    STOW-RS when PEER has a DICOMweb endpoint, else by DIMSE C-STORE."""
    from ...net.peer_sender import sender_for_peer
    from ...net.results import Outcome
    from ...sources import collect_files

    if not paths and not series_ids:
        raise click.UsageError("give files or folders to send, or --series ID")
    reports = []
    fatal: DcmProcessorError | None = None
    with state.open_store() as store:
        target = store.get_peer(peer)
        sender = sender_for_peer(target, protocol="dimse" if force_dimse else None)
        datasets = []
        if series_ids:  # stored series are read as datasets (pydicom); files are not
            from ...index.series import get_series_dicom

            datasets = [
                ds for series_id in series_ids for ds in get_series_dicom(series_id, store=store)
            ]
        if paths:
            collect_files(paths)  # a missing input or an empty folder is a usage error
        files = list(paths)
        try:
            if files:
                reports.append(sender.send(files))
            if datasets:
                reports.append(sender.send(datasets))
        except NetworkError as exc:  # a network failure: show what was done first
            if exc.report is None:
                raise
            reports.append(exc.report)
            fatal = exc
    results = [r for report in reports for r in report.results]
    failed = [r for r in results if not r.ok]
    counts = {o: sum(r.outcome is o for r in results) for o in Outcome}
    if state.json:
        print_json(
            {
                "peer": target.name,
                "sent": counts[Outcome.STORED],
                "failed": len(failed),
                "instances": len(results),
                **{o.value: n for o, n in counts.items() if o is not Outcome.STORED},
                "not_stored": [
                    {
                        "source": r.source,
                        "sop_instance_uid": r.sop_instance_uid,
                        "outcome": r.outcome.value,
                        "status": r.status,
                        "attempts": r.attempts,
                        "error": r.error,
                    }
                    for r in failed
                ],
                "error": str(fatal) if fatal else None,
            }
        )
    else:
        labels = {
            Outcome.REFUSED: "refused",
            Outcome.IN_DOUBT: "in doubt",
            Outcome.NOT_SENT: "not sent",
        }
        breakdown = ", ".join(
            f"{counts[o]} {label}" + (" (sent, no response)" if o is Outcome.IN_DOUBT else "")
            for o, label in labels.items()
            if counts[o]
        )
        out(
            f"sent {counts[Outcome.STORED]} of {len(results)} instance(s) to {target.name}"
            + (f"; {breakdown}" if breakdown else "")
        )
        for r in failed[:20]:
            err(f"  {labels[r.outcome]}: {r.source}: 0x{r.status:04X} {r.error or ''}".rstrip())
    if fatal is not None:
        err(f"error: {fatal}")
        return 1
    if not results:
        err("error: nothing to send (no DICOM instance in the input)")
        return 2
    return 0 if not failed else 1
