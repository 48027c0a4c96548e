"""Progress bars that fit the terminal: no column ever wraps inside a value (``0.3/1.0`` on
one line and ``GiB`` on the next), the bar gives up its width first, and on a narrow
terminal the less useful columns are left out."""

from __future__ import annotations

from rich import filesize
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeRemainingColumn,
)
from rich.table import Column
from rich.text import Text

WIDE = 100
"""Columns a terminal needs for the time left to be shown too."""
BAR_MIN = 10


def transfer_progress(console: Console, label_width: int, disable: bool = False) -> Progress:
    """Bars labelled by ids of up to ``label_width`` cells (shown whole), with bytes, speed,
    (time left on a wide terminal) and a status."""
    whole = Column(no_wrap=True, overflow="ignore")
    columns: list[ProgressColumn] = [
        TextColumn("{task.description}", table_column=Column(no_wrap=True, min_width=label_width)),
        BarColumn(bar_width=None, table_column=Column(ratio=1, min_width=BAR_MIN)),
        DownloadColumn(binary_units=True, table_column=whole),
        SpeedColumn(table_column=whole),
    ]
    if console.width >= WIDE:
        columns.append(TimeRemainingColumn(table_column=whole))
    columns.append(TextColumn("{task.fields[status]}", table_column=whole))
    return Progress(*columns, console=console, disable=disable, expand=True)


class SpeedColumn(ProgressColumn):
    """A bar's speed: the rate its copy took once the server says so (a task's ``rate``
    field, bytes per second), else rich's estimate from the bar's recent updates, else
    nothing. A copy that came whole between two updates has no estimate: rich's own column
    showed "?" beside it for good."""

    def render(self, task: Task) -> Text:
        speed = task.fields.get("rate") or task.finished_speed or task.speed
        if not speed:
            return Text("", style="progress.data.speed")
        return Text(f"{filesize.decimal(int(speed))}/s", style="progress.data.speed")
