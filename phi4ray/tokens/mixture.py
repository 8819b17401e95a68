"""The data mixture: how many tokens each source contributes, and which documents repeat.

Given each source's unique tokens and its target fraction, a source smaller than its share is
repeated (whole epochs, plus a deterministic subset of documents for the fractional part), and
a larger one is subsampled. Sources with no data are dropped and the other weights renormalised.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass


@dataclass(frozen=True)
class SourcePlan:
    source: str
    weight: float
    unique_tokens: int
    target_tokens: int

    @property
    def epochs(self) -> float:
        return self.target_tokens / self.unique_tokens if self.unique_tokens else 0.0


def plan(unique_tokens: dict[str, int], weights: dict[str, float], total_tokens: int | None) -> dict[str, SourcePlan]:
    present = {s: w for s, w in weights.items() if w > 0 and unique_tokens.get(s, 0) > 0}
    if not present:
        raise ValueError(
            f"no source of the mixture {sorted(weights)} has any tokens (found: {unique_tokens}); "
            "check the curate and synth outputs"
        )
    norm = sum(present.values())
    fracs = {s: w / norm for s, w in present.items()}
    if total_tokens is None:  # the largest mixture in which no source repeats
        total_tokens = int(min(unique_tokens[s] / f for s, f in fracs.items()))
    return {
        s: SourcePlan(s, f, unique_tokens[s], int(round(f * total_tokens)))
        for s, f in sorted(fracs.items())
    }


def copies(doc_id: str, epochs: float, seed: int) -> int:
    """How many times a document appears: floor(epochs), plus one for a seeded share of documents."""
    whole = math.floor(epochs)
    frac = epochs - whole
    h = int.from_bytes(hashlib.sha256(f"{seed}:{doc_id}".encode()).digest()[:8], "big") / 2**64
    return whole + (1 if h < frac else 0)


def bucket(key: str, n: int, seed: int) -> int:
    """A stable pseudo-random output shard for `key`, so every shard mixes every source."""
    return int.from_bytes(hashlib.sha256(f"b{seed}:{key}".encode()).digest()[:8], "big") % n
