"""``dcm-service``: the command-line interface (see :mod:`.app`)."""

from __future__ import annotations

from .app import main

__all__ = ["main"]
