"""The bundled sample preference set is meaningful: the chosen reply is correct and complete, the
rejected one fails in the way its ``rejection`` field says, no question appears twice (so the
held-out split shares none with training), and reply length alone does not predict the label."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import pytest

from core.data.preferences import PreferencePair, read_preferences, split_records
from core.data.sample import extract_answer

PROBLEM_KINDS = {"slip", "premature", "inconsistent", "off_topic", "guess"}
DOC_KINDS = {"other", "truncated", "unhelpful"}


@pytest.fixture(scope="module")
def pairs(sample_corpus_dir: Path) -> list[PreferencePair]:
    return read_preferences(sample_corpus_dir / "preferences.jsonl")


def _working(reply: str) -> list[str]:
    return [line for line in reply.split("\n") if not line.startswith("Answer:")]


def test_every_pair_names_a_rejection_kind_of_its_source(pairs) -> None:
    kinds = Counter(p.group for p in pairs)
    for p in pairs:
        if p.source in ("reasoning", "math"):
            assert p.rejection in PROBLEM_KINDS, p
        elif p.id.startswith("pref:code:code:"):
            assert p.rejection == "code_bug", p
        else:
            assert p.source in ("qa", "code") and p.rejection in DOC_KINDS, p
    for source in ("reasoning", "math"):
        for kind in PROBLEM_KINDS:
            assert kinds[f"{source}/{kind}"] >= 20, (source, kind, kinds)
    for source in ("qa", "code"):
        for kind in DOC_KINDS:
            assert kinds[f"{source}/{kind}"] >= 20, (source, kind, kinds)


def test_rejected_replies_fail_as_labelled(pairs) -> None:
    for p in pairs:
        if p.source not in ("reasoning", "math"):
            continue
        good, bad = extract_answer(p.chosen), extract_answer(p.rejected)
        assert good is not None and bad is not None and good != bad, p
        chosen_steps, rejected_steps = _working(p.chosen), _working(p.rejected)
        if p.rejection == "premature":  # the first steps of the right working, then stops
            assert 0 < len(rejected_steps) < len(chosen_steps)
            assert chosen_steps[: len(rejected_steps)] == rejected_steps
            assert bad in rejected_steps[-1]
        elif p.rejection == "inconsistent":  # the right working, a contradicting answer
            assert rejected_steps == chosen_steps
        elif p.rejection == "guess":  # no computation at all (it may restate the question)
            assert "=" not in p.rejected.replace(p.prompt, "")
        elif p.rejection == "off_topic":  # worked, but for another kind of question
            def shape(line: str) -> str:
                return re.sub(r"-?\d+", "#", line)

            assert rejected_steps and shape(rejected_steps[0]) != shape(chosen_steps[0])
        else:  # slip: same shape of working, a wrong step
            assert len(rejected_steps) == len(chosen_steps) and rejected_steps != chosen_steps
    for p in pairs:
        if p.rejection == "truncated":
            assert p.chosen.startswith(p.rejected) and len(p.rejected) < len(p.chosen)
        elif p.rejection == "unhelpful":
            name = re.search(r"`([^`]+)`", p.prompt)
            assert name and name.group(1) in p.rejected and p.rejected not in p.chosen


def test_no_question_is_asked_twice_so_the_split_holds_none_back_twice(pairs) -> None:
    problem_prompts = [p.prompt for p in pairs if p.source in ("reasoning", "math")
                       or p.id.startswith("pref:code:code:")]
    assert len(problem_prompts) == len(set(problem_prompts))
    train, val = split_records(pairs)
    assert 0.1 < len(val) / len(pairs) < 0.3
    assert not {p.prompt for p in train} & {p.prompt for p in val}


def test_length_alone_does_not_predict_the_preference(pairs) -> None:
    """'The longer reply wins' is near chance on the held-out pairs (measured 0.56 in tokens;
    0.49 on the old slips-only set), so a reward model cannot pass on length."""
    _, val = split_records(pairs)
    score = sum(1.0 if len(p.chosen) > len(p.rejected) else 0.5 if len(p.chosen) == len(p.rejected)
                else 0.0 for p in val) / len(val)
    print(f"longer-reply-wins accuracy on {len(val)} held-out pairs: {score:.3f}")
    assert score < 0.65
