"""Benchmark: sending a 300-slice CT series with DicomSender vs dcmtk's storescu, and
by STOW-RS (StowSender) vs storescu and a plain curl multipart POST; WADO-RS vs curl.

Run from the repository root (nothing to install besides the package's dependencies,
dcmtk, Orthanc and orthanc-dicomweb; ``pip install -e '.[bench]'`` adds dicomweb-client
to the comparison)::

    python benchmarks/bench_send.py [--slices 300] [--rounds 3] [--skip-orthanc]
    python benchmarks/bench_send.py --dicomweb-only [--big-mb 1024]

What it does, in one run:

1. generates ``--slices`` CT slices of 512 x 512 int16, uncompressed (Explicit VR Little
   Endian), in a temporary directory (deleted at the end; nothing is committed);
2. starts dcmtk ``storescp`` (env ``TCP_NODELAY=1``) and sends the series with
   ``/usr/bin/storescu -R`` (with and without ``TCP_NODELAY=1``), with
   :class:`DicomSender` and, for reference, with pynetdicom's own ``send_c_store``;
3. starts Orthanc at its packaged defaults and sends the series with storescu and with
   :class:`DicomSender` (one association; four in parallel; and with ``TCP_QUICKACK``
   off to show the delayed-ACK trap);
4. prints medians over ``--rounds`` rounds (after a warm-up), ratios ours / storescu,
   where our time goes (header scan, association set-up, C-STOREs, release) and the
   peak RSS of each sender process.

Each sender runs in its own process (ours via ``--child``) so its peak RSS is its own;
"send" is the time measured inside the sender (ours: ``SendReport.timings.total_s``),
"process" the wall time of the whole process including interpreter start and imports.
Goals (issue 6): <= 1.0x storescu to storescp, <= 0.5x storescu to Orthanc.

5. DICOMweb (issue 14, :mod:`dicomweb_bench`): Orthanc with its DICOMweb plugin and
   basic auth; the series sent by ``StowSender`` against ``storescu`` (DIMSE, the same
   Orthanc) and ``curl`` POSTing a ready multipart body of the same files (goal: no
   slower than 1.2x the faster of the two), then WADO-RS of the series by our
   retrieval against ``curl`` saving the multipart answer; with ``--big-mb`` a study of
   that size is sent by STOW-RS and the sender's peak RSS reported.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT / "tests"), str(ROOT / "benchmarks")]


# -- data ------------------------------------------------------------------------------------
def write_ct_series(folder: Path, n: int, size: int = 512) -> list[Path]:
    """``n`` CT slices of ``size``² int16 (random noise: incompressible, like real data)."""
    import numpy as np
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(6)
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    paths = []
    for i in range(n):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.PatientName, ds.PatientID, ds.Modality = "Bench^CT", "BENCH-1", "CT"
        ds.StudyDate, ds.StudyTime, ds.StudyID, ds.AccessionNumber = "20240101", "120000", "1", "B1"
        ds.ReferringPhysicianName = ""
        ds.SeriesNumber, ds.InstanceNumber = 1, i + 1
        ds.ImagePositionPatient = [0.0, 0.0, float(i)]
        ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
        ds.PixelSpacing, ds.SliceThickness = [0.7, 0.7], 1.0
        ds.Rows = ds.Columns = size
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope = -1024, 1
        ds.PixelData = rng.integers(-1024, 3000, (size, size), dtype=np.int16).tobytes()
        path = folder / f"CT{i:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


# -- running senders -------------------------------------------------------------------------
def run_process(cmd: list[str], env: dict[str, str] | None = None) -> tuple[float, int, str]:
    """Run ``cmd``; return (wall seconds, peak RSS in MiB, stdout)."""
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    _pid, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t
    out = proc.stdout.read().decode() if proc.stdout else ""
    err = proc.stderr.read().decode() if proc.stderr else ""
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[0]} failed ({proc.returncode}):\n{err[-2000:]}")
    return wall, usage.ru_maxrss // 1024, out


def storescu(files: list[Path], port: int, aet: str, nodelay: bool) -> dict[str, Any]:
    from support.peers import STORESCU

    env = dict(os.environ)
    if nodelay:
        env["TCP_NODELAY"] = "1"
    else:
        env.pop("TCP_NODELAY", None)
    cmd = [STORESCU, "-R", "-aec", aet, "127.0.0.1", str(port), *map(str, files)]
    wall, rss, _ = run_process(cmd, env)
    return {"send": wall, "process": wall, "rss": rss}


def ours(folder: Path, port: int, aet: str, **options: Any) -> dict[str, Any]:
    args = json.dumps({"folder": str(folder), "port": port, "aet": aet, "options": options})
    wall, rss, out = run_process([sys.executable, __file__, "--child", args])
    result = json.loads(out.strip().splitlines()[-1])
    result.update(process=wall, rss=rss)
    return result


def child(spec: dict[str, Any]) -> None:
    """``--child``: one send with DicomSender (or pynetdicom), timings as JSON on stdout."""
    options = dict(spec["options"])
    if options.pop("pynetdicom", False):
        print(json.dumps(pynetdicom_send(Path(spec["folder"]), spec["port"], spec["aet"])))
        return
    from dcm_processor_service import DicomSender

    sender = DicomSender("BENCHSCU", "127.0.0.1", spec["port"], spec["aet"], **options)
    report = sender.send(spec["folder"])
    if not report.ok or len(report.results) == 0:
        raise SystemExit(f"send failed: {report.summary()}")
    t = report.timings
    print(
        json.dumps(
            {
                "send": t.total_s,
                "scan": t.scan_s,
                "connect": t.connect_s,
                "store": t.store_s,
                "release": t.release_s,
                "associations": report.associations,
                "bytes": report.bytes_sent,
            }
        )
    )


def pynetdicom_send(folder: Path, port: int, aet: str) -> dict[str, Any]:
    """pynetdicom's own send_c_store at its best settings, for comparison: file paths
    sent without decoding (STORE_SEND_CHUNKED_DATASET), TCP_NODELAY set on connect."""
    import socket

    from pynetdicom import AE, _config, evt
    from pynetdicom.sop_class import CTImageStorage

    _config.STORE_SEND_CHUNKED_DATASET = True

    def nodelay(event: Any) -> None:
        event.assoc.dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    files = sorted(folder.iterdir())
    t0 = time.perf_counter()
    ae = AE(ae_title="BENCHSCU")
    ae.maximum_pdu_size = 0
    ae.add_requested_context(CTImageStorage, "1.2.840.10008.1.2.1")
    assoc = ae.associate(
        "127.0.0.1", port, ae_title=aet, evt_handlers=[(evt.EVT_CONN_OPEN, nodelay)]
    )
    t1 = time.perf_counter()
    try:
        for f in files:
            if assoc.send_c_store(f).Status != 0:
                raise SystemExit("pynetdicom store failed")
        t2 = time.perf_counter()
    finally:
        assoc.release()
    t3 = time.perf_counter()
    return {"send": t3 - t0, "connect": t1 - t0, "store": t2 - t1, "release": t3 - t2, "scan": 0.0}


# -- reporting -------------------------------------------------------------------------------
def interleaved(variants: dict[str, tuple[Any, int]], reset: Any) -> dict[str, dict[str, Any]]:
    """Run every variant ``rounds`` times, round-robin (so background work such as the
    page-cache writeback of a previous run hits all variants alike); medians per variant.
    ``variants``: label -> (function, rounds)."""
    runs: dict[str, list[dict[str, Any]]] = {label: [] for label in variants}
    for i in range(max(n for _, n in variants.values())):
        labels = list(variants)
        labels = labels[i % len(labels) :] + labels[: i % len(labels)]  # rotate the order
        for label in labels:
            fn, n = variants[label]
            if i < n:
                reset()
                runs[label].append(fn())
    out = {}
    for label, rs in runs.items():
        med = {
            k: statistics.median(r[k] for r in rs)
            for k in rs[0]
            if isinstance(rs[0][k], (int, float))
        }
        med["runs"] = [round(r["send"], 3) for r in rs]
        out[label] = med
    return out


def line(label: str, r: dict[str, Any], ref: float | None = None) -> str:
    ratio = f"{r['send'] / ref:5.2f}x" if ref else "  ref "
    parts = [
        f"  {label:<44} send {r['send']:7.3f} s  {ratio}  process {r['process']:6.2f} s  RSS {r['rss']:4d} MiB"
    ]
    if "store" in r:
        parts.append(
            f"      where: scan {r.get('scan', 0):.3f} + associate {r.get('connect', 0):.3f} + "
            f"C-STOREs {r['store']:.3f} + release {r.get('release', 0):.3f} s"
        )
    parts.append(f"      runs: {r['runs']}")
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--orthanc-rounds", type=int, default=1, help="storescu -> Orthanc is slow")
    parser.add_argument("--skip-orthanc", action="store_true")
    parser.add_argument("--skip-dicomweb", action="store_true")
    parser.add_argument("--dicomweb-only", action="store_true")
    parser.add_argument(
        "--big-mb", type=int, default=0, help="also send a study of this size by STOW-RS"
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        spec = json.loads(args.child)
        if "dicomweb" in spec:
            from dicomweb_bench import dicomweb_child

            dicomweb_child(spec)
        else:
            child(spec)
        return 0
    if args.dicomweb_only:
        from dicomweb_bench import run_dicomweb

        with tempfile.TemporaryDirectory(prefix="bench-send-") as tmp:
            files = write_ct_series(Path(tmp) / "ct", args.slices)
            run_dicomweb(Path(tmp), files, args.rounds, args.big_mb, write_ct_series)
        return 0

    from support.peers import run_orthanc, run_storescp

    with tempfile.TemporaryDirectory(prefix="bench-send-") as tmp:
        work = Path(tmp)
        t = time.perf_counter()
        files = write_ct_series(work / "ct", args.slices)
        size_mb = sum(p.stat().st_size for p in files) / 1e6
        print(
            f"series: {len(files)} CT slices 512x512 int16, {size_mb:.0f} MB, generated in {time.perf_counter() - t:.1f} s"
        )
        print(
            f"rounds: median of {args.rounds} after one warm-up (Orthanc: {args.orthanc_rounds})\n"
        )

        # storescp writes to tmpfs when there is one: the comparison is about the network
        # path, not about the disk's writeback of 150 MB per run.
        shm = Path("/dev/shm")
        rx_parent = Path(tempfile.mkdtemp(prefix="bench-rx-", dir=shm)) if shm.is_dir() else work
        rx = rx_parent / "rx"
        ct = work / "ct"
        try:
            with run_storescp(rx) as scp:

                def reset() -> None:
                    for p in rx.iterdir():
                        p.unlink()

                port, aet = scp.port, scp.aet
                ours(ct, port, aet)  # warm-up (page cache, storescp)
                storescu(files, port, aet, nodelay=True)
                print(f"dcmtk storescp (TCP_NODELAY=1, output on {rx_parent}), one association:")
                n = args.rounds
                res = interleaved(
                    {
                        "storescu -R (TCP_NODELAY=1)": (
                            lambda: storescu(files, port, aet, True),
                            n,
                        ),
                        "storescu -R (default env)": (lambda: storescu(files, port, aet, False), n),
                        "DicomSender.send()": (lambda: ours(ct, port, aet), n),
                        "DicomSender without NODELAY/QUICKACK": (
                            lambda: ours(ct, port, aet, tcp_nodelay=False, tcp_quickack=False),
                            n,
                        ),
                        "pynetdicom send_c_store (chunked, NODELAY)": (
                            lambda: ours(ct, port, aet, pynetdicom=True),
                            n,
                        ),
                    },
                    reset,
                )
                ref = res["storescu -R (TCP_NODELAY=1)"]["send"]
                for label, r in res.items():
                    print(line(label, r, None if label.startswith("storescu -R (TCP") else ref))
                ratio_scp = res["DicomSender.send()"]["send"] / ref
        finally:
            if rx_parent != work:
                shutil.rmtree(rx_parent, ignore_errors=True)

        ratio_orthanc = None
        if not args.skip_orthanc:
            with run_orthanc(work / "orthanc") as orthanc:
                port, aet = orthanc.dicom_port, orthanc.aet
                print(
                    "\nOrthanc 1.10 at packaged defaults (storage on disk), fresh store each run:"
                )
                n, slow = args.rounds, args.orthanc_rounds
                res = interleaved(
                    {
                        "storescu -R (TCP_NODELAY=1)": (
                            lambda: storescu(files, port, aet, True),
                            slow,
                        ),
                        "DicomSender.send()": (lambda: ours(ct, port, aet), n),
                        "DicomSender.send(parallel=4)": (
                            lambda: ours(ct, port, aet, parallel=4),
                            n,
                        ),
                        "DicomSender without QUICKACK (delayed ACKs)": (
                            lambda: ours(ct, port, aet, tcp_quickack=False),
                            slow,
                        ),
                    },
                    orthanc.delete_all,
                )
                ref = res["storescu -R (TCP_NODELAY=1)"]["send"]
                for label, r in res.items():
                    print(line(label, r, None if label.startswith("storescu") else ref))
                ratio_orthanc = res["DicomSender.send()"]["send"] / ref

        print("\nsummary:")
        print(
            f"  to storescp: ours / storescu = {ratio_scp:.2f}x (goal <= 1.0x) {'OK' if ratio_scp <= 1.0 else 'MISSED'}"
        )
        if ratio_orthanc is not None:
            print(
                f"  to Orthanc:  ours / storescu = {ratio_orthanc:.2f}x (goal <= 0.5x) {'OK' if ratio_orthanc <= 0.5 else 'MISSED'}"
            )
        if not args.skip_dicomweb:
            from dicomweb_bench import run_dicomweb

            run_dicomweb(work, files, args.rounds, args.big_mb, write_ct_series)
        shutil.rmtree(work / "ct", ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
