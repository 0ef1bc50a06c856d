"""The hardware wizard's data for the console, computed in a helper process (no Textual here).

Reuses ``profiles.wizard`` exactly — :func:`build_wizard_plan` for the options and the
recommendation, :func:`apply_wizard_answers` for the user's answers — and reduces the result to
plain picklable rows, so the console process never imports torch (the estimates do).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from aeron_tui.app.runsetup import ProfileRow


@dataclass(frozen=True)
class DeviceView:
    """One device the wizard offers, with every profile's verdict on it."""

    key: str  # "cuda" or "cpu"
    label: str
    rows: list[ProfileRow]
    recommended: str | None  # the largest profile that fits, None when nothing does
    default_trainer: dict[str, str] = field(default_factory=dict)  # per profile
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class WizardView:
    """Devices, trainers and the recommended choice (a ``profiles.settings.SavedChoice``)."""

    devices: list[DeviceView]
    trainers: tuple[str, ...]
    recommended: Any

    def device(self, key: str) -> DeviceView:
        return next(d for d in self.devices if d.key == key)


def wizard_view(hardware: Any) -> WizardView:
    """``build_wizard_plan`` for ``hardware`` (probed when None), as plain rows."""
    from profiles.wizard import build_wizard_plan

    if hardware is None:
        from profiles.hardware import probe

        hardware = probe()
    plan = build_wizard_plan(hardware)
    devices = []
    for option in plan.devices:
        pick = option.pick
        rows = [ProfileRow(v.name, v.params or None, v.estimate.total if v.estimate else None,
                           bool(v.fits), str(v.detail)) for v in pick.reasons]
        devices.append(DeviceView(
            key=option.key,
            label=option.label,
            rows=rows,
            recommended=pick.profile.name if pick.fits else None,
            default_trainer={v.name: v.trainer for v in pick.reasons},
            notes=[str(n) for n in pick.notes],
        ))
    return WizardView(devices, tuple(plan.trainers), plan.recommended)


def wizard_answer(hardware: Any, device: str, profile: str, trainer: str) -> tuple[Any, bool]:
    """(SavedChoice, fits) for the answers, via ``apply_wizard_answers`` (batch re-fitted)."""
    from profiles.wizard import apply_wizard_answers, build_wizard_plan

    if hardware is None:
        from profiles.hardware import probe

        hardware = probe()
    plan = build_wizard_plan(hardware)
    choice = apply_wizard_answers(plan, device, profile, trainer)
    budget = plan.device(device).pick.budget
    return choice, not choice.estimated_bytes or choice.estimated_bytes <= budget
