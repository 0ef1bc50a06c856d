"""Multi-process training: process-group setup, DDP / FSDP wrapping, gathering full states.

The same ``aeron-tui train ...`` command runs under ``torchrun``: :func:`setup_distributed` reads
torchrun's environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR/PORT``), picks
NCCL on CUDA and gloo on CPU, and returns a :class:`DistContext` the engine uses to decide who
writes (rank 0 only) and how the model is wrapped. Without torchrun it is a single process and
nothing here touches ``torch.distributed``.

Two wrappings (:func:`wrap_model`):

* replicated (default): ``DistributedDataParallel``. Every rank holds the whole model and
  optimizer; gradients are averaged. ``find_unused_parameters`` is on because a step need not
  use every parameter (the reasoning gate skips the engine per sample, the knowledge graph,
  vision and task paths only run with their inputs).
* sharded (``--shard``): FSDP2 ``fully_shard`` on every encoder/decoder (and fusion) layer and on
  the root, so parameters, gradients and optimizer state are split across ranks. Build the
  optimizer *after* wrapping: ``fully_shard`` replaces the parameters with sharded ones.

Buffers (the episodic memory, usage counters) are copied from rank 0 once when DDP starts and
not synchronised afterwards (``forward_sync_buffers=False``): each rank's memory then holds what
its own samples wrote, and rank 0's is what checkpoints keep.

Checkpoints keep the single-process layout: :func:`full_state_dict` gathers the full weights
(to rank 0's CPU under FSDP). A sharded optimizer's state is per rank; :func:`gather_optimizer_state`
collects the ranks' pieces into one ``optimizer.pt`` and :func:`scatter_optimizer_state` hands
each rank its piece back on resume (which therefore needs the same number of ranks).
"""

from __future__ import annotations

import datetime
import os
import sys
from dataclasses import dataclass
from typing import Any, NoReturn

import torch
from torch import nn

from core.errors import CheckpointError, ConfigError

SHARDED_OPTIMIZER_KEY = "sharded_optimizer"


@dataclass(frozen=True)
class DistContext:
    """Who this process is in a (possibly single-process) run."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    backend: str | None = None  # "nccl", "gloo" or None (single process)
    is_main: bool = True

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError as exc:
        raise ConfigError(f"environment variable {name}={raw!r} is not an integer") from exc


def launched_by_torchrun() -> bool:
    """True when torchrun (or another launcher) set a multi-process environment."""
    return "RANK" in os.environ and _env_int("WORLD_SIZE", 1) > 1


def setup_distributed(device: str = "auto", timeout_s: float = 1800.0) -> DistContext:
    """Join the process group when launched by torchrun; otherwise a single-process context.

    ``device``: ``auto`` (CUDA when available, else CPU), ``cuda`` or ``cpu``. On CUDA each
    process takes the GPU ``LOCAL_RANK`` and NCCL; on CPU gloo.
    """
    want_cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' was requested but no CUDA device is available")
    if not launched_by_torchrun():
        dev = torch.device("cuda" if want_cuda else "cpu")
        return DistContext(device=dev)

    import torch.distributed as dist

    rank = _env_int("RANK", 0)
    world = _env_int("WORLD_SIZE", 1)
    local_rank = _env_int("LOCAL_RANK", 0)
    if not 0 <= rank < world:
        raise ConfigError(f"RANK={rank} is not in [0, WORLD_SIZE={world})")
    if want_cuda:
        count = torch.cuda.device_count()
        if local_rank >= count:
            raise ConfigError(
                f"LOCAL_RANK={local_rank} but this node has {count} CUDA device(s); "
                f"start torchrun with --nproc_per_node <= {count}"
            )
        torch.cuda.set_device(local_rank)
        dev, backend = torch.device("cuda", local_rank), "nccl"
    else:
        dev, backend = torch.device("cpu"), "gloo"
    if not dist.is_initialized():
        dist.init_process_group(
            backend=backend,
            rank=rank,
            world_size=world,
            timeout=datetime.timedelta(seconds=timeout_s),
        )
    return DistContext(rank, world, local_rank, dev, backend, rank == 0)


_LEFT_PROCESS_GROUP = False


def cleanup() -> None:
    """Leave the process group (no-op when there is none)."""
    global _LEFT_PROCESS_GROUP
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
        _LEFT_PROCESS_GROUP = True


def left_process_group() -> bool:
    """True once :func:`cleanup` has left a process group in this process."""
    return _LEFT_PROCESS_GROUP


def exit_process(code: object = 0) -> NoReturn:
    """End a process that ran collectives: flush what it printed and ``os._exit(code)``.

    ``destroy_process_group`` does not free the process group: under FSDP2 the parameters are
    DTensors whose specs DTensor's sharding cache keeps, and through them the device mesh and
    the group; gloo's worker threads outlive it and release finished work lazily. When such a
    thread drops the last all-gather's tensors while the interpreter finalizes, their Python
    objects need the GIL, CPython ends the thread with ``pthread_exit``, the unwind crosses a
    C++ destructor and ``std::terminate`` aborts the process ("terminate called without an
    active exception", SIGABRT, after the rank finished its work; seen in a core dump:
    ``ProcessGroupGloo::runLoop`` → ``~AsyncWork`` → ``THPVariable_clear`` → ``take_gil`` →
    ``PyThread_exit_thread``). torchrun then reports the run as failed. Our own state is closed
    by then (events, trackers, checkpoints, run lock), so the process leaves without
    finalization. ``code`` follows ``sys.exit``: None is 0, an int is itself, anything else is
    printed to stderr and gives 1.
    """
    import logging

    if code is None:
        status = 0
    elif isinstance(code, int) and not isinstance(code, bool):
        status = code
    else:
        print(code, file=sys.stderr)
        status = 1
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass  # a closed or broken stream: nothing more can reach it
    os._exit(status)


def barrier(ctx: DistContext | None) -> None:
    if ctx is not None and ctx.distributed:
        import torch.distributed as dist

        dist.barrier()


def all_reduce_mean(value: float, ctx: DistContext | None) -> float:
    """The mean of a scalar over ranks (for logging; the value itself on one process)."""
    if ctx is None or not ctx.distributed:
        return float(value)
    import torch.distributed as dist

    t = torch.tensor([float(value)], dtype=torch.float64, device=_collective_device(ctx))
    dist.all_reduce(t)
    return float(t.item()) / ctx.world_size


def _collective_device(ctx: DistContext) -> torch.device:
    return ctx.device if ctx.backend == "nccl" else torch.device("cpu")


# ----------------------------------------------------------------------------------- wrapping
def shard_units(model: nn.Module) -> list[nn.Module]:
    """The modules FSDP shards one by one: every entry of a ``layers`` ModuleList."""
    units: list[nn.Module] = []
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and name.rsplit(".", 1)[-1] == "layers":
            units.extend(module)
    return units


def is_sharded(model: nn.Module) -> bool:
    """True when ``model`` (or a submodule) was wrapped by FSDP2 ``fully_shard``."""
    from torch.distributed.fsdp import FSDPModule

    return any(isinstance(m, FSDPModule) for m in model.modules())


def wrap_model(
    model: nn.Module,
    ctx: DistContext,
    shard: bool = False,
    find_unused_parameters: bool = True,
) -> nn.Module:
    """DDP (or FSDP2 with ``shard``) for a multi-process run; the model itself otherwise.

    With ``shard`` the model is sharded *in place* (its parameters become DTensors) and
    returned; an optimizer must be built on its parameters afterwards.
    """
    if not ctx.distributed:
        return model
    if shard:
        from torch.distributed.fsdp import fully_shard

        for name in CONDITIONAL_MODULES:
            module = _find_submodule(model, name)
            if module is not None:
                module.register_forward_hook(_touch_all_parameters)
        _scalars_to_vectors(model)
        for unit in shard_units(model):
            fully_shard(unit)
        fully_shard(model)
        return model
    from torch.nn.parallel import DistributedDataParallel

    device_ids = [ctx.local_rank] if ctx.device.type == "cuda" else None
    return DistributedDataParallel(
        model,
        device_ids=device_ids,
        find_unused_parameters=find_unused_parameters,
        forward_sync_buffers=False,  # each rank keeps its own memory writes (module docstring)
        gradient_as_bucket_view=True,
    )


# Modules whose parameters a rank may or may not use depending on its data (the reasoning gate
# skips the whole engine when no sample of the batch passes). FSDP reduce-scatters only the
# gradients a rank has, so ranks that skipped would send fewer bytes than ranks that ran and
# the collective fails ("Received data size doesn't match"). Under FSDP these modules' outputs
# therefore carry a zero-valued term touching all their parameters: every rank produces a
# gradient (exact zeros where it skipped) and the sums stay right. The cost: their parameters
# that no rank uses still get zero gradients, so AdamW applies weight decay to them.
CONDITIONAL_MODULES = ("reasoning_engine",)


def _find_submodule(model: nn.Module, name: str) -> nn.Module | None:
    try:
        module = model.get_submodule(name)
    except AttributeError:
        return None
    return module if isinstance(module, nn.Module) else None


def _touch_all_parameters(module: nn.Module, args: Any, output: Any) -> Any:
    if not (module.training and torch.is_grad_enabled()):
        return None
    params = [p for p in module.parameters() if p.requires_grad]
    if not params:
        return None
    zero = torch.stack([p.sum() for p in params]).sum() * 0.0
    return _add_to_output(output, zero)


def _add_to_output(output: Any, zero: torch.Tensor) -> Any:
    """``output`` with ``zero`` added to its main tensor (Tensor, ``.hidden``, tuple or dict)."""
    import dataclasses

    if isinstance(output, torch.Tensor) and output.is_floating_point():
        return output + zero.to(output.dtype)
    if dataclasses.is_dataclass(output) and isinstance(
        getattr(output, "hidden", None), torch.Tensor
    ):
        return dataclasses.replace(output, hidden=output.hidden + zero.to(output.hidden.dtype))
    if isinstance(output, tuple) and output and isinstance(output[0], torch.Tensor):
        return (output[0] + zero.to(output[0].dtype), *output[1:])
    if isinstance(output, dict) and isinstance(output.get("loss"), torch.Tensor):
        return {**output, "loss": output["loss"] + zero.to(output["loss"].dtype)}
    return None


_SCALARS_ATTR = "_aeron_fsdp_scalar_params"


def _scalars_to_vectors(model: nn.Module) -> None:
    """FSDP cannot shard 0-d parameters: store each as shape (1,) (it broadcasts the same).

    The names are remembered so full state dicts keep the single-process shape ``()``.
    """
    names: set[str] = set()
    for name, param in list(model.named_parameters()):
        if param.ndim == 0:
            owner_name, _, attr = name.rpartition(".")
            owner = model.get_submodule(owner_name) if owner_name else model
            setattr(
                owner,
                attr,
                nn.Parameter(param.detach().reshape(1), requires_grad=param.requires_grad),
            )
            names.add(name)
    setattr(model, _SCALARS_ATTR, names)


def unwrap_model(model: nn.Module) -> nn.Module:
    """The user's module under DDP and ``torch.compile`` wrappers (FSDP2 wraps in place)."""
    inner: Any = model
    while True:
        if hasattr(inner, "_orig_mod"):
            inner = inner._orig_mod
        elif isinstance(inner, torch.nn.parallel.DistributedDataParallel):
            inner = inner.module
        else:
            return inner


def tied_parameter_names(model: nn.Module) -> dict[str, str]:
    """``{alias: first_name}`` for parameters registered under more than one name."""
    first: dict[int, str] = {}
    aliases: dict[str, str] = {}
    for name, p in unwrap_model(model).named_parameters(remove_duplicate=False):
        if id(p) in first:
            aliases[name] = first[id(p)]
        else:
            first[id(p)] = name
    return aliases


def full_state_dict(model: nn.Module, ctx: DistContext | None) -> dict[str, torch.Tensor]:
    """The whole model's state dict in the single-process layout (call on every rank).

    Under FSDP the shards are gathered to CPU on rank 0 (other ranks get ``{}``); tied weights
    are returned as one tensor under both names so checkpoints store it once.
    """
    inner = unwrap_model(model)
    if not is_sharded(inner):
        return inner.state_dict()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    state = get_model_state_dict(
        inner, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
    )
    for name in getattr(inner, _SCALARS_ATTR, ()):
        if name in state:
            state[name] = state[name].reshape(())
    if state:
        for alias, name in tied_parameter_names(inner).items():
            if alias in state and name in state:
                state[alias] = state[name]
    return state


def load_full_state_dict(
    model: nn.Module, state: dict[str, torch.Tensor], source: str = "checkpoint"
) -> None:
    """Load a full (single-process layout) state dict into a plain, DDP or FSDP model.

    Every rank passes the full dict (each reads the checkpoint itself). Missing or unexpected
    tensors are a CheckpointError naming them.
    """
    inner = unwrap_model(model)
    expected = set(inner.state_dict().keys())
    missing = sorted(expected - set(state))
    unexpected = sorted(set(state) - expected)
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing tensors {', '.join(missing[:5])}")
        if unexpected:
            parts.append(f"unexpected tensors {', '.join(unexpected[:5])}")
        raise CheckpointError(f"{source}: does not fit this model: {'; '.join(parts)}")
    if not is_sharded(inner):
        inner.load_state_dict(state)
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    scalars = getattr(inner, _SCALARS_ATTR, ())
    state = {k: (v.reshape(1) if k in scalars else v) for k, v in state.items()}
    set_model_state_dict(inner, state, options=StateDictOptions(full_state_dict=True))


# -------------------------------------------------------------------- sharded optimizer state
def _local(value: Any) -> Any:
    """DTensors → their local shard (plain tensors), recursively."""
    from torch.distributed.tensor import DTensor

    if isinstance(value, DTensor):
        return value.to_local().detach().to("cpu")
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu")
    if isinstance(value, dict):
        return {k: _local(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_local(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_local(v) for v in value)
    return value


def gather_optimizer_state(
    optimizer: torch.optim.Optimizer, model: nn.Module, ctx: DistContext | None
) -> dict[str, Any] | None:
    """The optimizer state to save (call on every rank; rank 0 gets the result, others None).

    Replicated runs: rank 0's ``state_dict()`` (all ranks hold the same). Sharded runs: every
    rank's local state, as ``{"sharded_optimizer": {"world_size": W, "ranks": [...]}}``.
    """
    if ctx is None or not ctx.distributed or not is_sharded(unwrap_model(model)):
        return optimizer.state_dict() if ctx is None or ctx.is_main else None
    import torch.distributed as dist

    local = _local(optimizer.state_dict())
    gathered: list[Any] | None = [None] * ctx.world_size if ctx.is_main else None
    dist.gather_object(local, gathered, dst=0)
    if not ctx.is_main:
        return None
    return {SHARDED_OPTIMIZER_KEY: {"world_size": ctx.world_size, "ranks": gathered}}


def scatter_optimizer_state(
    state: dict[str, Any],
    optimizer: torch.optim.Optimizer,
    ctx: DistContext | None,
    source: str = "optimizer.pt",
) -> dict[str, Any]:
    """This rank's piece of a saved optimizer state, ready for ``optimizer.load_state_dict``.

    States saved by a sharded run must be resumed by a sharded run with the same world size;
    plain states load unchanged (DTensor-valued state is rebuilt for sharded parameters).
    """
    sharded = state.get(SHARDED_OPTIMIZER_KEY)
    if sharded is None:
        return state
    world = int(sharded.get("world_size", 0))
    have = ctx.world_size if ctx is not None else 1
    if ctx is None or world != have:
        raise CheckpointError(
            f"{source}: the optimizer state is sharded over {world} ranks; resume with "
            f"torchrun --nproc_per_node {world} --shard (this run has {have})"
        )
    piece = sharded["ranks"][ctx.rank]
    if getattr(optimizer, "shard_local_state", False):
        return piece  # the optimizer keeps plain per-shard tensors (CompressedAdamW)
    return _to_dtensor_state(piece, optimizer, ctx)


def _to_dtensor_state(
    piece: dict[str, Any], optimizer: torch.optim.Optimizer, ctx: DistContext
) -> dict[str, Any]:
    """Re-wrap per-parameter state tensors shaped like a DTensor parameter's local shard."""
    from torch.distributed.tensor import DTensor

    params = [p for g in optimizer.param_groups for p in g["params"]]
    state = piece.get("state", {})
    out: dict[Any, Any] = {}
    for idx, entry in state.items():
        p = params[int(idx)] if int(idx) < len(params) else None
        if isinstance(p, DTensor) and isinstance(entry, dict):
            local_shape = p.to_local().shape
            entry = {
                k: (
                    DTensor.from_local(
                        v.to(ctx.device),
                        p.device_mesh,
                        p.placements,
                        run_check=False,
                        shape=p.shape,
                        stride=p.stride(),
                    )
                    if isinstance(v, torch.Tensor) and v.shape == local_shape and k != "step"
                    else v
                )
                for k, v in entry.items()
            }
        out[idx] = entry
    return {**piece, "state": out}
