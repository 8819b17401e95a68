"""Rewrite: a curated seed passage becomes an exercise with a worked solution (Phi-4 §2.2).

Prompts are templates in `synth/templates/`; each output row records its provenance: the
template, the model, the sampling parameters and the seed.
"""

from __future__ import annotations

import hashlib
import json
from importlib import resources

from phi4ray.config import RewriteConfig
from phi4ray.stage import Reject


def load_template(name: str) -> str:
    path = resources.files("phi4ray.synth") / "templates" / f"{name}.txt"
    if not path.is_file():
        names = sorted(p.name[:-4] for p in (resources.files("phi4ray.synth") / "templates").iterdir())
        raise ValueError(f"unknown synth template '{name}'; shipped templates: {', '.join(names)}")
    return path.read_text()


def make_prompt(seed: dict, template: str, seed_chars: int) -> dict:
    """Per-record: a curated row -> a row with the rewrite prompt."""
    passage = seed["text"][:seed_chars]
    return {"seed_id": seed["id"], "prompt": template.replace("{passage}", passage)}


def to_synthetic(row: dict, cfg: RewriteConfig, model: str) -> dict | Reject:
    """Per-record: a sampled completion -> a `synthetic/` row, or a reject if there is nothing usable."""
    text = (row.get("completion") or "").strip()
    if not text:
        return Reject("empty_completion")
    return {
        "id": "rw-" + hashlib.sha256(f"{row['seed_id']}:{cfg.template}:{cfg.sampling.seed}".encode()).hexdigest()[:16],
        "kind": "rewrite",
        "source": "web_rewrite",
        "seed_id": row["seed_id"],
        "text": text,
        "messages": None,
        "provenance": json.dumps(
            {"template": cfg.template, "model": model, "sampling": cfg.sampling.model_dump(), "seed": cfg.sampling.seed}
        ),
        "checks": json.dumps({"finish_reason": row.get("finish_reason"), "nonempty": True}),
    }
