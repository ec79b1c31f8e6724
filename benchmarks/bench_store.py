"""Storage benchmark: session data ops/s and session-file MB/s, SQLite vs PostgreSQL vs cp.

One command::

    python benchmarks/bench_store.py [--size-mb 1024] [--ops 5000]

Starts its own throwaway PostgreSQL server (``fsync=off`` - it measures the client and
the server's CPU path, not the disk's flush), generates a file of ``--size-mb`` MiB of
random bytes, and prints one table:

* session data: ``set_session_data`` and ``get_session_data`` ops/s through the public
  compatible API (``use_context`` + the module functions), on SQLite and PostgreSQL;
* session files: ``upload_session_file`` / ``download_session_file`` MB/s of the
  generated file on SQLite, PostgreSQL, and plain ``cp`` of the same file in the same
  run, with the ratio to ``cp``;
* peak RSS (VmHWM) of each upload/download, measured in a fresh child process that
  does only that one transfer (its baseline after imports is shown too).

Goals reported against: >= 5,000 data ops/s on SQLite, file transfer >= 0.5x cp,
peak RSS <= 64 MiB.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
MiB = 1024 * 1024


def _vm_hwm_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def _ctx(provider: str, url: str, name: str | None, job: str = "bench") -> Any:
    from dcm_processor_service import RuntimeContext

    return RuntimeContext(
        db_provider=provider,
        db_url=url,
        db_name=name,
        session_id="bench-session",
        job_event="stable-series",
        job_id=job,
        job_name=job,
    )


# ------------------------------------------------------------------- child modes
def child_transfer(args: argparse.Namespace) -> None:
    """One upload or download in this (fresh) process; print timing and peak RSS."""
    import dcm_processor_service as dps

    ctx = _ctx(args.provider, args.url, args.name or None)
    with dps.use_context(ctx):
        dps.JobSession.current()  # open the store before measuring
        dps.has_session_file("big.bin")
        baseline = _vm_hwm_kib()
        start = time.perf_counter()
        if args.child == "upload":
            dps.upload_session_file(args.file, "big.bin")
        else:
            dps.download_session_file("big.bin", filename=args.file)
        seconds = time.perf_counter() - start
    dps.close_stores()
    print(json.dumps({"seconds": seconds, "baseline_kib": baseline, "peak_kib": _vm_hwm_kib()}))


def _run_child(mode: str, provider: str, url: str, name: str, file: Path) -> dict[str, Any]:
    out = subprocess.run(
        [
            sys.executable,
            __file__,
            "--child",
            mode,
            "--provider",
            provider,
            "--url",
            url,
            "--name",
            name,
            "--file",
            str(file),
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


# ----------------------------------------------------------------- measurements
def bench_data(provider: str, url: str, name: str, ops: int) -> tuple[float, float]:
    """(set ops/s, get ops/s) through the compatible API."""
    import dcm_processor_service as dps

    with dps.use_context(_ctx(provider, url, name)):
        dps.set_session_data("warm-up", 1)
        start = time.perf_counter()
        for i in range(ops):
            dps.set_session_data(f"key-{i % 200}", {"i": i, "label": "bench", "v": [1, 2, 3]})
        set_rate = ops / (time.perf_counter() - start)
        start = time.perf_counter()
        for i in range(ops):
            dps.get_session_data(f"key-{i % 200}")
        get_rate = ops / (time.perf_counter() - start)
    dps.close_stores()
    return set_rate, get_rate


def make_file(path: Path, size_mb: int) -> None:
    """``size_mb`` MiB of random bytes (incompressible, like compressed pixel data)."""
    with open(path, "wb") as out:
        for _ in range(size_mb):
            out.write(os.urandom(MiB))


def bench_cp(src: Path, dst: Path) -> float:
    start = time.perf_counter()
    subprocess.run(["cp", str(src), str(dst)], check=True)
    seconds = time.perf_counter() - start
    dst.unlink()
    return seconds


def _sha256(path: Path) -> str:
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(MiB):
            digest.update(chunk)
    return digest.hexdigest()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mb", type=int, default=1024, help="file size in MiB (1024)")
    parser.add_argument("--ops", type=int, default=5000, help="data set and get ops each")
    parser.add_argument("--tmp", default=None, help="work directory (default: system temp)")
    parser.add_argument("--child", choices=["upload", "download"], help=argparse.SUPPRESS)
    parser.add_argument("--provider", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--name", help=argparse.SUPPRESS)
    parser.add_argument("--file", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child_transfer(args)
        return 0

    sys.path.insert(0, str(ROOT / "tests"))
    from support.postgres import PostgresServer

    work = Path(tempfile.mkdtemp(prefix="bench-store-", dir=args.tmp))
    server = PostgresServer()
    try:
        print(f"starting PostgreSQL from {server.bin_dir} ...", file=sys.stderr)
        server.start()
        pg_url = server.url(server.create_database("bench"))
        stores = {
            "sqlite": ("sqlite", str(work / "sqlite"), "bench"),
            "postgresql": ("postgresql", pg_url, "bench"),
        }
        data: dict[str, tuple[float, float]] = {}
        for label, (provider, url, name) in stores.items():
            print(f"session data on {label} ({args.ops} set + {args.ops} get) ...", file=sys.stderr)
            data[label] = bench_data(provider, url, name, args.ops)

        src = work / "source.bin"
        print(f"generating a {args.size_mb} MiB file ...", file=sys.stderr)
        make_file(src, args.size_mb)
        expected = _sha256(src)
        cp_s = bench_cp(src, work / "cp-copy.bin")
        size_mb = src.stat().st_size / MiB
        files: dict[str, dict[str, dict[str, Any]]] = {}
        for label, (provider, url, name) in stores.items():
            print(f"file upload/download on {label} ...", file=sys.stderr)
            up = _run_child("upload", provider, url, name, src)
            out = work / f"download-{label}.bin"
            down = _run_child("download", provider, url, name, out)
            if _sha256(out) != expected:
                raise SystemExit(f"{label}: downloaded file differs from the upload")
            out.unlink()
            files[label] = {"upload": up, "download": down}
            if provider == "sqlite":  # free the disk before the next provider
                shutil.rmtree(work / "sqlite.blobs", ignore_errors=True)
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)

    cp_rate = size_mb / cp_s
    lines = [
        "",
        f"{'measurement':<34}{'SQLite':>14}{'PostgreSQL':>14}{'cp':>12}",
        "-" * 74,
    ]
    for i, what in enumerate(("set_session_data", "get_session_data")):
        lines.append(
            f"{what + ' ops/s':<34}{data['sqlite'][i]:>14,.0f}{data['postgresql'][i]:>14,.0f}"
            f"{'':>12}"
        )
    for mode in ("upload", "download"):
        rates = {k: size_mb / v[mode]["seconds"] for k, v in files.items()}
        lines.append(
            f"{f'file {mode} MB/s ({size_mb:.0f} MiB)':<34}{rates['sqlite']:>14,.0f}"
            f"{rates['postgresql']:>14,.0f}{cp_rate:>12,.0f}"
        )
        lines.append(
            f"{'  ratio vs cp':<34}{rates['sqlite'] / cp_rate:>13.2f}x"
            f"{rates['postgresql'] / cp_rate:>13.2f}x{'1.00x':>12}"
        )
        peaks = {k: v[mode]["peak_kib"] / 1024 for k, v in files.items()}
        bases = {k: v[mode]["baseline_kib"] / 1024 for k, v in files.items()}
        cells = {k: f"{peaks[k]:.0f} ({bases[k]:.0f})" for k in peaks}
        lines.append(
            f"{'  peak RSS MiB (after imports)':<34}{cells['sqlite']:>14}"
            f"{cells['postgresql']:>14}{'':>12}"
        )
    sqlite_ops = sum(data["sqlite"]) / 2
    worst_ratio = min(
        size_mb / v[m]["seconds"] / cp_rate for v in files.values() for m in ("upload", "download")
    )
    worst_rss = max(v[m]["peak_kib"] / 1024 for v in files.values() for m in ("upload", "download"))
    lines += [
        "-" * 74,
        "goals: SQLite data >= 5,000 ops/s: "
        f"{'met' if sqlite_ops >= 5000 else 'NOT met'} ({sqlite_ops:,.0f}); "
        f"file >= 0.5x cp: {'met' if worst_ratio >= 0.5 else 'NOT met'} (worst {worst_ratio:.2f}x); "
        f"RSS <= 64 MiB: {'met' if worst_rss <= 64 else 'NOT met'} (worst {worst_rss:.0f} MiB)",
        "PostgreSQL server: throwaway cluster on loopback, fsync=off; SQLite blobs are fsync-ed.",
    ]
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
