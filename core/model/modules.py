"""Which optional modules a model builds: the data-fed ones follow the run's data (issue 17).

Three modules only do something when a batch carries their input: the knowledge-graph attention
(``triples``/``entities`` in the records), the vision path (``image``) and the continual module's
task conditioning (``task``). Without that input their parameters never see a gradient, yet they
inflate checkpoints, memory and the parameter count. :func:`resolve_enabled_modules` switches each
one on exactly when the data feeds it — unless the user set its ``enable_*`` explicitly — and
sizes the entity/relation/task tables to the run's vocabulary. Episodic memory, uncertainty,
active learning and reasoning need no extra input and stay as the profile says.

:func:`frozen_by_design` lists the parameters that get no gradient in training although they
exist, with the reason: the only exceptions the "every parameter earns its place" test allows.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

from core.errors import ConfigError
from core.model.config import NeuralNetConfig

# enable switch -> (the record field(s) that feed it, the top-level components it builds)
DATA_FED_MODULES: dict[str, tuple[str, tuple[str, ...]]] = {
    "enable_knowledge_graph": ("triples/entities", ("knowledge_graph",)),
    "enable_multimodal": ("image", ("vision_patch_embedding", "multimodal_fusion")),
    "enable_continual": ("task", ("continual_learning",)),
}
# What each switch builds, by parameter-name prefix (used to explain checkpoints).
MODULE_PREFIXES: dict[str, tuple[str, ...]] = {
    "enable_knowledge_graph": ("knowledge_graph.",),
    "enable_multimodal": ("vision_patch_embedding.", "multimodal_fusion."),
    "enable_continual": ("continual_learning.", "reasoning_engine.task_proj."),
    "enable_memory": ("neural_memory.", "reasoning_engine.memory_bridge."),
    "enable_uncertainty": ("uncertainty.",),
    "enable_active_learning": ("active_learning.",),
    "enable_reasoning": ("reasoning_engine.",),
}
MODULE_NAMES = {
    "enable_knowledge_graph": "knowledge graph",
    "enable_multimodal": "vision",
    "enable_continual": "task conditioning",
    "enable_memory": "neural memory",
    "enable_uncertainty": "uncertainty",
    "enable_active_learning": "active learning",
    "enable_reasoning": "reasoning",
}


@dataclass(frozen=True)
class FedInputs:
    """What a run's data gives the model beside text, and the vocabulary sizes it needs.

    ``num_entities``/``num_relations``/``num_tasks`` are the sizes of the run's input vocabulary
    (entities and relations include the unknown id 0); 0 means "not fed".
    """

    num_entities: int = 0
    num_relations: int = 0
    num_tasks: int = 0
    images: bool = False

    @property
    def knowledge_graph(self) -> bool:
        return self.num_entities > 1 or self.num_relations > 1

    @property
    def tasks(self) -> bool:
        return self.num_tasks > 0

    def feeds(self, switch: str) -> bool:
        """True when the data feeds the module of ``switch`` (an ``enable_*`` name)."""
        return {
            "enable_knowledge_graph": self.knowledge_graph,
            "enable_multimodal": self.images,
            "enable_continual": self.tasks,
        }[switch]


def resolve_enabled_modules(
    config: NeuralNetConfig, fed: FedInputs, explicit: Collection[str] = ()
) -> tuple[NeuralNetConfig, list[str]]:
    """The config a run builds from ``config`` given what its data feeds.

    Each data-fed ``enable_*`` becomes "the data has its input", unless its name is in
    ``explicit`` (set by the user: ``--set model.enable_x=...`` or the profile file). Fed tables
    are sized to the vocabulary (``kg_num_entities``, ``kg_num_relations``, ``num_tasks``) unless
    set explicitly, in which case they must be large enough. Returns the config and one line per
    module switched on or off, saying why.
    """
    changes: dict[str, object] = {}
    on: list[str] = []
    off: list[str] = []
    for switch, (field_name, _) in DATA_FED_MODULES.items():
        if switch in explicit:
            continue
        want = fed.feeds(switch)
        if want != getattr(config, switch):
            (on if want else off).append(f"{MODULE_NAMES[switch]} ('{field_name}')")
        changes[switch] = want
    notes: list[str] = []
    if on:
        notes.append(f"built for the inputs the data has: {', '.join(on)}")
    if off:
        notes.append(f"not built, no record has their input: {', '.join(off)} — "
                     "--set model.enable_<module>=true builds one anyway")
    sizes = {"kg_num_entities": fed.num_entities, "kg_num_relations": fed.num_relations,
             "num_tasks": fed.num_tasks}
    for name, needed in sizes.items():
        if needed <= 0:
            continue
        if name in explicit:
            if getattr(config, name) < needed:
                raise ConfigError(
                    f"model.{name}={getattr(config, name)} is smaller than the data's "
                    f"vocabulary ({needed}); raise it or leave it unset"
                )
            continue
        changes[name] = needed
    return config.replace(**changes), notes


def modules_of_state(keys: Collection[str]) -> set[str]:
    """The ``enable_*`` switches whose parameters appear among state-dict ``keys``."""
    found: set[str] = set()
    for switch, prefixes in MODULE_PREFIXES.items():
        top = prefixes[0]
        if any(k.startswith(top) for k in keys):
            found.add(switch)
    return found


def frozen_by_design(config: NeuralNetConfig) -> dict[str, str]:
    """Parameter-name prefixes that exist but get no gradient in training, with the reason."""
    frozen: dict[str, str] = {}
    if config.enable_reasoning:
        tot = "reasoning_engine.tree_of_thought."
        if config.effective_tot_keep_k == 1:
            why = (f"tot_keep_k=1 of {config.num_tot_branches} branches: the critic only ranks "
                   "branches (a hard top-k) and a single kept branch merges with weight 1, and "
                   "contradictions are resolved between kept pairs only")
            for head in ("conf.", "evid.", "contra.", "resolver."):
                frozen[tot + head] = why
        frozen["reasoning_engine.scratchpad_attention.rho"] = (
            "the scratchpad's age decay: slots are committed only at inference, so every age "
            "is 0 in training")
    return frozen
