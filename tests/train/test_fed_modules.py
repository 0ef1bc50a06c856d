"""Issue 17: the knowledge graph, images and task ids come from the data; modules nothing feeds
are not built; every parameter of a run's model earns a gradient."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest
import torch
from train_helpers import run_config, tiny_model_config

from core.errors import DataError
from core.model.modules import frozen_by_design

RELATIONS = ("capital", "colour")


def write_fed_corpus(root: Path, n: int = 48) -> Path:
    """Styles records with triples, an image and a task each (tiny 32×32 PNGs)."""
    from PIL import Image

    rng = random.Random(0)
    (root / "img").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        colour = rng.choice(("red", "blue"))
        rgb = (200, 30, 30) if colour == "red" else (30, 30, 200)
        Image.new("RGB", (32, 32), rgb).save(root / "img" / f"{i}.png")
        place, city = f"Place{i}", rng.choice(("Ala", "Bor", "Cim"))
        rel = rng.choice(RELATIONS)
        answer = city if rel == "capital" else colour
        rows.append({
            "provider": "p", "style_label": "qa", "user_input": f"What is the {rel} of {place}?",
            "assistant_reply": answer, "turn_id": f"t{i}",
            "triples": [[place, "capital", city], [place, "colour", colour]],
            "image": f"img/{i}.png", "task": ("facts", "pictures")[i % 2],
        })
    path = root / "fed.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def recording_trainer() -> type:
    """A SimpleTrainer that records every parameter with a non-zero gradient at each step."""
    from core.train.simple import SimpleTrainer

    class Recording(SimpleTrainer):
        touched: set[str]

        def optimizer_step(self, loss_sum: Any) -> Any:
            seen = getattr(self, "touched", set())
            seen |= {n for n, p in self.model.named_parameters()
                     if p.grad is not None and bool(torch.any(p.grad != 0))}
            self.touched = seen
            return super().optimizer_step(loss_sum)

    return Recording


def untouched(trainer: Any) -> set[str]:
    """Parameters that never got a gradient and are not frozen on purpose."""
    frozen = tuple(frozen_by_design(trainer.model_config))
    return {n for n, _ in trainer.model.named_parameters()
            if n not in trainer.touched and not n.startswith(frozen)}


VISION_SETS = {"image_size": 32, "vision_d_model": 32, "num_multimodal_layers": 1}


@pytest.fixture(scope="module")
def fed_run(tmp_path_factory: pytest.TempPathFactory) -> Any:
    root = tmp_path_factory.mktemp("fed")
    data = write_fed_corpus(root)
    cfg = run_config(root / "run", data, steps=4, eval_every=4, checkpoint_every=4,
                     model=dict(VISION_SETS))
    trainer = recording_trainer()(cfg, tiny_model_config())
    assert trainer.run() == "finished"
    return trainer


@pytest.mark.slow
def test_plain_tiny_run_trains_every_parameter(tmp_path: Path, sample_corpus_dir: Path) -> None:
    """The tiny profile on the plain sample corpus: no knowledge-graph, vision or task module is
    built, and every parameter that exists gets a gradient within a few steps, unless listed by
    frozen_by_design with its reason."""
    from profiles.catalog import load_profile

    profile = load_profile("tiny")
    cfg = run_config(tmp_path / "run", sample_corpus_dir / "styles.jsonl", steps=3,
                     eval_every=100, checkpoint_every=100, max_samples=400)
    trainer = recording_trainer()(cfg, profile.model)
    assert trainer.run() == "finished"
    model = trainer.model
    assert model.knowledge_graph is None and model.vision_patch_embedding is None
    assert model.multimodal_fusion is None and model.continual_learning is None
    assert untouched(trainer) == set()
    # Only the documented ToT critic/contradiction heads (one kept branch) and the age decay.
    frozen = frozen_by_design(trainer.model_config)
    assert set(frozen) == {
        "reasoning_engine.tree_of_thought.conf.", "reasoning_engine.tree_of_thought.evid.",
        "reasoning_engine.tree_of_thought.contra.", "reasoning_engine.tree_of_thought.resolver.",
        "reasoning_engine.scratchpad_attention.rho"}
    # The profile's full config would have built 13 M more parameters that nothing feeds.
    n = sum(p.numel() for p in model.parameters())
    everything = profile.model.replace(vocab_size=trainer.model_config.vocab_size,
                                       max_position_embeddings=trainer.model_config.max_position_embeddings)
    from core.model.model import count_parameters

    assert count_parameters(everything)["total"] - n > 13_000_000
    saved = json.loads((trainer.last_checkpoint / "config.json").read_text())
    assert not saved["enable_knowledge_graph"] and not saved["enable_multimodal"]
    events = [json.loads(line) for line in (tmp_path / "run" / "events.jsonl").open()]
    infos = [e["message"] for e in events if e["type"] == "info"]
    assert any("not built" in m and "knowledge graph" in m for m in infos)


def test_records_with_triples_images_and_tasks_feed_their_modules(fed_run: Any) -> None:
    trainer = fed_run
    cfg = trainer.model_config
    assert cfg.enable_knowledge_graph and cfg.enable_multimodal and cfg.enable_continual
    # The tables are sized to the data: <unk> + 48 places + 3 cities + 2 colours; 2 relations.
    assert (cfg.kg_num_entities, cfg.kg_num_relations, cfg.num_tasks) == (54, 3, 2)
    assert untouched(trainer) == set()
    assert {n.split(".")[0] for n in trainer.touched} >= {
        "knowledge_graph", "vision_patch_embedding", "multimodal_fusion", "continual_learning"}
    ckpt = trainer.last_checkpoint
    vocab = json.loads((ckpt / "input_vocab.json").read_text())
    assert vocab["relations"] == ["<unk>", *RELATIONS] and vocab["tasks"] == ["facts", "pictures"]
    assert "input_vocab.json" in json.loads((ckpt / "manifest.json").read_text())["files"]
    run_toml = (Path(trainer.run_dir) / "run.toml").read_text()
    assert "enable_knowledge_graph = true" in run_toml and "enable_multimodal = true" in run_toml


def test_the_knowledge_graph_and_image_change_what_the_model_computes(fed_run: Any) -> None:
    from core.infer.inference import load_policy, prompt_inputs

    model, _, ckpt = load_policy(fed_run.last_checkpoint)
    ids = torch.tensor([[7, 20, 21, 22, 2]])
    dec = torch.tensor([[1, 8]])
    notes: list[str] = []
    base = prompt_inputs(model, ckpt, task="facts", on_info=notes.append)
    with_kg = prompt_inputs(model, ckpt, [("Place1", "capital", "Bor")], task="facts")
    with_img = prompt_inputs(model, ckpt, image=Path(fed_run.data_path).parent / "img" / "1.png",
                             task="facts")
    other_task = prompt_inputs(model, ckpt, task="pictures")
    assert notes == ["no --image: the model reads a blank image"]

    def logits(inputs: dict[str, Any]) -> torch.Tensor:
        return model(input_ids=ids, decoder_input_ids=dec, **inputs)["logits"]

    ref = logits(base)
    for changed in (with_kg, with_img, other_task):
        assert not torch.allclose(logits(changed), ref)


def test_generate_takes_triple_image_and_task(fed_run: Any, cli_main: Any) -> None:
    ckpt = str(fed_run.last_checkpoint)
    img = str(Path(fed_run.data_path).parent / "img" / "0.png")
    common = ["generate", "--checkpoint", ckpt, "--prompt", "What is it?", "--max-new-tokens",
              "3", "--temperature", "0", "--device", "cpu"]
    code, out, err = cli_main([*common, "--triple", "Place0,capital,Ala", "--triple",
                               "Nowhere,capital,Ala", "--image", img, "--task", "pictures"])
    assert code == 0, err
    assert "info: not in the model's knowledge-graph vocabulary (53 entities), read as " \
           "unknown: Nowhere\n" in err
    code, _, err = cli_main([*common, "--triple", "only,two"])
    assert code == 1 and "expected SUBJECT,RELATION,OBJECT" in err and err.count("\n") == 1
    code, _, err = cli_main([*common, "--task", "nope"])
    assert code == 1 and "unknown task 'nope'; this model knows: facts, pictures" in err


def test_data_stats_reports_input_coverage(fed_run: Any) -> None:
    from typer.testing import CliRunner

    from aeron_tui.cli import app

    out = CliRunner().invoke(app, ["data", "stats", fed_run.data_path])
    assert out.exit_code == 0, out.output
    line = next(x for x in out.output.splitlines() if x.startswith("model inputs:"))
    assert "triples 48/48 (100%)" in line and "image 48/48" in line and "task 48/48" in line
    assert "knowledge graph (53 entities, 2 relations, 96 triples)" in line


def test_explicit_setting_wins_over_the_data(tmp_path: Path, small_corpus: Path) -> None:
    from core.train.simple import SimpleTrainer

    cfg = run_config(tmp_path / "a", small_corpus, model={"enable_knowledge_graph": True})
    trainer = SimpleTrainer(cfg, tiny_model_config())
    trainer.setup()
    assert trainer.model.knowledge_graph is not None and trainer.model.continual_learning is None
    trainer.cleanup()

    data = write_fed_corpus(tmp_path / "fed", n=12)
    cfg = run_config(tmp_path / "b", data, model={"enable_multimodal": False})
    with pytest.raises(DataError, match=r"fed\.jsonl:\d+: the record has an image but "
                                        "model.enable_multimodal is off"):
        SimpleTrainer(cfg, tiny_model_config()).run()


def test_a_corrupt_image_stops_the_run_before_its_first_step(tmp_path: Path) -> None:
    from core.train.simple import SimpleTrainer

    data = write_fed_corpus(tmp_path, n=12)
    (tmp_path / "img" / "5.png").write_bytes(b"\x89PNG broken")
    cfg = run_config(tmp_path / "run", data, model=dict(VISION_SETS))
    with pytest.raises(DataError, match=r"fed\.jsonl:6: image .*5\.png cannot be read"):
        SimpleTrainer(cfg, tiny_model_config()).run()
    steps = [line for line in (tmp_path / "run" / "events.jsonl").open() if '"step"' in line]
    assert steps == []


def test_an_older_checkpoint_loads_without_its_never_fed_modules(tmp_path: Path) -> None:
    """A checkpoint written before the modules followed the data (all modules, no input
    vocabulary): generation does not build them, says so in one line, and computes the same."""
    from core.data.tokenizer import AeronTokenizer
    from core.model.model import TransformerNeuralNetBackbone
    from core.runs.checkpoint import build_model_from_checkpoint, save_checkpoint

    torch.manual_seed(0)
    config = tiny_model_config().replace(vocab_size=300)
    old = TransformerNeuralNetBackbone(config).eval()
    tok = AeronTokenizer.train(["hello world"] * 20, vocab_size=300)
    path = save_checkpoint(tmp_path / "old", model=old, config=config, tokenizer=tok,
                           trainer_state={"global_step": 1})
    notes: list[str] = []
    slim, _, slim_cfg = build_model_from_checkpoint(path, drop_unfed=True, on_info=notes.append)
    assert len(notes) == 1 and "knowledge graph, vision, task conditioning" in notes[0]
    assert not (slim_cfg.enable_knowledge_graph or slim_cfg.enable_multimodal)
    dropped = old.num_parameters(by_component=False) - slim.num_parameters(by_component=False)
    assert f"{dropped:,} parameters" in notes[0]
    kept, _, kept_cfg = build_model_from_checkpoint(path)  # merge/export: the model as saved
    assert kept_cfg.enable_knowledge_graph and kept.knowledge_graph is not None
    ids, dec = torch.tensor([[7, 40, 41, 2]]), torch.tensor([[1, 8, 50]])
    with torch.no_grad():
        a = old(input_ids=ids, decoder_input_ids=dec)["logits"]
        b = slim(input_ids=ids, decoder_input_ids=dec)["logits"]
    assert torch.equal(a, b)


def test_continuing_between_checkpoints_with_and_without_a_module_is_explained() -> None:
    from core.model.model import TransformerNeuralNetBackbone
    from core.runs.checkpoint import adapt_state_to_model, load_model_state

    base = tiny_model_config().replace(vocab_size=300)
    with_kg = TransformerNeuralNetBackbone(base.replace(
        enable_continual=False, enable_multimodal=False, kg_num_entities=10))
    grown = TransformerNeuralNetBackbone(base.replace(
        enable_continual=False, enable_multimodal=False, kg_num_entities=14))
    state, notes = adapt_state_to_model(grown, with_kg.state_dict(), "ckpt")
    load_model_state(grown, state, "ckpt")
    table = grown.knowledge_graph.entity_embedding.weight
    assert torch.equal(table[:10], with_kg.knowledge_graph.entity_embedding.weight)
    assert notes == ["ckpt: entity embedding grew from 10 to 14 rows (new names start fresh)"]

    tasks = TransformerNeuralNetBackbone(base.replace(enable_knowledge_graph=False,
                                                      enable_multimodal=False))
    state, notes = adapt_state_to_model(tasks, with_kg.state_dict(), "ckpt")
    load_model_state(tasks, state, "ckpt")
    assert [n.split(":")[1].split(" module")[0].strip() for n in notes] == [
        "the knowledge graph", "has no task conditioning"]
    assert torch.count_nonzero(tasks.reasoning_engine.task_proj.weight) == 0  # starts as identity


def test_merging_a_checkpoint_with_and_one_without_a_module_is_explained(tmp_path: Path) -> None:
    from core.data.tokenizer import AeronTokenizer
    from core.evolve.merge import MergeError, check_checkpoints_mergeable
    from core.model.model import TransformerNeuralNetBackbone
    from core.runs.checkpoint import save_checkpoint

    tok = AeronTokenizer.train(["hello world"] * 20, vocab_size=300)
    paths = []
    for name, kg in (("with", True), ("without", False)):
        config = tiny_model_config().replace(vocab_size=300, enable_knowledge_graph=kg,
                                             enable_multimodal=False, enable_continual=False)
        paths.append(save_checkpoint(tmp_path / name, model=TransformerNeuralNetBackbone(config),
                                     config=config, tokenizer=tok, trainer_state={},
                                     input_vocab={"entities": ["<unk>"]}))
    with pytest.raises(MergeError, match="only one of them has the knowledge graph module"):
        check_checkpoints_mergeable(paths)


def test_the_planned_parameter_count_is_the_model_the_run_builds(tmp_path: Path) -> None:
    """What setup screens show (profiles.catalog.run_parameter_count) equals the parameters of
    the model the trainer builds on the same data; on text the data-fed modules are left out."""
    from core.train.simple import SimpleTrainer
    from profiles.catalog import load_profile, run_parameter_count

    data = write_fed_corpus(tmp_path / "fed", n=12)
    profile = load_profile("tiny")
    cfg = run_config(tmp_path / "run", data, model=dict(VISION_SETS))
    trainer = SimpleTrainer(cfg, profile.model)
    trainer.setup()
    built = sum(p.numel() for p in trainer.model.parameters())
    vocab = trainer.model_config.vocab_size
    trainer.cleanup()
    assert run_parameter_count("tiny", data, dict(VISION_SETS), vocab_size=vocab) == built
    assert run_parameter_count("tiny", None, dict(VISION_SETS), vocab_size=vocab) < built


def test_a_resume_keeps_the_checkpoints_modules(tmp_path: Path, small_corpus: Path) -> None:
    """The data no longer decides on resume: a run that built the knowledge graph explicitly
    resumes with it even when the resumed command does not say so again."""
    from core.train.simple import SimpleTrainer

    first = run_config(tmp_path / "run", small_corpus, steps=2, checkpoint_every=2,
                       eval_every=100, model={"enable_knowledge_graph": True})
    assert SimpleTrainer(first, tiny_model_config()).run() == "finished"
    again = run_config(tmp_path / "run", small_corpus, steps=3, checkpoint_every=2,
                       eval_every=100, resume="latest")
    trainer = SimpleTrainer(again, tiny_model_config())
    assert trainer.run() == "finished"
    assert trainer.global_step == 3 and trainer.model.knowledge_graph is not None
