"""Options every client command shares."""

from __future__ import annotations

from typing import Annotated

import typer

DEFAULT_SERVER = "http://127.0.0.1:8000"
ServerOption = Annotated[
    str, typer.Option("--server", envvar="CASTRAY_SERVER", help="URL of the CastRay server.")
]
TokenOption = Annotated[
    str | None, typer.Option("--token", envvar="CASTRAY_TOKEN", help="The server's API token.")
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]
