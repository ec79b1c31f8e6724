"""``dcm-service peers add|list|remove|echo``: the store's DICOM peers."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

from ..._errors import NotFoundError
from ..console import out, print_json
from ..formatting import table
from ..options import CliState, pass_state, uses_store

__all__ = ["peers", "peers_add", "peers_echo", "peers_list", "peers_remove"]

F = TypeVar("F", bound=Callable[..., Any])


@click.group()
def peers() -> None:
    """Add, list, remove and test peers (DICOM nodes, usually a PACS)."""


def _file_option(name: str, help_text: str) -> Callable[[F], F]:
    """An option naming a file that must exist."""
    return click.option(
        name, default=None, type=click.Path(exists=True, dir_okay=False), help=help_text
    )


@peers.command("add")
@click.argument("name")
@click.argument("aet", required=False)
@click.argument("host", required=False)
@click.argument("port", type=int, required=False)
@click.option(
    "--dicomweb",
    "dicomweb_url",
    metavar="URL",
    default=None,
    help="DICOMweb root of the peer (e.g. https://pacs/dicom-web): send by STOW-RS, "
    "query/retrieve by QIDO-RS/WADO-RS. AET HOST PORT may then be left out.",
)
@click.option(
    "--auth",
    type=click.Choice(["none", "basic", "bearer", "cert"]),
    default=None,
    help="DICOMweb authentication (default: basic with --username, else none).",
)
@click.option("--username", default=None, help="DICOMweb user name (basic auth).")
@click.option(
    "--secret",
    "secret_ref",
    metavar="REF",
    default=None,
    help="Where the DICOMweb password or token is: env:VARIABLE or file:/path "
    "(a reference: the secret itself is never stored).",
)
@_file_option("--web-cert-file", "DICOMweb client certificate (auth cert, or mutual TLS).")
@_file_option("--web-key-file", "Its private key.")
@_file_option("--web-ca-file", "CA that signed the DICOMweb server's certificate.")
@click.option("--tls", is_flag=True, help="Use TLS (DIMSE).")
@_file_option("--cert-file", "Our client certificate (mutual TLS).")
@_file_option("--key-file", "Its private key.")
@_file_option("--ca-file", "CA that signed the peer's certificate.")
@click.option(
    "--allow-aet", multiple=True, help="AE title allowed to send to us as this peer (repeatable)."
)
@click.option(
    "--allow-ip", multiple=True, help="IP address allowed to send to us as this peer (repeatable)."
)
@uses_store
@pass_state
def peers_add(
    state: CliState,
    name: str,
    aet: str,
    host: str,
    port: int,
    tls: bool,
    cert_file: str | None,
    key_file: str | None,
    ca_file: str | None,
    allow_aet: tuple[str, ...],
    allow_ip: tuple[str, ...],
    dicomweb_url: str | None,
    auth: str | None,
    username: str | None,
    secret_ref: str | None,
    web_cert_file: str | None,
    web_key_file: str | None,
    web_ca_file: str | None,
) -> int:
    """Add peer NAME (AE title AET at HOST:PORT, and/or a DICOMweb endpoint), or
    update the peer of that name."""
    from ...peers import add_peer
    from ...store.web_endpoint import DicomWebEndpoint

    endpoint = None
    web_options = (auth, username, secret_ref, web_cert_file, web_key_file, web_ca_file)
    if dicomweb_url is not None:
        kind = auth or ("basic" if username else "bearer" if secret_ref else "none")
        if kind == "none" and web_cert_file:
            kind = "cert"
        endpoint = DicomWebEndpoint(
            dicomweb_url,
            auth=kind,
            username=username,
            secret=secret_ref,
            cert_file=web_cert_file,
            key_file=web_key_file,
            ca_file=web_ca_file,
        )
    elif any(v is not None for v in web_options):
        raise click.UsageError("--auth/--username/--secret/--web-* need --dicomweb URL")
    if endpoint is None and None in (aet, host, port):
        raise click.UsageError("give AET HOST PORT, or --dicomweb URL")
    with state.open_store() as store:
        saved = add_peer(
            name,
            aet,
            host,
            port,
            dicomweb=endpoint,
            tls=tls,
            cert_file=cert_file,
            key_file=key_file,
            ca_file=ca_file,
            whitelist_aet=allow_aet,
            whitelist_ip=allow_ip,
            store=store,
        )
    if state.json:
        print_json(saved.to_dict())
    else:
        web = f", DICOMweb {saved.dicomweb.url} ({saved.dicomweb.auth})" if saved.dicomweb else ""
        out(
            f"peer {saved.name}: {saved.aet}@{saved.host}:{saved.port}"
            f"{' (TLS)' if saved.tls else ''}{web}"
        )
    return 0


@peers.command("list")
@uses_store
@pass_state
def peers_list(state: CliState) -> int:
    """List the peers of the store."""
    with state.open_store() as store:
        items = store.list_peers()
    if state.json:
        print_json([p.to_dict() for p in items])
    elif not items:
        out("no peers (add one: dcm-service peers add NAME AET HOST PORT)")
    else:
        out(
            table(
                [
                    [
                        p.name,
                        p.aet,
                        p.host,
                        p.port,
                        "yes" if p.tls else "",
                        f"{p.dicomweb.url} ({p.dicomweb.auth})" if p.dicomweb else "",
                        p.id,
                    ]
                    for p in items
                ],
                ["NAME", "AET", "HOST", "PORT", "TLS", "DICOMWEB", "ID"],
            )
        )
    return 0


@peers.command("remove")
@click.argument("name")
@uses_store
@pass_state
def peers_remove(state: CliState, name: str) -> int:
    """Remove peer NAME."""
    with state.open_store() as store:
        removed = store.remove_peer(name)
    if not removed:
        raise NotFoundError(f"peer {name!r} not found")
    if state.json:
        print_json({"removed": name})
    else:
        out(f"peer {name} removed")
    return 0


@peers.command("echo")
@click.argument("name")
@click.option(
    "--dimse", "force_dimse", is_flag=True, help="C-ECHO a peer that also has a DICOMweb endpoint."
)
@uses_store
@pass_state
def peers_echo(state: CliState, name: str, force_dimse: bool) -> int:
    """Check that peer NAME answers: DICOM C-ECHO, or for a DICOMweb peer a QIDO-RS
    probe (GET /studies?limit=1, with its credentials)."""
    with state.open_store() as store:
        peer = store.get_peer(name)
    from ...net.peer_sender import sender_for_peer

    sender = sender_for_peer(peer, protocol="dimse" if force_dimse else None)
    result = sender.send_echo()
    probe = "C-ECHO" if force_dimse or peer.dicomweb is None else "QIDO-RS probe"
    ok = bool(result)
    if state.json:
        print_json(
            {
                "peer": peer.name,
                "ok": ok,
                "status": result.status,
                "latency_s": round(result.latency_s, 4),
                "total_s": round(result.total_s, 4),
                "error": result.error,
            }
        )
    else:
        text = "success" if ok else f"failed ({result.error})"
        out(f"{probe} {peer.name} ({result.peer}): {text} in {result.total_s * 1000:.0f} ms")
    return 0 if ok else 1
