"""Turn a RawConfig into a validated Experiment, reporting every problem at once.

Each problem names where the key was written (`file:line` or `--set ...`), the key path,
what was expected and what was given, with a did-you-mean for unknown keys and names.
"""

from __future__ import annotations

import re
import typing
from typing import Any

from pydantic import BaseModel, ValidationError

from transfer_cli.config.loader import COMPONENTS, RawConfig
from transfer_cli.config.schema import Experiment, Section
from transfer_cli.config.yamlio import EXAMPLE
from transfer_cli.core.errors import ConfigError
from transfer_cli.core.registry import Registry, UnknownName, did_you_mean

Loc = tuple[Any, ...]


def validate(raw: RawConfig, registries: dict[str, Registry]) -> Experiment:
    """Validate the whole config; raise ConfigError listing all problems.

    On success the component params are replaced by their full form (defaults filled), so
    the experiment written to the run dir is the resolved config.
    """
    problems: list[str] = []
    experiment: Experiment | None = None
    try:
        experiment = Experiment.model_validate(raw.data)
    except ValidationError as exc:
        problems += render_errors(exc, Experiment, (), raw)
    _validate_metric_names(raw, registries["metric"], problems)
    resolved_params = {}
    for section in COMPONENTS:
        result = _validate_params(raw, section, registries[section], problems)
        if result is not None:
            resolved_params[section] = result
    if problems or experiment is None:
        raise ConfigError(problems, header=f"invalid config {raw.source}")
    for section, params in resolved_params.items():
        component = getattr(experiment, section)
        if component is not None:
            component.params = params
    return experiment


def _validate_params(raw: RawConfig, section: str, registry: Registry, problems: list[str]) -> dict | None:
    block = raw.data.get(section)
    if block is None:
        field = Experiment.model_fields[section]
        if field.is_required():
            return None  # the schema pass reports it (`data` has no default)
        defaults = field.get_default(call_default_factory=True)
        if defaults is None:
            return None
        block = {"name": defaults.name}
    if not isinstance(block, dict) or not isinstance(block.get("name"), str):
        return None  # the schema pass reports the shape problem
    try:
        entry = registry.get(block["name"])
    except UnknownName as exc:
        problems.append(f"{raw.origin_of((section, 'name'))}: {section}.name: {exc}")
        return None
    params = block.get("params") or {}
    if not isinstance(params, dict):
        return None
    try:
        return entry.params.model_validate(params).model_dump(mode="json")
    except ValidationError as exc:
        problems += render_errors(exc, entry.params, (section, "params"), raw)
        return None


def _validate_metric_names(raw: RawConfig, registry: Registry, problems: list[str]) -> None:
    names = (raw.data.get("eval") or {}).get("metrics") if isinstance(raw.data.get("eval"), dict) else None
    if not isinstance(names, list):
        return
    for i, name in enumerate(names):
        if isinstance(name, str) and name not in registry:
            problems.append(f"{raw.origin_of(('eval', 'metrics'))}: eval.metrics[{i}]: "
                            f"{UnknownName('metric', name, registry.names())}")


# how pydantic names the member of a Union in an error's loc: with brackets or a dash, which no
# config key has, or a section model of the schema (a user's key is matched against neither)
def _section_names(cls: type) -> set[str]:
    return {sub.__name__ for sub in cls.__subclasses__()} | {n for sub in cls.__subclasses__() for n in _section_names(sub)}


_UNION_MEMBER = re.compile(r"^(literal\[.*\]|constrained-\w+|function-(after|before|wrap|plain)\[.*\]|"
                           r"(list|dict|tuple)\[.*\]|bool|int|float|str|none|"
                           + "|".join(sorted(_section_names(Section))) + r")$")


def _union_merged(errors: list[dict]) -> list[dict]:
    """One error per key where a Union's members each reported one: for a mapping given, those of
    the mapping's own keys; otherwise one message listing what each member accepts."""
    groups: dict[tuple, list[dict]] = {}
    for err in errors:
        loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and _UNION_MEMBER.match(p)))
        groups.setdefault(loc, []).append({**err, "loc": loc, "member": loc != tuple(err["loc"])})
    out = []
    for loc, group in groups.items():
        if len(group) == 1 or not all(e["member"] for e in group):
            out += group
            continue
        custom = [e for e in group if e["type"] == "value_error"]
        if custom:
            out += custom
            continue
        wanted = [e["msg"].removeprefix("Input should be ") for e in group]
        wanted = [re.sub(r"a valid dictionary or instance of \w+", "a mapping", w) for w in wanted]
        merged = {**group[0], "type": "union_error", "msg": "expected " + " or ".join(wanted)}
        if group[0]["type"] == "literal_error":
            merged["ctx"] = group[0].get("ctx", {})
            merged["type"] = "literal_error"
        out.append(merged)
    # a mapping's own errors sit one key deeper: keep them, drop the member errors about its type
    deep = {e["loc"][:-1] for e in out if len(e["loc"]) > 1}
    return [e for e in out if not (e.get("member") and e["loc"] in deep and isinstance(e.get("input"), dict))]


def render_errors(exc: ValidationError, model: type[BaseModel], prefix: Loc, raw: RawConfig) -> list[str]:
    out = []
    for err in _union_merged(exc.errors()):
        loc = prefix + tuple(err["loc"])
        path = _dotted(loc)
        origin = raw.origin_of(tuple(str(p) for p in loc))
        out.append(f"{origin}: {path}: {_describe(err, model, tuple(err['loc']))}")
    return out


def _describe(err: dict, model: type[BaseModel], loc: Loc) -> str:
    kind = err["type"]
    if kind == "extra_forbidden":
        known = _fields_at(model, loc[:-1])
        hint = did_you_mean(str(loc[-1]), known)
        allowed = f"; allowed here: {', '.join(known)}" if known else ""
        return f"unknown key{hint}{allowed}"
    if kind == "missing":
        return "required key is missing" + (f" ({EXAMPLE})" if loc == ("data",) else "")
    if kind in ("model_type", "dict_type") and err.get("input") is None:
        return ("expected a mapping of keys, got nothing (null, or an empty section with only comments "
                "under it); give its keys, or leave the section out for its defaults")
    message = err["msg"].removeprefix("Value error, ")
    if kind == "literal_error":
        choices = re.findall(r"'([^']*)'", err.get("ctx", {}).get("expected", ""))
        message += did_you_mean(str(err.get("input")), choices)
    return f"{message}; got {err.get('input')!r}"


def _dotted(loc: Loc) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _fields_at(model: type[BaseModel], loc: Loc) -> list[str]:
    """The field names of the (nested) model at `loc`, for did-you-mean suggestions."""
    current: Any = model
    for part in loc:
        if isinstance(part, int):
            continue
        if not (isinstance(current, type) and issubclass(current, BaseModel)) or part not in current.model_fields:
            return []
        current = _model_in(current.model_fields[part].annotation)
    if isinstance(current, type) and issubclass(current, BaseModel):
        return sorted(current.model_fields)
    return []


def _model_in(annotation: Any) -> Any:
    """The BaseModel class inside Optional[...]/Annotated[...], if any."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _model_in(arg)
        if found is not None:
            return found
    return None
