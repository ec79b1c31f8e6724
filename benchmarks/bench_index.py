"""Benchmark: DICOM ingest and series export against ``cp -r`` of the same folder.

One command::

    python benchmarks/bench_index.py                 # 300 x 512^2 int16 CT, SQLite
    python benchmarks/bench_index.py --postgresql    # also a throwaway PostgreSQL
    python benchmarks/bench_index.py --slices 50 --size 256

Generates an uncompressed CT series in a temporary folder (deleted afterwards, never
committed), then in one run measures:

- ``cp -r`` of the folder (the reference: the cost of just moving the bytes);
- ``ingest(folder)`` into a fresh store: instances/s and MB/s — for SQLite with the
  blob fsync on (the default, durable) and off;
- ``get_series_dicom(series_id, dir_path)``: MB/s writing the series back out;
- ``get_series_dicom(series_id)``: the series as pydicom datasets in memory.

Each step runs ``--repeat`` times (a fresh store per run) after an ``os.sync()``; the
table shows the best and the median time, and the ratio best / best of ``cp -r`` (lower
is better; 1.0 = as fast as cp). ``cp -r + sync`` is the fair reference for a store that
fsyncs. The page cache is warm for every step (the source is read once before timing).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # support.dicomdata (synthetic series)

from dcm_processor_service import get_series_dicom, ingest  # noqa: E402
from dcm_processor_service.store.base import Store  # noqa: E402
from support.dicomdata import write_ct_series  # noqa: E402


def timed(func: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    result = func()
    return time.perf_counter() - start, result


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.iterdir() if p.is_file())


@contextlib.contextmanager
def sqlite_store(
    work: Path, fsync: bool
) -> Iterator[Callable[[], contextlib.AbstractContextManager[Store]]]:
    from dcm_processor_service.store.sqlite import SQLiteStore

    @contextlib.contextmanager
    def fresh() -> Iterator[Store]:
        path = Path(tempfile.mkdtemp(prefix=f"sqlite-fsync-{'on' if fsync else 'off'}-", dir=work))
        store = SQLiteStore(str(path), "bench", fsync=fsync)
        try:
            yield store
        finally:
            store.close()
            shutil.rmtree(path, ignore_errors=True)

    yield fresh


@contextlib.contextmanager
def postgresql_store(
    work: Path,
) -> Iterator[Callable[[], contextlib.AbstractContextManager[Store]]]:
    from dcm_processor_service.store.registry import open_store
    from support.postgres import PostgresServer, find_pg_bin

    if find_pg_bin() is None:
        raise SystemExit("--postgresql: no PostgreSQL binaries found (apt-get install postgresql)")
    with PostgresServer(find_pg_bin()) as server:  # started by __enter__, stopped by __exit__
        counter = iter(range(1_000_000))

        @contextlib.contextmanager
        def fresh() -> Iterator[Store]:
            name = server.create_database(f"bench_index_{next(counter)}")
            store = open_store("postgresql", server.url(name), name)
            try:
                yield store
            finally:
                store.close()
                server.drop_database(name)

        yield fresh


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--size", type=int, default=512, help="rows = columns")
    parser.add_argument(
        "--repeat", type=int, default=3, help="runs per step (best and median shown)"
    )
    parser.add_argument("--postgresql", action="store_true", help="also benchmark PostgreSQL")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="bench-index-") as tmp:
        work = Path(tmp)
        source = work / "series"
        seconds, _ = timed(lambda: write_ct_series(source, args.slices, args.size, args.size))
        total = folder_bytes(source)
        mb = total / 1e6
        print(
            f"series: {args.slices} x {args.size}x{args.size} int16 CT, {mb:.1f} MB "
            f"(generated in {seconds:.1f} s) in {work}; best and median of {args.repeat} runs"
        )
        for path in source.iterdir():  # warm the page cache for every contender
            path.read_bytes()

        times: dict[str, list[float]] = {}

        def measure(label: str, func: Callable[[], Any]) -> Any:
            os.sync()  # no dirty pages of the previous step are written back during this one
            seconds, result = timed(func)
            times.setdefault(label, []).append(seconds)
            return result

        def cp(sync: bool) -> None:
            subprocess.run(["cp", "-r", str(source), str(work / "cp")], check=True)
            if sync:
                os.sync()

        contenders = [
            ("sqlite fsync=on", sqlite_store(work, True)),
            ("sqlite fsync=off", sqlite_store(work, False)),
        ]
        if args.postgresql:
            contenders.append(("postgresql", postgresql_store(work)))
        with contextlib.ExitStack() as stack:
            makers = [(label, stack.enter_context(cm)) for label, cm in contenders]
            for _ in range(args.repeat):
                for sync in (False, True):
                    measure("cp -r (reference)" if not sync else "cp -r + sync", partial(cp, sync))
                    shutil.rmtree(work / "cp")
                for label, fresh in makers:
                    with fresh() as store:
                        report = measure(f"ingest, {label}", partial(ingest, source, store=store))
                        assert report.ok and report.n_stored == args.slices, report.summary()
                        series_id = report.series_ids[0]
                        out = work / "out"
                        paths = measure(
                            f"get_series_dicom(dir_path), {label}",
                            partial(get_series_dicom, series_id, out, store=store),
                        )
                        assert len(paths) == args.slices and folder_bytes(out) == total
                        shutil.rmtree(out)
                        datasets = measure(
                            f"get_series_dicom() datasets, {label}",
                            partial(get_series_dicom, series_id, store=store),
                        )
                        assert len(datasets) == args.slices
                        del datasets

        cp_best = min(times["cp -r (reference)"])
        print()
        header = f"{'operation':<44} {'best s':>7} {'median':>7} {'inst/s':>7} {'MB/s':>6} {'x cp -r':>8}"
        print(header)
        print("-" * len(header))
        for label, values in times.items():
            best = min(values)
            print(
                f"{label:<44} {best:>7.3f} {statistics.median(values):>7.3f} "
                f"{args.slices / best:>7.0f} {mb / best:>6.0f} {best / cp_best:>8.2f}"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
