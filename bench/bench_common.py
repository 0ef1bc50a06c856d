"""What the benchmarks share: the size profiles' model shapes (from the catalog, so a benchmark
always measures the shape users train) and the allocator setting the launcher gives trainers."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# glibc returning freed memory to the OS dominates run-to-run noise on CPU (GUIDE.md); the
# launcher sets the same tunables for every trainer it starts.
from aeron_tui.launcher import GLIBC_TUNABLES as MALLOC_TUNABLES  # noqa: E402

SHAPE_FIELDS = ("d_model", "nhead", "num_kv_heads", "num_encoder_layers", "num_decoder_layers",
                "dim_feedforward", "num_tot_branches", "num_scratchpad_slots")


def profile_shape(name: str) -> dict[str, Any]:
    """The model shape of catalog profile ``name`` (``NeuralNetConfig`` keyword arguments)."""
    from profiles.catalog import load_profile

    model = load_profile(name).model
    return {f: getattr(model, f) for f in SHAPE_FIELDS}


PROFILES = {name: profile_shape(name) for name in ("tiny", "small")}

__all__ = ["MALLOC_TUNABLES", "PROFILES", "SHAPE_FIELDS", "profile_shape"]
