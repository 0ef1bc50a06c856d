"""The hardware wizard's data for the console, computed in a helper process (no Textual here).

Reuses ``profiles.wizard`` exactly — :func:`build_wizard_plan` for the options and the
recommendation, :func:`apply_wizard_answers` for the user's answers — at the run's vocabulary
(``profiles.runplan.run_vocabulary``), and reduces the result to plain picklable rows, so the
console process never imports torch (the estimates do). Rows are kept per trainer: the table
shows the verdicts with the selected trainer's memory rules, the figures setup and
``aeron-tui profile --trainer`` show for the same trainer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from aeron_tui.app.runsetup import ProfileRow


@dataclass(frozen=True)
class TrainerRows:
    """Every profile's verdict on one device with one trainer's memory rules."""

    rows: list[ProfileRow]
    recommended: str | None  # the largest profile that fits, None when nothing does
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class DeviceView:
    """One device the wizard offers, with every profile's verdict on it per trainer."""

    key: str  # "cuda" or "cpu"
    label: str
    by_trainer: dict[str, TrainerRows]
    recommended_trainer: str  # the trainer the picker recommends on this device

    def rows_for(self, trainer: str) -> TrainerRows:
        return self.by_trainer.get(trainer) or self.by_trainer[self.recommended_trainer]


@dataclass(frozen=True)
class WizardView:
    """Devices, trainers, the recommended choice (a ``profiles.settings.SavedChoice``) and the
    vocabulary the parameter counts assume."""

    devices: list[DeviceView]
    trainers: tuple[str, ...]
    recommended: Any
    vocab_note: str = ""

    def device(self, key: str) -> DeviceView:
        return next(d for d in self.devices if d.key == key)


def _plan(hardware: Any) -> Any:
    from profiles.runplan import run_vocabulary
    from profiles.wizard import build_wizard_plan

    if hardware is None:
        from profiles.hardware import probe

        hardware = probe()
    vocab = run_vocabulary()
    return build_wizard_plan(hardware, vocab_size=vocab.size), vocab


def wizard_view(hardware: Any) -> WizardView:
    """``build_wizard_plan`` for ``hardware`` (probed when None), as plain rows."""
    plan, vocab = _plan(hardware)
    devices = []
    for option in plan.devices:
        by_trainer: dict[str, TrainerRows] = {}
        for trainer in plan.trainers:
            pick = option.for_trainer(trainer)
            rows = [ProfileRow(v.name, v.params or None,
                               v.estimate.total if v.estimate else None, bool(v.fits),
                               str(v.detail)) for v in pick.reasons]
            by_trainer[trainer] = TrainerRows(rows, pick.profile.name if pick.fits else None,
                                              [str(n) for n in pick.notes])
        rec = option.pick.trainer if option.pick.trainer in by_trainer else plan.trainers[0]
        devices.append(DeviceView(option.key, option.label, by_trainer, rec))
    return WizardView(devices, tuple(plan.trainers), plan.recommended, vocab.note)


def wizard_answer(hardware: Any, device: str, profile: str, trainer: str) -> tuple[Any, bool]:
    """(SavedChoice, fits) for the answers, via ``apply_wizard_answers`` (batch re-fitted)."""
    from profiles.wizard import apply_wizard_answers

    plan, _ = _plan(hardware)
    choice = apply_wizard_answers(plan, device, profile, trainer)
    budget = plan.device(device).pick.budget
    return choice, not choice.estimated_bytes or choice.estimated_bytes <= budget
