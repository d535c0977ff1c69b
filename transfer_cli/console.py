"""Console output: rich progress and tables on a terminal, plain lines in pipes and CI.

`--quiet` keeps only warnings and errors; `--json` keeps stdout for the final JSON report and
sends the human-readable lines to stderr.
"""

from __future__ import annotations

import contextlib
import os
import sys
from typing import Any, Iterator, Optional, TextIO


def format_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) >= 1e-3 or value == 0 else f"{value:.2e}"
    return str(value)


class Console:
    def __init__(self, quiet: bool = False, json_mode: bool = False, stream: Optional[TextIO] = None) -> None:
        self.quiet = quiet
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
        with Progress(*columns, console=self._rich, transient=True) as bar:
            task = bar.add_task(description, total=total, completed=completed, status="")
            yield _RichProgress(bar, task)

    def table(self, title: str, rows: dict[str, dict[str, Any]]) -> None:
        """Metrics per split: {split: {metric: value}}."""
        if self.quiet or not rows:
            return
        columns = sorted({name for values in rows.values() for name in values}, key=_metric_order)
        if self._rich is not None:
            from rich.table import Table

            table = Table(title=title)
            table.add_column("split")
            for column in columns:
                table.add_column(column, justify="right")
            for split, values in rows.items():
                table.add_row(split, *[format_value(values.get(c, "")) for c in columns])
            self._rich.print(table)
            return
        width = max(len(c) for c in columns + ["split"]) + 2
        lines = [title, "split".ljust(8) + "".join(c.rjust(width) for c in columns)]
        for split, values in rows.items():
            lines.append(split.ljust(8) + "".join(format_value(values.get(c, "")).rjust(width) for c in columns))
        self._print("\n".join(lines))


def _metric_order(name: str) -> tuple[int, str]:
    return (0 if name == "loss" else 1, name)


class _NoProgress:
    def update(self, completed: int, status: str = "") -> None:
        pass


class _RichProgress:
    def __init__(self, bar: Any, task: Any) -> None:
        self.bar, self.task = bar, task

    def update(self, completed: int, status: str = "") -> None:
        self.bar.update(self.task, completed=completed, status=status)
