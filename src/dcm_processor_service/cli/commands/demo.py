"""``dcm-service demo`` (the README's main job in one go) and ``dcm-service demo-data``
(a synthetic CT series)."""

from __future__ import annotations

from pathlib import Path

import click

from ..console import err, out, print_json
from ..options import CliState, pass_state, peer_address_option, peer_option, uses_store
from .run import execute_run

__all__ = ["demo", "demo_data"]


@click.command("demo-data")
@click.argument("out_dir", metavar="OUT", type=click.Path(file_okay=False))
@click.option("--slices", default=32, show_default=True, help="Slices per series.")
@click.option("--size", default=128, show_default=True, help="Rows and columns per slice.")
@click.option(
    "--patients",
    default=1,
    show_default=True,
    help="Patients (one series each, patient-N folders).",
)
@click.option("--seed", default=0, show_default=True, help="Noise seed.")
@pass_state
def demo_data(
    state: CliState, out_dir: str, slices: int, size: int, patients: int, seed: int
) -> int:
    """Write a synthetic CT series (a bright sphere in a water cylinder) to OUT."""
    from ...runner.sample_data import make_sample_data

    if slices < 1 or size < 8 or patients < 1:
        raise click.BadParameter("need --slices >= 1, --size >= 8, --patients >= 1")
    paths = make_sample_data(out_dir, patients=patients, slices=slices, size=size, seed=seed)
    if state.json:
        print_json({"out": str(Path(out_dir).resolve()), "files": [str(p) for p in paths]})
    else:
        out(
            f"wrote {len(paths)} DICOM file(s) ({patients} patient(s), {slices} x {size}x{size}) to {out_dir}"
        )
    return 0


@click.command()
@click.option(
    "--out",
    "out_dir",
    default="demo-output",
    show_default=True,
    type=click.Path(file_okay=False),
    help="Folder for input/ (sample data) and results/ (exported outputs).",
)
@click.option(
    "--service",
    "service_dir",
    default=None,
    type=click.Path(exists=True),
    help="The service to run (default: the example threshold-service bundled with the package).",
)
@peer_option("Send the results to this peer of the store.")
@peer_address_option("Send the results to this DICOM node.")
@click.option(
    "--keep-session",
    is_flag=True,
    help="Keep the session in the store (dcm-service sessions show).",
)
@uses_store
@pass_state
def demo(
    state: CliState,
    out_dir: str,
    service_dir: str | None,
    peer: str | None,
    peer_address: str | None,
    keep_session: bool,
) -> int:
    """The README's main job in one go: generate a synthetic CT into OUT/input, run
    the example threshold service on it (embedded store), export the results to
    OUT/results, and print the summary."""
    from ...bundled import example_service
    from ...runner.manifest import load_manifest
    from ...runner.sample_data import make_sample_data

    service = Path(service_dir) if service_dir else example_service()
    out_path = Path(out_dir)
    input_dir, results_dir = out_path / "input", out_path / "results"
    for old in input_dir.glob("CT_*.dcm") if input_dir.is_dir() else ():
        old.unlink()
    paths = make_sample_data(input_dir)
    if not state.json:
        err(f"wrote a synthetic CT ({len(paths)} slices) to {input_dir}")
    manifest = load_manifest(service)
    code = execute_run(
        state,
        manifest,
        [str(input_dir)],
        params=(),
        peer=peer,
        peer_address=peer_address,
        output=str(results_dir),
        keep_session=keep_session,
        cleanup_on_failure=False,
        work_dir=None,
        expect_job="threshold",
    )
    if not state.json:
        command = f"dcm-service run {service} {input_dir} --output {results_dir}"
        err(f"\nsame run, step by step: {command}")
    return code
