"""``python -m dcm_processor_service.cli``: the same as ``dcm-service``."""

from __future__ import annotations

import sys

from .app import main

sys.exit(main())
