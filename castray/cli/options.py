"""Options every client command shares."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

DEFAULT_SERVER = "http://127.0.0.1:8000"
ServerOption = Annotated[
    str, typer.Option("--server", envvar="CASTRAY_SERVER", help="URL of the CastRay server.")
]


def _token_or_its_file(token: str | None) -> str | None:
    """The token given, else the one in ``CASTRAY_TOKEN_FILE`` (not visible in ``ps``)."""
    if token:
        return token
    path = os.environ.get("CASTRAY_TOKEN_FILE")
    if not path:
        return None
    try:
        return Path(path).read_text(encoding="utf-8").strip() or None
    except OSError as exc:
        raise typer.BadParameter(f"cannot read CASTRAY_TOKEN_FILE {path}: {exc}") from None


TokenOption = Annotated[
    str | None,
    typer.Option(
        "--token",
        envvar="CASTRAY_TOKEN",
        callback=_token_or_its_file,
        help="The server's API token (or put it in a file named by CASTRAY_TOKEN_FILE).",
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]
DetachOption = Annotated[
    bool, typer.Option("--detach", help="Print the transfer id and return at once.")
]
