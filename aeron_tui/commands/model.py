"""`aeron-tui model ...`: inspect a size profile's model and smoke-test the model on CPU.

torch is imported inside the commands only, so ``aeron-tui --help`` stays fast.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

if TYPE_CHECKING:
    from core.model.config import NeuralNetConfig

model_app = typer.Typer(help="Inspect the Aeron model: configuration, parameter counts, smoke test.",
                        no_args_is_help=True)

_PROFILE_NAMES = "tiny, small, medium, large, default"


def register(app: typer.Typer) -> None:
    """Add this module's commands to the root app."""
    app.add_typer(model_app, name="model")


@model_app.command("info")
def info(
    profile: str = typer.Option("default", "--profile", "-p",
                                help=f"Size profile ({_PROFILE_NAMES}) or a profile .toml file."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of tables."),
    data: Path | None = typer.Option(
        None, "--data", help="The data a run would train on: its triples/images/tasks decide "
        "which of the knowledge-graph, vision and task modules are built (default: text data)."),
    sets: list[str] = typer.Option(
        [], "--set", help="model.KEY=VALUE as for `train` (e.g. model.enable_multimodal=true)."),
) -> None:
    """Print the model a run with this profile builds and its exact parameter count per
    component (the knowledge-graph, vision and task modules only when --data feeds them)."""
    from core.model.model import BACKBONE_COMPONENTS, backbone_parameter_count, count_parameters
    from core.model.modules import DATA_FED_MODULES, MODULE_NAMES

    config = _run_model(profile, data, sets)
    counts = count_parameters(config)  # meta device: nothing allocated
    derived = {
        "head_dim": config.head_dim,
        "num_kv_groups": config.num_kv_groups,
        "swiglu_hidden": config.swiglu_hidden,
        "tot_keep_k (effective)": config.effective_tot_keep_k,
    }
    backbone = backbone_parameter_count(counts)
    off = [MODULE_NAMES[s] for s in DATA_FED_MODULES if not getattr(config, s)]
    if as_json:
        payload = {
            "profile": profile,
            "data": str(data) if data is not None else None,
            "modules_not_built": off,
            "config": config.to_dict(),
            "derived": derived,
            "parameters": counts,
            "backbone_parameters": backbone,
        }
        typer.echo(json.dumps(payload, indent=2))
        return

    from rich.console import Console
    from rich.table import Table

    console = Console()
    cfg_table = Table(title=f"Aeron model configuration - profile {profile!r}")
    cfg_table.add_column("field", style="cyan")
    cfg_table.add_column("value", justify="right")
    for key, value in config.to_dict().items():
        cfg_table.add_row(key, _fmt(value))
    for key, value in derived.items():
        cfg_table.add_row(f"[dim]{key}[/]", _fmt(value))
    console.print(cfg_table)

    par = Table(title="Parameters (exact, counted on the meta device)")
    par.add_column("component", style="cyan")
    par.add_column("parameters", justify="right")
    par.add_column("share", justify="right")
    total = counts["total"]
    for name, n in counts.items():
        if name == "total":
            continue
        par.add_row(name, f"{n:,}", f"{100 * n / max(total, 1):.1f} %")
    par.add_section()
    par.add_row("backbone (" + " + ".join(n for n in BACKBONE_COMPONENTS if n in counts) + ")",
                f"{backbone:,}", f"{100 * backbone / max(total, 1):.1f} %")
    par.add_row("[bold]total[/]", f"[bold]{total:,}[/]", "100.0 %")
    console.print(par)
    if off:
        why = "text data" if data is None else f"no record of {data} feeds them"
        console.print(f"not built ({why}): {', '.join(off)}", highlight=False, soft_wrap=True)


@model_app.command("smoke")
def smoke(
    seed: int = typer.Option(0, "--seed", help="Random seed for weights and data."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of text."),
) -> None:
    """Build a small model on CPU, run forward + backward, show loss, branch scores, scratchpad."""
    from core.infer.smoke import run_smoke

    result = run_smoke(seed=seed)
    if as_json:
        typer.echo(json.dumps(result, indent=2))
        return
    from rich.console import Console

    console = Console()
    console.print(f"[bold]Aeron smoke test[/] (seed {seed}, {result['parameters']:,} parameters, CPU)")
    console.print(f"logits shape     {tuple(result['logits_shape'])}")
    console.print(f"loss             {result['loss']:.4f}")
    console.print(f"grad norm        {result['grad_norm']:.4f} "
                  f"({result['parameters_with_grad']} parameters received a gradient)")
    scores = result["branch_scores"]
    if scores is None:
        console.print("branch scores    - (reasoning skipped)")
    else:
        for i, row in enumerate(scores):
            cells = " ".join(f"{s:.4f}" for s in row)
            console.print(f"branch scores[{i}] {cells}  keep {result['branch_keep_mask'][i]}")
    console.print(f"complexity mean  {result['complexity_mean']:.3f}; "
                  f"contradictions resolved {result['resolved_contradictions']}")
    for label, key in (("scratchpad", "scratchpad_stats"),
                       ("after commit", "scratchpad_stats_after_commit")):
        s = result[key]
        console.print(f"{label:16} used {s['used_slots']}/{s['total_slots']} slots, "
                      f"step {s['step_counter']}, types {s['slot_types']}")


@model_app.command("export")
def export(
    checkpoint: Path = typer.Option(..., "--checkpoint",
                                    help="Checkpoint or run directory (its newest complete checkpoint, as in generate)."),
    fmt: str = typer.Option("onnx", "--format", help="Export format: onnx."),
    out: Path = typer.Option(..., "--out", help="File to write, e.g. model.onnx."),
    opset: int = typer.Option(18, "--opset", help="ONNX opset version, 18 to 25."),
    verify: bool = typer.Option(True, "--verify/--no-verify",
                                help="Run the graph in onnxruntime and print its largest difference "
                                "from the model generate runs."),
) -> None:
    """Export a checkpoint as an ONNX graph of what generate runs: (input_ids, attention_mask,
    decoder_input_ids) -> logits (+ evidential_uncertainty), with dynamic batch and lengths.

    The episodic memory (read from the saved bank), the reasoning engine and the uncertainty
    heads run as in generate; the decoder is recomputed over the whole decoder input each call
    (no KV cache). Needs the optional onnx extra: pip install 'aeron-tui\\[onnx]'. There is no
    GGUF export: no GGUF runtime implements this architecture.
    """
    from rich.console import Console

    from core.errors import ConfigError

    if fmt.lower() != "onnx":  # a project error: the CLI prints one red line and exits 1
        raise ConfigError(
            f"--format {fmt!r} is not supported; use --format onnx. There is no GGUF export: no "
            "GGUF runtime implements this architecture (a RoPE encoder-decoder with grouped-query "
            "attention and a reasoning engine), so such a file could not be loaded anywhere; the "
            "checkpoint's model.safetensors and tokenizer.json are the portable weights")
    from core.infer.export import (
        check_opset,
        example_inputs,
        export_model_to_onnx,
        output_names,
        require_onnx,
        verify_onnx_export,
    )
    from core.infer.inference import load_policy

    check_opset(opset)  # refuse before loading a large checkpoint
    require_onnx()
    model, _, ckpt = load_policy(checkpoint, "cpu")  # the model generate runs, on the CPU
    config = model.config
    inputs = example_inputs(config)
    path = export_model_to_onnx(model, *inputs, out, opset=opset)
    console = Console(highlight=False, soft_wrap=True)
    size = sum(p.stat().st_size for p in path.parent.glob(path.name + "*"))
    console.print(f"wrote {path} ({size / 2**20:.1f} MiB, opset {opset}) from {ckpt}: input_ids, "
                  f"attention_mask, decoder_input_ids -> {', '.join(output_names(model))}")
    if verify:
        diff = verify_onnx_export(model, path, example_inputs(config, batch=3, length=5))
        if diff is None:
            console.print("not verified: onnxruntime is not installed")
        else:
            console.print(f"verified with onnxruntime against the model generate runs: "
                          f"max |difference| {diff:.2e}")


def _run_model(profile: str, data: Path | None, sets: list[str]) -> NeuralNetConfig:
    """The model a run with ``profile`` on ``data`` (None: text) and ``--set model.*`` builds."""
    from core.errors import ConfigError
    from core.train.config import parse_set_option

    overrides: dict[str, Any] = {}
    for item in sets:
        key, value = parse_set_option(item)
        if not key.startswith("model."):
            raise ConfigError(f"--set {item!r}: model info takes model.KEY=VALUE only")
        overrides[key[len("model."):]] = value
    try:
        from profiles.catalog import load_profile, run_model_config
    except ImportError:
        return _read_catalog_model(profile)
    coverage = None
    if data is not None:
        from core.data.extras import scan_data_inputs

        if not data.exists():
            raise ConfigError(f"--data {data}: not found")
        coverage = scan_data_inputs(data)
    return run_model_config(load_profile(profile).model, coverage, overrides)


def _profile_model(profile: str) -> NeuralNetConfig:
    """The profile's model config: from the profile catalog when it is installed."""
    try:
        from profiles.catalog import load_profile
    except ImportError:
        return _read_catalog_model(profile)
    return load_profile(profile).model


def _read_catalog_model(profile: str) -> NeuralNetConfig:
    """Fallback without the catalog module: the ``[model]`` table of profiles/catalog/NAME.toml."""
    from pathlib import Path

    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - Python 3.10
        import tomli as tomllib

    from core.errors import ConfigError
    from core.model.config import NeuralNetConfig

    path = Path(profile) if profile.endswith(".toml") else (
        Path(__file__).resolve().parents[2] / "profiles" / "catalog" / f"{profile}.toml")
    if not path.is_file():
        raise ConfigError(f"unknown size profile {profile!r} (known: {_PROFILE_NAMES})")
    with open(path, "rb") as fh:
        table: dict[str, Any] = tomllib.load(fh).get("model", {})
    try:
        return NeuralNetConfig.from_dict(table)
    except ConfigError as exc:
        raise ConfigError(f"{path}: [model] {exc}") from None


def _fmt(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)

