"""Tables the CLI prints: into a pipe every field stays whole on its row, however wide; on a
terminal a column that carries news (a pin's problem) is never the one left out."""

from __future__ import annotations

import os
import subprocess
import sys

ROW = [
    "6765f81a5578",
    "model.bin",
    "all nodes",
    "0 of 1 nodes verified, 1 pending",
    "no endpoint on CastRay's machine can read the library to send it",
]
PROGRAM = f"""
from castray.cli.output import print_table
print_table(["pin", "file", "nodes", "coverage", "problem"], [{ROW!r}], whole=(0, 4))
"""


def _printed(columns: str | None) -> str:
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    if columns is not None:
        env["COLUMNS"] = columns
    done = subprocess.run(
        [sys.executable, "-c", PROGRAM], capture_output=True, text=True, env=env, check=True
    )
    return done.stdout


def test_into_a_pipe_a_wide_table_keeps_every_cell_whole_on_its_row() -> None:
    """Before, rich capped the table at 80 cells and squeezed file and nodes to nothing."""
    lines = _printed(None).splitlines()
    (row,) = [line for line in lines if ROW[0] in line]
    for cell in ROW:
        assert cell in row, lines
    assert "file" in lines[1] and "nodes" in lines[1], lines


def test_on_80_columns_the_problem_is_shown_as_a_record_not_left_out() -> None:
    printed = _printed("80")
    assert "left out" not in printed, printed
    assert all(len(line) <= 80 for line in printed.splitlines()), printed
    assert "problem no endpoint on CastRay's machine" in printed, printed
