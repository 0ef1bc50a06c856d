"""Distributed training helpers: contexts, wrapping, gathering, and 2-process gloo runs on CPU."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from core.errors import CheckpointError, ConfigError
from core.train.compressed import CompressedAdamW
from core.train.distributed import (
    SHARDED_OPTIMIZER_KEY,
    DistContext,
    _add_to_output,
    all_reduce_mean,
    full_state_dict,
    gather_optimizer_state,
    launched_by_torchrun,
    load_full_state_dict,
    scatter_optimizer_state,
    setup_distributed,
    shard_units,
    tied_parameter_names,
    unwrap_model,
    wrap_model,
)

WORKER = Path(__file__).with_name("dist_worker.py")


def _clear_torchrun_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)


def test_single_process_context_without_torchrun(monkeypatch: pytest.MonkeyPatch) -> None:
    _clear_torchrun_env(monkeypatch)
    ctx = setup_distributed("cpu")
    assert ctx == DistContext()
    assert ctx.is_main and not ctx.distributed and ctx.backend is None
    assert not launched_by_torchrun()
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")  # torchrun with one process: still single
    assert setup_distributed("cpu").world_size == 1


def test_bad_torchrun_environment_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    _clear_torchrun_env(monkeypatch)
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(ConfigError, match="WORLD_SIZE"):
        setup_distributed("cpu")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "5")
    with pytest.raises(ConfigError, match="RANK=5"):
        setup_distributed("cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no CUDA device"):
            setup_distributed("cuda")


def _dist_worker_module() -> Any:
    sys.path.insert(0, str(WORKER.parent))
    try:
        import dist_worker
    finally:
        sys.path.remove(str(WORKER.parent))
    return dist_worker


def test_single_process_helpers_are_identity() -> None:
    w = _dist_worker_module()
    model = w.make_model()
    ctx = DistContext()
    assert wrap_model(model, ctx, shard=True) is model
    assert unwrap_model(model) is model
    assert all_reduce_mean(2.5, ctx) == 2.5 and all_reduce_mean(2.5, None) == 2.5
    assert [type(u).__name__ for u in shard_units(model)] == ["Block", "Block"]
    assert tied_parameter_names(model) == {"output_projection.weight": "token_embedding.weight"}
    state = full_state_dict(model, ctx)
    assert state.keys() == model.state_dict().keys()
    opt = CompressedAdamW(model.parameters(), lr=1e-3)
    saved = gather_optimizer_state(opt, model, ctx)
    assert saved is not None and SHARDED_OPTIMIZER_KEY not in saved
    assert scatter_optimizer_state(saved, opt, ctx) is saved
    with pytest.raises(CheckpointError, match="missing tensors norm.weight"):
        load_full_state_dict(model, {k: v for k, v in state.items() if k != "norm.weight"})


def test_sharded_optimizer_state_needs_the_same_world_size() -> None:
    opt = CompressedAdamW([nn.Parameter(torch.zeros(3))], lr=1e-3)
    saved = {SHARDED_OPTIMIZER_KEY: {"world_size": 4, "ranks": [{}, {}, {}, {}]}}
    with pytest.raises(CheckpointError, match="--nproc_per_node 4"):
        scatter_optimizer_state(saved, opt, DistContext(world_size=2, rank=1, is_main=False))
    with pytest.raises(CheckpointError, match="sharded over 4 ranks"):
        scatter_optimizer_state(saved, opt, None)


def test_zero_dependency_reaches_every_output_shape() -> None:
    from core.model.reasoning import ReasoningOutput

    z = torch.zeros((), requires_grad=True)
    x = torch.ones(2, 3)
    assert torch.equal(_add_to_output(x, z), x)
    out = _add_to_output(ReasoningOutput(x, None, {}, None), z)
    assert isinstance(out, ReasoningOutput) and out.hidden.grad_fn is not None
    assert _add_to_output((x, 1), z)[1] == 1
    assert _add_to_output({"loss": x.sum()}, z)["loss"].grad_fn is not None
    assert _add_to_output("not a tensor", z) is None


def run_torchrun(script: Path | list[str], args: list[str], nproc: int = 2,
                 timeout: float = 240) -> str:
    """Run ``script`` (or ``["-m", module]``) under torchrun (standalone rendezvous on a free
    local port)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        str(nproc),
        *(script if isinstance(script, list) else [str(script)]),
        *args,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return proc.stdout


@pytest.fixture(scope="module")
def two_rank_results(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, dict]:
    out = tmp_path_factory.mktemp("dist")
    run_torchrun(WORKER, [str(out)])
    return (
        torch.load(out / "rank0.pt", weights_only=True),
        torch.load(out / "rank1.pt", weights_only=True),
    )


def _single_process(kind: str) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    w = _dist_worker_module()
    model = w.make_model()
    init = {k: v.clone() for k, v in model.state_dict().items()}
    w.train(model, w.make_optimizer(kind, model), range(w.STEPS), rank=0, world=1)
    return init, model.state_dict()


def _maxdiff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], keys: Any = None) -> float:
    """Largest absolute difference over ``keys`` (default: all; both must hold the same)."""
    if keys is None:
        assert a.keys() == b.keys()
        keys = a.keys()
    return max(float((a[k].detach() - b[k].detach()).abs().max()) for k in keys)


@pytest.mark.slow
def test_two_gloo_ranks_identify_themselves(two_rank_results: tuple[dict, dict]) -> None:
    r0, r1 = two_rank_results
    assert (r0["rank"], r1["rank"]) == (0, 1)
    assert r0["world_size"] == r1["world_size"] == 2
    assert r0["backend"] == r1["backend"] == "gloo"
    assert r0["is_main"] and not r1["is_main"]


@pytest.mark.slow
@pytest.mark.parametrize(("kind", "tol"), [("adamw", 1e-5), ("compressed", 1e-3)])
def test_ddp_ranks_identical_and_equal_to_one_process(
    two_rank_results: tuple[dict, dict], kind: str, tol: float
) -> None:
    r0, r1 = two_rank_results
    init, single = _single_process(kind)
    p0, p1 = r0[f"ddp_{kind}_params"], r1[f"ddp_{kind}_params"]
    assert _maxdiff(p0, p1) == 0.0  # every rank holds the same parameters
    assert _maxdiff(p0, single) < tol  # same global batch in one process
    assert _maxdiff(init, single) > 10 * tol  # ... and the parameters did move
    assert r0[f"ddp_{kind}_resume_maxdiff"] == r1[f"ddp_{kind}_resume_maxdiff"] == 0.0


@pytest.mark.slow
@pytest.mark.parametrize(("kind", "tol"), [("adamw", 1e-5), ("compressed", 1e-3)])
def test_fsdp_gathers_to_rank0_and_equals_one_process(
    two_rank_results: tuple[dict, dict], kind: str, tol: float
) -> None:
    r0, r1 = two_rank_results
    _, single = _single_process(kind)
    gathered = r0[f"fsdp_{kind}_params"]
    assert r1[f"fsdp_{kind}_params"] == {}  # only rank 0 receives the full state
    assert _maxdiff(gathered, single) < tol
    # The tied weight comes back as one tensor, so a checkpoint stores it once.
    assert r0[f"fsdp_{kind}_tied_shared"] and r0[f"ddp_{kind}_tied_shared"]
    # Resuming from the gathered weights + per-rank optimizer state continues identically.
    assert r0[f"fsdp_{kind}_resume_maxdiff"] == r1[f"fsdp_{kind}_resume_maxdiff"] == 0.0


@pytest.mark.slow
def test_fsdp_splits_compressed_optimizer_state(two_rank_results: tuple[dict, dict]) -> None:
    r0, r1 = two_rank_results
    ddp, fsdp = r0["ddp_compressed_state_bytes"], r0["fsdp_compressed_state_bytes"]
    # Each rank holds about half of the sharded state (plus per-block scales and counters).
    assert sum(fsdp.values()) < 0.7 * sum(ddp.values())
    assert r1["fsdp_compressed_state_bytes"] == fsdp


# ----------------------------------------------------------------- the real engine under torchrun
ENGINE_WORKER = Path(__file__).with_name("engine_dist_worker.py")


def _equal_length_styles(path: Path, n: int = 64) -> Path:
    """Every sample the same length in (byte) tokens, so each rank averages as many tokens as
    the single process's half-batch: DDP's mean of rank means then equals the global mean."""
    import json
    import random

    rng = random.Random(0)
    rows = []
    for i in range(n):
        a, b = rng.randint(10, 99), rng.randint(10, 99)
        rows.append(
            {
                "provider": "synthetic",
                "style_label": ("qa", "math")[i % 2],
                "user_input": f"Add {a} and {b}",
                "assistant_reply": f"{a + b:03d}",
                "turn_id": f"t{i:04d}",
            }
        )
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _engine_sets() -> list[str]:
    from train_helpers import TINY_MODEL_SETS

    # Byte-level vocabulary (268) keeps every sample the same length; the episodic memory is
    # off because each rank would write its own samples' slots (see core/train/distributed.py).
    # The uncertainty MC head's dropout is off too: its masks (which shape the UQ loss gradient)
    # come from each rank's own RNG stream, so they cannot match one process's draws.
    return [
        *TINY_MODEL_SETS,
        "model.enable_memory=false",
        "model.uq_mc_dropout=0.0",
        "tokenizer_vocab_size=268",
        "log_every=1",
        "eval_every=1000",
        "checkpoint_every=2",
        "eval_max_batches=1",
        "precision='fp32'",
        "device='cpu'",
        "seq_len=32",
        "seed=3",
        "keep_last=5",
    ]


def _run_engine_ranks(
    out: Path,
    trainer: str,
    run_dir: Path,
    data: Path,
    steps: int,
    shard: bool = False,
    resume: Path | None = None,
) -> tuple[dict, dict]:
    args = [
        str(out),
        trainer,
        "--run-dir",
        str(run_dir),
        "--data",
        str(data),
        "--steps",
        str(steps),
        "--micro-batch",
        "4",
    ]
    if resume is not None:
        args += ["--resume", str(resume)]
    if shard:
        args.append("--shard")
    for item in _engine_sets():
        args += ["--set", item]
    run_torchrun(ENGINE_WORKER, args)
    return (
        torch.load(out / "rank0.pt", weights_only=True),
        torch.load(out / "rank1.pt", weights_only=True),
    )


def _single_engine_run(trainer: str, run_dir: Path, data: Path, steps: int) -> Any:
    """The same run in one process with the same global batch (micro-batch 8 = 2 ranks x 4)."""
    from aeron_tui.commands.train import build_run_config
    from aeron_tui.trainers import get_trainer

    flags = {"run_dir": str(run_dir), "data": str(data), "steps": steps, "micro_batch": 8}
    cfg, model_cfg = build_run_config(trainer, profile="tiny", flags=flags, sets=_engine_sets())
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        instance = get_trainer(trainer).load()(cfg, model_cfg)
        instance.setup()
        instance.initial_params = {
            k: v.detach().clone() for k, v in instance.model.named_parameters()
        }
        try:
            assert instance.train() == "finished"
        finally:
            instance.cleanup()
    finally:
        torch.set_num_threads(before)
    return instance


def _checkpoint_layout(path: Path) -> dict[str, tuple[int, ...]]:
    from safetensors import safe_open

    with safe_open(str(path / "model.safetensors"), "pt") as f:
        return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118


def _event_types(run_dir: Path) -> list[str]:
    from core.runs.events import ParseProblem, read_events

    events = list(read_events(run_dir / "events.jsonl"))
    assert not any(isinstance(e, ParseProblem) for e in events)
    assert [e["seq"] for e in events] == list(range(len(events)))  # one writer: rank 0
    return [e["type"] for e in events]


@pytest.mark.slow
def test_engine_ddp_two_ranks_equal_one_process(tmp_path: Path) -> None:
    data = _equal_length_styles(tmp_path / "styles.jsonl")
    (tmp_path / "out").mkdir()
    r0, r1 = _run_engine_ranks(tmp_path / "out", "simple", tmp_path / "ddp", data, steps=4)
    assert r0["status"] == r1["status"] == "finished" and r0["global_step"] == 4
    single = _single_engine_run("simple", tmp_path / "single", data, steps=4)
    params = dict(single.model.named_parameters())
    assert r0["params"].keys() == single.model.state_dict().keys()
    # Parameters identical on both ranks (buffers such as the scratchpad are rank-local).
    assert _maxdiff(r0["params"], r1["params"], params) == 0.0
    assert _maxdiff(r0["params"], params, params) < 1e-5
    assert _maxdiff(r0["params"], single.initial_params, params) > 1e-4  # they did train
    # Only rank 0 wrote: one event stream, checkpoints in the single-process layout.
    types = _event_types(tmp_path / "ddp")
    assert types.count("run_started") == 1 and types.count("step") == 4
    ckpt = tmp_path / "ddp" / "checkpoints" / "step_000004"
    assert _checkpoint_layout(ckpt) == _checkpoint_layout(
        tmp_path / "single" / "checkpoints" / "step_000004"
    )


@pytest.mark.slow
def test_engine_fsdp_compressed_equals_one_process_and_resumes(tmp_path: Path) -> None:
    data = _equal_length_styles(tmp_path / "styles.jsonl")
    (tmp_path / "a").mkdir()
    r0, r1 = _run_engine_ranks(
        tmp_path / "a", "compressed", tmp_path / "full", data, steps=4, shard=True
    )
    assert r0["status"] == r1["status"] == "finished"
    assert r1["params"] == {}  # sharded: only rank 0 receives the gathered weights
    single = _single_engine_run("compressed", tmp_path / "single", data, steps=4)
    params = dict(single.model.named_parameters())
    assert r0["params"].keys() == single.model.state_dict().keys()
    assert _maxdiff(r0["params"], params, params) < 1e-3
    # The gathered checkpoint has the single-process layout (tied weight once, scalars as ()).
    full_ckpt = tmp_path / "full" / "checkpoints"
    assert _checkpoint_layout(full_ckpt / "step_000004") == _checkpoint_layout(
        tmp_path / "single" / "checkpoints" / "step_000004"
    )
    opt_state = torch.load(full_ckpt / "step_000002" / "optimizer.pt", weights_only=True)
    assert opt_state["sharded_optimizer"]["world_size"] == 2
    # Resume the sharded run from step 2 in a new run directory: same weights at step 4.
    (tmp_path / "b").mkdir()
    b0, _ = _run_engine_ranks(
        tmp_path / "b",
        "compressed",
        tmp_path / "resumed",
        data,
        steps=4,
        shard=True,
        resume=full_ckpt / "step_000002",
    )
    assert b0["global_step"] == 4
    assert _maxdiff(b0["params"], r0["params"], params) < 1e-6


@pytest.mark.slow
def test_cli_train_under_torchrun_ends_cleanly_with_everything_written(tmp_path: Path) -> None:
    """`aeron-tui train` itself under torchrun (`-m aeron_tui`, FSDP): both ranks exit 0, and
    what a rank writes last — rank 0's headless summary on stdout, its event stream's
    `run_finished`, the final checkpoint — is complete although the ranks leave without
    interpreter finalization (`core.train.distributed.exit_process`)."""
    data = _equal_length_styles(tmp_path / "styles.jsonl")
    args = ["train", "compressed", "--profile", "tiny", "--run-dir", str(tmp_path / "run"),
            "--data", str(data), "--steps", "2", "--micro-batch", "4", "--shard"]
    for item in _engine_sets():
        args += ["--set", item]
    out = run_torchrun(["-m", "aeron_tui"], args)  # as the README starts it
    assert "run finished: 2/2 steps" in out  # the last line rank 0 prints
    types = _event_types(tmp_path / "run")
    assert types[-1] == "run_finished" and types.count("step") == 2
    assert (tmp_path / "run" / "checkpoints" / "step_000002" / "model.safetensors").is_file()


@pytest.mark.parametrize(("code", "status", "stderr"), [(None, 0, ""), (3, 3, ""),
                                                        ("'no such run'", 1, "no such run\n")])
def test_exit_process_flushes_and_maps_the_code_like_sys_exit(
        code: str | int | None, status: int, stderr: str) -> None:
    repo = Path(__file__).resolve().parents[2]
    script = ("import sys; sys.stdout.write('unflushed line'); "
              "from core.train.distributed import exit_process; "
              f"import atexit; atexit.register(print, 'finalized'); exit_process({code})")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          cwd=repo, timeout=60)
    assert proc.returncode == status
    assert proc.stdout == "unflushed line"  # flushed; no interpreter finalization (atexit)
    assert proc.stderr == stderr
