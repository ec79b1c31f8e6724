"""Peer records: validation, administration, lookup by name / session peer."""

from __future__ import annotations

from pathlib import Path

import pytest

import dcm_processor_service as dps
from dcm_processor_service import (
    InvalidInputError,
    MissingContextError,
    NotFoundError,
    Peer,
    use_context,
)


@pytest.fixture
def ctx(store_url):
    provider, url, name = store_url
    with use_context(db_provider=provider, db_url=url, db_name=name, session_id="s") as c:
        yield c


def test_add_get_list_remove(ctx) -> None:
    saved = dps.add_peer(
        "pacs", "PACS", "127.0.0.1", 11112, whitelist_aet=["MODALITY"], whitelist_ip=["127.0.0.1"]
    )
    assert dps.get_peer("pacs") == saved
    assert dps.get_peer(saved.id) == saved  # type: ignore[arg-type]
    assert saved.to_dict()["whitelist_aet"] == ["MODALITY"]
    dps.add_peer("pacs", "PACS2", "localhost", 104)
    assert dps.get_peer("pacs").aet == "PACS2"
    assert [p.name for p in dps.list_peers()] == ["pacs"]
    assert dps.remove_peer("pacs") is True
    with pytest.raises(NotFoundError, match="'pacs'"):
        dps.get_peer("pacs")


def test_session_peer_by_context(ctx) -> None:
    saved = dps.add_peer("origin", "ORIGIN", "127.0.0.1", 4242)
    assert dps.get_peer() is None  # the session has no peer (as the original answered)
    with (
        use_context(ctx.replace(session_id=None)),
        pytest.raises(MissingContextError, match="SESSION-ID"),
    ):
        dps.get_peer()  # not in a job at all
    with use_context(ctx.replace(peer_id=saved.id)):
        assert dps.get_peer() == saved
    with use_context(ctx.replace(peer_id="origin")):
        assert dps.get_peer().aet == "ORIGIN"


def test_get_dicom_sender_without_session_peer_returns_none(ctx) -> None:
    assert dps.get_dicom_sender() is None


def test_get_dicom_sender_unknown_name_raises(ctx) -> None:
    with pytest.raises(NotFoundError, match="'nowhere'"):
        dps.get_dicom_sender("nowhere")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"aet": "A" * 17}, "16 characters"),
        ({"aet": "   "}, "empty"),
        ({"aet": "BACK\\SLASH"}, "backslash"),
        ({"aet": "TAB\tAE"}, "printable"),
        ({"port": 0}, "1-65535"),
        ({"port": 70000}, "1-65535"),
        ({"port": "abc"}, "integer"),
        ({"host": ""}, "host"),
        ({"name": "a/b"}, "path separator"),
        ({"tls": True, "ca_file": "/no/such/ca.pem"}, "ca_file.*does not exist"),
    ],
)
def test_invalid_peers_are_rejected(kwargs, match) -> None:
    values = {"name": "p", "aet": "AET", "host": "127.0.0.1", "port": 104, **kwargs}
    with pytest.raises(InvalidInputError, match=match):
        Peer(**values)


def test_tls_needs_cert_and_key_together(tmp_path: Path) -> None:
    cert = tmp_path / "c.pem"
    cert.write_text("x")
    with pytest.raises(InvalidInputError, match="together"):
        Peer("p", "AET", "h", 1, tls=True, cert_file=str(cert))
    ok = Peer(
        "p", "AET", "h", 1, tls=True, cert_file=str(cert), key_file=str(cert), ca_file=str(cert)
    )
    assert ok.tls and ok.ca_file == str(cert)


def test_ae_title_is_stripped() -> None:
    assert Peer("p", " PACS ", "h", 104).aet == "PACS"
