"""The setup wizard: detect → show → recommend → choose device, profile, trainer → save.

Logic and prompting are separate so the console can drive the same steps from a Textual screen:

* :func:`build_wizard_plan` — the options (devices, profiles with their fit per device,
  trainers) and the recommendation, from a :class:`~profiles.hardware.HardwareInfo`;
* :func:`apply_wizard_answers` — turns (device, profile, trainer) into a
  :class:`~profiles.settings.SavedChoice` (batch layout and checkpointing re-fitted for that
  trainer);
* :func:`run_wizard` — the Rich version used by ``aeron-tui wizard``; input and console are
  injectable, answers out of range are asked again, ``yes=True`` accepts the recommendation.

:func:`hardware_table` and :func:`profile_table` render the same data for ``aeron-tui profile``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING

from core.errors import ConfigError
from profiles.estimate import GiB
from profiles.pick import (
    ProfilePick,
    ProfileVerdict,
    available_trainers,
    fit_profile,
    gib,
    pick_profile,
)
from profiles.settings import SavedChoice, save_choice

if TYPE_CHECKING:
    from pathlib import Path

    from rich.console import Console
    from rich.table import Table

    from profiles.catalog import SizeProfile
    from profiles.hardware import HardwareInfo


@dataclass(frozen=True)
class DeviceOption:
    """A device the user can choose, with the recommendation computed for it."""

    key: str  # "cuda" or "cpu"
    label: str
    pick: ProfilePick  # the recommendation, every trainer allowed
    # Every profile's verdict with exactly one trainer's memory rules: what the tables show for
    # the trainer selected, the same figures setup and `aeron-tui profile --trainer` show.
    by_trainer: dict[str, ProfilePick] = field(default_factory=dict)

    def for_trainer(self, trainer: str) -> ProfilePick:
        """The verdicts with ``trainer``'s memory rules (the recommendation if not computed)."""
        return self.by_trainer.get(trainer, self.pick)


@dataclass(frozen=True)
class WizardPlan:
    """Everything the wizard offers: devices (each with its profile verdicts) and trainers."""

    hardware: HardwareInfo
    mode: str
    devices: list[DeviceOption]
    profiles: list[SizeProfile]
    trainers: tuple[str, ...]
    recommended: SavedChoice
    # The run's vocabulary the estimates and parameter counts assume (profiles.runplan).
    vocab_size: int | None = None

    def device(self, key: str) -> DeviceOption:
        """The option for ``key`` ("cuda" or "cpu"); ConfigError when not offered."""
        for option in self.devices:
            if option.key == key:
                return option
        offered = ", ".join(o.key for o in self.devices)
        raise ConfigError(f"device {key!r} is not available here (offered: {offered})")


def build_wizard_plan(
    hardware: HardwareInfo,
    mode: str = "train",
    profiles: Sequence[SizeProfile] | None = None,
    trainers: Sequence[str] | None = None,
    margin: float = 0.10,
    vocab_size: int | None = None,
) -> WizardPlan:
    """Options and recommendation for ``hardware`` (no prompting, no saving).

    ``vocab_size`` is the run's vocabulary (:func:`profiles.runplan.run_vocabulary`); None keeps
    each profile's catalog vocabulary.
    """
    if profiles is None:
        from profiles.catalog import list_profiles

        profiles = list_profiles()
    trainer_options = tuple(trainers) if trainers is not None else available_trainers()
    devices: list[DeviceOption] = []
    best = pick_profile(hardware, mode, profiles, margin, trainer_options, vocab_size)

    def per_trainer(hw: HardwareInfo) -> dict[str, ProfilePick]:
        return {t: pick_profile(hw, mode, profiles, margin, (t,), vocab_size)
                for t in trainer_options}

    if best.device == "cuda":
        devices.append(DeviceOption("cuda", best.device_label, best, per_trainer(hardware)))
        cpu_only = dataclasses.replace(hardware, gpus=[], nvml_error=None)
        cpu = pick_profile(cpu_only, mode, profiles, margin, trainer_options, vocab_size)
        devices.append(DeviceOption("cpu", cpu.device_label, cpu, per_trainer(cpu_only)))
    else:
        devices.append(DeviceOption("cpu", best.device_label, best, per_trainer(hardware)))
    return WizardPlan(
        hardware=hardware,
        mode=mode,
        devices=devices,
        profiles=sorted(profiles, key=lambda p: p.parameter_count),
        trainers=trainer_options,
        recommended=choice_from_pick(best),
        vocab_size=vocab_size,
    )


def choice_from_pick(pick: ProfilePick, verdict: ProfileVerdict | None = None) -> SavedChoice:
    """A SavedChoice for a pick (or for another verdict on the same device)."""
    v = verdict or pick.verdict
    return SavedChoice(
        device=pick.device,
        profile=v.name,
        trainer=v.trainer if v.trainer in ("simple", "compressed") else "simple",
        micro_batch=v.micro_batch,
        grad_accum=v.grad_accum,
        gradient_checkpointing=v.checkpointing,
        precision=pick.precision,
        plan=v.plan if v.fits else "single",
        gpus=pick.gpus,
        estimated_bytes=v.estimate.total if v.estimate else 0,
        reason=v.detail,
    )


def apply_wizard_answers(plan: WizardPlan, device: str, profile: str, trainer: str) -> SavedChoice:
    """The SavedChoice for the user's answers.

    The batch layout and checkpointing are re-fitted for the chosen trainer on the chosen
    device; a combination that does not fit is still returned (``reason`` says by how much) —
    the caller decides whether to confirm it.
    """
    option = plan.device(device)
    if trainer not in plan.trainers:
        raise ConfigError(f"trainer {trainer!r} is not available (offered: {', '.join(plan.trainers)})")
    chosen = next((p for p in plan.profiles if p.name == profile), None)
    if chosen is None:
        raise ConfigError(f"unknown profile {profile!r} (offered: {', '.join(p.name for p in plan.profiles)})")
    verdict = option.pick.verdict if option.pick.profile.name == profile else next(
        v for v in option.pick.reasons if v.name == profile
    )
    if verdict.trainer != trainer or not verdict.fits:
        verdict = _refit(plan, option, chosen, trainer)
    return choice_from_pick(option.pick, verdict)


def _refit(plan: WizardPlan, option: DeviceOption, profile: SizeProfile, trainer: str
           ) -> ProfileVerdict:
    """Fit ``profile`` with exactly ``trainer`` on the option's device."""
    from profiles.pick import _Device

    pick = option.pick
    dev = _Device(pick.device, pick.free, pick.precision, pick.device_label,
                  cores=plan.hardware.cpu.physical_cores or plan.hardware.cpu.logical_cores or 1)
    margin = 1.0 - pick.budget / pick.free if pick.free else 0.10
    verdict = fit_profile(profile, dev, margin, plan.mode, (trainer,), plan.vocab_size)
    plan_kind = pick.plan if verdict.fits and pick.plan == "ddp" else "single"
    if plan_kind == "ddp":
        verdict = dataclasses.replace(verdict, plan="ddp",
                                      grad_accum=max(1, -(-verdict.grad_accum // len(pick.gpus))))
    return verdict


# ------------------------------------------------------------------------------ rendering
def hardware_table(hardware: HardwareInfo) -> Table:
    """Rich table of the machine: GPUs (or why there are none), CPU, RAM, swap, disk."""
    from rich.table import Table

    table = Table(title="Hardware", title_justify="left", show_header=True, header_style="bold")
    table.add_column("device")
    table.add_column("memory", justify="right")
    table.add_column("details")
    for g in hardware.gpus:
        if g.error:
            table.add_row(f"GPU {g.index}", "—", f"[red]{g.name}: {g.error}[/]")
            continue
        details = [g.name]
        if g.compute_capability:
            details.append(f"sm{g.compute_capability[0]}{g.compute_capability[1]}")
        if g.gpu_util is not None:
            details.append(f"util {g.gpu_util}%")
        if g.temperature is not None:
            details.append(f"{g.temperature}°C")
        if g.power_draw_w is not None and g.power_limit_w:
            details.append(f"{g.power_draw_w:.0f}/{g.power_limit_w:.0f} W")
        if g.processes:
            details.append(f"{len(g.processes)} process{'es' if len(g.processes) != 1 else ''}")
        table.add_row(f"GPU {g.index}", f"{gib(g.memory_free)} / {gib(g.memory_total)} GiB free",
                      ", ".join(details))
    if not hardware.gpus:
        table.add_row("GPU", "—", f"[yellow]{hardware.gpu_status}[/]")
    cpu = hardware.cpu
    cores = f"{cpu.physical_cores or '?'} cores / {cpu.logical_cores or '?'} threads"
    extra = ", native bf16" if cpu.bf16_native else ""
    table.add_row("CPU", "", f"{cpu.model}, {cores}{extra}")
    table.add_row("RAM", f"{gib(hardware.ram_available)} / {gib(hardware.ram_total)} GiB free",
                  f"swap {gib(hardware.swap_used)} / {gib(hardware.swap_total)} GiB used")
    table.add_row("disk", f"{gib(hardware.disk_free)} GiB free", hardware.disk_path)
    driver = []
    if hardware.driver_version:
        driver.append(f"driver {hardware.driver_version}")
    if hardware.cuda_driver_version:
        driver.append(f"CUDA {hardware.cuda_driver_version}")
    if hardware.torch_version:
        driver.append(f"torch {hardware.torch_version} (CUDA {'yes' if hardware.torch_cuda_available else 'no'})")
    if hardware.source.startswith("fake:"):
        driver.append(f"[magenta]simulated machine {hardware.source[5:]}[/]")
    if driver:
        table.caption = ", ".join(driver)
    return table


def profile_table(pick: ProfilePick, numbered: bool = False) -> Table:
    """Rich table of every profile's parameters, estimate and fit; the recommendation in bold."""
    from rich.table import Table

    what = "training" if pick.mode == "train" else "inference"
    trainers = {v.trainer for v in pick.reasons}
    if pick.mode == "train" and len(trainers) == 1:
        what += f", {trainers.pop()} trainer"
    title = f"Size profiles on {pick.device_label} ({what})"
    table = Table(title=title, title_justify="left", header_style="bold")
    if numbered:
        table.add_column("#", justify="right")
    table.add_column("profile")
    table.add_column("params", justify="right")
    table.add_column("estimate", justify="right")
    table.add_column("fit")
    for i, v in enumerate(pick.reasons, start=1):
        recommended = v.name == pick.profile.name and pick.fits
        mark = "[bold green]→[/] " if recommended else "  "
        colour = "green" if v.fits else ("yellow" if v.status == "too-slow" else "red")
        row = [
            f"{mark}{v.name}",
            f"{v.params / 1e6:,.1f} M",
            f"{v.estimate.total / GiB:.1f} GiB" if v.estimate else "—",
            f"[{colour}]{v.detail}[/]",
        ]
        if numbered:
            row.insert(0, str(i))
        table.add_row(*row, style="bold" if recommended else None)
    return table


def render_pick(console: Console, pick: ProfilePick) -> None:
    """Profile table, notes and the recommendation line."""
    console.print(profile_table(pick))
    for note in pick.notes:
        console.print(f"[yellow]note:[/] {note}", highlight=False)
    colour = "green" if pick.fits else "red"
    console.print(f"[bold {colour}]recommended:[/] {pick.summary}", highlight=False)
    console.print(
        f"  trainer {pick.trainer}, micro-batch {pick.micro_batch} × {pick.grad_accum} accumulation, "
        f"checkpointing {'on' if pick.checkpointing else 'off'}, {pick.precision}, plan {pick.plan}",
        highlight=False,
    )


# ------------------------------------------------------------------------------ prompting
def _ask(console: Console, question: str, choices: Sequence[str], default: str,
         stream: IO[str] | None) -> str:
    """Ask until the answer is one of ``choices`` (or empty → default). EOF → ConfigError."""
    from rich.markup import escape

    shown = escape(f"[{'/'.join(choices)}]")
    while True:
        if stream is not None:
            console.print(f"{question} {shown} ({default}): ", end="", highlight=False)
            line = stream.readline()
            if line == "":
                raise ConfigError("wizard: input ended before every question was answered")
            answer = line.strip()
        else:
            answer = console.input(f"{question} {shown} ({default}): ").strip()
        if not answer:
            return default
        if answer in choices:
            return answer
        console.print(f"[red]Please answer one of: {', '.join(choices)}[/]", highlight=False)


def _ask_number(console: Console, question: str, names: Sequence[str], default: str,
                stream: IO[str] | None) -> str:
    """Pick from a numbered list by number or name; out-of-range answers are asked again."""
    while True:
        answer = _ask_free(console, f"{question} (1-{len(names)} or name)", default, stream)
        if answer in names:
            return answer
        if answer.isdigit() and 1 <= int(answer) <= len(names):
            return names[int(answer) - 1]
        console.print(f"[red]Please enter a number from 1 to {len(names)} or a name.[/]", highlight=False)


def _ask_free(console: Console, question: str, default: str, stream: IO[str] | None) -> str:
    if stream is not None:
        console.print(f"{question} ({default}): ", end="", highlight=False)
        line = stream.readline()
        if line == "":
            raise ConfigError("wizard: input ended before every question was answered")
        answer = line.strip()
    else:
        answer = console.input(f"{question} ({default}): ").strip()
    return answer or default


def run_wizard(
    console: Console | None = None,
    stream: IO[str] | None = None,
    yes: bool = False,
    hardware: HardwareInfo | None = None,
    mode: str = "train",
    profiles: Sequence[SizeProfile] | None = None,
    save: bool = True,
    vocab_size: int | None = None,
) -> tuple[SavedChoice, Path | None]:
    """Interactive setup. Returns the choice and where it was saved (None with ``save=False``).

    ``stream`` supplies answers line by line (tests); by default the console reads the terminal.
    Parameter counts and estimates are at the run's vocabulary (``vocab_size``, default
    :func:`profiles.runplan.run_vocabulary`): the figures setup and ``profile`` show.
    """
    from rich.console import Console

    from profiles.runplan import run_vocabulary

    console = console or Console()
    if hardware is None:
        from profiles.hardware import probe

        with console.status("Detecting hardware…"):
            hardware = probe()
    console.print(hardware_table(hardware))
    vocab = run_vocabulary(tokenizer_vocab_size=vocab_size)
    plan = build_wizard_plan(hardware, mode, profiles, vocab_size=vocab.size)
    rec = plan.recommended
    console.print(vocab.note, highlight=False, markup=False)
    render_pick(console, _shown(plan.device(rec.device)))

    if yes:
        choice = rec
    else:
        keys = [o.key for o in plan.devices]
        device = rec.device
        if len(keys) > 1:
            for i, o in enumerate(plan.devices, start=1):
                console.print(f"  {i}. {o.key}: {o.label}", highlight=False)
            device = _ask_number(console, "Device", keys, rec.device, stream)
        option = plan.device(device)
        if device != rec.device:
            render_pick(console, _shown(option))
        names = [v.name for v in option.pick.reasons]
        console.print(profile_table(_shown(option), numbered=True))
        profile = _ask_number(console, "Profile", names, option.pick.profile.name, stream)
        default_trainer = option.pick.trainer if option.pick.profile.name == profile else next(
            v.trainer for v in option.pick.reasons if v.name == profile)
        if default_trainer not in plan.trainers:
            default_trainer = "simple"
        trainer = (_ask(console, "Trainer", list(plan.trainers), default_trainer, stream)
                   if len(plan.trainers) > 1 else plan.trainers[0])
        choice = apply_wizard_answers(plan, device, profile, trainer)
        if choice.estimated_bytes and not _fits(plan, choice):
            console.print(f"[yellow]warning:[/] {profile} with the {trainer} trainer: {choice.reason}",
                          highlight=False)
            if _ask(console, "Save it anyway?", ["y", "n"], "n", stream) != "y":
                console.print("Nothing saved. Run `aeron-tui wizard` again to choose differently.")
                return choice, None
    console.print(
        f"[bold]choice:[/] {choice.profile} on {choice.device}"
        + (f" {list(choice.gpus)}" if choice.gpus else "")
        + f", {choice.trainer} trainer, micro-batch {choice.micro_batch} × {choice.grad_accum}, "
        f"checkpointing {'on' if choice.gradient_checkpointing else 'off'}, plan {choice.plan}",
        highlight=False,
    )
    path = save_choice(choice) if save else None
    if path is not None:
        console.print(f"saved to {path}; later runs use it unless told otherwise", highlight=False)
    return choice, path


def _shown(option: DeviceOption) -> ProfilePick:
    """What the tables show for a device: the verdicts with the recommended trainer's rules."""
    return option.for_trainer(option.pick.trainer)


def _fits(plan: WizardPlan, choice: SavedChoice) -> bool:
    pick = plan.device(choice.device).pick
    return choice.estimated_bytes <= pick.budget
