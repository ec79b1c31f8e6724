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
@click.argument("aet")
@click.argument("host")
@click.argument("port", type=int)
@click.option("--tls", is_flag=True, help="Use TLS.")
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
) -> int:
    """Add peer NAME (AE title AET at HOST:PORT), or update the peer of that name."""
    from ...peers import add_peer

    with state.open_store() as store:
        saved = add_peer(
            name,
            aet,
            host,
            port,
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
        out(
            f"peer {saved.name}: {saved.aet}@{saved.host}:{saved.port}{' (TLS)' if saved.tls else ''}"
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
                [[p.name, p.aet, p.host, p.port, "yes" if p.tls else "", p.id] for p in items],
                ["NAME", "AET", "HOST", "PORT", "TLS", "ID"],
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
@uses_store
@pass_state
def peers_echo(state: CliState, name: str) -> int:
    """Check that peer NAME answers (DICOM C-ECHO)."""
    with state.open_store() as store:
        peer = store.get_peer(name)
    from ...net.sender import DicomSender

    result = DicomSender.for_peer(peer).send_echo()
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
        out(f"C-ECHO {peer.name} ({result.peer}): {text} in {result.total_s * 1000:.0f} ms")
    return 0 if ok else 1
