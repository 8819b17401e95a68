"""`serve.engine.engine == "vllm"`: the endpoint is Ray's own `ray.serve.llm` app over vLLM.

On GPUs phi4ray does not run its own server: `ray.serve.llm.build_openai_app` already serves
vLLM's OpenAI API (continuous batching, token streaming, `return_token_ids`,
`return_tokens_as_token_ids`, `echo`, prompt logprobs) with Serve's autoscaling. This module
only translates a recipe's `ServeConfig` into its `LLMConfig`:

| ServeConfig                                  | LLMConfig                                                   |
| -------------------------------------------- | ----------------------------------------------------------- |
| model_name, the checkpoint folder            | model_loading_config.model_id, .model_source                |
| min/max_replicas, target_ongoing_requests    | deployment_config.num_replicas or .autoscaling_config       |
| max_ongoing_requests, max_queued_requests    | deployment_config (of the LLMServer deployment)             |
| overload_status, retry_after_s               | deployment_config.backpressure_config (Ray >= 2.5x)         |
| engine.num_cpus_per_actor, engine.resources  | deployment_config.ray_actor_options                         |
| engine.num_gpus_per_actor                    | engine_kwargs.tensor_parallel_size (whole GPUs), or a       |
|                                              | placement_group_config bundle with a fraction of one GPU    |
| engine.dtype, max_model_len,                 | engine_kwargs                                               |
| engine.gpu_memory_utilization                |                                                             |

`llm_config_dict` is pure (tested without vLLM). `build_llm_app` imports `ray.serve.llm`,
which needs vLLM (`pip install phi4ray[gpu]`), only when it is called.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from phi4ray.config import ServeConfig

__all__ = ["llm_config_dict", "llm_serving_args", "build_llm_app"]


def _backpressure(cfg: "ServeConfig") -> dict[str, Any]:
    from phi4ray.serve.app import backpressure_options

    return backpressure_options(cfg)


def llm_config_dict(cfg: "ServeConfig", model_path: str) -> dict[str, Any]:
    """The `ray.serve.llm.LLMConfig` (as a dict) that serves `model_path` as `cfg.model_name`."""
    e = cfg.engine
    if cfg.min_replicas > cfg.max_replicas:
        raise ValueError(f"serve.min_replicas ({cfg.min_replicas}) > serve.max_replicas ({cfg.max_replicas})")
    actor: dict[str, Any] = {"num_cpus": e.num_cpus_per_actor}
    if e.resources:
        actor["resources"] = dict(e.resources)
    deployment: dict[str, Any] = {
        "max_ongoing_requests": cfg.max_ongoing_requests,
        "max_queued_requests": cfg.max_queued_requests,
        "ray_actor_options": actor,
        **_backpressure(cfg),
    }
    if cfg.min_replicas == cfg.max_replicas:
        deployment["num_replicas"] = cfg.max_replicas
    else:
        deployment["autoscaling_config"] = {
            "min_replicas": cfg.min_replicas,
            "initial_replicas": max(1, cfg.min_replicas),
            "max_replicas": cfg.max_replicas,
            "target_ongoing_requests": cfg.target_ongoing_requests,
        }
    engine_kwargs: dict[str, Any] = {
        "max_model_len": min(cfg.max_model_len, e.max_model_len or cfg.max_model_len),
        "gpu_memory_utilization": e.gpu_memory_utilization,
    }
    if e.dtype != "auto":
        engine_kwargs["dtype"] = e.dtype
    out: dict[str, Any] = {
        "model_loading_config": {"model_id": cfg.model_name, "model_source": model_path},
        "engine_kwargs": engine_kwargs,
        "deployment_config": deployment,
    }
    gpus = e.num_gpus_per_actor
    if gpus >= 1:
        if gpus != int(gpus):
            raise ValueError(f"serve.engine.num_gpus_per_actor={gpus}: vLLM takes whole GPUs (tensor parallel) or a fraction of one")
        engine_kwargs["tensor_parallel_size"] = int(gpus)
    elif gpus > 0:  # several replicas share one GPU (vLLM's gpu_memory_utilization must leave room)
        out["placement_group_config"] = {"bundle_per_worker": {"GPU": gpus}}
    return out


def llm_serving_args(cfg: "ServeConfig", model_path: str) -> dict[str, Any]:
    """The `LLMServingArgs` of `build_openai_app`: our one model behind ray.serve.llm's own ingress.

    The queue bound sits on the LLM server deployment: the ingress's handle raises Serve's
    `BackPressureError` beyond `max_queued_requests`, and ray.serve.llm's ingress answers it as
    JSON with the error's status (`overload_status`), though without a `Retry-After` header."""
    return {"llm_configs": [llm_config_dict(cfg, model_path)]}


def build_llm_app(cfg: "ServeConfig", model_path: str):
    """The `ray.serve.llm` OpenAI app for `cfg` (needs vLLM and a GPU where it runs)."""
    try:
        from ray.serve.llm import build_openai_app
    except ImportError as e:
        raise ImportError(
            "serve.engine.engine=vllm serves through ray.serve.llm, which needs vLLM: `pip install phi4ray[gpu]` "
            "(or `ray[llm]`) on a GPU machine, or set serve.engine.engine=transformers"
        ) from e
    return build_openai_app(llm_serving_args(cfg, model_path))
