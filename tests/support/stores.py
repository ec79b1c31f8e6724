"""Which storage providers the contract suite runs on, and how to make an empty one.

Each provider gets a brand-new empty store per test: SQLite a file in ``tmp_path``;
PostgreSQL a new database on the server the test session started.
"""

from __future__ import annotations

from pathlib import Path

import pytest

#: Providers of the contract suite (``pytest -k sqlite`` selects one).
PROVIDERS: list[str] = ["sqlite"]


def make_store(
    provider: str, tmp_path: Path, request: pytest.FixtureRequest
) -> tuple[str, str, str]:
    """(provider, url, name) of a fresh empty store."""
    if provider == "sqlite":
        return ("sqlite", str(tmp_path / "store"), "test")
    raise AssertionError(f"no test store recipe for provider {provider!r}")
