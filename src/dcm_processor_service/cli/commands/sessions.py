"""``dcm-service sessions list|show|clean``: inspect and clean up sessions.

Each session and job shows the runner working on it and whether that runner is gone
(stale), as :func:`~dcm_processor_service.runner.ownership.judge_record` judges it.
"""

from __future__ import annotations

import json
from typing import Any

import click

from ..._errors import InvalidInputError, NotFoundError
from ...store.records import JobStatus
from ..console import err, out, print_json
from ..formatting import duration, first_line, size, table
from ..options import CliState, pass_state, uses_store

__all__ = ["sessions", "sessions_clean", "sessions_list", "sessions_show"]


@click.group()
def sessions() -> None:
    """Inspect and clean up sessions (jobs, data, files)."""


def _find_session(store: Any, prefix: str) -> Any:
    matches = [s for s in store.list_sessions() if s.id.startswith(prefix)]
    if not matches:
        raise NotFoundError(
            f"no session {prefix!r} in {store.describe()} (dcm-service sessions list)"
        )
    if len(matches) > 1 and not any(s.id == prefix for s in matches):
        raise InvalidInputError(
            f"session prefix {prefix!r} is ambiguous: {', '.join(s.id for s in matches[:5])}"
        )
    return next((s for s in matches if s.id == prefix), matches[0])


def _liveness(record: Any) -> Any:
    from ...runner.ownership import judge_record

    return judge_record(record)


def _owner_fields(record: Any, life: Any) -> dict[str, Any]:
    return {
        "owner": record.owner,
        "heartbeat_at": record.heartbeat_at,
        "heartbeat_age": round(life.heartbeat_age, 1) if life.heartbeat_age is not None else None,
        "stale": life.stale,
        "stale_reason": life.reason,
    }


def _age(seconds: float | None) -> str:
    return "never" if seconds is None else duration(max(seconds, 0.0))


def _runner_text(owner: str | None, life: Any) -> str:
    if not owner:
        return "-"
    return f"{owner}, heartbeat {_age(life.heartbeat_age)} ago" + (" - gone" if life.stale else "")


@sessions.command("list")
@uses_store
@pass_state
def sessions_list(state: CliState) -> int:
    """List the sessions of the store, with the runner working on each and whether
    that runner is gone (stale: see dcm-service sessions clean --stale)."""
    rows, data = [], []
    with state.open_store() as store:
        for s in store.list_sessions():
            jobs = store.list_jobs(s.id)
            failed = sum(1 for j in jobs if j.status in (JobStatus.FAILED, JobStatus.TIMED_OUT))
            life = _liveness(s)
            data.append(
                {
                    "id": s.id,
                    "status": s.status,
                    "peer_id": s.peer_id,
                    "meta": s.meta,
                    "jobs": len(jobs),
                    "failed": failed,
                    "created_at": s.created_at,
                    **_owner_fields(s, life),
                }
            )
            rows.append(
                [
                    s.id[:12],
                    s.status + (" (STALE)" if life.stale else ""),
                    s.meta.get("patient", ""),
                    s.meta.get("service", ""),
                    f"{len(jobs)}" + (f" ({failed} failed)" if failed else ""),
                    s.created_at.strftime("%Y-%m-%d %H:%M:%S"),
                    _runner_text(s.owner, life),
                ]
            )
    stale = sum(1 for d in data if d["stale"])
    if state.json:
        print_json(data)
    elif not rows:
        out("no sessions")
    else:
        headers = ["SESSION", "STATUS", "PATIENT", "SERVICE", "JOBS", "CREATED (UTC)", "RUNNER"]
        out(table(rows, headers))
        if stale:
            out(
                f"\n{stale} stale session(s): their runner is gone - end what is left of them "
                "with dcm-service sessions clean --stale [--mark-only]"
            )
    return 0


@sessions.command("show")
@click.argument("session_id")
@uses_store
@pass_state
def sessions_show(state: CliState, session_id: str) -> int:
    """Show a session (id or unique prefix): its jobs, data keys and files."""
    with state.open_store() as store:
        s = _find_session(store, session_id)
        jobs = store.list_jobs(s.id)
        values = store.list_data(s.id)
        files = store.list_files(s.id)
        series = store.list_series(session_id=s.id)
    life = _liveness(s)
    job_life = {j.id: _liveness(j) for j in jobs}
    if state.json:
        print_json(
            {
                "session": {
                    "id": s.id,
                    "status": s.status,
                    "peer_id": s.peer_id,
                    "patient_uid": s.patient_uid,
                    "meta": s.meta,
                    "created_at": s.created_at,
                    "updated_at": s.updated_at,
                    **_owner_fields(s, life),
                },
                "series": [
                    {
                        "_id": r["_id"],
                        "SeriesInstanceUID": r["SeriesInstanceUID"],
                        "instances": len(r["Instances"]),
                        "Modality": r["Metadata"].get("Modality"),
                    }
                    for r in series
                ],
                "jobs": [
                    {
                        "id": j.id,
                        "name": j.name,
                        "event": j.event,
                        "status": j.status,
                        "progress": j.progress,
                        "error": j.error,
                        "started_at": j.started_at,
                        "finished_at": j.finished_at,
                        **_owner_fields(j, job_life[j.id]),
                    }
                    for j in jobs
                ],
                "data": [
                    {
                        "job_name": v["job_name"],
                        "event": v["event"],
                        "name": v["name"],
                        "value": json.loads(v["value_json"]),
                    }
                    for v in values
                ],
                "files": [f.to_dict() for f in files],
            }
        )
        return 0
    out(
        f"session {s.id}  status {s.status}  peer {s.peer_id or '-'}  created {s.created_at:%Y-%m-%d %H:%M:%S} UTC"
    )
    if s.owner:
        out(
            f"runner: {_runner_text(s.owner, life)}"
            + (f"  STALE: {life.reason} (dcm-service sessions clean --stale)" if life.stale else "")
        )
    if s.meta:
        out("meta: " + ", ".join(f"{k}={v}" for k, v in s.meta.items()))
    out(f"\nseries ({len(series)}):")
    for r in series:
        out(
            f"  {r['_id'][:12]}  {r['Metadata'].get('Modality', '')}  {len(r['Instances'])} instance(s)  {r['Metadata'].get('SeriesDescription', '')}"
        )
    out(f"\njobs ({len(jobs)}):")
    if jobs:
        rows = []
        for j in jobs:
            took = (
                (j.finished_at - j.started_at).total_seconds()
                if j.started_at and j.finished_at
                else None
            )
            pct = j.progress.get("percent")
            rows.append(
                [
                    j.id[:12],
                    j.name,
                    j.event,
                    j.status + (" (STALE)" if job_life[j.id].stale else ""),
                    duration(took),
                    f"{pct:.0f}%" if isinstance(pct, (int, float)) else "",
                    first_line(j.error, 60),
                ]
            )
        out(table(rows, ["JOB", "NAME", "EVENT", "STATUS", "TIME", "PROGRESS", "ERROR"]))
    out(f"\ndata ({len(values)}):")
    for v in values:
        text = v["value_json"]
        out(f"  {v['job_name']}/{v['name']} = {text if len(text) <= 80 else text[:77] + '...'}")
    out(f"\nfiles ({len(files)}):")
    for f in files:
        out(f"  {f.job_name}/{f.name}  {size(f.size)}  {f.content_type}  sha256 {f.sha256[:12]}")
    return 0


@sessions.command("clean")
@click.argument("session_ids", nargs=-1)
@click.option("--all", "clean_all", is_flag=True, help="Clean up every session of the store.")
@click.option(
    "--stale", is_flag=True, help="Clean up the sessions whose runner is gone (see sessions list)."
)
@click.option(
    "--mark-only",
    is_flag=True,
    help="For stale sessions: end their leftover job processes and mark them abandoned, "
    "but keep their data, files and jobs for inspection.",
)
@click.option("--force", is_flag=True, help="Also clean sessions that a live runner is working on.")
@uses_store
@pass_state
def sessions_clean(
    state: CliState,
    session_ids: tuple[str, ...],
    clean_all: bool,
    stale: bool,
    mark_only: bool,
    force: bool,
) -> int:
    """Run the post-services clean-up on sessions (their data, files, images, jobs).

    A session left behind by a runner that is gone (stale) first has the processes its
    running jobs left ended (on this host) and its unfinished jobs marked abandoned. A
    session a live runner is working on is refused (skipped with --all) unless --force.
    """
    from ...hooks import run_post_services
    from ...runner.ownership import abandon_session

    if not session_ids and not clean_all and not stale:
        raise click.UsageError("name sessions to clean, or --all, or --stale")
    results: dict[str, dict[str, Any]] = {}
    with state.open_store() as store:
        if clean_all or stale:
            targets = [s for s in store.list_sessions() if clean_all or _liveness(s).stale]
        else:
            targets = [_find_session(store, p) for p in session_ids]
        for s in targets:
            life = _liveness(s)
            if life.live and not force:
                message = (
                    f"session {s.id} is being run by runner {s.owner} (heartbeat "
                    f"{_age(life.heartbeat_age)} ago) - stop that run first, or pass --force"
                )
                if not clean_all:
                    raise InvalidInputError(message)
                err(f"skipped: {message}")
                continue
            result = abandon_session(store, s, life) if life.stale else {}
            if mark_only:
                result["status"] = store.get_session(s.id).status
            else:
                result.update(run_post_services(s.id, store=store))
            results[s.id] = result
    if state.json:
        print_json(results)
    else:
        for sid, counts in results.items():
            verb = "marked" if mark_only else "cleaned up"
            out(
                f"session {sid} {verb}: "
                + ", ".join(
                    f"{n} {k}" if isinstance(n, int) else f"{k} {n}" for k, n in counts.items()
                )
            )
        if not results:
            out("no sessions")
    return 0
