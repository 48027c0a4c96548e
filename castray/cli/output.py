"""How the CLI prints: tables that never cut what a user must type next, JSON for scripts,
and errors in the CLI's own words."""

from __future__ import annotations

import os
from collections.abc import Sequence

from rich.cells import cell_len
from rich.console import Console
from rich.table import Column, Table
from rich.text import Text

out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)

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
    headers: Sequence[str],
    rows: Sequence[Sequence[str]],
    whole: Sequence[int] = (0,),
    drop: Sequence[int] = (),
) -> None:
    """A table laid out for the terminal's width, where no cell is ever cut or wrapped: the
    ``whole`` columns (ids, addresses) always stay; others are left out when they do not fit,
    those in ``drop`` first, then from the right (a note says which, and ``--json`` has all).

    When even the whole columns do not fit, each row is printed as a record: its first whole
    value on a line, then ``header value`` pairs wrapped between pairs, never inside one.

    Into a pipe or a file (not a terminal, and no ``COLUMNS`` set) every column is printed at
    its natural width: a script reading the output gets every field on one line.
    """
    widths = [
        max([cell_len(header), *(cell_len(row[i]) for row in rows)])
        for i, header in enumerate(headers)
    ]
    shown = list(range(len(headers)))
    limit = out.width
    if not out.is_terminal and "COLUMNS" not in os.environ:
        limit = max(limit, _table_width(widths, shown))
    optional = [i for i in drop if i not in whole]
    optional += [i for i in reversed(shown) if i not in whole and i not in optional]
    while _table_width(widths, shown) > limit and optional:
        shown.remove(optional.pop(0))
    if _table_width(widths, shown) <= limit:
        table = Table(*(Column(headers[i], no_wrap=True, min_width=widths[i]) for i in shown))
        for row in rows:
            table.add_row(*(Text(row[i]) for i in shown))  # names are text, never markup
        _print_wide(table, limit)
        left_out = [headers[i] for i in range(len(headers)) if i not in shown]
        if left_out:
            out.print(
                f"(left out for the width: {', '.join(left_out)}; --json shows every field)",
                style="dim",
                highlight=False,
                markup=False,
            )
        return
    for row in rows:
        first = whole[0]
        out.print(row[first], style="bold", highlight=False, markup=False)
        pieces = [f"{headers[i]} {row[i]}" for i in range(len(headers)) if i != first and row[i]]
        for line in _wrap_pieces(pieces, out.width - 4):
            out.print(f"    {line}", highlight=False, markup=False)


def _print_wide(table: Table, width: int) -> None:
    """Print ``table`` ``width`` cells wide: rich caps a print's width at the console's (80
    into a pipe), and squeezed some columns of a wider table to nothing."""
    narrower = out.width
    out.width = max(width, narrower)
    try:
        out.print(table, width=width)
    finally:
        out.width = narrower


def _table_width(widths: Sequence[int], shown: Sequence[int]) -> int:
    """Cells a rich table of these columns takes: each column, its padding and its rule."""
    return sum(widths[i] for i in shown) + 3 * len(shown) + 1


def _wrap_pieces(pieces: Sequence[str], width: int) -> list[str]:
    """Lines of ``pieces`` joined by ", ", broken between pieces only (a piece longer than a
    line gets a line of its own, whole: an id must be copied as it is)."""
    lines: list[str] = []
    current = ""
    for piece in pieces:
        joined = f"{current}, {piece}" if current else piece
        if current and cell_len(joined) + 1 > width:
            lines.append(current + ",")
            current = piece
        else:
            current = joined
    if current:
        lines.append(current)
    return lines


def in_cli_words(message: str) -> str:
    """A server message whose hints name REST calls, with the CLI commands a user would type."""
    for call, command in _API_HINTS.items():
        message = message.replace(call, command)
    return message
