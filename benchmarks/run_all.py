"""Every performance goal, ours against its reference in the same run: one command.

    python benchmarks/run_all.py                    # full sizes (about 6-9 min on 2 cores)
    python benchmarks/run_all.py --quick            # small sizes, a first look (~2 min)
    python benchmarks/run_all.py --file-mb 256 --slices 100 --rounds 3

Writes ``benchmarks/results.md`` (the table: ours and the reference side by side, the
ratio, the goal, the machine) and ``benchmarks/results.png`` (the ratios as a chart,
needs matplotlib: ``pip install -e '.[bench]'``). Data is generated in a temporary
folder and deleted; a throwaway PostgreSQL server and a dcmtk ``storescp`` are started
and stopped.

Fairness on a shared, noisy machine: ours and the reference run *interleaved* (A B A B
...), each row's ratio is the median of the per-round ratios (so drift of the machine's
speed between rounds cancels), and the times shown are medians. All ratios are times,
ours / reference: below 1 we are faster. A goal "at least 0.8x cp's speed" is a time
ratio of at most 1.25.

Each row names what is measured; the profile section at the end shows where the time
of the rows that are not at their goal goes.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import io
import os
import platform
import pstats
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
#: ``--src DIR``: measure the package in DIR (another checkout's ``src``: before/after)
SRC = Path(sys.argv[sys.argv.index("--src") + 1]) if "--src" in sys.argv[:-1] else ROOT / "src"
sys.path[:0] = [str(SRC), str(ROOT / "tests")]
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SRC), os.environ.get("PYTHONPATH")]))
MiB = 1024 * 1024
PYTHON = sys.executable


# ----------------------------------------------------------------------- results
@dataclass
class Row:
    """One goal: ours and the reference, timed in the same rounds."""

    work: str
    reference: str
    goal: str
    max_ratio: float
    """the goal as a time ratio ours / reference (at most)"""
    ours: list[float] = field(default_factory=list)
    ref: list[float] = field(default_factory=list)
    unit: str = "s"
    scale: float = 1.0
    """ours/ref are seconds; shown as ``scale / seconds`` with ``unit`` when unit != s"""

    def add(self, ours_s: float, ref_s: float) -> None:
        self.ours.append(ours_s)
        self.ref.append(ref_s)

    @property
    def ratio(self) -> float:
        return statistics.median(o / r for o, r in zip(self.ours, self.ref, strict=True))

    def shown(self, seconds: list[float]) -> str:
        value = statistics.median(seconds)
        if self.unit == "s":
            return f"{value:.3f} s"
        return f"{self.scale / value:,.0f} {self.unit}"

    @property
    def met(self) -> bool:
        return self.ratio <= self.max_ratio


def timed(action: Callable[[], Any]) -> float:
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def run(cmd: list[str], env: dict[str, str] | None = None) -> float:
    """Wall time of a whole process (its output discarded; a failure stops the run)."""
    start = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, check=False)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{cmd[0]} failed ({done.returncode}): {done.stderr.decode()[-1500:]}")
    return seconds


def profile(action: Callable[[], Any], lines: int = 14) -> str:
    """The top of a cProfile of ``action`` by cumulative time."""
    prof = cProfile.Profile()
    prof.runcall(action)
    out = io.StringIO()
    stats = pstats.Stats(prof, stream=out)
    stats.strip_dirs().sort_stats("cumulative").print_stats(lines)
    text = out.getvalue()
    return text[text.index("   ncalls") :].rstrip()


def job_context(provider: str, url: str, name: str, session: str) -> Any:
    """The runtime context of a job ``j`` of session ``session`` on the given store."""
    from dcm_processor_service import RuntimeContext

    return RuntimeContext(
        db_provider=provider,
        db_url=url,
        db_name=name,
        session_id=session,
        job_event="stable-series",
        job_id="j",
        job_name="j",
    )


# ------------------------------------------------------------------ the goals
def session_files(
    rows: list[Row],
    work: Path,
    store: tuple[str, str, str, str],
    args: Any,
    profiles: dict[str, str],
) -> None:
    """Upload and download of one ``--file-mb`` file vs ``cp`` of it (page cache warm);
    ``store``: (label, provider, url, name)."""
    import dcm_processor_service as dps

    label, provider, url, name = store
    src = work / "big.bin"
    if not src.exists():
        with open(src, "wb") as out:
            for _ in range(args.file_mb):
                out.write(os.urandom(MiB))
    size_mb = src.stat().st_size / 1e6
    goal, limit = ("≥ 0.8x cp", 1.25) if provider == "sqlite" else ("≥ 0.5x cp", 2.0)
    up = Row(
        f"session file {args.file_mb} MiB upload, {label}",
        "`cp`",
        goal,
        limit,
        unit="MB/s",
        scale=size_mb,
    )
    down = Row(
        f"session file {args.file_mb} MiB download, {label}",
        "`cp`",
        goal,
        limit,
        unit="MB/s",
        scale=size_mb,
    )
    # An upload is on disk (fsynced) when it returns, ``cp`` is not: the same-durability
    # reference is ``cp`` followed by ``sync FILE`` (coreutils: fsync of that one file).
    up_durable = Row(
        f"session file {args.file_mb} MiB upload, {label}, same durability",
        "`cp && sync FILE`",
        goal,
        limit,
        unit="MB/s",
        scale=size_mb,
    )
    copy = work / "cp.bin"
    target = work / "download.bin"

    def cp(durable: bool = False) -> float:
        cmd = f'cp "{src}" "{copy}" && sync "{copy}"' if durable else f'cp "{src}" "{copy}"'
        seconds = run(["sh", "-c", cmd])
        copy.unlink()
        return seconds

    with dps.use_context(job_context(provider, url, name, "bench")):
        dps.upload_session_file(b"warm-up", "warm-up")
        for r in range(args.rounds):
            # a new name each round, as cp writes a new file: replacing the last round's
            # upload would also time deleting the replaced 1 GiB blob
            name = f"big-{r}.bin"
            uploaded = timed(lambda name=name: dps.upload_session_file(str(src), name))
            up.add(uploaded, cp())
            up_durable.add(uploaded, cp(durable=True))
            down.add(timed(lambda name=name: dps.download_session_file(name, target)), cp())
            if target.stat().st_size != src.stat().st_size:
                raise SystemExit("downloaded file has the wrong size")
            target.unlink()
            os.sync()  # the next round does not pay for this one's writeback
        profiles[f"session file upload, {label}"] = profile(
            lambda: dps.upload_session_file(str(src), "big-profiled.bin"), 10
        )
        profiles[f"session file download, {label}"] = profile(
            lambda: dps.download_session_file("big-profiled.bin", target), 10
        )
        target.unlink()
    dps.close_stores()
    rows += [up, up_durable, down]


DATA_SET = (
    "INSERT INTO session_data (session_id, job_id, job_name, event, name, value,"
    " created_at, updated_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)"
    " ON CONFLICT (session_id, job_id, name) DO UPDATE SET value = excluded.value,"
    " job_name = excluded.job_name, event = excluded.event, updated_at = excluded.updated_at"
)
DATA_GET = (
    "SELECT value FROM session_data WHERE session_id = %s AND job_id = %s AND name = %s"
    " ORDER BY updated_at DESC LIMIT 1"
)


def session_data(rows: list[Row], url: str, name: str, args: Any) -> None:
    """set/get_session_data on PostgreSQL vs a psycopg loop of the same statements on
    one autocommit connection (what a hand-written client would do)."""
    import json
    from datetime import datetime, timezone

    import psycopg

    import dcm_processor_service as dps

    ops = args.ops
    set_row = Row(
        "session data set, PostgreSQL",
        "plain psycopg loop",
        "≥ 0.7x the loop",
        1 / 0.7,
        unit="ops/s",
        scale=ops,
    )
    get_row = Row(
        "session data get, PostgreSQL",
        "plain psycopg loop",
        "≥ 0.7x the loop",
        1 / 0.7,
        unit="ops/s",
        scale=ops,
    )
    ctx = job_context("postgresql", url, name, "data")
    value = {"label": "bench", "v": [1, 2, 3]}
    conn = psycopg.connect(
        dps.open_store("postgresql", url, name).settings.conninfo, autocommit=True
    )  # type: ignore[attr-defined]

    def plain_set() -> None:
        for i in range(ops):
            now = datetime.now(timezone.utc).isoformat()
            conn.execute(
                DATA_SET,
                ("data", "plain", "j", "stable-series", f"k{i % 200}", json.dumps(value), now, now),
            )

    def plain_get() -> None:
        for i in range(ops):
            conn.execute(DATA_GET, ("data", "plain", f"k{i % 200}")).fetchone()

    def ours_set() -> None:
        for i in range(ops):
            dps.set_session_data(f"k{i % 200}", value)

    def ours_get() -> None:
        for i in range(ops):
            dps.get_session_data(f"k{i % 200}")

    with dps.use_context(ctx):
        ours_set()
        plain_set()  # warm-up
        for _ in range(args.rounds):
            set_row.add(timed(ours_set), timed(plain_set))
            get_row.add(timed(ours_get), timed(plain_get))
    conn.close()
    dps.close_stores()
    rows += [set_row, get_row]


def ingest_and_read(
    rows: list[Row], work: Path, series: Path, args: Any, profiles: dict[str, str]
) -> None:
    """ingest (SQLite, fsync on) vs ``cp -r && sync``; get_series_dicom() datasets vs a
    bare dcmread loop over the same files."""
    from pydicom import dcmread

    from dcm_processor_service import get_series_dicom, ingest
    from dcm_processor_service.store.sqlite import SQLiteStore

    n = args.slices
    ing = Row(
        f"ingest {n} x {args.size}² CT, fsync on",
        "`cp -r && sync`",
        "≤ 2.5x",
        2.5,
        unit="inst/s",
        scale=n,
    )
    read = Row(
        f"`get_series_dicom()` as datasets, {n} CT",
        "bare `dcmread` loop",
        "≥ 0.9x the loop",
        1 / 0.9,
        unit="inst/s",
        scale=n,
    )
    files = sorted(series.iterdir())
    for path in files:  # warm page cache for both
        path.read_bytes()
    copy = work / "cp-r"

    def cp_sync() -> float:
        os.sync()
        seconds = run(["sh", "-c", f'cp -r "{series}" "{copy}" && sync'])
        shutil.rmtree(copy)
        return seconds

    def fresh() -> SQLiteStore:
        return SQLiteStore(tempfile.mkdtemp(prefix="store-", dir=work), "bench", fsync=True)

    series_id = ""
    for r in range(args.rounds):
        store = fresh()
        os.sync()
        report: Any = None

        def do_ingest(store: SQLiteStore = store) -> None:
            nonlocal report
            report = ingest(series, store=store)

        ing.add(timed(do_ingest), cp_sync())
        if report.n_stored != n:
            raise SystemExit(f"ingest stored {report.n_stored} of {n}: {report.summary()}")
        series_id = report.series_ids[0]

        def ours(store: SQLiteStore = store, sid: str = series_id) -> float:
            return timed(lambda: get_series_dicom(sid, store=store))

        def bare() -> float:
            return timed(lambda: [dcmread(p) for p in files])

        # who goes first pays for growing the heap (~150 MB of datasets): alternate
        if r % 2:
            bare_s = bare()
            read.add(ours(), bare_s)
        else:
            read.add(ours(), bare())
        if r < args.rounds - 1:
            store.close()
    profiles["get_series_dicom() as datasets"] = profile(
        lambda: get_series_dicom(series_id, store=store)
    )
    store.close()
    profiles["ingest (SQLite, fsync on)"] = profile(lambda: ingest(series, store=fresh()))
    rows += [ing, read]


def send(rows: list[Row], work: Path, series: Path, args: Any) -> None:
    """``dcm-service send`` vs dcmtk ``storescu``, whole processes, to dcmtk storescp."""
    from support.peers import STORESCU, run_storescp

    files = [str(p) for p in sorted(series.iterdir())]
    store = work / "cli-store"
    cli = [str(Path(PYTHON).with_name("dcm-service"))]
    if not Path(cli[0]).exists():
        cli = [PYTHON, "-m", "dcm_processor_service.cli"]
    shm = Path("/dev/shm")
    rx_parent = Path(tempfile.mkdtemp(prefix="bench-rx-", dir=shm if shm.is_dir() else work))
    env = dict(os.environ, TCP_NODELAY="1")
    row = Row(
        f"`dcm-service send` {len(files)} CT → storescp, whole process",
        "`storescu -R`, whole process",
        "≤ 1.2x",
        1.2,
    )
    try:
        with run_storescp(rx_parent / "rx") as scp:
            run(
                [
                    *cli,
                    "peers",
                    "add",
                    "--store",
                    str(store),
                    "scp",
                    scp.aet,
                    "127.0.0.1",
                    str(scp.port),
                ]
            )
            ours = [*cli, "send", "--store", str(store), "scp", str(series)]
            ref = [STORESCU, "-R", "-aec", scp.aet, "127.0.0.1", str(scp.port), *files]

            def reset() -> None:
                for p in (rx_parent / "rx").iterdir():
                    p.unlink()

            run(ours), reset(), run(ref, env), reset()  # warm-up
            for _ in range(args.rounds):
                a = run(ours)
                reset()
                b = run(ref, env)
                reset()
                row.add(a, b)
    finally:
        shutil.rmtree(rx_parent, ignore_errors=True)
    rows.append(row)


IMPORT_SENDER = "import dcm_processor_service as d; d.DicomSender"


def startup(rows: list[Row], args: Any, profiles: dict[str, str]) -> None:
    """``import dcm_processor_service`` + a sender vs ``python -c pass``."""
    row = Row("`import dcm_processor_service` + a sender", "`python -c pass`", "≤ 0.1 s above", 0.0)
    for _ in range(max(5, 2 * args.rounds)):
        row.add(run([PYTHON, "-c", IMPORT_SENDER]), run([PYTHON, "-c", "pass"]))
    above = statistics.median(row.ours) - statistics.median(row.ref)
    row.max_ratio = (statistics.median(row.ref) + 0.1) / statistics.median(row.ref)
    row.goal = f"≤ 0.1 s above (now {above:+.2f} s)"
    rows.append(row)
    done = subprocess.run(
        [PYTHON, "-X", "importtime", "-c", IMPORT_SENDER],
        capture_output=True,
        text=True,
        check=True,
    )
    entries = []
    for line in done.stderr.splitlines()[1:]:  # "import time: self [us] | cumulative | name"
        own, cumulative, name = line.removeprefix("import time:").split("|")
        entries.append((int(cumulative), int(own), name.rstrip()))
    profiles[
        "import dcm_processor_service + DicomSender (python -X importtime: cumulative, self µs)"
    ] = "\n".join(
        f"{cum:>9} {own:>8}  {name}" for cum, own, name in sorted(entries, reverse=True)[:18]
    )


# ---------------------------------------------------------------- the report
def machine() -> list[str]:
    cpu = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = "?"
    with contextlib.suppress(OSError, IndexError):
        kib = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f"{kib / MiB:.1f} GiB"
    fs = (
        subprocess.run(["df", "-T", tempfile.gettempdir()], capture_output=True, text=True)
        .stdout.splitlines()[-1]
        .split()[1]
    )
    versions = []
    for module in ("pydicom", "pynetdicom", "numpy", "psycopg"):
        with contextlib.suppress(Exception):
            versions.append(f"{module} {__import__(module).__version__}")
    return [
        f"- CPU: {cpu}, {os.cpu_count()} logical cores; RAM {mem}",
        f"- OS: {platform.system()} {platform.release()}; temp folder on {fs}",
        f"- Python {platform.python_version()}; " + ", ".join(versions),
        f"- load average at start / end: {{start}} / {' '.join(f'{x:.2f}' for x in os.getloadavg())}",
    ]


def write_results(
    rows: list[Row], profiles: dict[str, str], args: Any, start_load: str, seconds: float, out: Path
) -> None:
    lines = [
        "# Benchmark results",
        "",
        f"Written by `python benchmarks/run_all.py {' '.join(sys.argv[1:])}`".rstrip()
        + f" in {seconds / 60:.1f} min, "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}. Ours and the reference ran interleaved, "
        f"{args.rounds} rounds (import: {max(5, 2 * args.rounds)}); times and rates are medians, the ratio is the "
        "median of the per-round ratios ours / reference **in time** (below 1: we are faster).",
        "",
        "| work | ours | reference | reference, same run | ratio (time) | goal | |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row.work} | {row.shown(row.ours)} | {row.reference} | {row.shown(row.ref)} | "
            f"{row.ratio:.2f}x | {row.goal} (≤ {row.max_ratio:.2f}x) | {'met' if row.met else '**not met**'} |"
        )
    lines += ["", "## Machine", "", *(m.replace("{start}", start_load) for m in machine())]
    lines.append(
        f"- package measured: `{SRC.relative_to(ROOT) if SRC.is_relative_to(ROOT) else SRC}`"
    )
    lines += ["", "![ratios](results.png)", ""] if (out.parent / "results.png").exists() else [""]
    lines += ["## Where the time goes", ""]
    for title, text in profiles.items():
        lines += [f"### {title}", "", "```", text, "```", ""]
    out.write_text("\n".join(lines))


def chart(rows: list[Row], out: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed (pip install -e '.[bench]'): no chart", file=sys.stderr)
        return False
    fig, ax = plt.subplots(figsize=(9, 0.45 * len(rows) + 1.2))
    names = [r.work.replace("`", "") for r in rows][::-1]
    ratios = [r.ratio for r in rows][::-1]
    goals = [r.max_ratio for r in rows][::-1]
    colors = ["#2e7d32" if r <= g else "#c62828" for r, g in zip(ratios, goals, strict=True)]
    ax.barh(names, ratios, color=colors)
    ax.scatter(goals, names, marker="|", s=300, color="black", label="goal (at most)", zorder=3)
    ax.axvline(1.0, color="grey", linewidth=0.8, linestyle="--")
    ax.set_xscale("log")
    ax.set_xlabel("time ratio ours / reference (log scale; lower is better)")
    ax.legend(loc="best")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return True


# ------------------------------------------------------------------------ main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="small sizes: 128 MiB, 60 slices, 500 ops"
    )
    parser.add_argument("--file-mb", type=int, default=1024, help="session file size, MiB (1024)")
    parser.add_argument("--slices", type=int, default=300, help="CT slices (300)")
    parser.add_argument("--size", type=int, default=512, help="rows = columns of a slice (512)")
    parser.add_argument(
        "--ops", type=int, default=2000, help="session data set and get ops per round (2000)"
    )
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds per row (3)")
    parser.add_argument(
        "--skip",
        action="extend",
        nargs="+",
        default=[],
        choices=["files", "data", "ingest", "send", "startup"],
    )
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results.md")
    parser.add_argument("--src", type=Path, help="measure the package in this src folder instead")
    args = parser.parse_args(argv)
    if args.quick:
        args.file_mb, args.slices, args.ops = 128, 60, 500
    started = time.perf_counter()
    start_load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    rows: list[Row] = []
    profiles: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="bench-all-") as tmp, contextlib.ExitStack() as stack:
        work = Path(tmp)
        pg: Any = None

        def postgres() -> Any:
            nonlocal pg
            if pg is None:
                from support.postgres import PostgresServer, require_pg_bin

                pg = stack.enter_context(PostgresServer(require_pg_bin()))
            return pg

        if "files" not in args.skip:
            print("session files, SQLite ...", file=sys.stderr)
            sqlite = ("SQLite", "sqlite", str(work / "sqlite"), "bench")
            session_files(rows, work, sqlite, args, profiles)
            shutil.rmtree(work / "sqlite.blobs", ignore_errors=True)
            print("session files, PostgreSQL ...", file=sys.stderr)
            server = postgres()
            url = server.url(server.create_database("files"))
            session_files(rows, work, ("PostgreSQL", "postgresql", url, "files"), args, profiles)
            print("session files, PostgreSQL + blob_dir ...", file=sys.stderr)
            url = server.url(server.create_database("files_dir")) + f"?blob_dir={work / 'pg-blobs'}"
            pg_dir = ("PostgreSQL + blob_dir", "postgresql", url, "files_dir")
            session_files(rows, work, pg_dir, args, profiles)
            shutil.rmtree(work / "pg-blobs", ignore_errors=True)
            (work / "big.bin").unlink()
        if "data" not in args.skip:
            print("session data, PostgreSQL ...", file=sys.stderr)
            server = postgres()
            session_data(rows, server.url(server.create_database("data")), "data", args)
        series = work / "series"
        if {"ingest", "send"} - set(args.skip):
            from support.dicomdata import write_ct_series

            write_ct_series(series, args.slices, args.size, args.size)
        if "ingest" not in args.skip:
            print("ingest and get_series_dicom ...", file=sys.stderr)
            ingest_and_read(rows, work, series, args, profiles)
        if "send" not in args.skip:
            print("dcm-service send vs storescu ...", file=sys.stderr)
            send(rows, work, series, args)
        if "startup" not in args.skip:
            print("start-up ...", file=sys.stderr)
            startup(rows, args, profiles)
    png = args.out.with_suffix(".png")
    if not chart(rows, png):
        png.unlink(missing_ok=True)
    write_results(rows, profiles, args, start_load, time.perf_counter() - started, args.out)
    print(args.out.read_text().split("## Machine")[0])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
