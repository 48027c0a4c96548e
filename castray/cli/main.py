"""The ``castray`` command: ``serve`` runs the service; the other commands talk to one."""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import sys
from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError
from rich.markup import escape

from castray.cli import clusters as cli_clusters
from castray.cli import groups as cli_groups
from castray.cli import lab as cli_lab
from castray.cli import pins as cli_pins
from castray.cli import transfers as cli_transfers
from castray.cli.options import DEFAULT_SERVER, JsonOption, ServerOption, TokenOption
from castray.cli.output import err, in_cli_words, out, print_table
from castray.client import Client
from castray.config import load_settings
from castray.errors import CastRayError
from castray.sizes import binary_size

app = typer.Typer(
    help="CastRay: move files and messages between the nodes of Ray clusters.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


@app.callback()
def _options(
    ca_cert: Annotated[
        Path | None,
        typer.Option(
            envvar="CASTRAY_CA_CERT",
            help="CA certificate of an https server (castray --ca-cert FILE COMMAND ...); "
            "without one, the system's trust store is used.",
        ),
    ] = None,
) -> None:
    """CastRay: move files and messages between the nodes of Ray clusters."""
    if ca_cert is not None:
        os.environ["CASTRAY_CA_CERT"] = str(ca_cert)  # read by every Client this run makes


app.add_typer(cli_clusters.app, name="clusters")
app.add_typer(cli_groups.app, name="groups")
app.add_typer(cli_lab.app, name="lab")
for command in (
    cli_transfers.send,
    cli_transfers.transfers,
    cli_transfers.cancel,
    cli_transfers.resume,
    cli_transfers.generate,
    cli_transfers.files,
    cli_pins.pin,
    cli_pins.pins,
    cli_pins.unpin,
):
    app.command()(command)
log = logging.getLogger("castray")


@app.command()
def serve(
    host: Annotated[
        str | None, typer.Option(help="Interface to bind (default: 127.0.0.1).")
    ] = None,
    port: Annotated[int | None, typer.Option(help="Port (default: 8000).")] = None,
    ray_address: Annotated[
        str | None,
        typer.Option(help="Home Ray cluster (auto, host:port, ray://...); none embeds one."),
    ] = None,
    data_dir: Annotated[Path | None, typer.Option(help="Storage, history and logs.")] = None,
    demo_nodes: Annotated[
        int | None, typer.Option(help="Add named endpoints node_1..node_N on the head node.")
    ] = None,
    config: Annotated[Path | None, typer.Option(help="TOML config file.")] = None,
    token: Annotated[
        str | None,
        typer.Option(
            help="Require this bearer token on every API call (visible to local users in ps: "
            "prefer --token-file)."
        ),
    ] = None,
    token_file: Annotated[
        Path | None,
        typer.Option(help="Read the API token from this file.", envvar="CASTRAY_TOKEN_FILE"),
    ] = None,
    demo_traffic: Annotated[
        bool | None,
        typer.Option("--demo-traffic", help="Endpoints send each other generated files."),
    ] = None,
    tls_cert: Annotated[
        Path | None, typer.Option(help="PEM certificate: serve HTTPS and wss:// (with --tls-key).")
    ] = None,
    tls_key: Annotated[Path | None, typer.Option(help="The PEM private key of --tls-cert.")] = None,
    log_format: Annotated[
        str | None, typer.Option(help="text (the default), or json: one object per line.")
    ] = None,
) -> None:
    """Run the CastRay service (API, web UI) over its home Ray cluster."""
    from castray.server import create_app
    from castray.server.logs import configure_logging
    from castray.server.runner import serve as serve_app

    try:
        settings = load_settings(
            config,
            host=host,
            port=port,
            ray_address=ray_address,
            data_dir=data_dir,
            demo_nodes=demo_nodes,
            token=token,
            token_file=token_file,
            demo_traffic=demo_traffic,
            tls_cert=tls_cert,
            tls_key=tls_key,
            log_format=log_format,
        )
    except ValidationError as exc:
        _fail(f"invalid settings: {exc}")
    configure_logging(settings.log_level, settings.log_format)
    if settings.token is None and not _is_loopback(settings.host):
        log.warning(
            "binding %s without a token: anyone who can reach this address can use the API; "
            "set --token-file or CASTRAY_TOKEN_FILE",
            settings.host,
        )
    serve_app(create_app(settings), settings)


@app.command()
def status(
    server: ServerOption = DEFAULT_SERVER, token: TokenOption = None, json_out: JsonOption = False
) -> None:
    """Show the clusters and endpoints of a running server."""
    with Client(server, token) as client:
        state = client.status()
    if json_out:
        out.print_json(state.model_dump_json())
        return
    for cluster in state.clusters:
        ray_info = cluster.ray
        where = (
            f"{ray_info.address}, Ray {ray_info.ray_version}, {ray_info.alive_nodes} node(s)"
            if ray_info
            else "-"
        )
        out.print(f"[bold]{cluster.name}[/] {cluster.status.value}: {where}")
    out.print(
        f"{state.active_nodes}/{state.total_nodes} endpoints alive; uptime {state.uptime:.0f} s"
    )


@app.command()
def nodes(
    server: ServerOption = DEFAULT_SERVER,
    token: TokenOption = None,
    json_out: JsonOption = False,
    external: Annotated[
        bool, typer.Option("--external", help="Only external clusters' nodes.")
    ] = False,
) -> None:
    """List the endpoints ("nodes") of a running server."""
    with Client(server, token) as client:
        listed = [n for n in client.nodes() if n.is_external or not external]
    if json_out:
        out.print_json(json.dumps([n.model_dump(mode="json") for n in listed]))
        return
    rows = [
        [
            node.id,
            node.cluster,
            node.address,
            node.status.value,
            node.kind.value,
            binary_size(node.counters.bytes_received),
            binary_size(node.counters.bytes_sent),
        ]
        for node in listed
    ]
    print_table(
        ["id", "cluster", "address", "status", "kind", "received", "sent"],
        rows,
        whole=(0, 3),
        drop=(4, 6, 5, 1, 2),
    )


@app.command()
def storage(
    server: ServerOption = DEFAULT_SERVER,
    token: TokenOption = None,
    json_out: JsonOption = False,
    sweep: Annotated[
        bool,
        typer.Option("--sweep", help="Sweep now by received_retention and storage_quota_bytes."),
    ] = False,
) -> None:
    """What each endpoint keeps of what it received, the limits, and the latest removals."""
    with Client(server, token) as client:
        report = client.sweep_storage() if sweep else client.storage()
    if json_out:
        out.print_json(report.model_dump_json())
        return
    rows = [
        [
            e.endpoint,
            e.cluster,
            str(e.files),
            binary_size(e.bytes),
            f"{e.oldest:%Y-%m-%d %H:%M}" if e.oldest else "-",
        ]
        for e in report.endpoints
    ]
    print_table(["endpoint", "cluster", "files", "size", "oldest (UTC)"], rows, whole=(0, 1))
    retention = f"{report.received_retention:g} s" if report.received_retention else "none"
    quota = binary_size(report.storage_quota_bytes) if report.storage_quota_bytes else "none"
    out.print(f"retention: {retention}; quota per endpoint: {quota}", highlight=False)
    if report.unreachable:
        err.print(f"could not ask: {', '.join(report.unreachable)}", highlight=False)
    for removal in report.removals[:10]:
        out.print(
            f"removed {removal.at:%Y-%m-%d %H:%M} {removal.endpoint}/{removal.name} "
            f"({binary_size(removal.size)}): {removal.reason}",
            highlight=False,
            markup=False,
        )


@app.command()
def demo(
    server: ServerOption = DEFAULT_SERVER,
    token: TokenOption = None,
    size: Annotated[str, typer.Option(help="Size of the generated demo file.")] = "10MB",
) -> None:
    """Discover and connect the external cluster Ray's own rule names (RAY_ADDRESS, else the
    last 'ray start', else the only one), then send a file to each of its nodes; with several
    clusters and nothing to tell them apart, connect and send nothing."""
    with Client(server, token) as client:
        found = client.discover_and_connect()
        out.print(f"[bold]1. discover[/]: {escape(found.message)}")
        if not found.success or found.cluster is None:
            raise typer.Exit(code=1)
        info = client.external_info()
        cli_clusters.print_connected([c for c in info.clusters if c.name == found.cluster])
        targets = sorted(
            n.id
            for n in info.external_nodes.values()
            if n.cluster == found.cluster and n.status.value == "alive"
        )
        out.print(f"[bold]2. external nodes[/]: {', '.join(targets) or 'none alive'}")
        if not targets:
            raise typer.Exit(code=1)
        source = _home_source(client)
        made = client.generate(size, "random", f"castray-demo-{size}.bin", overwrite=True)
        digest = made.blake3[:16]
        out.print(
            f"[bold]3. send[/] {escape(made.file)} ({made.size} B, BLAKE3 {digest}…) from {source}"
        )
        accepted = client.send(source, made.file, targets)
        done = client.wait(accepted.transfer_id)
        print_table(
            ["recipient", "status", "bytes", "path / error"],
            [
                [rid, state.status.value, str(state.bytes_done), state.path or state.error or ""]
                for rid, state in sorted(done.recipients.items())
            ],
            whole=(0, 3),
        )
        verified = done.file.blake3 == made.blake3 and done.status.value == "completed"
        out.print(
            f"[bold]4. result[/]: {done.status.value}; every copy BLAKE3-verified: {verified}"
        )
        if not verified:
            raise typer.Exit(code=1)


def _home_source(client: Client) -> str:
    for node in client.nodes():
        if not node.is_external and node.status.value == "alive":
            return node.id
    raise CastRayError("no alive home node to send from")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _fail(message: str) -> typer.Exit:
    err.print(f"[red]error:[/] {escape(message)}", highlight=False)
    raise typer.Exit(code=1)


def main() -> None:
    """Entry point: every CastRayError becomes one line on stderr and exit code 1."""
    try:
        app()
    except CastRayError as exc:
        err.print(f"[red]error:[/] {escape(in_cli_words(exc.message))}", highlight=False)
        sys.exit(1)
