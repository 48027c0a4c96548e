"""``castray clusters ...``: external clusters from the command line."""

from __future__ import annotations

from typing import Annotated

import typer

from castray.cli.options import DEFAULT_SERVER, JsonOption, ServerOption, TokenOption
from castray.cli.output import out, print_table
from castray.client import Client
from castray.models import ClusterInfo, DiscoveredCluster

app = typer.Typer(help="Discover, connect and disconnect external Ray clusters.")


@app.command()
def discover(
    server: ServerOption = DEFAULT_SERVER, token: TokenOption = None, json_out: JsonOption = False
) -> None:
    """List the Ray clusters running on this machine (connects nothing)."""
    with Client(server, token) as client:
        found = client.discover()
    if json_out:
        out.print_json(found.model_dump_json())
        return
    _print_discovered(found.clusters)
    out.print(f"({found.seconds * 1000:.0f} ms)")


@app.command()
def connect(
    address: Annotated[
        str, typer.Argument(help="Dashboard URL or host:port, GCS host:port, ray://")
    ],
    ray_token: Annotated[
        str | None,
        typer.Option(envvar="CASTRAY_RAY_TOKEN", help="Token of a Ray cluster with auth."),
    ] = None,
    server: ServerOption = DEFAULT_SERVER,
    token: TokenOption = None,
    json_out: JsonOption = False,
) -> None:
    """Connect an external cluster; its nodes become CastRay endpoints."""
    with Client(server, token) as client:
        result = client.connect(address, ray_token)
    if json_out:
        out.print_json(result.model_dump_json())
        return
    out.print(result.message, markup=False)
    for node in result.external_nodes.values():
        out.print(f"  {node.id}  {node.address}  {node.status.value}")


@app.command()
def disconnect(
    cluster: Annotated[
        str | None, typer.Argument(help="Name or address; all when omitted.")
    ] = None,
    server: ServerOption = DEFAULT_SERVER,
    token: TokenOption = None,
) -> None:
    """Disconnect one external cluster, or all of them."""
    with Client(server, token) as client:
        out.print(client.disconnect(cluster).message, markup=False)


@app.command()
def info(
    server: ServerOption = DEFAULT_SERVER, token: TokenOption = None, json_out: JsonOption = False
) -> None:
    """Show the connected external clusters and their nodes."""
    with Client(server, token) as client:
        state = client.external_info()
    if json_out:
        out.print_json(state.model_dump_json())
        return
    if not state.clusters:
        out.print("no external cluster is connected; try 'castray clusters discover'")
        return
    print_connected(state.clusters)
    out.print(f"{len(state.external_nodes)} external node(s)")


def _print_discovered(clusters: list[DiscoveredCluster]) -> None:
    rows = [
        [
            c.gcs_address,
            c.dashboard_url or "-",
            c.ray_client_address or "-",
            c.ray_version or "?",
            c.owner or "?",
            c.started_at.astimezone().strftime("%H:%M:%S") if c.started_at else "?",
            "?" if c.alive_nodes is None else str(c.alive_nodes),
            {True: "token", False: "none", None: "?"}[c.auth_required],
            "yes" if c.connected else "no",
            c.detail or "",
        ]
        for c in clusters
    ]
    headers = ["GCS", "dashboard", "Ray Client", "Ray", "user", "started", "nodes", "auth"]
    print_table([*headers, "connected", "note"], rows, whole=(0, 1, 2))


def print_connected(clusters: list[ClusterInfo]) -> None:
    rows = [
        [
            c.name,
            c.status.value,
            c.ray.address if c.ray else "-",
            (c.ray.dashboard_url or "-") if c.ray else "-",
            str(c.ray.alive_nodes) if c.ray else "-",
        ]
        for c in clusters
    ]
    print_table(["cluster", "status", "GCS", "dashboard", "nodes"], rows, whole=(0, 2, 3))
