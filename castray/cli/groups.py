"""``castray groups ...``: named groups of nodes to multicast to."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from castray.cli.options import DEFAULT_SERVER, JsonOption, ServerOption, TokenOption
from castray.cli.output import out, print_json_or
from castray.client import Client

app = typer.Typer(help="Named groups of nodes to multicast to.", no_args_is_help=True)


@app.command("list")
def groups_list(
    server: ServerOption = DEFAULT_SERVER, token: TokenOption = None, json_out: JsonOption = False
) -> None:
    """List the groups and their members."""
    with Client(server, token) as client:
        listed = client.groups()
    if json_out:
        out.print_json(json.dumps([g.model_dump(mode="json") for g in listed]))
        return
    for g in listed:
        out.print(f"[bold]{g.name}[/]: {', '.join(g.members)}", highlight=False)
    if not listed:
        out.print("no groups; create one with 'castray groups create NAME NODE...'")


@app.command("create")
def groups_create(
    name: Annotated[str, typer.Argument(help="The group's name.")],
    members: Annotated[list[str], typer.Argument(help="Its nodes.")],
    server: ServerOption = DEFAULT_SERVER,
    token: TokenOption = None,
    json_out: JsonOption = False,
) -> None:
    """Create a group."""
    _save_group(name, members, server, token, json_out, replace=False)


@app.command("set")
def groups_set(
    name: Annotated[str, typer.Argument(help="The group's name.")],
    members: Annotated[list[str], typer.Argument(help="Its nodes, replacing the old ones.")],
    server: ServerOption = DEFAULT_SERVER,
    token: TokenOption = None,
    json_out: JsonOption = False,
) -> None:
    """Replace a group's members."""
    _save_group(name, members, server, token, json_out, replace=True)


@app.command("delete")
def groups_delete(
    name: Annotated[str, typer.Argument(help="The group's name.")],
    server: ServerOption = DEFAULT_SERVER,
    token: TokenOption = None,
) -> None:
    """Delete a group (its nodes stay)."""
    with Client(server, token) as client:
        client.delete_group(name)
    out.print(f"deleted group {name}", highlight=False)


def _save_group(
    name: str, members: list[str], server: str, token: str | None, json_out: bool, replace: bool
) -> None:
    with Client(server, token) as client:
        group = client.save_group(name, members, replace=replace)
    print_json_or(json_out, group.model_dump_json(), f"{group.name}: {', '.join(group.members)}")
