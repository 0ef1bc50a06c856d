"""The bundled corpora that need the knowledge graph or images (issue 17)."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.data import enhanced_samples
from core.data.styles import read_styles, split_samples


def test_facts_answers_are_only_in_the_triples_and_places_are_held_out(tmp_path: Path) -> None:
    corpus = enhanced_samples.build_enhanced_corpus("facts", tmp_path)
    samples = read_styles(corpus.styles)
    assert len(samples) == enhanced_samples.N_PLACES * len(enhanced_samples.RELATIONS)
    for s in samples[:200]:
        place = s.triples[0][0]
        assert place in s.user_input and s.assistant_reply not in s.user_input
        assert (place, s.assistant_reply) in {(a, c) for a, _, c in s.triples}
    train, val = split_samples(samples)
    train_places = {s.triples[0][0] for s in train}
    val_places = {s.triples[0][0] for s in val}
    assert val_places and not (train_places & val_places)  # validation asks about new places


def test_captions_images_match_their_caption(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import numpy as np

    from core.data.extras import load_image

    monkeypatch.setattr(enhanced_samples, "N_IMAGES", 24)
    corpus = enhanced_samples.build_enhanced_corpus("captions", tmp_path)
    samples = read_styles(corpus.styles)
    assert len(samples) == 24
    for s in samples:
        image = load_image(s.image, 64).numpy()  # (3, 64, 64) in [0, 1]
        words = s.assistant_reply.split()
        colour, side = words[1], words[-1]
        lit = image.max(axis=0) > 0.3  # shape pixels; the background is dark
        left, right = lit[:, :32].sum(), lit[:, 32:].sum()
        assert (left > right) == (side == "left")
        r, g, b = (enhanced_samples.SHAPE_COLOURS[colour][i] / 255 for i in range(3))
        ys, xs = np.nonzero(lit)
        pixel = image[:, ys[0], xs[0]]
        assert np.allclose(pixel, (r, g, b), atol=0.1)
