"""The DICOMweb part of ``bench_send.py`` (issue 14): STOW-RS and WADO-RS against Orthanc
with its DICOMweb plugin and basic auth, each measured against the reference tools in
the same run. Not a script of its own: ``python benchmarks/bench_send.py --dicomweb-only``.

STOW-RS variants (fresh Orthanc store before each run):

* ``storescu -R`` (dcmtk, DIMSE) to the same Orthanc;
* ``curl`` POSTing a multipart body of the same files, built on disk *before* the clock
  starts (curl's best case: one file, no framing work);
* ``StowSender.send()`` (its own process: the RSS is its own) - default batches, and
  one request per 10 instances;
* ``dicomweb-client`` ``store_instances`` (when installed: ``pip install -e '.[bench]'``),
  which takes pydicom datasets, i.e. the whole series in memory.

WADO-RS variants: ``curl`` saving the multipart answer to one file (no splitting), our
retrieval (:func:`~dcm_processor_service.net.dicomweb.qido_wado.wado`: one file per
instance) and ``dicomweb-client`` ``iter_series`` writing each instance.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

CURL = "/usr/bin/curl"
PASSWORD_ENV = "DCMPS_BENCH_PASSWORD"


def _child(spec: dict[str, Any]) -> dict[str, Any]:
    from bench_send import run_process

    wall, rss, out = run_process(
        [
            sys.executable,
            str(Path(__file__).with_name("bench_send.py")),
            "--child",
            json.dumps(spec),
        ]
    )
    result = json.loads(out.strip().splitlines()[-1])
    result.update(process=wall, rss=rss)
    return result


def dicomweb_child(spec: dict[str, Any]) -> None:
    """``--child`` of a DICOMweb variant: one STOW-RS or WADO-RS, timings as JSON."""
    from dcm_processor_service.net.dicomweb.auth import open_client
    from dcm_processor_service.net.dicomweb.qido_wado import wado
    from dcm_processor_service.net.dicomweb.stow import StowSender
    from dcm_processor_service.store import DicomWebEndpoint

    endpoint = DicomWebEndpoint(spec["url"], "basic", spec["user"], f"env:{PASSWORD_ENV}")
    t0 = time.perf_counter()
    what = spec["dicomweb"]
    if what == "stow":
        report = StowSender(endpoint, **spec.get("options", {})).send(spec["folder"])
        if not report.ok:
            raise SystemExit(f"send failed: {report.summary()}")
        result = {"send": report.timings.total_s, "requests": report.associations}
    elif what == "wado":
        with open_client(endpoint) as client, tempfile.TemporaryDirectory(dir=spec["out"]) as tmp:
            paths = wado(client, "bench", spec["path"], Path(tmp))
            result = {"send": time.perf_counter() - t0, "files": len(paths)}
    elif what == "dicomweb-client-stow":
        from dicomweb_client.api import DICOMwebClient
        from pydicom import dcmread

        client = _dwc(spec)
        datasets = [dcmread(p) for p in sorted(Path(spec["folder"]).iterdir())]
        client.store_instances(datasets)
        result = {"send": time.perf_counter() - t0}
        del DICOMwebClient
    else:  # dicomweb-client-wado
        client = _dwc(spec)
        study, series = spec["path"].split("/")[2::2]
        with tempfile.TemporaryDirectory(dir=spec["out"]) as tmp:
            n = 0
            for n, ds in enumerate(client.iter_series(study, series), start=1):
                ds.save_as(Path(tmp) / f"{n}.dcm", enforce_file_format=True)
            result = {"send": time.perf_counter() - t0, "files": n}
    print(json.dumps(result))


def _dwc(spec: dict[str, Any]) -> Any:
    import requests
    from dicomweb_client.api import DICOMwebClient

    session = requests.Session()
    session.auth = (spec["user"], os.environ[PASSWORD_ENV])
    return DICOMwebClient(url=spec["url"], session=session)


def _timed(cmd: list[str]) -> dict[str, Any]:
    from bench_send import run_process

    wall, rss, _ = run_process(cmd)
    return {"send": wall, "process": wall, "rss": rss}


def _multipart_body(files: list[Path], target: Path) -> str:
    boundary = "bench-boundary-7d3f"
    with open(target, "wb") as out:
        for i, f in enumerate(files):
            out.write(
                (b"\r\n" if i else b"")
                + f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
            )
            out.write(f.read_bytes())
        out.write(f"\r\n--{boundary}--\r\n".encode())
    return boundary


def run_dicomweb(
    work: Path,
    files: list[Path],
    rounds: int,
    big_mb: int,
    write_series: Callable[[Path, int], list[Path]],
) -> None:
    """Measure and print the DICOMweb variants (see the module docs)."""
    from bench_send import interleaved, line, storescu

    from support.dicomweb import PASSWORD, USER, dicomweb_url, run_orthanc_dicomweb

    os.environ[PASSWORD_ENV] = PASSWORD
    have_dwc = True
    try:
        import dicomweb_client  # noqa: F401
    except ImportError:
        have_dwc = False
    folder = files[0].parent
    with run_orthanc_dicomweb(work / "orthanc-web") as orthanc:
        url = dicomweb_url(orthanc)
        base = {"url": url, "user": USER}
        body = work / "stow-body.bin"
        boundary = _multipart_body(files, body)
        curl_post = [
            CURL, "-sS", "--fail", "-o", "/dev/null", "-u", f"{USER}:{PASSWORD}",
            "-H", f'Content-Type: multipart/related; type="application/dicom"; boundary={boundary}',
            "-H", "Accept: application/dicom+json", "--data-binary", f"@{body}", f"{url}/studies",
        ]  # fmt: skip
        variants: dict[str, tuple[Any, int]] = {
            "storescu -R (DIMSE, TCP_NODELAY=1)": (
                lambda: storescu(files, orthanc.dicom_port, orthanc.aet, True),
                rounds,
            ),
            "curl multipart POST (body prebuilt)": (lambda: _timed(curl_post), rounds),
            "StowSender.send() (default batches)": (
                lambda: _child({**base, "dicomweb": "stow", "folder": str(folder)}),
                rounds,
            ),
            "StowSender.send(batch_instances=10)": (
                lambda: _child(
                    {
                        **base,
                        "dicomweb": "stow",
                        "folder": str(folder),
                        "options": {"batch_instances": 10},
                    }
                ),
                rounds,
            ),
        }
        if have_dwc:
            variants["dicomweb-client store_instances"] = (
                lambda: _child({**base, "dicomweb": "dicomweb-client-stow", "folder": str(folder)}),
                rounds,
            )
        print(f"\nOrthanc + DICOMweb plugin, basic auth: STOW-RS of {len(files)} instances")
        res = interleaved(variants, orthanc.delete_all)
        ref = min(
            res["storescu -R (DIMSE, TCP_NODELAY=1)"]["send"],
            res["curl multipart POST (body prebuilt)"]["send"],
        )
        for label, r in res.items():
            print(line(label, r, ref))
        stow_ratio = res["StowSender.send() (default batches)"]["send"] / ref

        # WADO-RS of the same series (stored once)
        subprocess.run(curl_post, check=True)
        from pydicom import dcmread

        first = dcmread(files[0], stop_before_pixels=True)
        path = f"/studies/{first.StudyInstanceUID}/series/{first.SeriesInstanceUID}"
        out = work / "wado-out"
        out.mkdir(exist_ok=True)
        curl_get = [
            CURL, "-sS", "--fail", "-o", str(out / "answer.bin"), "-u", f"{USER}:{PASSWORD}",
            "-H", 'Accept: multipart/related; type="application/dicom"; transfer-syntax=*',
            f"{url}{path}",
        ]  # fmt: skip
        wado_variants: dict[str, tuple[Any, int]] = {
            "curl GET (answer saved as one file)": (lambda: _timed(curl_get), rounds),
            "our WADO-RS (one file per instance)": (
                lambda: _child({**base, "dicomweb": "wado", "path": path, "out": str(out)}),
                rounds,
            ),
        }
        if have_dwc:
            wado_variants["dicomweb-client iter_series (+ save_as)"] = (
                lambda: _child(
                    {**base, "dicomweb": "dicomweb-client-wado", "path": path, "out": str(out)}
                ),
                rounds,
            )
        print(f"\nWADO-RS of the series ({len(files)} instances)")
        res = interleaved(wado_variants, lambda: None)
        wado_ref = res["curl GET (answer saved as one file)"]["send"]
        for label, r in res.items():
            print(line(label, r, wado_ref))
        wado_ratio = res["our WADO-RS (one file per instance)"]["send"] / wado_ref

        if big_mb:
            orthanc.delete_all()
            per_file = files[0].stat().st_size
            t = time.perf_counter()
            big = write_series(work / "big", max(1, big_mb * 1_000_000 // per_file))
            size = sum(p.stat().st_size for p in big) / 1e6
            print(f"\nbounded memory: {len(big)} instances, {size:.0f} MB (generated in "
                  f"{time.perf_counter() - t:.0f} s), default batches (at most 50 instances, 64 MiB per request)")  # fmt: skip
            r = _child({**base, "dicomweb": "stow", "folder": str(work / "big")})
            print(
                f"  StowSender.send(): {r['send']:.1f} s, {size / r['send']:.0f} MB/s, "
                f"{r['requests']} request(s), peak RSS {r['rss']} MiB"
            )
            orthanc.delete_all()
    print("\nsummary (DICOMweb):")
    print(
        f"  STOW-RS: ours / min(storescu, curl) = {stow_ratio:.2f}x (goal <= 1.2x) "
        f"{'OK' if stow_ratio <= 1.2 else 'MISSED'}"
    )
    print(f"  WADO-RS: ours / curl = {wado_ratio:.2f}x")
