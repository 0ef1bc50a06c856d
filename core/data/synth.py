"""Generated samples whose answers the builder computes: reasoning chains, arithmetic, small code
tasks, formatting and rewriting.

Each generator draws its parameters once from ``rng`` and returns a :class:`Problem` whose
``solve(slip)`` renders the worked reply; ``slip != 0`` injects an arithmetic (or logical) error
that propagates to a wrong final answer — the rejected side of a preference pair.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Callable
from dataclasses import dataclass

NAMES = (
    "Ada",
    "Ben",
    "Cara",
    "Dev",
    "Eli",
    "Fay",
    "Gus",
    "Hana",
    "Ivo",
    "Jun",
    "Kai",
    "Lena",
    "Milo",
    "Nia",
    "Omar",
    "Pia",
    "Quinn",
    "Rosa",
    "Sam",
    "Tara",
    "Uma",
    "Vik",
    "Wen",
    "Yara",
)
ITEMS = (
    "pens",
    "apples",
    "books",
    "marbles",
    "stickers",
    "cards",
    "shells",
    "coins",
    "bolts",
    "tickets",
    "cookies",
    "stamps",
    "beads",
    "tiles",
    "seeds",
    "nails",
)
CONTAINERS = ("boxes", "bags", "crates", "jars", "packs", "trays")
WORDS = (
    "alpha",
    "river",
    "stone",
    "maple",
    "orbit",
    "cloud",
    "ember",
    "harbor",
    "lantern",
    "meadow",
    "signal",
    "vector",
    "copper",
    "garden",
    "pixel",
    "summit",
    "thread",
    "window",
    "anchor",
    "bridge",
    "canyon",
    "delta",
    "falcon",
    "glacier",
    "island",
    "jungle",
    "kernel",
    "ledger",
    "marble",
    "needle",
    "oasis",
    "prism",
    "quartz",
    "rocket",
    "saddle",
    "tunnel",
    "velvet",
)
VERBS = (
    "compute",
    "scale",
    "shift",
    "score",
    "measure",
    "count",
    "check",
    "adjust",
    "rate",
    "find",
)
NOUNS = ("total", "value", "price", "weight", "level", "offset", "factor", "width", "limit", "rate")

ANSWER_RE = re.compile(r"^\s*Answer:\s*(.+?)\s*$", re.MULTILINE)


def extract_answer(text: str) -> str | None:
    """The value on the last ``Answer: ...`` line of a reply, or None (verifiable rewards)."""
    found = ANSWER_RE.findall(text)
    return found[-1] if found else None


@dataclass(frozen=True)
class Problem:
    """A question and a renderer of its worked reply (``slip`` 0 = correct)."""

    kind: str
    question: str
    solve: Callable[[int], tuple[str, str]]  # slip -> (reply, final answer)


def _chain(lines: list[str], answer: object) -> tuple[str, str]:
    return "\n".join([*lines, f"Answer: {answer}"]), str(answer)


# ---------------------------------------------------------------- reasoning (word problems)
def _boxes(rng: random.Random) -> Problem:
    a, b, c, d = rng.randint(2, 9), rng.randint(3, 12), rng.randint(1, 15), rng.randint(1, 6)
    item, box, who = rng.choice(ITEMS), rng.choice(CONTAINERS), rng.choice(NAMES)
    q = (
        f"{who} has {a} {box} with {b} {item} in each. {who} gives away {c} {item} and then "
        f"gets {d} more {box} of {b}. How many {item} does {who} have now?"
    )

    def solve(slip: int) -> tuple[str, str]:
        x = a * b + slip
        y = x - c
        z = d * b
        return _chain(
            [
                f"Start: {a} × {b} = {x} {item}.",
                f"After giving away {c}: {x} − {c} = {y}.",
                f"New {box}: {d} × {b} = {z}.",
                f"Total: {y} + {z} = {y + z}.",
            ],
            y + z,
        )

    return Problem("boxes", q, solve)


def _travel(rng: random.Random) -> Problem:
    v, h, w, k = rng.randint(20, 90), rng.randint(2, 5), rng.randint(20, 90), rng.randint(2, 4)
    q = (
        f"A train travels at {v} km/h for {h} hours, then at {w} km/h for {k} hours. "
        "How many kilometres does it travel in total?"
    )

    def solve(slip: int) -> tuple[str, str]:
        d1 = v * h + slip
        d2 = w * k
        return _chain(
            [
                f"First part: {v} × {h} = {d1} km.",
                f"Second part: {w} × {k} = {d2} km.",
                f"Total: {d1} + {d2} = {d1 + d2} km.",
            ],
            d1 + d2,
        )

    return Problem("travel", q, solve)


def _savings(rng: random.Random) -> Problem:
    a, n, who = rng.randint(3, 40), rng.randint(2, 12), rng.choice(NAMES)
    s = rng.randint(1, a * n - 1)
    q = (
        f"{who} saves ${a} every week for {n} weeks and then spends ${s} on a gift. "
        f"How many dollars does {who} have left?"
    )

    def solve(slip: int) -> tuple[str, str]:
        saved = a * n + slip
        return _chain(
            [f"Saved: {a} × {n} = ${saved}.", f"After the gift: {saved} − {s} = ${saved - s}."],
            saved - s,
        )

    return Problem("savings", q, solve)


def _ages(rng: random.Random) -> Problem:
    p, r, t = rng.sample(NAMES, 3)
    a, b, m, k = rng.randint(3, 30), rng.randint(1, 15), rng.randint(2, 3), rng.randint(1, 10)
    times = {2: "twice", 3: "three times"}[m]
    q = (
        f"{p} is {a} years old. {r} is {b} years older than {p}. {t} is {times} as old as {r}. "
        f"How old will {t} be in {k} years?"
    )

    def solve(slip: int) -> tuple[str, str]:
        rb = a + b + slip
        tb = m * rb
        return _chain(
            [
                f"{r}: {a} + {b} = {rb}.",
                f"{t}: {m} × {rb} = {tb}.",
                f"In {k} years: {tb} + {k} = {tb + k}.",
            ],
            tb + k,
        )

    return Problem("ages", q, solve)


def _recipe(rng: random.Random) -> Problem:
    p, u, f = rng.randint(2, 6), rng.randint(20, 150), rng.randint(2, 5)
    g, q_people = p * u, p * f
    q = (
        f"A recipe needs {g} grams of flour for {p} people. How many grams of flour are needed "
        f"for {q_people} people?"
    )

    def solve(slip: int) -> tuple[str, str]:
        per = u + slip
        return _chain(
            [
                f"Per person: {g} ÷ {p} = {per} g.",
                f"For {q_people} people: {per} × {q_people} = {per * q_people} g.",
            ],
            per * q_people,
        )

    return Problem("recipe", q, solve)


def _inverse(rng: random.Random) -> Problem:
    x, a, b = rng.randint(2, 40), rng.randint(2, 9), rng.randint(1, 50)
    c = a * x + b
    q = f"I think of a number, multiply it by {a} and add {b}. The result is {c}. What was the number?"

    def solve(slip: int) -> tuple[str, str]:
        y = c - b + slip * a
        return _chain(
            [
                f"Undo the addition: {c} − {b} = {y}.",
                f"Undo the multiplication: {y} ÷ {a} = {y // a}.",
            ],
            y // a,
        )

    return Problem("inverse", q, solve)


def _sequence(rng: random.Random) -> Problem:
    start = rng.randint(1, 30)
    if rng.random() < 0.6:
        step = rng.randint(2, 12)
        terms = [start + i * step for i in range(5)]

        def solve(slip: int) -> tuple[str, str]:
            s = step + slip
            return _chain(
                [
                    f"Each term adds {s} ({terms[1]} − {terms[0]} = {s}).",
                    f"Next: {terms[-1]} + {s} = {terms[-1] + s}.",
                ],
                terms[-1] + s,
            )
    else:
        ratio = rng.randint(2, 3)
        start = rng.randint(1, 6)
        terms = [start * ratio**i for i in range(5)]

        def solve(slip: int) -> tuple[str, str]:
            r = ratio + slip
            return _chain(
                [
                    f"Each term is multiplied by {r} ({terms[1]} ÷ {terms[0]} = {r}).",
                    f"Next: {terms[-1]} × {r} = {terms[-1] * r}.",
                ],
                terms[-1] * r,
            )

    q = f"What number comes next in the sequence {', '.join(map(str, terms))}?"
    return Problem("sequence", q, solve)


def _ordering(rng: random.Random) -> Problem:
    people = rng.sample(NAMES, rng.randint(3, 5))  # tallest first
    facts = []
    for hi, lo in zip(people, people[1:], strict=False):
        facts.append(
            f"{hi} is taller than {lo}." if rng.random() < 0.5 else f"{lo} is shorter than {hi}."
        )
    rng.shuffle(facts)
    ask_tallest = rng.random() < 0.5
    q = " ".join(facts) + (" Who is the tallest?" if ask_tallest else " Who is the shortest?")

    def solve(slip: int) -> tuple[str, str]:
        order = people if slip == 0 else people[1:] + people[:1]  # a wrong chain misplaces one
        chain = " > ".join(order)
        ans = order[0] if ask_tallest else order[-1]
        return _chain(
            [
                f"Chain the facts from tallest to shortest: {chain}.",
                f"The {'first' if ask_tallest else 'last'} in the chain is {ans}.",
            ],
            ans,
        )

    return Problem("ordering", q, solve)


REASONING = (_boxes, _travel, _savings, _ages, _recipe, _inverse, _sequence, _ordering)


# ---------------------------------------------------------------- math (step-by-step arithmetic)
def _expression(rng: random.Random) -> Problem:
    a, b, c, d = rng.randint(2, 50), rng.randint(2, 50), rng.randint(2, 12), rng.randint(1, 99)
    q = f"Compute ({a} + {b}) × {c} − {d}."

    def solve(slip: int) -> tuple[str, str]:
        s = a + b + slip
        return _chain(
            [f"{a} + {b} = {s}.", f"{s} × {c} = {s * c}.", f"{s * c} − {d} = {s * c - d}."],
            s * c - d,
        )

    return Problem("expression", q, solve)


def _percent(rng: random.Random) -> Problem:
    p, n = rng.choice((5, 10, 15, 20, 25, 30, 40, 50, 60, 75)), 20 * rng.randint(1, 50)
    q = f"What is {p}% of {n}?"

    def solve(slip: int) -> tuple[str, str]:
        prod = n * p
        ans = prod // 100 + slip
        return _chain(
            [f"{p}% of {n} = {n} × {p} ÷ 100.", f"{n} × {p} = {prod}.", f"{prod} ÷ 100 = {ans}."],
            ans,
        )

    return Problem("percent", q, solve)


def _linear(rng: random.Random) -> Problem:
    x, a, b = rng.randint(-20, 40), rng.randint(2, 12), rng.randint(1, 60)
    c = a * x + b
    q = f"Solve for x: {a}x + {b} = {c}."

    def solve(slip: int) -> tuple[str, str]:
        rhs = c - b + slip * a
        return _chain([f"Subtract {b}: {a}x = {rhs}.", f"Divide by {a}: x = {rhs // a}."], rhs // a)

    return Problem("linear", q, solve)


def _series(rng: random.Random) -> Problem:
    n = rng.randint(5, 200)
    q = f"What is the sum of the whole numbers from 1 to {n}?"

    def solve(slip: int) -> tuple[str, str]:
        prod = n * (n + 1) + 2 * slip
        return _chain(
            [
                f"Use n(n + 1) ÷ 2 with n = {n}.",
                f"{n} × {n + 1} = {prod}.",
                f"{prod} ÷ 2 = {prod // 2}.",
            ],
            prod // 2,
        )

    return Problem("series", q, solve)


MATH = (_expression, _percent, _linear, _series)


# ---------------------------------------------------------------- code (small functions)
def _code_task(rng: random.Random) -> Problem:
    name = f"{rng.choice(VERBS)}_{rng.choice(NOUNS)}"
    kind = rng.randrange(6)
    a, b = rng.randint(2, 9), rng.randint(1, 20)
    lo, hi = sorted(rng.sample(range(-20, 60), 2))
    ch = rng.choice("aeiourst")
    specs = [
        (
            f"Write a Python function `{name}(x)` that returns {a} times x plus {b}.",
            lambda s: f"def {name}(x):\n    return {a + s} * x + {b}",
        ),
        (
            f"Write a Python function `{name}(n)` that returns True when n is divisible by {a}.",
            lambda s: f"def {name}(n):\n    return n % {a + s} == 0",
        ),
        (
            f"Write a Python function `{name}(text)` that counts how often '{ch}' occurs in text.",
            lambda s: (
                f"def {name}(text):\n    return text.count({ch!r})"
                if s == 0
                else f"def {name}(text):\n    return len(text) - text.count({ch!r})"
            ),
        ),
        (
            f"Write a Python function `{name}(x)` that clamps x to the range {lo} to {hi}.",
            lambda s: (
                f"def {name}(x):\n    return max({lo}, min({hi}, x))"
                if s == 0
                else f"def {name}(x):\n    return min({lo}, max({hi}, x))"
            ),
        ),
        (
            f"Write a Python function `{name}(values)` that returns the largest value minus the smallest.",
            lambda s: (
                f"def {name}(values):\n    return max(values) - min(values)"
                if s == 0
                else f"def {name}(values):\n    return max(values) - max(values)"
            ),
        ),
        (
            f"Write a Python function `{name}(items)` that returns the sum of the squares of the items.",
            lambda s: (
                f"def {name}(items):\n    return sum(x * x for x in items)"
                if s == 0
                else f"def {name}(items):\n    return sum(items) * sum(items)"
            ),
        ),
    ]
    q, render = specs[kind]

    def solve(slip: int) -> tuple[str, str]:
        code = render(slip)
        return f"```python\n{code}\n```", code

    return Problem("code", q, solve)


# ---------------------------------------------------------------- format and rewrite
def _format_task(rng: random.Random) -> Problem:
    kind = rng.randrange(4)
    words = rng.sample(WORDS, rng.randint(3, 6))
    if kind == 0:
        q = f"Turn this comma-separated list into a Markdown bullet list: {', '.join(words)}"
        out = "\n".join(f"- {w}" for w in words)
    elif kind == 1:
        name, qty, code = rng.choice(WORDS), rng.randint(1, 99), rng.randint(1000, 9999)
        q = f"Format as a JSON object with keys name, qty and code: name={name}, qty={qty}, code={code}"
        out = json.dumps({"name": name, "qty": qty, "code": code})
    elif kind == 2:
        people = rng.sample(NAMES, rng.randint(2, 4))
        scores = [rng.randint(0, 100) for _ in people]
        q = "Make a Markdown table with columns Name and Score from: " + ", ".join(
            f"{p} {s}" for p, s in zip(people, scores, strict=True)
        )
        out = "\n".join(
            ["| Name | Score |", "| --- | --- |"]
            + [f"| {p} | {s} |" for p, s in zip(people, scores, strict=True)]
        )
    else:
        q = f"Sort these words alphabetically, one per line: {' '.join(words)}"
        out = "\n".join(sorted(words))
    return Problem("format", q, lambda slip: (out, out))


def _rewrite_task(rng: random.Random) -> Problem:
    words = rng.sample(WORDS, rng.randint(2, 4))
    source_style = rng.randrange(3)
    source = ["_".join(words), "-".join(words), " ".join(words)][source_style]
    targets = {
        "snake_case": "_".join(words),
        "camelCase": words[0] + "".join(w.capitalize() for w in words[1:]),
        "PascalCase": "".join(w.capitalize() for w in words),
        "kebab-case": "-".join(words),
        "UPPER_SNAKE_CASE": "_".join(w.upper() for w in words),
    }
    target = rng.choice(sorted(targets))
    out = targets[target]
    q = f"Rewrite `{source}` in {target}."
    return Problem("rewrite", q, lambda slip: (out, out))


def draw(generators: tuple[Callable[[random.Random], Problem], ...], rng: random.Random) -> Problem:
    """One problem from a uniformly chosen generator."""
    return rng.choice(generators)(rng)


def wrong_slip(rng: random.Random) -> int:
    """A non-zero error for the rejected side of a pair."""
    return rng.choice((-3, -2, -1, 1, 2, 3))
