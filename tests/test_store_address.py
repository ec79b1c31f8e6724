"""The store address: one value, one SQLite path rule, for the CLI, the runner and jobs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from dcm_processor_service import ConfigError, InvalidInputError
from dcm_processor_service._safe_text import mask_secrets
from dcm_processor_service.store.address import StoreAddress, sqlite_location
from dcm_processor_service.store.sqlite import sqlite_path


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("sqlite:///{tmp}/abs.db", "{tmp}/abs.db"),
        ("sqlite://rel/x.db", "{tmp}/rel/x.db"),
        ("sqlite:rel/x.db", "{tmp}/rel/x.db"),
        ("rel/x.db", "{tmp}/rel/x.db"),
        ("./rel/../x.db", "{tmp}/x.db"),
        ("~/home.db", "{home}/home.db"),
        ("{tmp}/plain.db", "{tmp}/plain.db"),
        ("folder/", "{tmp}/folder/"),
        ("sqlite://folder/", "{tmp}/folder/"),
    ],
)
def test_sqlite_urls_become_one_absolute_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, url: str, expected: str
) -> None:
    home = tmp_path / "home"
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(tmp_path)
    fill = {"tmp": str(tmp_path.resolve()), "home": str(home)}
    address = StoreAddress.from_options("sqlite", url.format(**fill))
    assert address.url == expected.format(**fill).replace("/", os.sep)
    assert address.provider == "sqlite" and address.name == "dcm-processor"
    # the store opens the file the address names, from any working directory
    monkeypatch.chdir(home.parent.parent)
    named = sqlite_path(address.url, address.name)
    assert named.is_absolute()
    assert named == (
        Path(address.url) / "dcm-processor.sqlite3"
        if address.url.endswith(os.sep)
        else Path(address.url)
    )


def test_folder_is_the_embedded_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    address = StoreAddress.from_options(folder=".dcm-service")
    assert address == StoreAddress(
        "sqlite", str(tmp_path.resolve() / ".dcm-service") + os.sep, "dcm-processor"
    )
    assert StoreAddress.from_options(None, None, "jobs", folder="x").name == "jobs"
    # a URL wins over the folder
    assert StoreAddress.from_options(None, "y.db", folder="x").url == str(
        tmp_path.resolve() / "y.db"
    )


def test_other_providers_keep_their_url_and_name() -> None:
    address = StoreAddress.from_options("postgresql", "postgresql://dcm@127.0.0.1:5432/dcm")
    assert address == StoreAddress("postgresql", "postgresql://dcm@127.0.0.1:5432/dcm", None)
    assert StoreAddress.from_options("mongodb", "mongodb://h/db", "other").name == "other"


def test_password_is_masked_from_the_start() -> None:
    url = "postgresql://dcm:s3cret-pw-address@127.0.0.1/dcm"
    address = StoreAddress.from_options("postgresql", url)
    assert "s3cret-pw-address" not in repr(address)
    assert "s3cret-pw-address" not in mask_secrets(f"failed to reach {address.url}")


@pytest.mark.parametrize(
    ("provider", "url", "error", "match"),
    [
        ("postgresql", None, ConfigError, "'postgresql' needs a store URL"),
        ("mongodb", "", ConfigError, "'mongodb' needs a store URL"),
        ("sqlite", None, ConfigError, "no store given"),
        ("sqlite", ":memory:", InvalidInputError, "in-memory database cannot be shared"),
        ("sqlite", "sqlite://", InvalidInputError, "in-memory database cannot be shared"),
    ],
)
def test_bad_addresses_are_clear_errors(
    provider: str, url: str | None, error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        StoreAddress.from_options(provider, url)


def test_sqlite_location_reports_a_folder() -> None:
    assert sqlite_location("sqlite:///srv/dcm/") == (Path("/srv/dcm"), True)
    assert sqlite_location("srv/x.db") == (Path("srv/x.db"), False)
