"""MCTS generation over a reward model (spec rlhf.md §6 "MCTSGenerator").

Nodes are reply prefixes, actions are next tokens. A node is expanded with the policy's top 5
next tokens, their probabilities renormalised to sum to 1 (the priors ``P``). Selection
descends by PUCT, ``Q + c·P·√N_parent / (1 + N_child)`` with ``c`` 1.0 and ``Q`` the mean
backed-up value (0 for an unvisited child). The leaf is expanded and valued by the reward model
on the policy's greedy completion of the leaf's prefix; the value is added to every node on the
path (mean backup). After the simulations for one action (50 by default), the most visited
child of the root is emitted and becomes the new root (its subtree is kept); generation ends at
a stop id or after ``max_new_tokens``.

Two layers:

* :class:`MCTS` — the search over abstract ``priors(prefix)`` and ``value(prefix)`` functions
  (tested by hand on a tiny tree);
* :class:`MCTSGenerator` — a policy model supplies the priors and greedy completions (one
  cached decoder pass gives both, memoised for every prefix along the completion), a reply
  scorer (a reward model through :func:`core.infer.inference.reward_scores`, or any function of the
  reply ids) supplies the values.

Values are the scorer's raw numbers (no normalisation), as the spec's formula reads; a scorer
whose values span much more than ~1 makes the search greedier in ``Q``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from core.errors import ConfigError
from core.infer.generation import (
    DECODER_PREFIX,
    FINISH_LENGTH,
    FINISH_STOP,
    Generation,
    GenerationConfig,
    check_tokenizer_fits,
    encode_prompt_ids,
    eval_mode,
    pad_batch,
)

Prefix = tuple[int, ...]
PriorFn = Callable[[Prefix], Sequence[tuple[int, float]]]  # prefix -> (token, probability)
ValueFn = Callable[[Prefix], float]  # prefix -> value of the leaf
# (prompt, replies as token ids) -> one score per reply
ReplyScorer = Callable[[str, Sequence[Sequence[int]]], list[float]]


@dataclass
class MCTSNode:
    """A reply prefix: visit count ``N``, summed value ``W``, prior ``P`` and children."""

    tokens: Prefix
    prior: float = 1.0
    visits: int = 0
    value_sum: float = 0.0
    terminal: bool = False
    expanded: bool = False
    children: dict[int, MCTSNode] = field(default_factory=dict)

    @property
    def q(self) -> float:
        """Mean backed-up value (0 before the first visit)."""
        return self.value_sum / self.visits if self.visits else 0.0


@dataclass
class MCTSStep:
    """One emitted token and the root statistics that chose it."""

    token: int
    visits: dict[int, int]  # child token -> visit count at the root
    q: dict[int, float]  # child token -> mean value


class MCTS:
    """PUCT tree search over reply prefixes (see the module docstring)."""

    def __init__(
        self,
        priors: PriorFn,
        value: ValueFn,
        *,
        simulations: int = 50,
        c_puct: float = 1.0,
        top_k: int = 5,
        max_new_tokens: int = 128,
        stop_ids: Sequence[int] = (),
    ) -> None:
        if simulations < 1:
            raise ConfigError(f"--simulations must be >= 1, got {simulations}")
        if top_k < 1:
            raise ConfigError(f"MCTS top_k must be >= 1, got {top_k}")
        if c_puct < 0:
            raise ConfigError(f"--c-puct must be >= 0, got {c_puct}")
        if max_new_tokens < 1:
            raise ConfigError(f"--max-new-tokens must be >= 1, got {max_new_tokens}")
        self.priors = priors
        self.value = value
        self.simulations = simulations
        self.c_puct = c_puct
        self.top_k = top_k
        self.max_new_tokens = max_new_tokens
        self.stop_ids = frozenset(stop_ids)

    def puct(self, parent: MCTSNode, child: MCTSNode) -> float:
        """``Q + c·P·√N_parent / (1 + N_child)``."""
        return child.q + self.c_puct * child.prior * math.sqrt(parent.visits) / (1 + child.visits)

    def select_child(self, node: MCTSNode) -> MCTSNode:
        """The child with the highest PUCT score (ties: the higher prior, listed first)."""
        best, best_score = None, -math.inf
        for child in node.children.values():
            score = self.puct(node, child)
            if score > best_score:
                best, best_score = child, score
        assert best is not None
        return best

    def expand(self, node: MCTSNode) -> None:
        """Children for the top-k next tokens, priors renormalised to sum to 1."""
        ranked = sorted(self.priors(node.tokens), key=lambda tp: -tp[1])[: self.top_k]
        total = sum(p for _, p in ranked)
        if not ranked or total <= 0:
            raise ConfigError(f"the policy gave no next-token probabilities after {node.tokens}")
        for token, p in ranked:
            tokens = (*node.tokens, int(token))
            node.children[int(token)] = MCTSNode(
                tokens, p / total,
                terminal=int(token) in self.stop_ids or len(tokens) >= self.max_new_tokens,
            )
        node.expanded = True

    def simulate(self, root: MCTSNode) -> float:
        """One selection → expansion → evaluation → backup pass; returns the leaf value."""
        node, path = root, [root]
        while node.expanded and not node.terminal:
            node = self.select_child(node)
            path.append(node)
        if not node.terminal:
            self.expand(node)
        value = float(self.value(node.tokens))
        for n in path:
            n.visits += 1
            n.value_sum += value
        return value

    def search(self, root: MCTSNode, simulations: int | None = None) -> MCTSNode:
        """Run the simulations from ``root``; returns its most visited child."""
        for _ in range(simulations or self.simulations):
            self.simulate(root)
        return self.most_visited(root)

    @staticmethod
    def most_visited(node: MCTSNode) -> MCTSNode:
        """Most visits; ties broken by the higher mean value, then the higher prior."""
        return max(node.children.values(), key=lambda c: (c.visits, c.q, c.prior))

    def run(self, on_token: Callable[[int], None] | None = None) -> tuple[list[int], str,
                                                                         list[MCTSStep]]:
        """Emit tokens until a stop id or ``max_new_tokens``: ``(tokens, reason, steps)``."""
        root = MCTSNode(())
        steps: list[MCTSStep] = []
        while True:
            child = self.search(root)
            steps.append(MCTSStep(
                child.tokens[-1],
                {t: c.visits for t, c in root.children.items()},
                {t: c.q for t, c in root.children.items()},
            ))
            if on_token is not None:
                on_token(child.tokens[-1])
            root = child  # keep the subtree: its visits count towards the next action
            if root.terminal:
                reason = FINISH_STOP if root.tokens[-1] in self.stop_ids else FINISH_LENGTH
                return list(root.tokens), reason, steps


class PolicyOracle:
    """Priors and greedy completions of one prompt under a policy model, memoised by prefix.

    One cached greedy decode from a prefix yields the logits at every prefix along its path, so
    the priors and the (identical) greedy completion of each of those prefixes are stored too.
    """

    def __init__(self, model: Any, input_ids: Tensor, attention_mask: Tensor | None,
                 max_new_tokens: int, stop_ids: Sequence[int], top_k: int = 5,
                 prefix: Sequence[int] = DECODER_PREFIX) -> None:
        self.model = model
        self.max_new_tokens = max_new_tokens
        self.stop_ids = frozenset(stop_ids)
        self.top_k = top_k
        self.prefix = list(prefix)
        with eval_mode(model):
            self.encoded = model.encode(input_ids, attention_mask)
        self._priors: dict[Prefix, list[tuple[int, float]]] = {}
        self._completion: dict[Prefix, Prefix] = {}
        self.decoder_passes = 0

    def _top(self, logits: Tensor) -> list[tuple[int, float]]:
        probs = torch.softmax(logits.float(), dim=-1)
        values, ids = torch.topk(probs, min(self.top_k, probs.shape[-1]))
        return [(int(i), float(v)) for i, v in zip(ids, values, strict=True)]

    def _analyse(self, tokens: Prefix) -> None:
        """Greedy decode from ``tokens``, recording priors and the completion on the way."""
        path: list[Prefix] = []
        current = tokens
        with eval_mode(self.model):
            ids = torch.tensor([self.prefix + list(tokens)], device=self.encoded.memory.device)
            past = None
            while True:
                dec = self.model.decode(ids, self.encoded, past_key_values=past, use_cache=True)
                self.decoder_passes += 1
                past = dec["past_key_values"]
                logits = dec["logits"][0, -1]
                self._priors.setdefault(current, self._top(logits))
                path.append(current)
                nxt = int(logits.argmax())
                current = (*current, nxt)
                if nxt in self.stop_ids or len(current) >= self.max_new_tokens:
                    final = current
                    break
                if current in self._completion:  # joined a path decoded before
                    final = self._completion[current]
                    break
                ids = torch.tensor([[nxt]], device=ids.device)
        for p in path:
            self._completion.setdefault(p, final)

    def priors(self, tokens: Prefix) -> list[tuple[int, float]]:
        """The policy's top-k next tokens and probabilities after ``tokens``."""
        if tokens not in self._priors:
            self._analyse(tokens)
        return self._priors[tokens]

    def completion(self, tokens: Prefix) -> Prefix:
        """``tokens`` continued greedily to a stop id or ``max_new_tokens``."""
        if tokens and (tokens[-1] in self.stop_ids or len(tokens) >= self.max_new_tokens):
            return tokens
        if tokens not in self._completion:
            self._analyse(tokens)
        return self._completion[tokens]


@dataclass
class MCTSResult:
    """The generation, the per-token root statistics and the work done."""

    generation: Generation
    steps: list[MCTSStep]
    simulations: int
    reward_evaluations: int
    decoder_passes: int


class MCTSGenerator:
    """MCTS generation of one reply with a policy model and a reply scorer (rlhf.md §6).

    ``scorer(prompt, replies)`` returns one value per reply (token ids after the decoder
    prefix, stop id included) — :func:`core.infer.inference.reward_scores` with a reward model, or
    any function for tests. Values are memoised per completed reply.
    """

    def __init__(self, policy: Any, tokenizer: Any, scorer: ReplyScorer, *,
                 simulations: int = 50, c_puct: float = 1.0, top_k: int = 5) -> None:
        check_tokenizer_fits(policy, tokenizer)
        self.policy = policy
        self.tokenizer = tokenizer
        self.scorer = scorer
        self.simulations = simulations
        self.c_puct = c_puct
        self.top_k = top_k

    def generate(self, prompt: str, config: GenerationConfig | None = None,
                 on_text: Callable[[str], None] | None = None) -> MCTSResult:
        """Search token by token; ``on_text`` streams the emitted text."""
        from core.infer.generation import TextStreamer

        config = config or GenerationConfig()
        limit = int(self.policy.config.max_position_embeddings)
        if config.max_new_tokens > limit - len(DECODER_PREFIX):
            raise ConfigError(
                f"--max-new-tokens {config.max_new_tokens} does not fit the decoder context "
                f"({limit} positions); use at most {limit - len(DECODER_PREFIX)}"
            )
        enc = encode_prompt_ids(self.tokenizer, prompt, config.max_prompt_tokens or limit,
                                config.overflow, config.style, config.provider)
        device = next(self.policy.parameters()).device
        ids, mask = pad_batch([enc.ids], device)
        oracle = PolicyOracle(self.policy, ids, mask, config.max_new_tokens, config.stop_ids,
                              self.top_k)
        values: dict[Prefix, float] = {}

        def value(tokens: Prefix) -> float:
            reply = oracle.completion(tokens)
            if reply not in values:
                values[reply] = float(self.scorer(prompt, [list(reply)])[0])
            return values[reply]

        search = MCTS(oracle.priors, value, simulations=self.simulations, c_puct=self.c_puct,
                      top_k=self.top_k, max_new_tokens=config.max_new_tokens,
                      stop_ids=config.stop_ids)
        streamer = TextStreamer(self.tokenizer, config.stop_ids)

        def push(token: int) -> None:
            piece = streamer.push(token)
            if piece and on_text is not None:
                on_text(piece)

        tokens, reason, steps = search.run(push)
        text = self.tokenizer.decode([t for t in tokens if t not in config.stop_ids])
        rest = streamer.remainder(text)
        if rest and on_text is not None:
            on_text(rest)
        gen = Generation(prompt, text, tokens, reason, len(enc.ids), enc.truncated, enc.dropped,
                         extra={"mcts_value": values.get(tuple(tokens))})
        return MCTSResult(gen, steps, self.simulations * len(steps), len(values),
                          oracle.decoder_passes)
