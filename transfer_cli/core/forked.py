"""A function run in a forked process while this one does something else: used where a command
waits on one core for work that needs none of this process's later state (drawing the report's
pictures, generating a built-in data set), and only on Linux with a second CPU to run it on.

The child inherits the modules already imported, runs the function, sends back its value (or
the exception it raised) pickled on a pipe and leaves with os._exit, so none of this process's
exit handlers run twice. It must not use torch's thread pools (it uses numpy and matplotlib).
"""

from __future__ import annotations

import os
import pickle
import signal
import sys
from typing import Any, Callable, Optional


class ForkFailed(RuntimeError):
    """The child ended without an answer (killed, out of memory), or with one that does not
    unpickle here: the caller can do the work itself, and meet the real error there."""


def can_fork() -> bool:
    """Linux with more than one CPU for this process (elsewhere forking a process that has
    loaded torch is not safe, and with one CPU nothing would run at the same time)."""
    return sys.platform.startswith("linux") and hasattr(os, "fork") and len(os.sched_getaffinity(0)) > 1


class Forked:
    """`fn()` running in a forked process; `result()` waits for it, and returns its value or
    raises its exception. `close()` (also on leaving a `with`) stops a child still running."""

    def __init__(self, fn: Callable[[], Any]) -> None:
        read_end, write_end = os.pipe()
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:  # the child
            try:
                os.close(read_end)
                try:
                    answer: tuple = ("value", fn())
                except BaseException as exc:  # noqa: BLE001  raised in the parent
                    answer = ("error", exc)
                try:
                    payload = pickle.dumps(answer, protocol=pickle.HIGHEST_PROTOCOL)
                except Exception:  # noqa: BLE001  an exception that does not pickle: its text
                    payload = pickle.dumps(("error", RuntimeError(_describe(answer[1]))))
                with os.fdopen(write_end, "wb") as pipe:
                    pipe.write(payload)
                sys.stdout.flush()
                sys.stderr.flush()
            finally:
                os._exit(0)
        os.close(write_end)
        self.pid: Optional[int] = pid
        self._read_end: Optional[int] = read_end

    def result(self) -> Any:
        try:
            read_end, self._read_end = self._read_end, None
            if read_end is None:
                raise RuntimeError("result() was asked for twice")
            with os.fdopen(read_end, "rb") as pipe:
                payload = pipe.read()  # until the child closes its end
        except BaseException:  # an interrupt while waiting: the child is not waited for
            self._kill()
            raise
        finally:
            self._reap()
        if not payload:
            raise ForkFailed("the forked process ended without an answer")
        try:
            kind, value = pickle.loads(payload)
        except Exception:  # noqa: BLE001  e.g. an exception whose __init__ takes other arguments than its args
            raise ForkFailed("the forked process's answer could not be read back") from None
        if kind == "error":
            raise value
        return value

    def close(self) -> None:
        self._kill()
        self._reap()
        if self._read_end is not None:
            os.close(self._read_end)
            self._read_end = None

    def _kill(self) -> None:
        if self.pid is not None:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def _reap(self) -> None:
        if self.pid is not None:
            pid, self.pid = self.pid, None
            os.waitpid(pid, 0)

    def __enter__(self) -> "Forked":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"
