"""Running-sum arithmetic: synthetic data whose answers a program can check.

A question is a sum of small numbers, `3+5+2+7=`; its solution lists the running sums,
`8 10 17`, and the last one is the answer. Every running sum is one cl100k token, so each
step of the solution is one token that is either right or wrong: a clean target for Pivotal
Token Search, where one wrong running sum decides the outcome. The tiny recipe's model learns
this in minutes on a CPU and ends partly competent, which PTS needs (0.2 <= p <= 0.8).
"""

from __future__ import annotations

import hashlib
import random

from phi4ray.config import ArithmeticConfig


def question_id(prompt: str) -> str:
    return "arith-" + hashlib.sha256(prompt.encode()).hexdigest()[:16]


def make_question(terms: list[int]) -> dict:
    sums, total = [], 0
    for i, t in enumerate(terms):
        total += t
        if i:
            sums.append(total)
    prompt = "+".join(map(str, terms)) + "="
    return {
        "id": question_id(prompt),
        "prompt": prompt,
        "solution": " ".join(map(str, sums)),
        "answer": str(total),
    }


def generate(cfg: ArithmeticConfig, n: int, seed: int, exclude: set[str] = frozenset()) -> list[dict]:
    """`n` distinct questions, none of whose prompts is in `exclude`. Deterministic for a seed."""
    rng = random.Random(seed)
    out, seen = [], set(exclude)
    attempts = 0
    while len(out) < n:
        attempts += 1
        if attempts > 50 * n + 1000:
            raise ValueError(
                f"cannot draw {n} distinct arithmetic questions with terms {cfg.min_terms}..{cfg.max_terms} "
                f"and operands 1..{cfg.max_operand}; raise max_terms or max_operand"
            )
        k = rng.randint(cfg.min_terms, cfg.max_terms)
        q = make_question([rng.randint(1, cfg.max_operand) for _ in range(k)])
        if q["prompt"] in seen:
            continue
        seen.add(q["prompt"])
        out.append(q)
    return out


def split(cfg: ArithmeticConfig) -> tuple[list[dict], list[dict]]:
    """(train, heldout). Held-out questions are drawn first and never appear in train."""
    heldout = generate(cfg, cfg.n_heldout, seed=cfg.seed + 1)
    train = generate(cfg, cfg.n_train, seed=cfg.seed, exclude={q["prompt"] for q in heldout})
    return train, heldout


def as_text(q: dict) -> str:
    """Pretraining form: the question and its solution as plain text."""
    return f"{q['prompt']} {q['solution']}"


def as_messages(q: dict) -> list[dict]:
    """SFT form: a ChatML conversation."""
    return [{"role": "user", "content": q["prompt"]}, {"role": "assistant", "content": q["solution"]}]
