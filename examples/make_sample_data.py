"""Write a small synthetic CT series (a bright sphere in a water cylinder) for trying
services out - the same data as ``dcm-service demo-data OUT``.

Usage: python examples/make_sample_data.py OUT [--slices 32] [--size 128] [--patients 1]
"""

from __future__ import annotations

import argparse

from dcm_processor_service.runner.sample_data import make_sample_data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", help="output folder")
    parser.add_argument("--slices", type=int, default=32)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--patients", type=int, default=1)
    args = parser.parse_args()
    paths = make_sample_data(args.out, patients=args.patients, slices=args.slices, size=args.size)
    print(f"wrote {len(paths)} DICOM file(s) to {args.out}")


if __name__ == "__main__":
    main()
