"""Run under torchrun by test_distributed.py: train a tiny model on 2 gloo ranks, save results.

Usage: torchrun --nproc_per_node 2 dist_worker.py OUT_DIR
Writes OUT_DIR/rank{r}.pt with the parameters (full, gathered) after each scenario.
"""

from __future__ import annotations

import io
import sys
from pathlib import Path

import torch
from torch import nn

# Runs as a script: make the repository importable.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from core.train.compressed import CompressedAdamW, compressed_param_groups  # noqa: E402
from core.train.distributed import (  # noqa: E402
    all_reduce_mean,
    barrier,
    cleanup,
    exit_process,
    full_state_dict,
    gather_optimizer_state,
    load_full_state_dict,
    scatter_optimizer_state,
    setup_distributed,
    wrap_model,
)

VOCAB, D, GLOBAL_BATCH, SEQ, STEPS = 32, 16, 8, 6, 4


class Block(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(d)
        self.up_proj = nn.Linear(d, 2 * d, bias=False)
        self.down_proj = nn.Linear(2 * d, d, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.down_proj(torch.nn.functional.silu(self.up_proj(self.norm(x))))


class GatedBranch(nn.Module):
    """Like the reasoning engine: always called, skips its work when no sample passes the gate."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.proj = nn.Linear(d, d, bias=False)

    def forward(self, x: torch.Tensor, run: torch.Tensor) -> torch.Tensor:
        if not bool(run.any()):  # no sample runs → no gradient for proj on this rank
            return x
        return x + run[:, None, None] * self.proj(x)


class TinyNet(nn.Module):
    """Tied embedding, `layers` (FSDP units), a never-used module and a per-sample gated branch."""

    def __init__(self) -> None:
        super().__init__()
        self.token_embedding = nn.Embedding(VOCAB, D)
        nn.init.normal_(self.token_embedding.weight, std=0.1)
        self.layers = nn.ModuleList([Block(D) for _ in range(2)])
        self.reasoning_engine = GatedBranch(D)
        self.knowledge_graph = nn.Linear(D, D)  # never used in forward
        self.norm = nn.LayerNorm(D)
        self.output_projection = nn.Linear(D, VOCAB, bias=False)
        self.output_projection.weight = self.token_embedding.weight

    def forward(self, ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        x = self.token_embedding(ids)
        for layer in self.layers:
            x = layer(x)
        x = self.reasoning_engine(x, (ids[:, 0] % 2 == 0).to(x.dtype))
        logits = self.output_projection(self.norm(x))
        return nn.functional.cross_entropy(logits.reshape(-1, VOCAB), labels.reshape(-1))


def make_model() -> TinyNet:
    torch.manual_seed(0)
    return TinyNet()


def global_batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1000 + step)
    ids = torch.randint(0, VOCAB, (GLOBAL_BATCH, SEQ), generator=g)
    if step % 2 == 1:  # odd steps: the second half (rank 1 of 2) skips the gated branch
        ids[GLOBAL_BATCH // 2 :, 0] |= 1
        ids[0, 0] = 0  # ... while rank 0 runs it
    return ids, torch.roll(ids, -1, dims=1)


def make_optimizer(kind: str, model: nn.Module) -> torch.optim.Optimizer:
    if kind == "compressed":
        return CompressedAdamW(compressed_param_groups(model), lr=1e-2, betas=(0.9, 0.95))
    return torch.optim.AdamW(model.parameters(), lr=1e-2, betas=(0.9, 0.95))


def train(
    model: nn.Module, opt: torch.optim.Optimizer, steps: range, rank: int, world: int
) -> list[float]:
    per = GLOBAL_BATCH // world
    losses = []
    for step in steps:
        ids, labels = global_batch(step)
        loss = model(ids[rank * per : (rank + 1) * per], labels[rank * per : (rank + 1) * per])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(list(model.parameters()), 1.0)
        if hasattr(norm, "full_tensor"):
            norm = norm.full_tensor()
        assert torch.isfinite(norm)
        opt.step()
        losses.append(loss.item())
    return losses


def _to_bytes(obj: object) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def main(out: Path) -> None:
    torch.set_num_threads(1)
    ctx = setup_distributed("cpu")
    results: dict[str, object] = {
        "rank": ctx.rank,
        "world_size": ctx.world_size,
        "backend": ctx.backend,
        "is_main": ctx.is_main,
    }
    for shard in (False, True):
        for kind in ("adamw", "compressed"):
            name = f"{'fsdp' if shard else 'ddp'}_{kind}"
            model = make_model()
            wrapped = wrap_model(model, ctx, shard=shard)
            opt = make_optimizer(kind, model)  # after wrapping: FSDP replaced the parameters
            losses = train(wrapped, opt, range(STEPS), ctx.rank, ctx.world_size)
            results[f"{name}_mean_loss"] = all_reduce_mean(losses[-1], ctx)
            state = full_state_dict(wrapped, ctx)
            results[f"{name}_params"] = {k: v.detach().clone() for k, v in state.items()}
            if state:  # one tensor under both tied names: a checkpoint stores it once
                results[f"{name}_tied_shared"] = (
                    state["output_projection.weight"].data_ptr()
                    == state["token_embedding.weight"].data_ptr()
                )
            # Save and restore model and optimizer as a checkpoint would: rank 0 writes the bytes
            # (torch.save), every rank reads them back with weights_only=True.
            saved = gather_optimizer_state(opt, wrapped, ctx)
            blob = [_to_bytes({"model": state, "optimizer": saved}) if ctx.is_main else None]
            if ctx.world_size > 1:
                torch.distributed.broadcast_object_list(blob, src=0)
            loaded = torch.load(io.BytesIO(blob[0]), weights_only=True)
            model2 = make_model()
            wrapped2 = wrap_model(model2, ctx, shard=shard)
            load_full_state_dict(wrapped2, loaded["model"])
            opt2 = make_optimizer(kind, model2)
            opt2.load_state_dict(scatter_optimizer_state(loaded["optimizer"], opt2, ctx))
            train(wrapped, opt, range(STEPS, STEPS + 2), ctx.rank, ctx.world_size)
            train(wrapped2, opt2, range(STEPS, STEPS + 2), ctx.rank, ctx.world_size)
            a, b = full_state_dict(wrapped, ctx), full_state_dict(wrapped2, ctx)
            results[f"{name}_resume_maxdiff"] = max(
                (float((a[k] - b[k]).abs().max()) for k in a), default=0.0
            )
            if isinstance(opt, CompressedAdamW):
                results[f"{name}_state_bytes"] = opt.state_bytes()
            barrier(ctx)
    torch.save(results, out / f"rank{ctx.rank}.pt")
    cleanup()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
    exit_process(0)  # as `aeron-tui train` ends under torchrun (no finalization)
