"""The memory a training step needs, estimated before training: parameters, gradients of the
ones that train, optimizer state, and activations measured on one real micro-batch.

Activations are what autograd saves for the backward (saved-tensor hooks on a forward of the real
model; the parameters it saves are counted once, as parameters), on CUDA the measured peak of
the forward and backward. With activation checkpointing a layer group keeps only its input and,
during the backward, one group's activations at a time: the estimate is then the activations
outside the groups (the groups' inputs among them) + the largest group's activations, measured
with the model checkpointed (so the measurement needs no more memory than the training step).
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator, Optional

import torch
from torch import nn

from transfer_cli.eval.evaluation import autocast
from torch.utils.checkpoint import checkpoint

from transfer_cli.models.checkpointing import running_statistics_kept

Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def optimizer_states(optimizer: torch.optim.Optimizer) -> tuple[float, str]:
    """Tensors of parameter size the optimizer keeps per trained parameter, and why."""
    d = optimizer.defaults
    if isinstance(optimizer, (torch.optim.Adam, torch.optim.AdamW)):
        return (3, "exp_avg, exp_avg_sq, max_exp_avg_sq") if d.get("amsgrad") else (2, "exp_avg, exp_avg_sq")
    if isinstance(optimizer, torch.optim.SGD):
        return (1, "momentum buffer") if d.get("momentum") else (0, "plain SGD keeps none")
    if isinstance(optimizer, torch.optim.RMSprop):
        kept = ["square_avg"] + (["momentum_buffer"] if d.get("momentum") else []) + (["grad_avg"] if d.get("centered") else [])
        return len(kept), ", ".join(kept)
    return 2, f"{type(optimizer).__name__}: not known, counted as 2 (as Adam)"


def estimate_memory(model: nn.Module, optimizer: torch.optim.Optimizer, trains: Callable[[str], bool],
                    batch: tuple[torch.Tensor, torch.Tensor], loss_fn: Loss, precision: str,
                    checkpointed: Optional[list[nn.Module]]) -> dict[str, Any]:
    """The estimate in bytes (see the module's docstring). `trains(name)`: whether a parameter
    trains in some phase; activations are measured with all of those requiring grad (the phase
    that needs the most). `checkpointed`: the layer groups activation checkpointing will wrap."""
    params = dict(model.named_parameters())
    parameter_bytes = sum(_nbytes(p) for p in params.values())
    trained = [p for name, p in params.items() if trains(name)]
    gradient_bytes = sum(_nbytes(p) for p in trained)
    states, which = optimizer_states(optimizer)
    activations = measure_activations(model, trains, batch, loss_fn, precision, checkpointed)
    frozen: dict[str, int] = {}
    for name, p in params.items():
        if not trains(name):
            dtype = str(p.dtype).removeprefix("torch.")
            frozen[dtype] = frozen.get(dtype, 0) + _nbytes(p)
    estimate = {
        "parameters": parameter_bytes, "trainable_parameters": gradient_bytes,
        "frozen_parameters": parameter_bytes - gradient_bytes, "frozen_by_dtype": frozen,
        "gradients": gradient_bytes,
        "optimizer_state": int(states * gradient_bytes), "optimizer_states_per_parameter": states,
        "optimizer_state_kind": f"{type(optimizer).__name__}: {which}",
        **activations,
    }
    estimate["total"] = (parameter_bytes + gradient_bytes + estimate["optimizer_state"]
                         + activations["activations"])
    return estimate


def measure_activations(model: nn.Module, trains: Callable[[str], bool], batch: tuple[torch.Tensor, torch.Tensor],
                        loss_fn: Loss, precision: str, checkpointed: Optional[list[nn.Module]]) -> dict[str, Any]:
    """One forward and backward of `batch`, leaving the model as it was (weights, gradients,
    BatchNorm statistics, requires_grad, the RNG)."""
    x, y = batch
    device = x.device
    meter = SavedTensors(model, checkpointed or [])
    with _trainable(model, trains), running_statistics_kept(model), torch.random.fork_rng(devices=_devices(device)):
        before = _cuda_reset(device)
        with meter, autocast(device, precision):
            loss = loss_fn(model(x).float(), y)
        loss.backward()
        peak = torch.cuda.max_memory_allocated(device) - before if device.type == "cuda" else None
        model.zero_grad(set_to_none=True)
    saved = meter.activations()
    out = {"activations": saved, "activations_method": "tensors saved for backward", "micro_batch": len(x)}
    if peak is not None:  # the allocator's own peak: gradients are in it, activations the rest
        grads = sum(_nbytes(p) for name, p in model.named_parameters() if trains(name))
        out.update(activations=max(peak - grads, saved), activations_method="CUDA peak of forward+backward")
    return out


class SavedTensors(contextlib.AbstractContextManager):
    """Bytes of the tensors autograd saves for the backward (each once, parameters not at all).

    With `groups` (those activation checkpointing will wrap), each group runs twice in the
    forward: plainly, its saved tensors counted and then dropped, and checkpointed, which gives
    the output the rest of the model uses. So the measurement never holds more than one group's
    activations at a time, as the checkpointed training step will not."""

    def __init__(self, model: nn.Module, groups: list[nn.Module]) -> None:
        self.params = {p.untyped_storage().data_ptr() for p in model.parameters()}
        self.groups, self.seen = groups, set()
        self.outside, self.inside = 0, [0] * len(groups)
        self.current: Optional[int] = None
        self._forwards: list[Any] = []
        self._saved = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)

    def __enter__(self) -> "SavedTensors":
        for index, group in enumerate(self.groups):
            self._forwards.append(group.__dict__.get("forward"))
            object.__setattr__(group, "forward", self._probe(index, type(group).forward.__get__(group)))
        self._saved.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._saved.__exit__(*exc)
        for group, forward in zip(self.groups, self._forwards):
            del group.__dict__["forward"]
            if forward is not None:
                object.__setattr__(group, "forward", forward)

    def activations(self) -> int:
        """What the step keeps: outside the groups (where the checkpoints keep each group's input),
        and, checkpointed, one group's activations at a time (the largest)."""
        return self.outside + (max(self.inside) if self.groups else 0)

    def _probe(self, index: int, original: Callable[..., Any]) -> Callable[..., Any]:
        def forward(*args: Any, **kwargs: Any) -> Any:
            alive, self.current = set(self.seen), index
            # its inputs are counted outside, where the checkpoint keeps them, not again inside
            self.seen.update(_key(a) for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor))
            try:
                original(*args, **kwargs)  # counted, then freed: its addresses may be reused
            finally:
                self.seen, self.current = alive, None
            return checkpoint(original, *args, use_reentrant=False, **kwargs)

        return forward

    def _pack(self, tensor: torch.Tensor) -> torch.Tensor:
        # a tensor's own bytes, not its storage's: a batch is a view of the whole split
        key = _key(tensor)
        if tensor.untyped_storage().data_ptr() not in self.params and key not in self.seen:
            self.seen.add(key)
            if self.current is None:
                self.outside += _nbytes(tensor)
            else:
                self.inside[self.current] += _nbytes(tensor)
        return tensor


@contextlib.contextmanager
def _trainable(model: nn.Module, trains: Callable[[str], bool]) -> Iterator[None]:
    before = {name: p.requires_grad for name, p in model.named_parameters()}
    try:
        for name, p in model.named_parameters():
            p.requires_grad_(trains(name))
        yield
    finally:
        for name, p in model.named_parameters():
            p.requires_grad_(before[name])


def _cuda_reset(device: torch.device) -> int:
    if device.type != "cuda":
        return 0
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    return torch.cuda.memory_allocated(device)


def _devices(device: torch.device) -> list:
    return [device] if device.type == "cuda" else []


def _key(tensor: torch.Tensor) -> tuple:
    return tensor.data_ptr(), tensor.numel(), tensor.dtype


def _nbytes(tensor: torch.Tensor) -> int:
    return tensor.numel() * tensor.element_size()


def human(size: float) -> str:
    """1536 -> '1.5 KiB'."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(size) < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"


def summary_line(estimate: dict[str, Any], checkpointing: bool) -> str:
    """The estimate in one line, for the console."""
    states = estimate["optimizer_states_per_parameter"]
    how = "measured, with activation checkpointing" if checkpointing else "measured"
    return (f"memory estimate: parameters {human(estimate['parameters'])} (trainable "
            f"{human(estimate['trainable_parameters'])}), gradients {human(estimate['gradients'])}, optimizer state "
            f"{human(estimate['optimizer_state'])} ({states:g} per trained parameter), activations "
            f"{human(estimate['activations'])} per micro-batch of {estimate['micro_batch']} ({how}); "
            f"total {human(estimate['total'])}")
