"""Files that ship inside the package, so a plain ``pip install`` can run the demo.

``threshold-service/`` is the complete example service (``dcm-service demo`` runs it;
the repository's ``examples/threshold-service`` is a link to this folder, so there is
one copy). It is package data, not an importable package: its folder name is not a
Python identifier, and the runner imports its ``registry`` and ``module`` folders the
way the platform does. The sample-data generator behind ``dcm-service demo-data`` is
:func:`dcm_processor_service.runner.sample_data.make_sample_data`.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["EXAMPLE_SERVICE_NAME", "example_service"]

#: The folder of the example service inside this package.
EXAMPLE_SERVICE_NAME = "threshold-service"


def example_service() -> Path:
    """The folder of the bundled example service (holds ``dcm-processor.json``).

    It is read in place from the installed package; copy it (``shutil.copytree``) to
    change it.
    """
    return Path(__file__).resolve().parent / EXAMPLE_SERVICE_NAME
