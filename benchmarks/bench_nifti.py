"""Benchmark the NIfTI conversions on a generated 300 x 512 x 512 CT series.

One command, everything measured in the same run (data in a temp dir, removed after):

    python benchmarks/bench_nifti.py [--slices 300] [--size 512] [--repeat 5]

1. ``series_files_to_nifti(dir, filename)`` against the ``dcm2niix`` CLI with the same
   settings (uncompressed, and gzip), alternating runs, medians; goal ratio <= 1.1.
2. The in-memory path ``series_files_to_nifti(dir)`` (image + sidecar + float32 array);
   goal <= 0.6 s.
3. ``nifti_to_dicom`` + ``write_datasets`` of a 512 x 512 x 300 int16 volume; goal
   <= 1.5 s, and peak traced memory (tracemalloc, separate run) <= 3x the volume's bytes.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT / "tests")]

from dcm_processor_service import (  # noqa: E402
    nifti_to_dicom,
    series_files_to_nifti,
    write_datasets,
)
from dcm_processor_service.imaging.nifti_read import dcm2niix_args  # noqa: E402
from support.imaging import make_ct_series  # noqa: E402


def timed(action: Callable[[], object], cleanup: Callable[[], object] | None = None) -> float:
    start = time.perf_counter()
    action()
    elapsed = time.perf_counter() - start
    if cleanup is not None:
        cleanup()
    return elapsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="bench-nifti-"))
    rows: list[tuple[str, float, float | None, str, bool]] = []
    try:
        series = work / "series"
        t = time.perf_counter()
        make_ct_series(series, args.slices, args.size, args.size)
        print(
            f"generated {args.slices} x {args.size}^2 CT series in {time.perf_counter() - t:.2f} s",
            flush=True,
        )
        out = work / "out"
        out.mkdir()

        def cli(compress: bool) -> Callable[[], object]:
            command = dcm2niix_args(series, out, compress=compress, filename="cli")
            return lambda: subprocess.run(command, capture_output=True, check=True)

        def clear() -> None:
            shutil.rmtree(out)
            out.mkdir()

        cli(False)()  # warm the page cache
        clear()
        for compress, suffix, repeat in ((False, ".nii", args.repeat), (True, ".nii.gz", 3)):
            ours_times, cli_times = [], []
            for i in range(repeat):
                cli_times.append(timed(cli(compress), clear))
                target = out / f"ours{i}{suffix}"
                ours_times.append(
                    timed(lambda target=target: series_files_to_nifti(series, target), clear)
                )
            ours, ref = statistics.median(ours_times), statistics.median(cli_times)
            rows.append(
                (
                    f"series_files_to_nifti(filename) {suffix} vs dcm2niix CLI",
                    ours,
                    ref,
                    "ratio <= 1.1",
                    ours / ref <= 1.1,
                )
            )

        memory_times = []
        for _ in range(args.repeat):
            memory_times.append(timed(lambda: series_files_to_nifti(series)))
        in_memory = statistics.median(memory_times)
        rows.append(
            ("series_files_to_nifti() in memory", in_memory, None, "<= 0.6 s", in_memory <= 0.6)
        )

        image, _, array = series_files_to_nifti(series)
        volume = np.asarray(array, dtype=np.int16)  # the int16 HU volume, x/y/z
        del image, array
        img = nib.Nifti1Image(volume, np.diag([0.75, 0.75, 1.25, 1.0]))
        target = work / "dicom"

        def to_dicom() -> None:
            write_datasets(nifti_to_dicom(img, "CT", "bench"), target)

        def drop() -> None:
            shutil.rmtree(target)

        write_times = [timed(to_dicom, drop) for _ in range(args.repeat)]
        write = statistics.median(write_times)
        rows.append(("nifti_to_dicom + write_datasets", write, None, "<= 1.5 s", write <= 1.5))

        tracemalloc.start()
        to_dicom()
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        drop()
        ratio = peak / volume.nbytes
        rows.append(
            (
                f"  peak traced memory {peak / 2**20:.0f} MiB / volume {volume.nbytes / 2**20:.0f} MiB",
                ratio,
                None,
                "<= 3x",
                ratio <= 3,
            )
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print()
    print(f"{'measurement':<62} {'ours':>8} {'dcm2niix':>9} {'ratio':>6}  {'goal':<12} ok")
    print("-" * 104)
    for name, ours, ref, goal, ok in rows:
        if ref is None:
            unit = "x" if goal.endswith("x") else "s"
            print(
                f"{name:<62} {ours:>7.3f}{unit} {'':>9} {'':>6}  {goal:<12} {'yes' if ok else 'NO'}"
            )
        else:
            print(
                f"{name:<62} {ours:>7.3f}s {ref:>8.3f}s {ours / ref:>6.3f}  {goal:<12} "
                f"{'yes' if ok else 'NO'}"
            )
    return 0 if all(ok for *_, ok in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
