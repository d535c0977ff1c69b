"""Layer groups of a Hugging Face model that cover every parameter, input to output.

The blocks are the ModuleList whose elements hold the most parameters (ties: the shallowest), so
hierarchical models (Swin, ConvNeXt, ResNet) get their stage list, whose stages are then split
into their own blocks (the inner list holding most of the stage) and the rest of the stage
(downsampling). Every other child module with parameters on the way (embeddings, final norm) is a
group of its own, in registration order, which is the forward order of these models. A parameter
left outside every group would silently never train under `gradual` and get the input-most LR
under `layer_decay`, so an uncovered parameter is an error, not a fallback.
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from transfer_cli.core.errors import CheckpointError

LISTS = (nn.ModuleList, nn.Sequential)


def layer_groups(model: nn.Module, directory: Path | str) -> list[str]:
    """Qualified module names (relative to `model`) of its layer groups, input to output."""
    lists = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.ModuleList) and len(m) > 0]
    if not lists:
        raise CheckpointError(f"{_where(directory)}: cannot find the blocks (a list of at least one layer) of "
                              f"the model{_in(directory)}")
    blocks, _ = max(lists, key=lambda item: (_count(item[1]), -item[0].count(".")))
    groups = _partition(model, "", blocks, expand=True)
    check_coverage(model, groups, directory)
    return groups


def check_coverage(model: nn.Module, groups: list[str], directory: Path | str) -> None:
    """Every parameter in exactly one group."""
    for name, _ in model.named_parameters():
        owners = [g for g in groups if name.startswith(g + ".")]
        if len(owners) != 1:
            raise CheckpointError(f"{_where(directory)}: parameter {name} of the model{_in(directory)} is in "
                                  f"{len(owners)} layer groups (expected exactly 1); this architecture's layout "
                                  f"is not supported")


def _partition(module: nn.Module, prefix: str, target: str, expand: bool) -> list[str]:
    """Groups of `module` (names prefixed): the elements of `target`, each child on the way to it
    recursed into, every other child with parameters whole."""
    groups: list[str] = []
    for name, child in module.named_children():
        qualified = prefix + name
        if not _count(child):
            continue
        if qualified == target:
            for index, element in child.named_children():
                groups += _stage(element, f"{qualified}.{index}") if expand else [f"{qualified}.{index}"]
        elif target.startswith(qualified + "."):
            groups += _partition(child, qualified + ".", target, expand)
        else:
            groups.append(qualified)
    return groups


def _stage(element: nn.Module, name: str) -> list[str]:
    """A stage of a hierarchical model split at its block list (the shallowest list holding at
    least half of the stage), else the element as one group (a single residual block is never
    split into its convolutions)."""
    total = _count(element)
    inner = [(n, m) for n, m in element.named_modules() if n and isinstance(m, LISTS) and 2 * _count(m) >= total]
    if not inner:
        return [name]
    inner_name, inner_list = min(inner, key=lambda item: item[0].count("."))
    if len(inner_list) < 2:
        return [name]
    return _partition(element, name + ".", f"{name}.{inner_name}", expand=False)


def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _where(source: Path | str) -> str:
    """The key path an error names: the folder's, or (a str) the inline config's."""
    return source if isinstance(source, str) else "model.params.path"


def _in(source: Path | str) -> str:
    return "" if isinstance(source, str) else f" in {source}"
