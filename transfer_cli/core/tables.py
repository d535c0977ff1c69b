"""A small table type rendered three ways: rich on a terminal (console.py), plain aligned text
in pipes and logs, and Markdown for reports and pull requests. The stage-end table, report.md
and `transfer compare` all go through it, so they show the same thing."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Table:
    title: str
    header: list[str]
    rows: list[list[str]]
    notes: list[str] = field(default_factory=list)

    def plain(self) -> str:
        widths = [max(len(row[i]) for row in [self.header] + self.rows) for i in range(len(self.header))]
        lines = [self.title] if self.title else []
        for row in [self.header] + self.rows:
            first, rest = row[0].ljust(widths[0]), [cell.rjust(w) for cell, w in zip(row[1:], widths[1:])]
            lines.append("  ".join([first] + rest).rstrip())
        return "\n".join(lines + self.notes)

    def markdown(self) -> str:
        lines = ["| " + " | ".join(_escape(h) for h in self.header) + " |",
                 "|" + "|".join([":---"] + ["---:"] * (len(self.header) - 1)) + "|"]
        lines += ["| " + " | ".join(_escape(c) for c in row) + " |" for row in self.rows]
        if self.notes:  # one line each (Markdown hard breaks); a leading * would start a list
            lines += [""] + ["  \n".join(_escape_note(n) for n in self.notes)]
        return "\n".join(lines)


def _escape(cell: str) -> str:
    return cell.replace("|", "\\|")


def _escape_note(note: str) -> str:
    return "\\" + note if note.startswith(("*", "-", "+")) else note
