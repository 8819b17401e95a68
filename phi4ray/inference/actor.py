"""`SamplerPredictor`: a `Sampler` as a Ray Data actor, for batch synthesis and evaluation.

    ds.map_batches(
        SamplerPredictor,
        fn_constructor_kwargs={"engine_cfg": cfg.engine, "model_path": path, "params": params},
        concurrency=cfg.engine.num_actors, batch_size=cfg.engine.batch_size,
        num_cpus=cfg.engine.num_cpus_per_actor, num_gpus=cfg.engine.num_gpus_per_actor,
    )

Each actor loads the model once. A batch needs a `prompt` column (str, or a list of token ids);
the output keeps every input column and adds `completion` (the first sample's text),
`completion_token_ids`, `completion_logprobs` and `finish_reason`. With `params.n > 1` it also
adds `completions`, the text of all n samples.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from phi4ray.config import EngineConfig, SamplingConfig
from phi4ray.inference.sampler import SamplingParams, make_sampler

__all__ = ["SamplerPredictor", "map_batches_kwargs"]


class SamplerPredictor:
    def __init__(
        self,
        engine_cfg: EngineConfig | dict,
        model_path: str | None = None,
        params: SamplingParams | SamplingConfig | dict | None = None,
    ):
        if isinstance(engine_cfg, dict):
            engine_cfg = EngineConfig.model_validate(engine_cfg)
        if isinstance(params, SamplingConfig):
            params = SamplingParams.from_config(params)
        elif isinstance(params, dict):
            params = SamplingParams(**params)
        self.params = params or SamplingParams()
        self.sampler = make_sampler(engine_cfg, model_path)

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        if "prompt" not in batch:
            raise KeyError(f"SamplerPredictor needs a 'prompt' column; the batch has {sorted(batch)}")
        prompts = [p if isinstance(p, str) else [int(t) for t in p] for p in batch["prompt"]]
        outs = self.sampler.generate(prompts, self.params) if prompts else []
        out = dict(batch)
        out["completion"] = np.array([o[0].text for o in outs], dtype=object)
        out["completion_token_ids"] = _ragged([o[0].token_ids for o in outs], np.int64)
        out["completion_logprobs"] = _ragged([o[0].logprobs for o in outs], np.float32)
        out["finish_reason"] = np.array([o[0].finish_reason for o in outs], dtype=object)
        if self.params.n > 1:
            out["completions"] = _ragged([[c.text for c in o] for o in outs], object)
        return out


def _ragged(rows: list[list], dtype) -> np.ndarray:
    """An object array of 1-D arrays: Ray Data stores it as a list column."""
    arr = np.empty(len(rows), dtype=object)
    for i, r in enumerate(rows):
        arr[i] = np.asarray(r, dtype=dtype)
    return arr


def map_batches_kwargs(engine_cfg: EngineConfig, model_path: str | None, params: SamplingParams) -> dict[str, Any]:
    """The `ds.map_batches(SamplerPredictor, **kwargs)` arguments that `engine_cfg` implies."""
    kw: dict[str, Any] = dict(
        fn_constructor_kwargs={"engine_cfg": engine_cfg, "model_path": model_path, "params": params},
        concurrency=engine_cfg.num_actors,
        batch_size=engine_cfg.batch_size,
        num_cpus=engine_cfg.num_cpus_per_actor,
    )
    if engine_cfg.num_gpus_per_actor:
        kw["num_gpus"] = engine_cfg.num_gpus_per_actor
    if engine_cfg.resources:
        kw["resources"] = dict(engine_cfg.resources)
    return kw
