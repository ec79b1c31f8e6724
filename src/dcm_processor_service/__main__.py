"""``python -m dcm_processor_service``: the same as ``dcm-service`` (useful when the
virtual environment's ``bin`` folder is not on ``PATH``)."""

from __future__ import annotations

import sys

from .cli import main

sys.exit(main())
