"""Errors the CLI maps to exit codes: 2 bad input, 1 the run failed, 130/143 interrupted."""

from __future__ import annotations


class TransferError(Exception):
    """Base class for errors shown to the user as one clear message, without a traceback."""

    exit_code = 2


class UsageError(TransferError):
    """Bad command-line usage or a bad path given on the command line."""


class ConfigError(TransferError):
    """One or more problems in a config; all of them are listed in the message."""

    def __init__(self, problems: list[str], header: str = "invalid config") -> None:
        self.problems, self.header = problems, header
        if len(problems) == 1:  # one problem, one line
            super().__init__(f"{header}: {problems[0]}")
            return
        lines = [f"{header} ({len(problems)} problems):"]
        lines += [f"  - {p}" for p in problems]
        super().__init__("\n".join(lines))

    def __reduce__(self) -> tuple:
        # rebuilt from its own arguments when pickled (an error raised in a forked process comes
        # back on a pipe): the default would pass the message as `problems`, one letter a problem
        return type(self), (self.problems, self.header)


class DataError(TransferError):
    """A data source is missing, malformed or does not fit the model."""


class CheckpointError(TransferError):
    """A weights file or run directory cannot be read safely."""


class RunDirError(TransferError):
    """The run directory cannot be used (exists, not writable, not a run)."""


class RunFailed(TransferError):
    """The run started but failed (divergence, a runtime fault)."""

    exit_code = 1


class Interrupted(TransferError):
    """Stopped by a signal after a resumable checkpoint was written."""

    def __init__(self, message: str, exit_code: int = 130) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class Terminated(KeyboardInterrupt):
    """SIGTERM outside the training loop: the command stops like on Ctrl-C, with exit code 143.
    A KeyboardInterrupt (not an Exception) so that no `except Exception` swallows it."""


class RaisedOnMain(TransferError):
    """Under torchrun: rank 0 failed in work only it does (reading or writing the run
    directory); the other ranks stop with the same exit code, and only rank 0 prints the message."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code

    def __reduce__(self) -> tuple:
        return type(self), (str(self), self.exit_code)


def one_line(exc: BaseException) -> str:
    """The first line of an error's message (its type name when it has none), and the next ones
    while a line ends in ':' (e.g. transformers' "Validation error for field 'x':" puts the reason
    on the next line)."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    shown = [lines[0]]
    for line in lines[1:]:
        if not shown[-1].endswith(":"):
            break
        shown.append(line)
    return " ".join(shown)


def a_or_an(word: str) -> str:
    """The word with its indefinite article, for messages ("an evaluate run", "a rank run")."""
    return f"{'an' if word[:1].lower() in 'aeiou' else 'a'} {word}"
