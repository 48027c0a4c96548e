"""Options every client command shares, and how results are printed."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console

DEFAULT_SERVER = "http://127.0.0.1:8000"
ServerOption = Annotated[
    str, typer.Option("--server", envvar="CASTRAY_SERVER", help="URL of the CastRay server.")
]
TokenOption = Annotated[
    str | None, typer.Option("--token", envvar="CASTRAY_TOKEN", help="The server's API token.")
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]


_out = Console(soft_wrap=True)


def print_json_or(json_out: bool, as_json: str, text: str) -> None:
    """The result as JSON for scripts, or as one line for people."""
    if json_out:
        _out.print_json(as_json)
    else:
        _out.print(text, highlight=False)
