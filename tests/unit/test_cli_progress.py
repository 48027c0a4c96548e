"""The CLI's progress bars: a copy that came whole between two updates shows the rate the
server measured, never rich's "?" (pure: a recording console, no server)."""

from __future__ import annotations

import io

from rich.console import Console

from castray.cli.progress import transfer_progress


def _rendered(rate: float | None) -> str:
    console = Console(file=io.StringIO(), width=120, force_terminal=False, color_system=None)
    with transfer_progress(console, 8) as progress:
        task = progress.add_task("node-2", total=64 * 1024 * 1024, status="", rate=None)
        # One update from nothing to whole: rich has no two samples to take a speed from.
        progress.update(task, completed=64 * 1024 * 1024, status="completed", rate=rate)
        console.print(progress.make_tasks_table(progress.tasks))
    text = console.file.getvalue()  # type: ignore[attr-defined]
    return str(text)


def test_a_copy_finished_in_one_update_shows_the_servers_rate() -> None:
    line = _rendered(12_500_000.0)
    assert "12.5 MB/s" in line and "completed" in line
    assert "?" not in line


def test_without_a_rate_the_speed_is_left_blank_not_a_question_mark() -> None:
    line = _rendered(None)
    assert "completed" in line and "?" not in line
