"""Log-likelihood multiple choice (MMLU, ARC), scored through `Sampler.score`.

Each choice is a continuation of the few-shot context; the model's answer is the choice whose
continuation it finds most likely:

    MMLU (Hendrycks et al.)                          ARC
    The following are multiple choice questions     Question: <shot question>
    (with answers) about <subject>.                  Answer: <shot answer text>

    <shot question>                                  Question: <question>
    A. <choice>                                      Answer:|| <choice text>
    B. <choice> ...
    Answer: B

    <question>
    A. ...
    Answer:|| A     (continuations " A", " B", ...)

(`||` marks where the context ends.) The continuation is tokenised as lm-evaluation-harness does
it: the tokens of `context + continuation` after those of `context`.

* `acc`: the choice with the highest summed log-probability of its continuation tokens.
* `acc_norm`: the highest summed log-probability divided by the continuation's length in
  characters (the choice text without the leading space): lm-eval's `acc_norm`. It matters when
  the choices differ in length (ARC); for MMLU's one-letter continuations it equals `acc`.

Ties go to the first choice. Every (item, choice) pair is one prompt; the prompts of a task go to
`Sampler.score` in batches, longest first, so each padded batch holds similar lengths.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["arc_context", "encode_pair", "mmlu_context", "pick", "requests_for", "run_mc", "score_requests"]


def _subject(s: str) -> str:
    return s.replace("_", " ").strip()


def _mmlu_block(item: dict) -> str:
    lines = [item["question"].strip()]
    lines += [f"{lab}. {c}" for lab, c in zip(item["labels"], item["choices"])]
    return "\n".join(lines) + "\nAnswer:"


def mmlu_context(item: dict, shots: Sequence[dict]) -> str:
    subject = _subject(item.get("subject") or "")
    head = f"The following are multiple choice questions (with answers) about {subject}.\n\n" if subject else ""
    body = "".join(f"{_mmlu_block(s)} {s['labels'][s['answer']]}\n\n" for s in shots)
    return head + body + _mmlu_block(item)


def arc_context(item: dict, shots: Sequence[dict]) -> str:
    body = "".join(f"Question: {s['question'].strip()}\nAnswer: {s['choices'][s['answer']]}\n\n" for s in shots)
    return body + f"Question: {item['question'].strip()}\nAnswer:"


def continuations(kind: str, item: dict) -> list[str]:
    """The choice texts (acc_norm divides by their length) and what the model must continue with."""
    return list(item["labels"]) if kind == "mmlu" else list(item["choices"])


def requests_for(kind: str, item: dict, shots: Sequence[dict]) -> list[tuple[str, str]]:
    """(context, continuation) per choice; the continuation starts with the space after `Answer:`."""
    ctx = mmlu_context(item, shots) if kind == "mmlu" else arc_context(item, shots)
    return [(ctx, " " + c) for c in continuations(kind, item)]


def encode_pair(context: str, continuation: str) -> tuple[list[int], list[int]]:
    """(context ids, continuation ids), lm-eval's way: trailing spaces of the context move to the
    continuation, and the continuation's ids are those of the whole text after the context's
    (or its own ids, where the tokeniser merges across the boundary)."""
    from phi4ray.tokenizer import encode

    n = len(context) - len(context.rstrip(" "))
    if n:
        context, continuation = context[:-n], context[-n:] + continuation
    ctx = encode(context)
    whole = encode(context + continuation)
    cont = whole[len(ctx):] if whole[: len(ctx)] == ctx else encode(continuation)
    return ctx, cont


def score_requests(sampler, pairs: Sequence[tuple[list[int], list[int]]], batch_size: int = 32,
                   max_len: int | None = None) -> list[float]:
    """Summed log p(continuation | context) per (context ids, continuation ids) pair. A pair longer
    than `max_len` loses tokens from the left of its context."""
    seqs = []
    for ctx, cont in pairs:
        if not cont:
            raise ValueError("an empty continuation has no log-probability")
        seq = list(ctx) + list(cont)
        if max_len is not None and len(seq) > max_len:
            seq = seq[len(seq) - max_len:]
        seqs.append((seq, len(cont)))
    order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i][0]))
    out = [0.0] * len(seqs)
    for s in range(0, len(order), batch_size):
        idx = order[s : s + batch_size]
        lps = sampler.score([seqs[i][0] for i in idx])
        for i, lp in zip(idx, lps):
            seq, n = seqs[i]
            if len(lp) != len(seq):
                raise ValueError(f"score returned {len(lp)} log-probabilities for a prompt of {len(seq)} tokens")
            out[i] = float(sum(lp[len(seq) - n:]))
    return out


def pick(lls: Sequence[float], lengths: Sequence[int] | None = None) -> int:
    """Index of the best choice by log-likelihood, or by log-likelihood per unit of `lengths`;
    ties go to the first."""
    vals = [ll / max(1, n) for ll, n in zip(lls, lengths)] if lengths is not None else list(lls)
    return max(range(len(vals)), key=lambda i: (vals[i], -i))


def run_mc(sampler, kind: str, items: list[dict], shot_pool: list[dict], shots: int, *, batch_size: int = 32,
           max_len: int | None = None) -> tuple[dict, list[dict]]:
    """({acc, acc_norm}, per-item records) of `items`, with `shots` examples from `shot_pool`."""
    from phi4ray.eval.shots import pick_shots

    pairs, owners = [], []
    for i, item in enumerate(items):
        for ctx, cont in requests_for(kind, item, pick_shots(shot_pool, item, shots)):
            pairs.append(encode_pair(ctx, cont))
            owners.append(i)
    lls = score_requests(sampler, pairs, batch_size=batch_size, max_len=max_len)
    per: list[list[float]] = [[] for _ in items]
    for i, ll in zip(owners, lls):
        per[i].append(ll)
    records = []
    for item, ll in zip(items, per):
        conts = continuations(kind, item)
        best, best_norm = pick(ll), pick(ll, [len(c) for c in conts])
        records.append({"id": item["id"], "answer": item["labels"][item["answer"]],
                        "pred": item["labels"][best], "pred_norm": item["labels"][best_norm],
                        "correct": best == item["answer"], "correct_norm": best_norm == item["answer"],
                        "loglikelihoods": [round(x, 4) for x in ll]})
    n = len(records)
    metrics = {"acc": sum(r["correct"] for r in records) / n if n else 0.0,
               "acc_norm": sum(r["correct_norm"] for r in records) / n if n else 0.0}
    return metrics, records

