"""Distributed training under ``torchrun``: process group, sharded data, DDP and FSDP2.

Rank 0 alone logs, tracks and writes checkpoints; collective helpers must be called on every
rank. Launching, sharding and wrapping: docs/training.md#distributed-training.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any, TypeAlias, cast, get_args

import torch
import torch.distributed as torch_dist
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import FSDPModule, fully_shard
from torch.distributed.tensor import DTensor, distribute_tensor
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import Sampler

from clip_har.config import DistributedMode
from clip_har.data.augment import sample_seed
from clip_har.errors import DistributedError
from clip_har.io import plural

logger = logging.getLogger(__name__)

__all__ = [
    "BlockSpec",
    "DistContext",
    "DistributedMode",
    "EpochSampler",
    "all_reduce_mean",
    "all_reduce_sum",
    "barrier",
    "broadcast_object",
    "cleanup",
    "encoder_blocks",
    "full_state_dict",
    "gather_objects",
    "gradient_sync",
    "init_distributed",
    "launch_rank",
    "load_full_state_dict",
    "load_optimizer_state_dict",
    "local_context",
    "optimizer_state_dict",
    "rank_zero_first",
    "unwrap",
    "wrap_model",
]

# the modules FSDP shards one by one: a list, or a predicate over ``model.modules()``
BlockSpec: TypeAlias = Sequence[nn.Module] | Callable[[nn.Module], bool]

_TORCHRUN_HINT = (
    "launch the script with torchrun, e.g. `torchrun --nproc_per_node 2 SCRIPT ...` "
    "(it sets RANK, WORLD_SIZE and LOCAL_RANK), or train with --distributed none"
)
_SHUFFLE_STREAM = 2  # sample_seed stream of EpochSampler (1 is make_loader's shuffle)


@dataclass(frozen=True)
class DistContext:
    """Where this process sits in the run. ``backend`` is None without a process group."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str | None

    @property
    def is_main(self) -> bool:
        """True on rank 0: the process that logs, tracks and writes files."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """True when a process group is up and collectives communicate."""
        return self.backend is not None


def _default_device(local_rank: int = 0) -> torch.device:
    return torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")


def local_context() -> DistContext:
    """A single process on the first GPU, or on the CPU when there is none."""
    return DistContext(rank=0, world_size=1, local_rank=0, device=_default_device(), backend=None)


def launch_rank() -> int:
    """This process's rank as ``torchrun`` set it (env ``RANK``; 0 when not launched by
    it), known before the process group is joined."""
    return int(os.environ.get("RANK", "0"))


def init_distributed(backend: str | None = None) -> DistContext:
    """Join the process group ``torchrun`` describes (env ``RANK``, ``WORLD_SIZE``,
    ``LOCAL_RANK``); a single-process context when they are absent.

    ``backend`` defaults to ``nccl`` with CUDA and ``gloo`` without. Each process uses
    GPU ``LOCAL_RANK``. Calling it again in an initialised process reuses the group.
    """
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return local_context()
    rank = int(os.environ["RANK"])
    world_size = int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = _default_device(local_rank)
    if device.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise DistributedError(
                f"LOCAL_RANK {local_rank} but this machine has "
                f"{plural(torch.cuda.device_count(), 'GPU')}: start at most that many processes "
                "per node (--nproc_per_node)"
            )
        torch.cuda.set_device(device)
    chosen = backend or ("nccl" if device.type == "cuda" else "gloo")
    if not torch_dist.is_initialized():
        torch_dist.init_process_group(
            backend=chosen, device_id=device if device.type == "cuda" else None
        )
    context = DistContext(rank, world_size, local_rank, device, torch_dist.get_backend())
    if context.is_main:
        logger.info(
            "distributed: %s, backend %s, device %s",
            plural(world_size, "process"),
            context.backend,
            device.type,
        )
    return context


def cleanup() -> None:
    """Leave the process group (no-op when none is up)."""
    if torch_dist.is_initialized():
        torch_dist.destroy_process_group()


def barrier(context: DistContext) -> None:
    """Wait until every rank gets here."""
    if context.distributed:
        if context.device.type == "cuda":
            torch_dist.barrier(device_ids=[context.device.index or 0])
        else:
            torch_dist.barrier()


@contextmanager
def rank_zero_first(context: DistContext) -> Iterator[None]:
    """Run the block on rank 0 first, then on the other ranks together: rank 0 downloads
    or builds what is shared (a backbone, cache entries) once and the others reuse it.

    Collective: every rank must enter. If rank 0 fails inside, the others stay waiting
    until ``torchrun`` ends the group, as it does when any process exits with an error.
    """
    if not context.is_main:
        barrier(context)
    yield
    if context.is_main:
        barrier(context)


def all_reduce_sum(values: torch.Tensor, context: DistContext) -> torch.Tensor:
    """Element-wise sum over ranks (a new tensor on ``context.device``)."""
    reduced = values.detach().to(context.device, copy=True)
    if context.distributed:
        torch_dist.all_reduce(reduced, op=torch_dist.ReduceOp.SUM)
    return reduced


def all_reduce_mean(value: float | torch.Tensor, context: DistContext) -> float:
    """The mean of a scalar over ranks."""
    tensor = torch.as_tensor(value, dtype=torch.float64).reshape(())
    return float(all_reduce_sum(tensor, context).item()) / context.world_size


def broadcast_object(value: Any, context: DistContext) -> Any:
    """Rank 0's picklable ``value`` on every rank."""
    if not context.distributed:
        return value
    holder = [value]
    torch_dist.broadcast_object_list(holder, src=0)
    return holder[0]


def gather_objects(value: Any, context: DistContext) -> list[Any]:
    """Every rank's picklable ``value``, in rank order, on every rank."""
    if not context.distributed:
        return [value]
    gathered: list[Any] = [None] * context.world_size
    torch_dist.all_gather_object(gathered, value)
    return gathered


class EpochSampler(Sampler[list[int]]):
    """Seeded, epoch-aware batch sampler, sharded across ranks by global batch.

    Each epoch draws one permutation from ``(seed, epoch)`` (call :meth:`set_epoch`
    before iterating), cuts it into global batches of ``batch_size`` and gives rank ``r``
    of ``world_size`` the ``r``-th contiguous, near-equal chunk of every global batch. So
    global batch ``k`` holds the same examples whatever the number of ranks, every rank
    yields the same number of batches, and a chunk may be empty (when a final batch has
    fewer examples than ranks). Use it as a DataLoader's ``batch_sampler``.
    """

    def __init__(
        self,
        n: int,
        *,
        batch_size: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        shuffle: bool = True,
        drop_last: bool = False,
    ) -> None:
        if n < 0 or batch_size < 1 or seed < 0:
            raise ValueError(
                f"need n >= 0, batch_size >= 1, seed >= 0; got {n}, {batch_size}, {seed}"
            )
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world size {world_size}")
        self.n = n
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose permutation the next iteration draws."""
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        self.epoch = epoch

    def __len__(self) -> int:
        full, rest = divmod(self.n, self.batch_size)
        return full + int(rest > 0 and not self.drop_last)

    def __iter__(self) -> Iterator[list[int]]:
        if self.shuffle:
            generator = torch.Generator()
            generator.manual_seed(sample_seed(self.seed, self.epoch, 0, stream=_SHUFFLE_STREAM))
            order = torch.randperm(self.n, generator=generator)
        else:
            order = torch.arange(self.n)
        for batch in range(len(self)):
            start = batch * self.batch_size
            size = min(self.batch_size, self.n - start)
            first = start + self.rank * size // self.world_size
            last = start + (self.rank + 1) * size // self.world_size
            yield order[first:last].tolist()


def encoder_blocks(model: nn.Module, *, include_text: bool = False) -> list[nn.Module]:
    """The transformer blocks of Hugging Face encoders inside ``model``: the entries of
    every ``encoder.layers`` list (CLIP/SigLIP vision towers; text towers on request)."""
    blocks: list[nn.Module] = []
    for name, module in model.named_modules():
        if not isinstance(module, nn.ModuleList) or not (
            name == "encoder.layers" or name.endswith(".encoder.layers")
        ):
            continue
        if not include_text and "text_model" in name.split("."):
            continue
        blocks.extend(module)
    return blocks


def _resolve_blocks(model: nn.Module, blocks: BlockSpec | None) -> list[nn.Module]:
    if blocks is None:
        return encoder_blocks(model)
    if callable(blocks):
        return [m for m in model.modules() if m is not model and blocks(m)]
    owned = {id(m) for m in model.modules()}
    foreign = [type(b).__name__ for b in blocks if id(b) not in owned or b is model]
    if foreign:
        raise DistributedError(
            f"FSDP blocks must be submodules of the model (got {', '.join(foreign)})"
        )
    return list(blocks)


@torch.no_grad()
def _broadcast_module(model: nn.Module) -> None:
    """Rank 0's parameters and buffers on every rank (what DDP does on wrapping)."""
    for tensor in [*model.parameters(), *model.buffers()]:
        torch_dist.broadcast(tensor.data, src=0)


def wrap_model(
    model: nn.Module,
    distributed: DistributedMode,
    context: DistContext,
    blocks: BlockSpec | None = None,
) -> nn.Module:
    """Move ``model`` to ``context.device`` and wrap it for ``distributed``.

    ``ddp`` returns a :class:`DistributedDataParallel`; ``fsdp`` shards ``blocks`` (a
    list of submodules or a predicate; default :func:`encoder_blocks`) one by one and
    then the root, in place, after copying rank 0's weights to every rank. Build the
    optimizer after wrapping. Parameters that get no gradient must be frozen under DDP.
    """
    if distributed not in get_args(DistributedMode):
        raise DistributedError(
            f"unknown distributed {distributed!r}; choose {', '.join(get_args(DistributedMode))}"
        )
    if isinstance(model, (DistributedDataParallel, FSDPModule)):
        raise DistributedError(f"the model is already wrapped ({type(model).__name__})")
    if distributed == "none":
        if context.world_size > 1:
            raise DistributedError(
                f"distributed 'none' with {context.world_size} processes would train "
                "independent copies; use ddp or fsdp"
            )
        return model.to(context.device)
    if not context.distributed:
        raise DistributedError(
            f"distributed {distributed!r} needs a process group: {_TORCHRUN_HINT}"
        )
    model = model.to(context.device)
    if distributed == "ddp":
        device_ids = [context.device.index or 0] if context.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=device_ids)
    sharded = _resolve_blocks(model, blocks)
    _broadcast_module(model)
    mesh = init_device_mesh(context.device.type, (context.world_size,))
    for block in sharded:
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)
    if context.is_main:
        logger.info("FSDP: %s sharded, then the root", plural(len(sharded), "block"))
    return model


def unwrap(model: nn.Module) -> nn.Module:
    """The user's module: DDP's ``module``; FSDP and plain modules are themselves."""
    inner: nn.Module = model.module if isinstance(model, DistributedDataParallel) else model
    return inner


def gradient_sync(model: nn.Module, enabled: bool) -> AbstractContextManager[None]:
    """A context for one backward: with ``enabled`` false, gradients stay local
    (accumulation micro-batches); the next synchronised backward reduces them all."""
    if enabled:
        return nullcontext()
    if isinstance(model, DistributedDataParallel):
        return model.no_sync()
    if isinstance(model, FSDPModule):
        return _fsdp_no_sync(model)
    return nullcontext()


@contextmanager
def _fsdp_no_sync(model: FSDPModule) -> Iterator[None]:
    model.set_requires_gradient_sync(False)
    try:
        yield
    finally:
        model.set_requires_gradient_sync(True)


_FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)


def full_state_dict(model: nn.Module, distributed: DistributedMode) -> dict[str, torch.Tensor]:
    """The consolidated state dict of the unwrapped module, as CPU tensors that share no
    memory with the model. Collective for ``ddp``/``fsdp``: rank 0 gets it, others ``{}``."""
    if distributed == "none":
        return {k: v.detach().to("cpu", copy=True) for k, v in unwrap(model).state_dict().items()}
    state = cast(dict[str, torch.Tensor], get_model_state_dict(model, options=_FULL))
    # gathered shards are new tensors, but DDP's (and a one-rank FSDP's) are the live ones
    live = {_storage(t) for t in [*model.parameters(), *model.buffers()]}
    return {k: v.detach().clone() if _storage(v) in live else v for k, v in state.items()}


def _storage(tensor: torch.Tensor) -> int:
    """The address of the memory behind ``tensor`` (its local shard for a DTensor)."""
    local = tensor.to_local() if isinstance(tensor, DTensor) else tensor
    return int(local.untyped_storage().data_ptr())


def load_full_state_dict(
    model: nn.Module, state: dict[str, torch.Tensor], distributed: DistributedMode
) -> None:
    """Load a :func:`full_state_dict` (strict). Collective for ``ddp``/``fsdp``: rank 0's
    ``state`` is broadcast and sharded; the other ranks may pass ``{}``."""
    if distributed == "none":
        unwrap(model).load_state_dict(state, strict=True)
        return
    if distributed == "ddp":
        options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True)
        set_model_state_dict(model, dict(state), options=options)  # a copy: it is rewritten
        return
    _load_sharded(unwrap(model), state)


@torch.no_grad()
def _load_sharded(module: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """FSDP: broadcast each full tensor from rank 0 and copy this rank's shard into place.
    (``set_model_state_dict`` mishandles modules whose frozen and trainable parameters
    share FSDP groups, as fine-tuning does.)"""
    is_source = torch_dist.get_rank() == 0
    targets = module.state_dict(keep_vars=True)
    if is_source and set(state) != set(targets):
        missing, unexpected = set(targets) - set(state), set(state) - set(targets)
        raise DistributedError(f"state dict mismatch: missing {missing}, unexpected {unexpected}")
    for name, target in targets.items():
        local = target.to_local() if isinstance(target, DTensor) else target
        full = (
            state[name].to(device=local.device, dtype=target.dtype)
            if is_source
            else torch.empty(target.shape, dtype=target.dtype, device=local.device)
        )
        torch_dist.broadcast(full, src=0)
        if isinstance(target, DTensor):
            shard = distribute_tensor(
                full, target.device_mesh, target.placements, src_data_rank=None
            )
            local.copy_(shard.to_local())
        else:
            local.copy_(full)


def optimizer_state_dict(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The optimizer state keyed by parameter names, consolidated on CPU; collective for
    ``ddp``/``fsdp`` (rank 0 gets it, others ``{}``). Loads under any ``distributed``."""
    return dict(get_optimizer_state_dict(model, optimizer, options=_FULL))


def load_optimizer_state_dict(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    state: dict[str, Any],
    distributed: DistributedMode,
) -> None:
    """Load an :func:`optimizer_state_dict`; collective for ``ddp``/``fsdp`` (rank 0's
    ``state`` is broadcast, the other ranks may pass ``{}``)."""
    broadcast = distributed != "none"
    options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=broadcast)
    set_optimizer_state_dict(model, optimizer, state, options=options)
