"""The LONPT run log (training.md §5.2), formatted from events only.

:func:`format_lonpt_event` turns one event of a LONPT run into the seed-style log line(s), or
None for events the log does not show. Every number printed comes from the event, so the
headless log, ``aeron-tui watch`` and the console agree. Pure function: no state, no I/O.
"""

from __future__ import annotations

from typing import Any

from core.runs.events import describe_bpb, describe_samples, format_loss


def _num(value: Any, fmt: str) -> str:
    return format(value, fmt) if isinstance(value, (int, float)) else "n/a"


def format_step(event: dict[str, Any]) -> str:
    """``  Step 0025 | phase=  stabilize | lr_scale=1.00 | loss=4.3570`` (local step)."""
    step = event.get("step", event["global_step"])
    phase = event.get("phase") or "off"
    scale = event.get("lr_scale", 1.0)
    return (f"  Step {step:04d} | phase={phase:>11} | lr_scale={_num(scale, '.2f')} | "
            f"loss={_num(event.get('loss'), '.4f')}")


def format_lonpt_event(event: dict[str, Any]) -> str | None:
    """The §5.2 log line(s) for one event (several lines are joined by newlines)."""
    kind = event.get("type")
    if kind == "run_started":
        preset = f", preset {event['preset']}" if event.get("preset") else ""
        params = f", {event['model_params']:,} parameters" if event.get("model_params") else ""
        lines = [f"=== LONPT run {event.get('run_id', '')}{preset}{params}, "
                 f"{event.get('total_steps', 0)} steps ==="]
        summary = event.get("metrics") or {}
        domains = summary.get("domains") or {}
        if domains:
            parts = [f"{name} {d['samples']:,} ({d['train']:,} train / {d['val']:,} val)"
                     for name, d in domains.items()]
            lines.append("[AKAP] Domains: " + ", ".join(parts))
        hpf = summary.get("hpf")
        if hpf:
            lines.append(format_hpf(hpf))
        return "\n".join(lines)
    if kind == "domain_change":
        domain = event["domain"]
        lines = []
        epoch = event.get("epoch", 1)
        if epoch == 1:
            if event.get("cycle_start") and event.get("cycle") is not None:
                total = event.get("cycles")
                of = f"/{total}" if total is not None else ""
                lines.append(f"=== LONPT Cycle {event['cycle']}{of} ===")
            if event.get("cycle") is not None:
                tokens = event.get("tokens")
                est = f" ({format_token_count(tokens)} tokens)" if isinstance(tokens, int) else ""
                lines.append(f"[AKAP] Cycle {event['cycle']}: domain '{domain}'{est}")
        lines.append(f"[Domain:{domain}] Epoch {epoch}/{event.get('epochs', 1)}")
        return "\n".join(lines)
    if kind == "batch_change":
        reason = event.get("reason")
        domain = event.get("domain", "")
        accum = event["grad_accum"]
        if reason == "act":
            extra = f" (gradient accumulation {accum})" if accum != 1 else ""
            return f"[ACT] Adjusted batch size for domain '{domain}' -> {event['micro_batch']}{extra}"
        if reason == "oom":
            return (f"[ACT] Out of memory at step {event['global_step'] + 1}: micro-batch -> "
                    f"{event['micro_batch']}, gradient accumulation -> {accum}; retrying the step")
        return None  # the reset to batch_size at a domain start is not a log line in the seed
    if kind == "step":
        return format_step(event)
    if kind == "checkpoint":
        name = event.get("name") or event["path"]
        val = event.get("val_loss")
        val_txt = f" (val_loss={val:.4f})" if isinstance(val, (int, float)) else ""
        return f"[Checkpoint] Saved {name}{val_txt}"
    if kind == "eval":
        domain = event.get("domain")
        if domain is None:
            return f"[Validation] loss: {format_loss(event['loss'])}{describe_bpb(event)}"
        # The domain's own best (LONPT's log line); older streams only had ``best``.
        if event.get("best_of_domain", event.get("best")):
            verdict = "✓ BEST"
        else:
            verdict = f"no improvement, best {_num(event.get('best_loss'), '.4f')}"
        return (f"[Domain:{domain}] Validation loss: {format_loss(event['loss'])} ({verdict})"
                f"{describe_bpb(event)}")
    if kind == "sample":
        return "\n".join(["[Samples]", *describe_samples(event)])
    if kind == "warning":
        code = str(event.get("code") or "")
        tag = {"rail": "Rails", "hpf": "HPF", "act": "ACT", "akap": "AKAP"}.get(
            code.split("_", 1)[0], "Warning")
        message = event["message"]
        return message if message.startswith(f"[{tag}]") else f"[{tag}] {message}"
    if kind == "info":
        return str(event["message"])
    if kind == "status" and event.get("message"):
        return str(event["message"])
    if kind == "error":
        return f"[Error] {event['message']}"
    if kind == "run_finished":
        where = event.get("checkpoint_dir") or ""
        if event["status"] == "finished":
            return f"Done! Checkpoints saved to: {where}"
        return f"Run {event['status']} at step {event['global_step']}. Checkpoints saved to: {where}"
    return None


def format_hpf(hpf: dict[str, Any]) -> str:
    """The HPF rewrite report of ``run_started`` (the parameter saving, §5.6)."""
    if hpf.get("resumed"):
        return f"[HPF] {len(hpf.get('structure') or {})} low-rank projections restored from the checkpoint"
    if not hpf.get("replaced"):
        return f"[HPF] no projection replaced at ratio {hpf.get('ratio')} (no parameter saving)"
    before, after = hpf["params_before"], hpf["params_after"]
    pct = 100.0 * hpf["saved"] / before if before else 0.0
    line = (f"[HPF] {hpf['replaced']} projections low-rank at ratio {hpf['ratio']:g} "
            f"({hpf['init']}): {before:,} -> {after:,} parameters (saved {hpf['saved']:,}, "
            f"{pct:.1f} %)")
    if hpf.get("max_rel_error") is not None:
        line += f"; max SVD relative error {hpf['max_rel_error']:.4f}"
    return line


def format_token_count(n: int) -> str:
    """``~1.40M`` style (same rule as :func:`lonpt.akap.format_tokens`, kept torch-free here)."""
    if n >= 1_000_000:
        return f"~{n / 1e6:.2f}M"
    if n >= 1_000:
        return f"~{n / 1e3:.1f}K"
    return f"~{n}"
