"""Generation with answer extraction: greedy answers, checked against the reference answer.

Two kinds of task:

* **Held-out arithmetic** (the tiny run's key metric): the `heldout` split of `questions/`,
  which training never sees, asked in ChatML; the answer is extracted from the completion and
  checked by the PTS math oracle.
* **Few-shot GSM8K and MATH**, as plain text prompts (no chat template: base models and chat
  models see the same prompt), greedy:

      GSM8K, 8 shots (Wei et al.)                  MATH, 4 shots (Lewkowycz et al.)
      Question: <q>                                Problem:
      Answer: <reasoning> #### 42                  <problem>

      Question: <q>                                Solution: <solution with \\boxed{...}>
      Answer:                                      ...
                                                   Problem:
                                                   <problem>

                                                   Solution:

  Generation stops at the next `Question:` / `Problem:`. GSM8K's `exact_match` takes the
  number after `####` when the completion has one, else the answer that
  `phi4ray.pts.oracles.extract_answer` finds (the last `\\boxed{}`, the number after "answer
  is", else the last number); `exact_match_strict` only accepts the `####` form (lm-eval's
  strict-match). MATH's `exact_match` is `extract_answer` on the completion. Both compare
  `normalize_answer(prediction) == normalize_answer(reference)`: the PTS math oracle's
  normaliser, so `1,234`, `1234.0` and `\\frac{2468}{2}` are one answer.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence

from phi4ray.run import RunDir
from phi4ray.tokenizer import chat_text

log = logging.getLogger(__name__)

GSM8K_STOP = ["Question:", "</s>", "<|im_end|>"]
MATH_STOP = ["Problem:", "</s>", "<|im_end|>"]
_STRICT = re.compile(r"#### (\-?[0-9\.\,]+)")


# -- held-out arithmetic ----------------------------------------------------------------------
def prompt_for(question: str) -> str:
    return chat_text([{"role": "user", "content": question}], add_generation_prompt=True)


def load_questions(run_dir: RunDir, split: str, limit: int | None = None) -> list[dict]:
    rows = [r for r in run_dir.read_table("questions").to_pylist() if r["split"] == split]
    rows.sort(key=lambda r: r["id"])
    return rows[:limit] if limit is not None else rows


def fit_prompts(sampler, prompts: Sequence[str | list[int]], max_tokens: int) -> list[str | list[int]]:
    """`prompts`, except that one too long to leave `max_tokens` of the sampler's context (its
    `max_model_len`, when it has one) keeps only its last tokens, as lm-eval left-truncates."""
    from phi4ray.tokenizer import encode

    max_len = getattr(sampler, "max_model_len", None)
    if not isinstance(max_len, int):
        return list(prompts)
    room = max_len - max_tokens
    if room < 1:
        raise ValueError(f"max_tokens {max_tokens} leaves no room for a prompt in the model's context {max_len}")
    out, cut = [], 0
    for p in prompts:
        ids = encode(p, allow_special=True) if isinstance(p, str) else list(p)
        if len(ids) > room:
            out.append(ids[-room:])
            cut += 1
        else:
            out.append(p)
    if cut:
        log.warning("eval: %d of %d prompts left-truncated to %d tokens to fit the context of %d", cut, len(out), room, max_len)
    return out


def generate_all(sampler, prompts: Sequence[str | list[int]], params, batch_size: int = 32) -> list:
    """The first completion of each prompt, in input order; prompts go to the sampler in batches of
    similar length (longest first), so left padding stays small. Prompts too long for the context
    lose tokens from the left (`fit_prompts`)."""
    prompts = fit_prompts(sampler, prompts, params.max_tokens)
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    out: list = [None] * len(prompts)
    for s in range(0, len(order), batch_size):
        idx = order[s : s + batch_size]
        for i, comps in zip(idx, sampler.generate([prompts[i] for i in idx], params)):
            out[i] = comps[0]
    return out


def accuracy(sampler, questions: list[dict], oracle, max_tokens: int, batch_size: int = 32) -> tuple[float, list[dict]]:
    """Greedy accuracy of `sampler` on `questions`, with the per-question records."""
    from phi4ray.inference.sampler import SamplingParams

    params = SamplingParams(n=1, temperature=0.0, max_tokens=max_tokens)
    comps = generate_all(sampler, [prompt_for(q["prompt"]) for q in questions], params, batch_size)
    records = [{"id": q["id"], "prompt": q["prompt"], "answer": q["answer"], "completion": c.text,
                "correct": bool(oracle(c.text, q["answer"]))} for q, c in zip(questions, comps)]
    return (sum(r["correct"] for r in records) / len(records) if records else 0.0), records


# -- few-shot GSM8K and MATH ------------------------------------------------------------------
def gsm8k_prompt(item: dict, shots: Sequence[dict]) -> str:
    body = "".join(f"Question: {s['question'].strip()}\nAnswer: {s['solution'].strip()}\n\n" for s in shots)
    return body + f"Question: {item['question'].strip()}\nAnswer:"


def math_prompt(item: dict, shots: Sequence[dict]) -> str:
    body = "".join(f"Problem:\n{s['problem'].strip()}\n\nSolution: {s['solution'].strip()}\n\n" for s in shots)
    return body + f"Problem:\n{item['problem'].strip()}\n\nSolution:"


def strict_answer(completion: str) -> str | None:
    """The number after the first `#### ` (lm-eval's GSM8K strict-match), or None."""
    m = _STRICT.search(completion)
    return m.group(1) if m else None


def extract_prediction(kind: str, completion: str) -> tuple[str | None, str | None]:
    """(prediction, strict prediction) of a completion: see the module docstring."""
    from phi4ray.pts.oracles import extract_answer

    strict = strict_answer(completion) if kind == "gsm8k" else None
    return (strict if strict is not None else extract_answer(completion)), strict


def same_answer(pred: str | None, target: str) -> bool:
    from phi4ray.pts.oracles import normalize_answer

    if pred is None:
        return False
    want = normalize_answer(target)
    return want != "" and normalize_answer(pred) == want


def run_fewshot(sampler, kind: str, items: list[dict], shot_pool: list[dict], shots: int, max_tokens: int,
                batch_size: int = 32) -> tuple[dict, list[dict]]:
    """({exact_match[, exact_match_strict]}, per-item records) of GSM8K or MATH items."""
    from phi4ray.eval.shots import pick_shots
    from phi4ray.inference.sampler import SamplingParams

    make = gsm8k_prompt if kind == "gsm8k" else math_prompt
    prompts = [make(it, pick_shots(shot_pool, it, shots)) for it in items]
    params = SamplingParams(n=1, temperature=0.0, max_tokens=max_tokens,
                            stop=GSM8K_STOP if kind == "gsm8k" else MATH_STOP)
    records = []
    for it, c in zip(items, generate_all(sampler, prompts, params, batch_size)):
        pred, strict = extract_prediction(kind, c.text)
        rec = {"id": it["id"], "target": it["target"], "completion": c.text, "pred": pred,
               "correct": same_answer(pred, it["target"])}
        if kind == "gsm8k":
            rec["correct_strict"] = same_answer(strict, it["target"])
        records.append(rec)
    n = len(records) or 1
    metrics = {"exact_match": sum(r["correct"] for r in records) / n}
    if kind == "gsm8k":
        metrics["exact_match_strict"] = sum(r["correct_strict"] for r in records) / n
    return metrics, records


def run_eval(*args, **kwargs) -> dict:
    """Moved to `phi4ray.eval.run.run_eval` (every task, not only the arithmetic); kept for callers."""
    from phi4ray.eval.run import run_eval as _run_eval

    return _run_eval(*args, **kwargs)
