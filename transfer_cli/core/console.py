"""Console output: rich progress and tables on a terminal, plain lines in pipes and CI.

`--quiet` keeps only warnings and errors; `--json` keeps stdout for the final JSON report and
sends the human-readable lines to stderr.
"""

from __future__ import annotations

import contextlib
import os
import sys
from typing import TYPE_CHECKING, Any, Iterator, Optional, TextIO

if TYPE_CHECKING:
    from transfer_cli.core.tables import Table


def format_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) >= 1e-3 or value == 0 else f"{value:.2e}"
    return str(value)


class Console:
    def __init__(self, quiet: bool = False, json_mode: bool = False, stream: Optional[TextIO] = None) -> None:
        from transfer_cli.dist.distributed import world

        # under torchrun rank 0 speaks for the run; the others would repeat it word for word
        self.silent = not world().is_main
        self.quiet = quiet or self.silent
        self.stream = stream or (sys.stderr if json_mode else sys.stdout)
        self.fancy = self.stream.isatty() and os.environ.get("TERM") != "dumb" and "CI" not in os.environ
        self._rich = None
        if self.fancy:
            from rich.console import Console as RichConsole

            self._rich = RichConsole(file=self.stream, highlight=False)

    def info(self, message: str) -> None:
        if not self.quiet:
            self._print(message)

    def warn(self, message: str) -> None:
        if not self.silent:
            print(f"warning: {message}", file=sys.stderr, flush=True)

    def _print(self, message: str) -> None:
        if self._rich is not None:
            self._rich.print(message, markup=False)
        else:
            print(message, file=self.stream, flush=True)

    @contextlib.contextmanager
    def progress(self, total: int, description: str, completed: int = 0) -> Iterator[Any]:
        """A progress bar on a terminal; a no-op elsewhere (plain mode logs one line per eval)."""
        if self.quiet or self._rich is None:
            yield _NoProgress()
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TimeRemainingColumn(), TextColumn("{task.fields[status]}"))
        # a redraw costs ~0.8 ms of the training thread's interpreter time: twice a second is plenty
        with Progress(*columns, console=self._rich, transient=True, refresh_per_second=2) as bar:
            task = bar.add_task(description, total=total, completed=completed, status="")
            yield _RichProgress(bar, task)

    def show(self, table: "Table") -> None:
        """A table: rich on a terminal, aligned plain text elsewhere."""
        if self.quiet or not table.rows:
            return
        if self._rich is None:
            self._print(table.plain())
            return
        from rich.table import Table as RichTable

        rich_table = RichTable(title=table.title)
        for i, column in enumerate(table.header):
            rich_table.add_column(column, justify="left" if i == 0 else "right")
        for row in table.rows:
            rich_table.add_row(*row)
        self._rich.print(rich_table)
        for note in table.notes:
            self._print(note)


class _NoProgress:
    def update(self, completed: int, status: str = "") -> None:
        pass


class _RichProgress:
    def __init__(self, bar: Any, task: Any) -> None:
        self.bar, self.task = bar, task

    def update(self, completed: int, status: str = "") -> None:
        self.bar.update(self.task, completed=completed, status=status)
