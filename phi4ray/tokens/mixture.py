"""The data mixture: how many tokens each source contributes, and which documents repeat.

Given each source's unique tokens and its target fraction of the mixture, every document of a
source appears `whole = floor(epochs)` times, plus once more if its seeded hash `u` (uniform in
[0, 1)) falls below the source's `cut`. The cut is a token-weighted quantile of `u`: it is chosen
from a histogram of tokens over `u` so that the extra copies add up to the fractional epoch.
So the realised token counts miss the targets by at most one histogram bin (1/BINS of the source)
or one boundary document, whichever is larger, and the choice depends only on ids and the seed.
A source larger than its share has `whole = 0` and is subsampled by the same rule.

Sources with no data (or weight 0) are dropped and the other weights renormalised.

The midtraining mixture reuses this with "pools" instead of sources: `recall/<source>` (the
pretraining mixture, scaled to its share) and `long` / `long_up` (documents above the long-context
threshold, the longest up-weighted), see `midtrain_weights`.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, replace

import numpy as np

BINS = 4096


@dataclass(frozen=True)
class SourcePlan:
    source: str
    weight: float
    unique_tokens: int
    target_tokens: int
    cut: float | None = None
    """Documents with u < cut get one copy more than `whole`; None until `set_cuts`."""

    @property
    def epochs(self) -> float:
        return self.target_tokens / self.unique_tokens if self.unique_tokens else 0.0

    @property
    def whole(self) -> int:
        return math.floor(self.epochs)


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


def doc_u(doc_id: str, seed: int, salt: str = "") -> float:
    """A document's seeded uniform number in [0, 1)."""
    h = hashlib.sha256(f"{seed}:{salt}:{doc_id}".encode()).digest()[:8]
    return int.from_bytes(h, "big") / 2**64


def u_bin(u: float) -> int:
    return min(int(u * BINS), BINS - 1)


def histogram(u: np.ndarray, tokens: np.ndarray) -> np.ndarray:
    """Tokens per `u` bin: the input of `set_cuts`. Histograms of parts of a corpus add up."""
    bins = np.minimum((np.asarray(u, dtype=np.float64) * BINS).astype(np.int64), BINS - 1)
    return np.bincount(bins, weights=np.asarray(tokens, dtype=np.float64), minlength=BINS)


def set_cuts(plans: dict[str, SourcePlan], hists: dict[str, np.ndarray]) -> dict[str, SourcePlan]:
    """Choose each source's `cut` so that its extra copies come closest to the fractional epoch."""
    out = {}
    for s, p in plans.items():
        need = p.target_tokens - p.whole * p.unique_tokens
        cum = np.concatenate([[0.0], np.cumsum(hists[s])])  # cum[b]: tokens with u < b / BINS
        b = int(np.searchsorted(cum, need))  # first edge with cum >= need
        if b > BINS:
            b = BINS
        elif b > 0 and need - cum[b - 1] < cum[b] - need:
            b -= 1
        out[s] = replace(p, cut=b / BINS)
    return out


def copies(u: float, p: SourcePlan) -> int:
    """How many times a document with hash `u` appears in the mixture."""
    if p.cut is None:
        raise ValueError(f"plan for '{p.source}' has no cut; call set_cuts first")
    return p.whole + (1 if u < p.cut else 0)


def bucket(key: str, n: int, seed: int) -> int:
    """A stable pseudo-random output shard for `key`, so every shard mixes every source."""
    return int.from_bytes(hashlib.sha256(f"b{seed}:{key}".encode()).digest()[:8], "big") % n


def order_key(key: str, seed: int) -> int:
    """A document copy's place within its output shard (a seeded shuffle)."""
    return int.from_bytes(hashlib.sha256(f"o{seed}:{key}".encode()).digest()[:8], "big") >> 1


def report(plans: dict[str, SourcePlan], realised: dict[str, int]) -> dict[str, dict]:
    """Target vs realised fraction and epochs per source, for the manifest and the console."""
    total = sum(realised.values()) or 1
    return {
        s: {
            "target_fraction": round(p.weight, 5),
            "realised_fraction": round(realised.get(s, 0) / total, 5),
            "unique_tokens": p.unique_tokens,
            "target_tokens": p.target_tokens,
            "realised_tokens": realised.get(s, 0),
            "target_epochs": round(p.epochs, 4),
            "realised_epochs": round(realised.get(s, 0) / p.unique_tokens, 4),
        }
        for s, p in plans.items()
    }


# -- midtraining -------------------------------------------------------------------------------
def long_pool(n_tokens: int, long_min: int, upweight_min: int) -> str | None:
    if n_tokens >= upweight_min:
        return "long_up"
    if n_tokens >= long_min:
        return "long"
    return None


def midtrain_weights(
    pretrain_weights: dict[str, float], unique: dict[str, int], long_fraction: float, upweight: float
) -> dict[str, float]:
    """Pool weights: `long_fraction` of long documents, in which a token of the up-weighted pool
    (`long_up`) is `upweight` times as likely as one of `long`, and the rest recall from the
    pretraining mixture (`recall/<source>`, in the pretraining proportions)."""
    present = {s: w for s, w in pretrain_weights.items() if w > 0 and unique.get(f"recall/{s}", 0) > 0}
    norm = sum(present.values()) or 1.0
    out = {f"recall/{s}": (1 - long_fraction) * w / norm for s, w in present.items()}
    u_long, u_up = unique.get("long", 0), unique.get("long_up", 0)
    mass = u_long + upweight * u_up
    if mass:
        out["long"] = long_fraction * u_long / mass
        out["long_up"] = long_fraction * upweight * u_up / mass
    return out
