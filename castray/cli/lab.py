"""``castray lab ...``: a many-host lab on this machine (Linux, root). See README's "The lab"."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer

from castray.cli.output import err, out, print_table
from castray.lab import lab as lab_ops
from castray.lab.network import NetworkError, link_is_up
from castray.lab.processes import LabProcessError
from castray.lab.shaping import LinkShape, ShapeError, parse_delay, parse_loss, parse_rate
from castray.lab.state import DEFAULT_SUBNET, HostState, LabState

app = typer.Typer(
    help="A many-host lab on this machine: network namespaces on one switch, shaped links, "
    "a Ray node per host, CastRay on host 1. Linux, root.",
    no_args_is_help=True,
)
NameOption = Annotated[str, typer.Option("--name", help="Which lab (several can run at once).")]
HostArgument = Annotated[str, typer.Argument(help="A host: 2, h2 or its address.")]
DEFAULT_NAME = "lab"


def _fail(exc: Exception) -> typer.Exit:
    err.print(f"Error: {exc}", markup=False, highlight=False)
    return typer.Exit(1)


_ERRORS = (lab_ops.LabError, NetworkError, LabProcessError, ShapeError)


@app.command()
def up(
    hosts: Annotated[int, typer.Option(min=2, max=64, help="How many hosts.")] = 3,
    rate: Annotated[str, typer.Option(help="Each host link's rate, each way.")] = "100mbit",
    delay: Annotated[str, typer.Option(help="Added to each packet on each link (netem).")] = "0ms",
    loss: Annotated[str, typer.Option(help="Packets dropped on each link, each way.")] = "0%",
    subnet: Annotated[str, typer.Option(help="Inside 198.18.0.0/15.")] = DEFAULT_SUBNET,
    port: Annotated[int, typer.Option(help="CastRay's port on 127.0.0.1.")] = 8000,
    object_store_mb: Annotated[int, typer.Option(help="Ray object store per host, MiB.")] = 512,
    server_config: Annotated[
        Path | None,
        typer.Option(help="A TOML settings file for the lab's CastRay (as serve --config)."),
    ] = None,
    name: NameOption = DEFAULT_NAME,
) -> None:
    """Make the hosts, start a Ray node in each and CastRay in host 1."""
    try:
        shape = LinkShape.parse(rate, delay, loss)
        lab = lab_ops.up(
            name,
            hosts,
            shape,
            subnet,
            port,
            object_store_mb * 1024 * 1024,
            say=out.print,
            server_config=server_config,
        )
    except _ERRORS as exc:
        raise _fail(exc) from None
    out.print(f"lab {name!r} is up: CastRay at {lab.url} (UI {lab.url}/ui)")
    out.print(f"try: castray nodes --server {lab.url}; castray lab down --name {name}")


@app.command()
def down(name: NameOption = DEFAULT_NAME) -> None:
    """Remove everything the lab made: processes, namespaces, links, directories."""
    try:
        lab_ops.check_can_run()
        found = lab_ops.down(name)
    except _ERRORS as exc:
        raise _fail(exc) from None
    out.print(f"lab {name!r} is down" if found else f"no lab {name!r} was up: nothing to do")


@app.command()
def status(
    name: NameOption = DEFAULT_NAME,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
) -> None:
    """The lab's hosts: address, link, shape, Ray node."""
    try:
        lab = lab_ops.require(name)
    except _ERRORS as exc:
        raise _fail(exc) from None
    if json_out:
        out.print_json(lab.model_dump_json())
        return
    out.print(
        f"lab {name!r}: CastRay at {lab.url}, Ray at {lab.gcs_address}, files in {lab.directory}",
        highlight=False,
    )
    print_table(
        ["host", "address", "namespace", "link", "shape", "Ray node"], _rows(lab), whole=(0, 1, 2)
    )


def _rows(lab: LabState) -> list[list[str]]:
    return [
        [
            f"h{h.index}",
            h.address,
            h.namespace,
            "up" if link_is_up(lab.name, h.index) else "cut",
            h.shape.describe(),
            f"running (pgid {h.ray_pgid})" if lab_ops.host_running(h) else "stopped",
        ]
        for h in lab.hosts
    ]


@app.command()
def cut(host: HostArgument, name: NameOption = DEFAULT_NAME) -> None:
    """Take a host's link down: its packets vanish, as if its cable were pulled."""
    _act(name, lambda lab: lab_ops.set_link(lab, host, up=False), "link is cut")


@app.command()
def heal(host: HostArgument, name: NameOption = DEFAULT_NAME) -> None:
    """Bring a cut host's link back up."""
    _act(name, lambda lab: lab_ops.set_link(lab, host, up=True), "link is up again")


@app.command()
def shape(
    host: HostArgument,
    rate: Annotated[str | None, typer.Option(help="New rate, each way.")] = None,
    delay: Annotated[str | None, typer.Option(help="New delay (netem).")] = None,
    loss: Annotated[str | None, typer.Option(help="New loss, each way.")] = None,
    name: NameOption = DEFAULT_NAME,
) -> None:
    """Change a host's link; what is not given stays."""

    def reshape(lab: LabState) -> HostState:
        now = lab.host(host).shape
        new = LinkShape(
            parse_rate(rate) if rate else now.rate_bits,
            parse_delay(delay) if delay else now.delay_s,
            parse_loss(loss) if loss else now.loss_percent,
        )
        return lab_ops.reshape(lab, host, new)

    _act(name, reshape, "link reshaped")


@app.command()
def kill(host: HostArgument, name: NameOption = DEFAULT_NAME) -> None:
    """Kill a host's Ray node (its process group), as a crash of that host would."""
    _act(name, lambda lab: lab_ops.kill(lab, host), "Ray node killed")


@app.command()
def start(host: HostArgument, name: NameOption = DEFAULT_NAME) -> None:
    """Start a killed host's Ray node again; it rejoins the lab's cluster."""
    _act(name, lambda lab: lab_ops.start(lab, host), "Ray node started")


@app.command("exec", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def exec_in(ctx: typer.Context, host: HostArgument, name: NameOption = DEFAULT_NAME) -> None:
    """Run a command inside a host (after --), with RAY_ADDRESS and the lab's Ray token set."""
    if not ctx.args:
        raise _fail(ValueError("say what to run: castray lab exec h2 -- python my_driver.py"))
    try:
        lab = lab_ops.require(name)
        argv, env = lab_ops.exec_argv(lab, host, list(ctx.args))
    except _ERRORS as exc:
        raise _fail(exc) from None
    raise typer.Exit(subprocess.call(argv, env=env))


def _act(name: str, action: Callable[[LabState], HostState], done: str) -> None:
    try:
        lab = lab_ops.require(name)
        host = action(lab)
    except (*_ERRORS, LookupError) as exc:
        raise _fail(exc) from None
    out.print(f"h{host.index} ({host.address}): {done}", highlight=False)
