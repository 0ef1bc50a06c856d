"""Run the real trainer under torchrun (as ``aeron-tui train`` does) and save each rank's weights.

Usage: torchrun --nproc_per_node 2 engine_dist_worker.py OUT_DIR TRAINER [--shard] [--set K=V ...]
         ... --run-dir DIR --data PATH --steps N --micro-batch B
Writes OUT_DIR/rank{r}.pt: this rank's full parameters (DDP) or the gathered ones (FSDP, rank 0).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from aeron_tui.commands.train import _distributed_context, build_run_config  # noqa: E402
from aeron_tui.trainers import get_trainer  # noqa: E402
from core.train.distributed import cleanup, exit_process, full_state_dict  # noqa: E402


def parse(argv: list[str]) -> tuple[Path, str, bool, dict[str, str], list[str]]:
    out, trainer, rest = Path(argv[0]), argv[1], argv[2:]
    shard, flags, sets = False, {}, []
    i = 0
    while i < len(rest):
        if rest[i] == "--shard":
            shard = True
            i += 1
        elif rest[i] == "--set":
            sets.append(rest[i + 1])
            i += 2
        else:
            flags[rest[i].lstrip("-").replace("-", "_")] = rest[i + 1]
            i += 2
    return out, trainer, shard, flags, sets


def main() -> None:
    torch.set_num_threads(1)
    out, trainer, shard, flags, sets = parse(sys.argv[1:])
    typed = {
        "run_dir": flags["run_dir"],
        "data": flags["data"],
        "steps": int(flags["steps"]),
        "micro_batch": int(flags["micro_batch"]),
    }
    run_config, model_config = build_run_config(
        trainer, profile="tiny", flags=typed, sets=sets, shard=shard, resume=flags.get("resume")
    )
    dist = _distributed_context(run_config)
    assert dist is not None and dist.world_size == 2, "run me under torchrun with 2 processes"
    instance = get_trainer(trainer).load()(run_config, model_config, dist=dist)
    status = instance.run()
    state = full_state_dict(instance.train_model, dist)
    torch.save(
        {
            "status": status,
            "rank": dist.rank,
            "global_step": instance.global_step,
            "params": {k: v.detach().cpu().clone() for k, v in state.items()},
        },
        out / f"rank{dist.rank}.pt",
    )
    cleanup()


if __name__ == "__main__":
    main()
    exit_process(0)  # as `aeron-tui train` ends under torchrun (no finalization)
