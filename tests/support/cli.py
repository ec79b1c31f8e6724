"""Running ``dcm-service`` in-process for tests."""

from __future__ import annotations

import json

import pytest

from dcm_processor_service.cli import main

__all__ = ["cli_json"]


def cli_json(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, object]:
    """Run ``dcm-service ARGS --json`` in this process: ``(exit code, parsed stdout)``."""
    capsys.readouterr()
    code = main([*args, "--json"])
    out = capsys.readouterr().out
    return code, json.loads(out) if out.strip() else None
