"""Shared fixtures: a clean runtime context per test, and stores of every provider."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from dcm_processor_service import close_stores
from dcm_processor_service.store import Store
from support.postgres import PostgresServer, require_pg_bin, sanitize_db_name
from support.stores import PROVIDERS, make_store

#: The platform cross-checks run only inside the platform's environment, where
#: tests/test_mongodb_platform.py starts them with DCM_PLATFORM_CHECKS=1.
collect_ignore = [] if os.environ.get("DCM_PLATFORM_CHECKS") == "1" else ["platform_checks"]


@pytest.fixture(autouse=True)
def _clean_context(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No DCM-PROCESSOR-SERVICE-* variable (either spelling) leaks into a test."""
    for key in list(os.environ):
        if key.replace("_", "-").startswith("DCM-PROCESSOR-SERVICE-"):
            monkeypatch.delenv(key)
    yield
    close_stores()


@pytest.fixture(params=PROVIDERS)
def provider(request: pytest.FixtureRequest) -> str:
    """Each storage provider name in turn (the contract suite runs on all)."""
    return str(request.param)


@pytest.fixture
def store_url(provider: str, tmp_path, request: pytest.FixtureRequest) -> tuple[str, str, str]:
    """(provider, url, name) of a fresh, empty store of ``provider``."""
    return make_store(provider, tmp_path, request)


@pytest.fixture
def store(store_url: tuple[str, str, str]) -> Iterator[Store]:
    """A fresh store of each provider."""
    from dcm_processor_service.store import open_store

    s = open_store(*store_url)
    yield s
    s.close()


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A throwaway PostgreSQL cluster on a free loopback port for the whole test
    session (skipped without PostgreSQL binaries - a failure instead when CI=true)."""
    server = PostgresServer(require_pg_bin()).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def pg_db(postgres_server: PostgresServer, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh empty database on the session's server; yields its URL."""
    name = postgres_server.create_database(sanitize_db_name(request.node.name))
    yield postgres_server.url(name)
    postgres_server.drop_database(name)


@pytest.fixture(scope="module")
def restartable_server() -> Iterator[PostgresServer]:
    """A PostgreSQL server of the test module's own: its tests restart it."""
    server = PostgresServer(require_pg_bin()).start()
    try:
        yield server
    finally:
        server.stop()
