"""Sequence packing on the model side: several samples share one row, kept apart exactly.

A packed batch carries ``segment_ids (B, S)`` next to the ids: ``k = 1, 2, ...`` numbers the
samples of a row in order, ``0`` marks padding (always at the end of a row). The encoder and the
decoder rows hold the same samples in the same order, so sample ``k`` of encoder row ``r`` is
sample ``k`` of decoder row ``r``. With segment ids the backbone

* masks attention block-diagonally: encoder self-attention within a segment, decoder
  self-attention causal within a segment, cross-attention from a decoder segment to the encoder
  segment of the same sample (padding queries see the whole row, so no softmax is empty);
* restarts positions (RoPE) at every segment, so a sample sees the positions it would alone;
* runs the per-sample stages (the enhancement stages and the reasoning engine, which pool over
  a sample) on the samples unpacked into ``(N, L, d)`` — one gather in and one out
  (:class:`PackedLayout`) — so they see exactly what an unpacked batch gives them.

The result equals the unpacked batch up to floating-point summation order.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor


def segment_starts(segments: Tensor) -> Tensor:
    """Index of the first token of each token's segment (padding counts as one segment)."""
    s = segments.shape[-1]
    idx = torch.arange(s, device=segments.device).expand_as(segments)
    change = torch.ones_like(segments, dtype=torch.bool)
    change[..., 1:] = segments[..., 1:] != segments[..., :-1]
    return torch.where(change, idx, torch.zeros_like(idx)).cummax(dim=-1).values


def segment_positions(segments: Tensor) -> Tensor:
    """Position of every token within its own segment: ``0, 1, ...`` restarting per sample
    (0 on padding)."""
    idx = torch.arange(segments.shape[-1], device=segments.device).expand_as(segments)
    return torch.where(segments > 0, idx - segment_starts(segments), 0)


def encoder_segment_mask(segments: Tensor) -> Tensor:
    """``(B, 1, S, S)`` bool: a token attends to the tokens of its own segment."""
    return (segments[:, :, None] == segments[:, None, :])[:, None]


def decoder_segment_mask(segments: Tensor) -> Tensor:
    """``(B, 1, T, T)`` bool: causal within a segment (every query sees at least itself)."""
    t = segments.shape[-1]
    causal = torch.ones(t, t, dtype=torch.bool, device=segments.device).tril()
    return ((segments[:, :, None] == segments[:, None, :]) & causal)[:, None]


def cross_segment_mask(decoder_segments: Tensor, encoder_segments: Tensor) -> Tensor:
    """``(B, 1, T, S)`` bool: a decoder token sees the encoder tokens of the same sample; a
    padding query sees the whole row (its output is never scored, but must not be NaN)."""
    same = decoder_segments[:, :, None] == encoder_segments[:, None, :]
    pad_query = (decoder_segments == 0)[:, :, None]
    return (same | pad_query)[:, None]


def segments_per_row(segments: Tensor) -> Tensor:
    """``(B,)`` number of samples in each row."""
    return segments.max(dim=-1).values


def check_segments(name: str, segments: Tensor, ids: Tensor) -> None:
    """ValueError unless ``segments`` is an integer ``(B, S)`` tensor like ``ids`` whose
    values run 1, 2, ... in non-decreasing order with 0 (padding) only at the end of a row."""
    if not isinstance(segments, Tensor) or segments.is_floating_point() or segments.is_complex():
        raise ValueError(f"{name} must be an integer torch.Tensor of per-token sample numbers")
    if tuple(segments.shape) != tuple(ids.shape):
        raise ValueError(f"{name} must have the shape of the ids {tuple(ids.shape)}, "
                         f"got {tuple(segments.shape)}")
    real = segments > 0
    steps = segments[:, 1:] - segments[:, :-1]
    ok = (
        bool((segments >= 0).all())
        and bool((segments[:, 0] == 1).all())
        and bool(((steps == 0) | (steps == 1) | (~real[:, 1:])).all())
        and bool((real[:, :-1] | ~real[:, 1:]).all())  # no real token after padding
    )
    if not ok:
        raise ValueError(
            f"{name} must number each row's samples 1, 2, ... in order, with 0 only for the "
            "padding at the end of a row (as core.data.loader.collate builds them)"
        )


@dataclass
class PackedLayout:
    """How packed rows map to samples, and the gathers between the two layouts.

    ``gather (N, L)`` indexes the flattened ``(B·S)`` packed tokens (``B·S`` = a zero row for
    the padding of short samples); ``scatter (B, S)`` indexes the flattened ``(N·L)`` unpacked
    tokens (``N·L`` = a zero row for packed padding). Samples are numbered row by row.
    """

    gather: Tensor
    scatter: Tensor
    sample_mask: Tensor  # (N, L) bool, True = real token
    sample_of_token: Tensor  # (B, S) long sample index, -1 for padding
    num_samples: int

    @classmethod
    def from_segments(cls, segments: Tensor) -> PackedLayout:
        b, s = segments.shape
        device = segments.device
        real = segments > 0
        counts = segments_per_row(segments).clamp_min(0)
        offsets = counts.cumsum(0) - counts
        n = int(counts.sum())
        sample = torch.where(real, offsets[:, None] + segments - 1, torch.full_like(segments, -1))
        pos = segment_positions(segments)
        lengths = torch.bincount(sample[real], minlength=n)
        length = int(lengths.max()) if n else 0
        flat = torch.arange(b * s, device=device).view(b, s)
        gather = torch.full((n, length), b * s, dtype=torch.long, device=device)
        gather[sample[real], pos[real]] = flat[real]
        scatter = torch.where(real, sample * length + pos, torch.full_like(sample, n * length))
        sample_mask = torch.arange(length, device=device)[None, :] < lengths[:, None]
        return cls(gather, scatter, sample_mask, sample, n)

    def unpack(self, x: Tensor) -> Tensor:
        """``(B, S, d)`` packed states → ``(N, L, d)`` per sample (zeros after a sample's end)."""
        d = x.shape[-1]
        flat = F.pad(x.reshape(-1, d), (0, 0, 0, 1))
        return flat[self.gather]

    def repack(self, y: Tensor) -> Tensor:
        """``(N, L, d)`` per-sample states → ``(B, S, d)`` packed (zeros on packed padding)."""
        d = y.shape[-1]
        flat = F.pad(y.reshape(-1, d), (0, 0, 0, 1))
        return flat[self.scatter]

    def per_sample_sum(self, values: Tensor) -> Tensor:
        """``(B, S)`` per-token values → ``(N,)`` sums over each sample's tokens."""
        real = self.sample_of_token >= 0
        out = values.new_zeros(self.num_samples)
        return out.index_add(0, self.sample_of_token[real], values[real])


def segment_mean_pool(x: Tensor, segments: Tensor) -> Tensor:
    """``(B, S, d)`` packed states → ``(N, d)``: the mean over each sample's tokens (what
    :func:`core.model.layers.masked_mean_pool` gives per row of an unpacked batch)."""
    layout = PackedLayout.from_segments(segments)
    real = layout.sample_of_token >= 0
    d = x.shape[-1]
    total = x.new_zeros(layout.num_samples, d).index_add(0, layout.sample_of_token[real], x[real])
    count = layout.sample_mask.sum(dim=1).clamp_min(1).to(x.dtype)
    return total / count[:, None]
