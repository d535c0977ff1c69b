"""One registry mechanism for every kind of component: models, data, optimizers, schedules,
losses and metrics. A builder is registered with a pydantic params model, so a typo inside
`params` is caught as precisely as a top-level typo."""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any, Callable, Generic, TypeVar

from pydantic import BaseModel, ConfigDict

T = TypeVar("T", bound=Callable[..., Any])


class Params(BaseModel):
    """Base of every builder's params model: unknown keys are errors, never ignored."""

    model_config = ConfigDict(extra="forbid")


NoParams = Params


@dataclass(frozen=True)
class Entry:
    name: str
    builder: Callable[..., Any]
    params: type[BaseModel]

    @property
    def summary(self) -> str:
        doc = (self.builder.__doc__ or "").strip()
        return doc.splitlines()[0] if doc else ""


def did_you_mean(word: str, choices: list[str]) -> str:
    """' (did you mean 'x'?)' for the closest choice, or '' when nothing is close."""
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


class UnknownName(KeyError):
    def __init__(self, kind: str, name: str, known: list[str]) -> None:
        self.message = f"unknown {kind} '{name}'{did_you_mean(name, known)}; known: {', '.join(known)}"
        super().__init__(self.message)

    def __str__(self) -> str:
        return self.message


class Registry(Generic[T]):
    """Name -> builder. `@REG.register("name", params=Params)` on a builder function."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Entry] = {}

    def register(self, name: str, params: type[BaseModel] = NoParams) -> Callable[[T], T]:
        def decorate(builder: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} '{name}' is registered twice")
            self._entries[name] = Entry(name, builder, params)
            return builder

        return decorate

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def get(self, name: str) -> Entry:
        try:
            return self._entries[name]
        except KeyError:
            raise UnknownName(self.kind, name, self.names()) from None

    def build(self, name: str, params: BaseModel | dict[str, Any] | None = None, **context: Any) -> Any:
        """Build a component; params may be the validated model or a raw dict."""
        entry = self.get(name)
        if not isinstance(params, entry.params):
            params = entry.params.model_validate(params or {})
        return entry.builder(params, **context)
