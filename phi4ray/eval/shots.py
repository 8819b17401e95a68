"""Few-shot examples: where they come from and which ones a prompt gets.

With a `fewshot_path` (MMLU's dev split, GSM8K's train split) the shots come from that file.
Without one, the first `shots` items of the task file are the shots and are not evaluated, so
an item is never its own example. A prompt gets the first `k` shots of the pool in file order,
those of its own subject first (MMLU's subjects, MATH's types) where the items have one; the
choice is deterministic, so every run and every model sees the same prompts.
"""

from __future__ import annotations

from collections.abc import Sequence


def split_shots(items: list[dict], shots: int, fewshot_items: list[dict] | None = None) -> tuple[list[dict], list[dict]]:
    """(shot pool, items to evaluate)."""
    if fewshot_items is not None:
        return fewshot_items, items
    return items[:shots], items[shots:]


def pick_shots(pool: Sequence[dict], item: dict, k: int) -> list[dict]:
    """`k` examples for `item`: same subject first, then the rest, each in pool order; never the item itself."""
    if k <= 0:
        return []
    others = [s for s in pool if s.get("id") != item.get("id")]
    subject = item.get("subject") or ""
    if subject:
        others = [s for s in others if s.get("subject") == subject] + [s for s in others if s.get("subject") != subject]
    return others[:k]
