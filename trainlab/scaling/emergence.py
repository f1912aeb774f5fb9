"""Emergence, measured two ways: multi-digit addition scored by exact match and by the fraction of right digits.

Wei et al. (2022) call an ability emergent when it is absent in small models and present in large ones;
Schaeffer et al. (2023, "Are Emergent Abilities of Large Language Models a Mirage?") argue the jump often comes
from the metric: exact match of a k-digit answer is roughly (per-digit accuracy)^k, sharp even when the
per-digit accuracy grows smoothly. The corpus is one problem per line, `a+b=c`, written to a text file that a
GPT recipe with data.source = "text" and a character tokenizer trains on; the evaluation problems are drawn
apart and never appear in it."""

from __future__ import annotations

import random
from pathlib import Path

from trainlab.errors import UserError


def problem(rng: random.Random, digits: int) -> tuple[int, int]:
    """Two operands of exactly `digits` digits each (1 digit: 0..9)."""
    lo = 0 if digits == 1 else 10 ** (digits - 1)
    return rng.randint(lo, 10**digits - 1), rng.randint(lo, 10**digits - 1)


def write_corpus(path: str | Path, problems: int, max_digits: int, seed: int = 0) -> set[tuple[int, int]]:
    """`problems` lines `a+b=c`, operand lengths 1..max_digits drawn uniformly; returns the problems written."""
    if problems < 1 or not 1 <= max_digits <= 18:
        raise UserError(f"an addition corpus needs problems >= 1 and 1 <= max_digits <= 18; got {problems}, "
                        f"{max_digits}", "e.g. 200000 problems of up to 4 digits")
    rng = random.Random(seed)
    seen, lines = set(), []
    for _ in range(problems):
        a, b = problem(rng, rng.randint(1, max_digits))
        seen.add((a, b))
        lines.append(f"{a}+{b}={a + b}\n")
    Path(path).write_text("".join(lines), encoding="utf-8")
    return seen


def held_out(n: int, digits: int, exclude: set[tuple[int, int]], seed: int = 1) -> tuple[list[tuple[int, int]], bool]:
    """n problems of `digits`-digit operands, none of them in `exclude`, and True; where fewer than 2n such
    problems exist (1 digit: 100 problems in all, likely all in a large corpus), n problems of any kind and
    False: short sums can only be scored on problems the model may have seen."""
    rng = random.Random(seed * 1000 + digits)
    space = (10 if digits == 1 else 9 * 10 ** (digits - 1)) ** 2
    seen = sum(len(str(a)) == digits for a, _ in exclude)  # operands of one problem have one length
    fresh = space - seen >= 2 * n
    out: dict[tuple[int, int], None] = {}
    while len(out) < min(n, space):
        p = problem(rng, digits)
        if not fresh or p not in exclude:
            out[p] = None
    return list(out), fresh


def digit_score(answer: str, target: str) -> float:
    """The fraction of the target's digits the answer has right, aligned at the units digit (a missing or extra
    digit counts as a miss); 1.0 exactly when the answer is the target."""
    width = max(len(answer), len(target))
    a, t = answer.rjust(width), target.rjust(width)
    return sum(x == y for x, y in zip(a, t)) / width


def score(model, tokenizer, problems: list[tuple[int, int]], batch: int = 256) -> dict:
    """Greedy answers to `a+b=` at the start of a line, as every problem of the corpus is: {"exact_match",
    "digit_accuracy", "problems"}. Without the newline, `3+4=` could as well be the end of `123+4=` (training
    windows start anywhere in a line), and a larger model answers that. Prompts of one operand length have one
    length in characters, so they batch without padding."""
    import torch

    from trainlab.generate import generate

    if not problems:
        return {"exact_match": float("nan"), "digit_accuracy": float("nan"), "problems": 0}
    newline = tokenizer.encode("\n")
    stop = newline[0] if len(newline) == 1 else tokenizer.eot_id
    exact = digits = 0.0
    model.eval()
    with torch.no_grad():
        groups: dict[int, list[tuple[int, int]]] = {}
        for a, b in problems:
            groups.setdefault(len(f"{a}+{b}="), []).append((a, b))
        for group in groups.values():
            for i in range(0, len(group), batch):
                chunk = group[i:i + batch]
                prompts = [tokenizer.encode(f"\n{a}+{b}=") for a, b in chunk]
                width = len(str(max(a + b for a, b in chunk))) + 1
                for (a, b), ids in zip(chunk, generate(model, prompts, width, temperature=0, eos_id=stop)):
                    answer = tokenizer.decode(ids).split("\n")[0].strip()
                    exact += answer == str(a + b)
                    digits += digit_score(answer, str(a + b))
    return {"exact_match": exact / len(problems), "digit_accuracy": digits / len(problems), "problems": len(problems)}
