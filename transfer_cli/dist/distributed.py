"""Several processes, one run: torchrun's environment, the process group, the DDP/FSDP wrap, and
what the processes (ranks) exchange.

The same command runs in one process or under `torchrun`; nothing in the config changes.
Under torchrun (`WORLD_SIZE` > 1) every rank trains on its share of each batch and evaluates
its share of each split; only rank 0 touches the run directory. What the other ranks need from
it (the state to resume from, the best weights) reaches them over the process group, so the
machines share the data and the config but need no shared file system for the run.

torch is imported inside the functions: `world()` is read by the console before torch loads.
"""

from __future__ import annotations

import contextlib
import functools
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterator, Optional, TypeVar

if TYPE_CHECKING:
    import torch
    from torch import nn

T = TypeVar("T")


@dataclass(frozen=True)
class World:
    """Where this process stands among the processes of a run (torchrun's RANK, WORLD_SIZE, LOCAL_RANK)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_distributed(self) -> bool:
        return self.size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def shard(self) -> tuple[int, int]:
        """(rank, size): which share of each batch and split this process takes."""
        return self.rank, self.size


@functools.lru_cache(maxsize=1)
def world() -> World:
    """This process's place, from the environment torchrun sets (one process when it is not set)."""
    env = os.environ
    if int(env.get("WORLD_SIZE", "1")) <= 1:
        return World()
    return World(int(env.get("RANK", "0")), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", "0")))


# ---- the process group ---------------------------------------------------------------------------
def init(device: "torch.device") -> None:
    """Join torchrun's process group (once): nccl between GPUs, gloo on CPUs."""
    if not world().is_distributed:
        return
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")


def shutdown() -> None:
    """Leave the process group, if this process joined one."""
    import sys

    if "torch.distributed" not in sys.modules:  # never imported: nothing to leave, and torch stays unloaded
        return
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _active() -> bool:
    if not world().is_distributed:
        return False
    import torch.distributed as dist

    return dist.is_initialized()


def barrier() -> None:
    if _active():
        import torch.distributed as dist

        dist.barrier()


def all_sum(tensor: "torch.Tensor") -> "torch.Tensor":
    """Sum `tensor` over the ranks, in place (one process: unchanged)."""
    if _active():
        import torch.distributed as dist

        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def from_main(obj: Any) -> Any:
    """Rank 0's `obj` on every rank (the others pass None)."""
    if not _active():
        return obj
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def broadcast_buffers(model: "nn.Module") -> None:
    """Rank 0's buffers (BatchNorm statistics) on every rank: what the checkpoint keeps is what
    every rank evaluates with, and what a resumed run starts from."""
    if _active():
        import torch.distributed as dist

        for buffer in model.buffers():
            dist.broadcast(buffer, src=0)


def on_main(action: Callable[[], T]) -> T:
    """`action()` done by rank 0 alone (reading or writing the run directory); every rank gets
    its result, or stops with its error (so no rank waits for one that has stopped)."""
    if not _active():
        return action()
    from transfer_cli.core.errors import RaisedOnMain

    outcome: Any = None
    if world().is_main:
        try:
            outcome = ("ok", action())
        except Exception as exc:  # noqa: BLE001  told to the others, then raised here as it is
            from_main(("error", str(exc), getattr(exc, "exit_code", 1)))
            raise
    outcome = from_main(outcome)
    if outcome[0] == "error":
        raise RaisedOnMain(outcome[1], outcome[2])
    return outcome[1]


def gathered(obj: Any) -> list[Any]:
    """`obj` of every rank, in rank order (one process: `[obj]`)."""
    if not _active():
        return [obj]
    import torch.distributed as dist

    out: list[Any] = [None] * world().size
    dist.all_gather_object(out, obj)
    return out


# ---- the module the training step calls ------------------------------------------------------------
def wrap(model: "nn.Module", device: "torch.device", mode: str) -> "nn.Module":
    """DDP around `model` under torchrun (its gradient hooks cover the parameters that train now,
    so call it again when that set changes); the model itself in one process. FSDP shards the
    model in place instead (see `shard_fully`)."""
    if not _active() or mode == "fsdp":
        return model
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def shard_fully(model: "nn.Module", layer_groups: list[str]) -> None:
    """FSDP (torch's fully_shard): each layer group, then the whole model, keeps only this rank's
    slice of its parameters between uses. Must happen before the optimizer is built."""
    import warnings

    from torch.distributed.fsdp import fully_shard

    # our step never changes a module's output in place, which is what this warning is about
    warnings.filterwarnings("ignore", message=r"FSDP2-wrapped module .* returned a view tensor")
    for name in layer_groups:
        fully_shard(model.get_submodule(name))
    fully_shard(model)


def no_sync(module: "nn.Module", accumulating: bool) -> Any:
    """While accumulating micro-batches, the gradient exchange (DDP) or reduce-scatter (FSDP)
    would be wasted work: skip it."""
    if accumulating and hasattr(module, "no_sync"):
        return module.no_sync()
    if accumulating and hasattr(module, "set_requires_gradient_sync"):
        return _fsdp_no_sync(module)
    return contextlib.nullcontext()


@contextlib.contextmanager
def _fsdp_no_sync(module: Any) -> Iterator[None]:
    module.set_requires_gradient_sync(False)
    try:
        yield
    finally:
        module.set_requires_gradient_sync(True)


# ---- agreeing on a stop ------------------------------------------------------------------------------
@dataclass
class Verdict:
    step: int
    stop: bool
    diverged: bool


class StepVote:
    """Decisions every rank must take at the same step: stop on a signal, stop on a NaN/Inf loss.

    After step k each rank puts its flags into an all-reduce that runs while step k+1 computes,
    and reads the outcome after step k+1: all ranks act on the same verdict at the same step, and
    no step waits for the exchange (nor, on a GPU, for the device)."""

    def __init__(self, device: "torch.device") -> None:
        self.device = device
        self._pending: Optional[tuple[int, Any, Any]] = None

    def cast(self, step: int, stop: bool, loss_sum: "torch.Tensor") -> Optional[Verdict]:
        """Add this rank's flags for `step`; return the verdict on the previous cast, if any."""
        verdict = self._read()
        flags = self._flags(stop, loss_sum)
        import torch.distributed as dist

        self._pending = (step, flags, dist.all_reduce(flags, op=dist.ReduceOp.MAX, async_op=True))
        return verdict

    def settle(self, step: int, stop: bool, loss_sum: "torch.Tensor") -> Optional[Verdict]:
        """The verdict on everything up to now (blocking): the pending cast and these flags."""
        earlier = self._read()
        if earlier is not None and (earlier.stop or earlier.diverged):
            return earlier
        flags = all_max(self._flags(stop, loss_sum))
        return Verdict(step, bool(flags[0]), bool(flags[1]))

    def _flags(self, stop: bool, loss_sum: "torch.Tensor") -> "torch.Tensor":
        import torch

        diverged = (~torch.isfinite(loss_sum)).to(torch.float32).reshape(1)
        return torch.cat([torch.tensor([float(stop)], device=self.device), diverged.to(self.device)])

    def _read(self) -> Optional[Verdict]:
        if self._pending is None:
            return None
        step, flags, work = self._pending
        self._pending = None
        work.wait()
        values = flags.tolist()
        return Verdict(step, values[0] > 0, values[1] > 0)


def all_max(tensor: "torch.Tensor") -> "torch.Tensor":
    """Element-wise maximum over the ranks, in place."""
    if _active():
        import torch.distributed as dist

        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return tensor


# ---- state dicts of a sharded (FSDP) model ---------------------------------------------------------
def is_sharded(model: "nn.Module") -> bool:
    if not _active():
        return False
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def _full_state_options() -> Any:
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, cpu_offload=True)


def model_state(model: "nn.Module") -> dict:
    """The model's full state dict (FSDP: gathered from the shards, complete on rank 0 only)."""
    if not is_sharded(model):
        return model.state_dict()
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    return get_model_state_dict(model, options=_full_state_options())


def load_model_state(model: "nn.Module", state: dict) -> None:
    """Load a full state dict (every rank holds it); FSDP keeps only this rank's shards."""
    if not is_sharded(model):
        model.load_state_dict(state)
        return
    from torch.distributed.checkpoint.state_dict import set_model_state_dict

    set_model_state_dict(model, state, options=_full_state_options())


def optimizer_state(model: "nn.Module", optimizer: "torch.optim.Optimizer") -> dict:
    if not is_sharded(model):
        return optimizer.state_dict()
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    return get_optimizer_state_dict(model, optimizer, options=_full_state_options())


def load_optimizer_state(model: "nn.Module", optimizer: "torch.optim.Optimizer", state: dict) -> None:
    if not is_sharded(model):
        optimizer.load_state_dict(state)
        return
    from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

    set_optimizer_state_dict(model, optimizer, state, options=_full_state_options())
