"""Ray Train driver: one `TorchTrainer` per training stage, over a Ray Data stream of token rows."""

from __future__ import annotations

import logging
import os
from dataclasses import asdict

from phi4ray.config import DPOConfig, Recipe, TrainConfig
from phi4ray.run import RunDir, config_hash
from phi4ray.train.loop import LoopSpec, ray_worker_loop, steps_for

log = logging.getLogger(__name__)

STAGES = ("pretrain", "midtrain", "sft", "dpo")
SCALING_FIELDS = ("num_workers", "cpus_per_worker", "resources", "max_failures", "checkpoint_every")


def input_table(stage: str, cfg: TrainConfig) -> str:
    if stage == "dpo":
        return "pts/pairs" if isinstance(cfg, DPOConfig) and cfg.pairs == "pts" else "tokens/dpo"
    return f"tokens/{stage}"


def export_dir(stage: str) -> str:
    return f"checkpoints/{stage}/hf"


def run_train(stage: str, recipe: Recipe, run_dir: RunDir, force: bool = False) -> dict:
    """Train `stage` of the recipe with Ray Train + DeepSpeed; ends with an HF export."""
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    if stage not in STAGES:
        raise ValueError(f"unknown training stage '{stage}'; one of {', '.join(STAGES)}")
    cfg: TrainConfig | None = getattr(recipe, stage)
    if cfg is None:
        raise ValueError(f"recipe '{recipe.name}' has no '{stage}' section")
    table = input_table(stage, cfg)
    # How many workers run it, on how many CPUs, and how often they checkpoint do not change
    # what is trained, so a stopped run can resume with a different number of workers.
    h = config_hash({"train": cfg.model_dump(mode="json", exclude=set(SCALING_FIELDS)), "model": recipe.model, "table": table})
    if not run_dir.begin_stage(stage, h, outputs=[f"checkpoints/{stage}"], force=force):
        log.warning("%s: already complete in %s; skipping", stage, run_dir.uri)
        return run_dir.stage_entry(stage)

    rows = run_dir.num_rows(table)
    if rows == 0:
        # Nothing to learn from is a result, not a crash: PTS may find no pivotal tokens.
        reason = f"{run_dir.uri_of(table)} has no rows"
        log.warning("%s: skipped: %s", stage, reason)
        return run_dir.update_stage(stage, status="skipped", reason=reason, counts={"rows": 0, "steps": 0})
    if isinstance(cfg, DPOConfig) and cfg.precompute_ref_logps:
        from phi4ray.train.reference import precompute_ref_logps

        ref_table = f"checkpoints/{stage}/ref_logps"
        ref_model = run_dir.uri_of(export_dir(cfg.init_from)) if cfg.init_from else recipe.model.path
        precompute_ref_logps(run_dir, table, ref_table, ref_model, recipe.model.preset, seed=cfg.seed,
                             resources=cfg.resources, num_gpus=1 if cfg.use_gpu else 0)
        table = ref_table
    total_steps = steps_for(rows, cfg, cfg.num_workers)
    init_path = recipe.model.path
    if cfg.init_from:
        if not run_dir.exists(export_dir(cfg.init_from), "config.json"):
            raise FileNotFoundError(
                f"{stage} starts from the '{cfg.init_from}' checkpoint, but {run_dir.uri_of(export_dir(cfg.init_from))} "
                f"has none; run `phi4ray train {cfg.init_from}` first"
            )
        init_path = run_dir.uri_of(export_dir(cfg.init_from))
    spec = LoopSpec(
        stage=stage,
        objective="dpo" if stage == "dpo" else "lm",
        train=cfg.model_dump(mode="json"),
        total_steps=total_steps,
        run_dir=run_dir.uri,
        export_rel=export_dir(stage),
        preset=recipe.model.preset,
        model_overrides=dict(recipe.model.overrides),
        init_path=init_path,
        beta=getattr(cfg, "beta", 0.1),
        log_every=max(1, min(10, total_steps // 10 or 1)),
        table=table,
    )
    storage = run_dir.uri_of("checkpoints", stage)  # Ray Train's own folder sits beside the HF export
    if run_dir.is_local:
        os.makedirs(storage, exist_ok=True)
    trainer = TorchTrainer(
        ray_worker_loop,
        train_loop_config=asdict(spec),
        scaling_config=ray.train.ScalingConfig(
            num_workers=cfg.num_workers,
            use_gpu=cfg.use_gpu,
            resources_per_worker={"CPU": cfg.cpus_per_worker, **({"GPU": 1} if cfg.use_gpu else {}), **cfg.resources},
        ),
        run_config=ray.train.RunConfig(
            name="ray",
            storage_path=storage,
            failure_config=ray.train.FailureConfig(max_failures=cfg.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
        ),
        torch_config=TorchConfig(backend="nccl" if cfg.use_gpu else "gloo"),
    )
    log.warning("%s: %d rows, %d optimizer steps on %d workers", stage, rows, total_steps, cfg.num_workers)
    try:
        result = trainer.fit()
    except Exception as e:
        run_dir.fail_stage(stage, f"{type(e).__name__}: {e}")
        raise
    m = dict(result.metrics or {})
    keep = ("loss", "grad_norm", "tokens_per_s", "tflops_per_s", "mfu", "tokens", "seconds", "lr", "resumed_from_step",
            "rewards/margins", "rewards/accuracy", "logps/chosen", "logps/rejected")
    return run_dir.finish_stage(
        stage,
        counts={"rows": rows, "steps": total_steps, "tokens": m.get("tokens", 0)},
        metrics={k: m[k] for k in keep if k in m},
        checkpoint=run_dir.uri_of(export_dir(stage)),
    )
