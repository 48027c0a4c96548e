"""``castray pin``, ``castray pins``, ``castray unpin``: library files kept on every node of a
set, present and future."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from castray.cli.library import library_name
from castray.cli.options import DEFAULT_SERVER, JsonOption, ServerOption, TokenOption
from castray.cli.output import out, print_json_or, print_table
from castray.client import Client
from castray.errors import FileMissing, InvalidRequest
from castray.models import (
    Pin,
    PinClusters,
    PinEndpoints,
    PinGroup,
    PinNodes,
    describe_pin_nodes,
)


def pin(
    file: Annotated[
        str,
        typer.Argument(
            help="A library file (or folder, NAME/), or a file or folder on this machine: "
            "uploaded first, unless the library has it already."
        ),
    ],
    all_nodes: Annotated[
        bool, typer.Option("--all", help="Every node of every connected cluster.")
    ] = False,
    group: Annotated[str | None, typer.Option("--group", help="A group's members.")] = None,
    to: Annotated[
        str | None, typer.Option("--to", help="Endpoints, comma-separated: A,B,C.")
    ] = None,
    cluster: Annotated[
        list[str] | None, typer.Option("--cluster", help="Every node of a cluster (repeatable).")
    ] = None,
    server: ServerOption = DEFAULT_SERVER,
    token: TokenOption = None,
    json_out: JsonOption = False,
) -> None:
    """Keep a library file on these nodes, and on every node that joins them: CastRay sends
    it to each node that lacks it, from the nearest node that has it, and again when a copy
    goes or the file gets a new version."""
    nodes = _nodes(all_nodes, group, to, cluster)
    with Client(server, token) as client:
        name = library_name(client, file, quiet=json_out)
        try:
            made = client.pin(name, nodes)
        except FileMissing as exc:
            if Path(file).expanduser().exists():
                raise
            raise FileMissing(
                f"no file {file!r} on this machine, nor of that name in the server's library "
                "('castray files' lists it)"
            ) from exc
    print_json_or(
        json_out,
        made.model_dump_json(),
        f"pin {made.id}: {made.file} on {describe_pin_nodes(made.nodes)}; {_coverage(made)} "
        f"(castray pins shows each node)",
    )


def pins(
    pin_id: Annotated[str | None, typer.Argument(help="One pin: each node's copy.")] = None,
    verify: Annotated[
        bool, typer.Option("--verify", help="Read every copy's BLAKE3 from disk now (with ID).")
    ] = False,
    server: ServerOption = DEFAULT_SERVER,
    token: TokenOption = None,
    json_out: JsonOption = False,
) -> None:
    """The pins and their coverage; with an ID, each node's copy."""
    with Client(server, token) as client:
        if pin_id is None:
            listed = client.pins()
        else:
            listed = [client.verify_pin(pin_id) if verify else client.get_pin(pin_id)]
    if json_out:
        out.print_json(json.dumps([p.model_dump(mode="json") for p in listed]))
        return
    if pin_id is not None:
        (one,) = listed
        nodes = describe_pin_nodes(one.nodes)
        out.print(f"pin {one.id}: {one.file} on {nodes}; {_coverage(one)}", highlight=False)
        if one.problem:
            out.print(f"problem: {one.problem}", highlight=False)
        rows = [
            [node, copy.status.value, copy.error or copy.path or ""]
            for node, copy in sorted(one.copies.items())
        ]
        print_table(["node", "copy", "path or why"], rows, whole=(0, 1))
        return
    if not listed:
        out.print("no pins; pin a library file with 'castray pin FILE --all'")
        return
    rows = [
        [p.id, p.file, describe_pin_nodes(p.nodes), _coverage(p), p.problem or ""] for p in listed
    ]
    print_table(["pin", "file", "nodes", "coverage", "problem"], rows, whole=(0, 4))


def unpin(
    pin_id: Annotated[str, typer.Argument(help="The pin's id (castray pins lists them).")],
    remove_copies: Annotated[
        bool, typer.Option("--remove-copies", help="Remove the copies the pin made, too.")
    ] = False,
    server: ServerOption = DEFAULT_SERVER,
    token: TokenOption = None,
) -> None:
    """Stop keeping a file on its nodes; its copies stay unless --remove-copies."""
    with Client(server, token) as client:
        client.unpin(pin_id, remove_copies)
    kept = "its copies removed" if remove_copies else "its copies stay where they are"
    out.print(f"unpinned {pin_id}; {kept}", highlight=False)


def _nodes(
    all_nodes: bool, group: str | None, to: str | None, cluster: list[str] | None
) -> PinNodes:
    chosen = [bool(all_nodes), group is not None, to is not None, bool(cluster)]
    if sum(chosen) != 1:
        raise InvalidRequest("say where to keep the file: one of --all, --group, --to, --cluster")
    if group is not None:
        return PinGroup(group=group)
    if to is not None:
        return PinEndpoints(endpoints=[e.strip() for e in to.split(",") if e.strip()])
    if cluster:
        return PinClusters(clusters=cluster)
    return "all"


def _coverage(pin: Pin) -> str:
    c = pin.coverage
    words = [f"{c.verified} of {c.nodes} nodes verified"]
    for count, what in ((c.receiving, "receiving"), (c.pending, "pending"), (c.failed, "failed")):
        if count:
            words.append(f"{count} {what}")
    if c.waiting:
        words.append(f"{c.waiting} waiting for their node")
    return ", ".join(words)
