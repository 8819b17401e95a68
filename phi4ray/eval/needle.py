"""Long-context recall (a pass-key "needle in a haystack"), for midtraining's longer context.

A prompt of exactly `length` tokens is built in token space:

    [intro][filler ... ][needle][ ... filler][question]

    intro     "There is a pass key hidden in the long text below. Find it and remember it. ..."
    needle    "\\nThe pass key is 48213. Remember it. 48213 is the pass key.\\n"
    question  "\\n\\nWhat is the pass key? The pass key is"

The filler is text repeated to fill the rest (built-in sentences, or `filler_path`), and the
needle goes after exactly `round(depth * F)` of its F filler tokens: depth 0 puts it right after
the intro, depth 1 right before the question. Each (length, depth) cell gets `samples` prompts
with different five-digit keys (seeded). The model answers greedily; a prompt is correct when
the first number in the completion is the key. The report has the accuracy per (length, depth),
per length, and overall. Lengths that do not fit the model's context (with the generation
budget) are skipped, and the report says so.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence

INTRO = ("There is a pass key hidden in the long text below. Find it and remember it; "
         "you will be asked for it at the end.\n\n")
NEEDLE = "\nThe pass key is {key}. Remember it. {key} is the pass key.\n"
QUESTION = "\n\nWhat is the pass key? The pass key is"
FILLER = [
    "The river bends twice before it reaches the old stone bridge.",
    "A light wind moves through the tall grass on the hill.",
    "The market opens early, and the bakers are the first to arrive.",
    "Clouds gather in the west, but the afternoon stays dry.",
    "Children walk along the path that follows the canal.",
    "The library keeps its oldest maps in a room without windows.",
    "A train crosses the valley every hour on the hour.",
    "The orchard is quiet in winter and busy again in spring.",
]
_NUM = re.compile(r"\d+")


def filler_ids(text: str | None = None) -> list[int]:
    """Token ids of the haystack text: `text`, or the built-in sentences (each with its leading
    space, so that repeated sentences tokenise as running text does)."""
    from phi4ray.tokenizer import encode

    ids = encode(text) if text else [t for s in FILLER for t in encode(" " + s)]
    if not ids:
        raise ValueError("the needle filler text is empty")
    return ids


def build_prompt(length: int, depth: float, key: int | str, filler: Sequence[int]) -> tuple[list[int], int, int]:
    """(prompt ids of exactly `length` tokens, index of the needle's first token, needle length)."""
    from phi4ray.tokenizer import encode

    intro, needle, question = encode(INTRO), encode(NEEDLE.format(key=key)), encode(QUESTION)
    n_fill = length - len(intro) - len(needle) - len(question)
    if n_fill < 0:
        raise ValueError(f"a needle prompt needs at least {length - n_fill} tokens; got length {length}")
    reps = n_fill // len(filler) + 1
    hay = (list(filler) * reps)[:n_fill]
    at = round(depth * n_fill)
    ids = intro + hay[:at] + needle + hay[at:] + question
    return ids, len(intro) + at, len(needle)


def make_key(seed: int, length: int, depth: float, j: int) -> int:
    return random.Random(f"needle:{seed}:{length}:{depth}:{j}").randint(10000, 99999)


def recalled(completion: str, key: int | str) -> bool:
    m = _NUM.search(completion)
    return m is not None and m.group(0) == str(key)


def run_needle(sampler, lengths: Sequence[int], depths: Sequence[float], samples: int, max_tokens: int,
               seed: int = 0, filler_text: str | None = None, batch_size: int = 32,
               max_len: int | None = None) -> tuple[dict, list[dict], list[dict]]:
    """({acc, by_length, by_length_depth}, per-prompt records, skipped lengths with the reason)."""
    from phi4ray.eval.generation import generate_all
    from phi4ray.inference.sampler import SamplingParams

    fill = filler_ids(filler_text)
    cases, skipped = [], []
    for L in lengths:
        if max_len is not None and L + max_tokens > max_len:
            skipped.append({"length": L, "reason": f"{L} + {max_tokens} generated tokens > the model's context {max_len}"})
            continue
        for d in depths:
            for j in range(samples):
                key = make_key(seed, L, d, j)
                ids, at, _ = build_prompt(L, d, key, fill)
                cases.append({"length": L, "depth": d, "key": key, "needle_index": at, "ids": ids})
    params = SamplingParams(n=1, temperature=0.0, max_tokens=max_tokens)
    comps = generate_all(sampler, [c["ids"] for c in cases], params, batch_size)
    records = [{"length": c["length"], "depth": c["depth"], "key": c["key"], "needle_index": c["needle_index"],
                "completion": comp.text, "correct": recalled(comp.text, c["key"])} for c, comp in zip(cases, comps)]
    cells: dict[str, dict[str, list[bool]]] = {}
    for r in records:
        cells.setdefault(str(r["length"]), {}).setdefault(f"{r['depth']:g}", []).append(r["correct"])
    mean = lambda xs: sum(xs) / len(xs) if xs else 0.0
    metrics = {
        "acc": mean([r["correct"] for r in records]),
        "by_length": {L: mean([x for v in ds.values() for x in v]) for L, ds in cells.items()},
        "by_length_depth": {L: {d: mean(v) for d, v in ds.items()} for L, ds in cells.items()},
    }
    return metrics, records, skipped
