"""Precomputed reference log-probs for DPO: the frozen reference scores every pair once, before
training, so the training workers hold one model instead of two.

`precompute_ref_logps` maps the pairs table through a Ray Data actor pool that loads the
reference (the checkpoint DPO starts from) once per actor, and commits the table with two more
columns, `ref_chosen_logp` and `ref_rejected_logp`, which `objectives.DPO` then uses.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from phi4ray.run import RunDir

log = logging.getLogger(__name__)
REF_COLUMNS = ("ref_chosen_logp", "ref_rejected_logp")


class ReferenceScorer:
    """Ray Data callable: a batch of pairs -> the same batch plus the reference's log-probs."""

    def __init__(self, model_path: str | None, preset: str = "tiny", seed: int = 0):
        from phi4ray.model import build_model, load_model

        if model_path and "://" in model_path:
            model_path = RunDir(model_path).local_dir("")
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")  # a GPU when the actor got one
        self.model = (load_model(model_path) if model_path else build_model(preset, seed=seed)).eval().to(self.device)

    def __call__(self, batch: dict) -> dict:
        from phi4ray.tokenizer import EOT_ID
        from phi4ray.train.loop import dpo_batch
        from phi4ray.train.objectives import sequence_logps

        b = dpo_batch(batch, self.device, EOT_ID)
        with torch.no_grad():
            logps = sequence_logps(self.model, b["input_ids"], b["completion_mask"], b["attention_mask"])
        half = len(logps) // 2
        return {**batch, REF_COLUMNS[0]: logps[:half].float().cpu().numpy().astype(np.float32), REF_COLUMNS[1]: logps[half:].float().cpu().numpy().astype(np.float32)}


def precompute_ref_logps(
    run_dir: RunDir, table: str, out: str, model_path: str | None, preset: str, seed: int = 0,
    batch_size: int = 16, num_actors: int = 1, rows_per_shard: int = 4096,
    resources: dict[str, float] | None = None, num_gpus: float = 0,
) -> int:
    """Write `out` = `table` plus reference log-probs, streamed shard by shard; returns its rows.
    A finished `out` (its `_done` marker) is kept; an unfinished one is redone from scratch."""
    done = f"{out}/_done.json"
    if run_dir.exists(done):
        return run_dir.read_json(done)["rows"]
    if run_dir.exists(out):
        run_dir.delete(out)
    ds = run_dir.read_dataset(table).map_batches(
        ReferenceScorer, fn_constructor_kwargs={"model_path": model_path, "preset": preset, "seed": seed},
        batch_size=batch_size, batch_format="numpy", concurrency=num_actors,
        **({"resources": resources} if resources else {}), **({"num_gpus": num_gpus} if num_gpus else {}),
    )
    rows = 0
    for i, b in enumerate(ds.iter_batches(batch_format="pyarrow", batch_size=rows_per_shard)):
        run_dir.commit_table(out, f"part-{i:05d}", b)
        rows += b.num_rows
    run_dir.write_json(done, {"rows": rows, "table": table})
    log.warning("dpo: reference log-probs of %d pairs precomputed into %s", rows, run_dir.uri_of(out))
    return rows
