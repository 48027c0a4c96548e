"""How the CLI prints: tables that never cut what a user must type next, JSON for scripts,
and errors in the CLI's own words."""

from __future__ import annotations

from collections.abc import Sequence

from rich.cells import cell_len
from rich.console import Console
from rich.table import Column, Table
from rich.text import Text

out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)

NARROWEST_COLUMN = 6
"""Cells a wrapped column gets at least before the table is printed as records instead."""

_API_HINTS = {
    "GET /api/nodes": "'castray nodes'",
    "GET /api/status": "'castray status'",
    "GET /api/transfers": "'castray transfers'",
    "GET /api/files": "'castray files'",
    "GET /api/groups": "'castray groups list'",
    "GET /api/cluster/external-info": "'castray clusters info'",
    "POST /api/cluster/connect-external": "'castray clusters connect ADDRESS'",
}


def print_json_or(json_out: bool, as_json: str, text: str) -> None:
    """The result as JSON for scripts, or as one line for people (taken as text, not markup)."""
    if json_out:
        out.print_json(as_json)
    else:
        out.print(text, highlight=False, markup=False)


def print_table(
    headers: Sequence[str], rows: Sequence[Sequence[str]], whole: Sequence[int] = (0,)
) -> None:
    """A table whose ``whole`` columns (ids, addresses) are never cut or wrapped.

    Other columns wrap; when even that does not fit the terminal, each row is printed as a
    record, its whole values in full, so a user can always copy what the next command needs.
    """
    widths = [
        max([cell_len(header), *(cell_len(row[i]) for row in rows)])
        for i, header in enumerate(headers)
    ]
    others = len(headers) - len(whole)
    needed = sum(widths[i] for i in whole) + NARROWEST_COLUMN * others + 3 * len(headers) + 1
    if needed <= out.width:
        columns = [
            Column(h, no_wrap=True, min_width=widths[i])
            if i in whole
            else Column(h, overflow="fold")
            for i, h in enumerate(headers)
        ]
        table = Table(*columns)
        for row in rows:
            table.add_row(*(Text(cell) for cell in row))  # names are text, never markup
        out.print(table)
        return
    for row in rows:
        first, rest = whole[0], [i for i in range(len(headers)) if i != whole[0]]
        out.print(row[first], style="bold", highlight=False, markup=False)
        details = ", ".join(f"{headers[i]} {row[i]}" for i in rest if row[i])
        out.print(f"    {details}", highlight=False, markup=False)


def in_cli_words(message: str) -> str:
    """A server message whose hints name REST calls, with the CLI commands a user would type."""
    for call, command in _API_HINTS.items():
        message = message.replace(call, command)
    return message
