"""``dcm-service convert SOURCE TARGET``: DICOM series -> NIfTI, or NIfTI -> DICOM."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from ..console import out, print_json
from ..options import CliState, pass_state

__all__ = ["convert"]


def _is_nifti(path: str) -> bool:
    return path.lower().endswith((".nii", ".nii.gz"))


@click.command()
@click.argument("source", type=click.Path(exists=True))
@click.argument("target", type=click.Path())
@click.option(
    "--modality",
    default="CT",
    show_default=True,
    help="NIfTI -> DICOM: modality (CT, MR, else Secondary Capture).",
)
@click.option("--description", default="", help="NIfTI -> DICOM: SeriesDescription.")
@click.option(
    "--reference",
    default=None,
    type=click.Path(exists=True, dir_okay=False),
    help="NIfTI -> DICOM: a DICOM file whose patient and study the series joins.",
)
@pass_state
def convert(
    state: CliState,
    source: str,
    target: str,
    modality: str,
    description: str,
    reference: str | None,
) -> int:
    """Convert SOURCE to TARGET: a DICOM series (folder or files) to a NIfTI file
    (TARGET ends with .nii or .nii.gz; a JSON sidecar is written beside it), or a NIfTI
    file to a DICOM series in folder TARGET."""
    result: dict[str, Any]
    if _is_nifti(source):
        import nibabel as nib

        from ...imaging.derived import write_datasets
        from ...imaging.nifti_write import nifti_to_dicom

        datasets = nifti_to_dicom(nib.load(source), modality, description, ref_dcm=reference)
        written = write_datasets(datasets, target)
        result = {
            "source": source,
            "target": target,
            "files": len(written),
            "direction": "nifti-to-dicom",
        }
        text = f"wrote {len(written)} DICOM file(s) to {target}"
    else:
        if not _is_nifti(target):
            raise click.BadParameter(
                f"{target!r} - a DICOM series converts to a .nii or .nii.gz file",
                param_hint="TARGET",
            )
        from ...imaging.nifti_read import series_files_to_nifti

        nifti_path, json_path, _ = series_files_to_nifti(source, target)
        slices = json.loads(Path(json_path).read_text(encoding="utf-8")).get("Slices")
        result = {
            "source": source,
            "target": nifti_path,
            "sidecar": json_path,
            "slices": slices,
            "direction": "dicom-to-nifti",
        }
        text = f"wrote {nifti_path} ({slices} slices) and {json_path}"
    if state.json:
        print_json(result)
    else:
        out(text)
    return 0
