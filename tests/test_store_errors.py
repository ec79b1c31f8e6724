"""Store selection and opening errors: unknown provider, missing driver, bad paths."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from dcm_processor_service import (
    InvalidInputError,
    MissingDependencyError,
    StoreUnavailableError,
    UnknownProviderError,
    open_store,
)
from dcm_processor_service.store import registry
from dcm_processor_service.store.sqlite import sqlite_path


def test_unknown_provider_lists_the_known_ones(tmp_path: Path) -> None:
    with pytest.raises(UnknownProviderError, match="'cassandra'.*postgresql.*sqlite"):
        open_store("cassandra", str(tmp_path))


def test_missing_driver_names_the_extra(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # A provider whose driver module is not installed (a made-up name: every real driver
    # is installed in the test environment).
    monkeypatch.setitem(
        registry._PROVIDERS,
        "fakedb",
        registry.ProviderSpec("no_such_driver_pkg.backend", "X", "fakedb"),
    )
    with pytest.raises(
        MissingDependencyError, match=r"pip install 'dcm-processor-service\[fakedb\]'"
    ):
        open_store("fakedb", str(tmp_path))


def test_aliases_resolve(tmp_path: Path) -> None:
    assert registry._resolve("Postgres")[0] == "postgresql"
    assert registry._resolve("mongo")[0] == "mongodb"


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("sqlite:///abs/x.db", "/abs/x.db"),
        ("sqlite://rel/x.db", "rel/x.db"),
        ("/plain/y.db", "/plain/y.db"),
    ],
)
def test_sqlite_url_forms(url: str, expected: str) -> None:
    assert str(sqlite_path(url)) == expected


def test_sqlite_directory_url_uses_name(tmp_path: Path) -> None:
    assert sqlite_path(str(tmp_path), "jobs") == tmp_path / "jobs.sqlite3"


@pytest.mark.parametrize("url", ["", ":memory:", "sqlite://"])
def test_sqlite_rejects_unshareable_urls(url: str) -> None:
    with pytest.raises(InvalidInputError):
        sqlite_path(url)


def test_unreadable_db_path_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(StoreUnavailableError, match=str(blocker)):
        open_store("sqlite", str(blocker / "sub" / "db.sqlite3"))


def test_not_a_database_file(tmp_path: Path) -> None:
    bogus = tmp_path / "bogus.sqlite3"
    bogus.write_bytes(os.urandom(4096))
    with pytest.raises(StoreUnavailableError, match="bogus.sqlite3"):
        open_store("sqlite", str(bogus))
