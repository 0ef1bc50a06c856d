"""PNCEC: the cyclic learning-rate phases of training.md §5.4.

A cycle of ``C = pncec_cycle_length`` global steps runs through four equal phases —
compression, stabilize, expansion, settle — that scale the base learning rate by
(compression_scale, 1.0, expansion_scale, 1.0). ``phase = ⌊(step mod C)/(C/4)⌋``; the phases run
on across domains because they follow the global step, which never resets. Disabled → scale 1.
"""

from __future__ import annotations

from dataclasses import dataclass

PHASES = ("compression", "stabilize", "expansion", "settle")
DISABLED_PHASE = "off"


@dataclass(frozen=True)
class PhaseSchedule:
    """The PNCEC schedule; ``phase_at``/``scale_at`` take the global step number."""

    enabled: bool = True
    cycle_length: int = 100
    compression_scale: float = 0.75
    expansion_scale: float = 1.25

    def __post_init__(self) -> None:
        if self.cycle_length < 4:
            raise ValueError(f"pncec_cycle_length must be >= 4, got {self.cycle_length}")

    def phase_index(self, step: int) -> int:
        """0..3; integer form of ⌊(step mod C)/(C/4)⌋ so C not divisible by 4 stays exact."""
        return (4 * (step % self.cycle_length)) // self.cycle_length

    def phase_at(self, step: int) -> str:
        """Phase name at a global step (``off`` when PNCEC is disabled)."""
        if not self.enabled:
            return DISABLED_PHASE
        return PHASES[self.phase_index(step)]

    def scale_at(self, step: int) -> float:
        """Learning-rate factor at a global step."""
        if not self.enabled:
            return 1.0
        scales = (self.compression_scale, 1.0, self.expansion_scale, 1.0)
        return scales[self.phase_index(step)]

    def changes_at(self, step: int) -> bool:
        """True when ``step`` starts a new phase (step 0 starts the first one)."""
        return self.enabled and (step == 0 or self.phase_index(step) != self.phase_index(step - 1))
