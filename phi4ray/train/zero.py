"""DeepSpeed ZeRO configuration from a TrainConfig."""

from __future__ import annotations

from phi4ray.config import TrainConfig


def grad_accum_steps(cfg: TrainConfig, world_size: int) -> int:
    """Micro-batches per optimizer step that reach `global_batch_size` on `world_size` workers."""
    per_step = cfg.micro_batch_size * world_size
    if cfg.global_batch_size % per_step:
        raise ValueError(
            f"global_batch_size {cfg.global_batch_size} is not a multiple of micro_batch_size "
            f"{cfg.micro_batch_size} x {world_size} workers; pick values where it is"
        )
    return cfg.global_batch_size // per_step


def ds_config(cfg: TrainConfig, world_size: int, bf16: bool) -> dict:
    zero: dict = {"stage": cfg.zero_stage}
    if cfg.zero_stage >= 1:
        zero.update(overlap_comm=False, contiguous_gradients=True, reduce_bucket_size=5e7)
    if cfg.offload_optimizer:
        if cfg.zero_stage < 1:
            raise ValueError("offload_optimizer needs zero_stage >= 1")
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": cfg.use_gpu}
    if cfg.offload_params:
        if cfg.zero_stage != 3:
            raise ValueError("offload_params needs zero_stage 3")
        zero["offload_param"] = {"device": "cpu", "pin_memory": cfg.use_gpu}
    if cfg.zero_stage == 3:
        zero["stage3_gather_16bit_weights_on_model_save"] = True
    return {
        "train_batch_size": cfg.global_batch_size,
        "train_micro_batch_size_per_gpu": cfg.micro_batch_size,
        "gradient_accumulation_steps": grad_accum_steps(cfg, world_size),
        "gradient_clipping": cfg.grad_clip,
        "zero_optimization": zero,
        "zero_allow_untested_optimizer": True,
        "bf16": {"enabled": bf16},
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }
