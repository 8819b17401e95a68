"""The one sampling interface (DESIGN principle 5) and the factory that picks its engine.

    sampler = make_sampler(EngineConfig(engine="transformers"), "runs/x/checkpoints/sft/hf")
    [[c]] = sampler.generate(["<|im_start|>user<|im_sep|>3+5=<|im_end|>..."], SamplingParams(max_tokens=8))
    c.text, c.token_ids, c.logprobs, c.finish_reason

Two engines implement `Sampler`: `TransformersSampler` (CPU or GPU, `hf_engine.py`) and
`VLLMSampler` (GPU, `vllm_engine.py`). Synthesis, Serve, PTS and evaluation use only this
interface.

Conventions, shared by both engines and chosen to match vLLM:

* A `str` prompt is encoded with special tokens allowed, so ChatML text such as
  `<|im_start|>user<|im_sep|>` becomes its special-token ids (vLLM tokenises prompt text the
  same way). A `list[int]` prompt is used as is.
* `logprobs` are the model's raw log-probabilities, `log_softmax(logits)`, before temperature
  and top-p: vLLM V1's default `logprobs_mode="raw_logprobs"`. They do not depend on the
  sampling settings, so PTS and DPO can compare them across requests.
* `token_ids` include the stop token when generation ended on one of `stop_token_ids`;
  `text` never shows it, and text cut by a `stop` string ends before that string (vLLM's
  `include_stop_str_in_output=False`).
* `top_logprobs[i]` maps token id -> logprob for the `logprobs` most likely tokens at step i,
  plus the sampled token (so it has `logprobs` or `logprobs + 1` entries), as vLLM does.
* `seed` makes a request reproducible: the same prompt, params and seed give the same samples
  whatever else shares the batch. The n samples of one request differ from each other.
* `score` returns, for each prompt, the log-probability of every token given the tokens before
  it. The first token has no prefix: its entry is `nan` (vLLM's `prompt_logprobs` gives None).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    from phi4ray.config import EngineConfig, SamplingConfig

__all__ = ["SamplingParams", "Completion", "Sampler", "make_sampler", "default_stop_token_ids"]


def default_stop_token_ids() -> list[int]:
    """`<|endoftext|>` and `<|im_end|>`: the end of a document and the end of a chat turn."""
    from phi4ray.tokenizer import EOT_ID, IM_END_ID

    return [EOT_ID, IM_END_ID]


@dataclass
class SamplingParams:
    n: int = 1
    temperature: float = 1.0
    """0 is greedy decoding (n greedy samples are n copies)."""
    top_p: float = 1.0
    max_tokens: int = 16
    stop: list[str] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=default_stop_token_ids)
    seed: int | None = None
    """None: a fresh random seed per request."""
    logprobs: int | None = None
    """Top alternatives to return per sampled token; 0: only the sampled token; None: no `top_logprobs`."""

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        if self.n < 1:
            raise ValueError(f"n must be >= 1, got {self.n}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {self.max_tokens}")
        if self.logprobs is not None and self.logprobs < 0:
            raise ValueError(f"logprobs must be >= 0 or None, got {self.logprobs}")

    @classmethod
    def from_config(cls, cfg: "SamplingConfig", **overrides) -> "SamplingParams":
        """From a recipe's `SamplingConfig`; `overrides` set other fields (stop_token_ids, logprobs)."""
        kw = dict(n=cfg.n, temperature=cfg.temperature, top_p=cfg.top_p, max_tokens=cfg.max_tokens,
                  stop=list(cfg.stop), seed=cfg.seed)
        kw.update(overrides)
        return cls(**kw)


@dataclass
class Completion:
    text: str
    token_ids: list[int]
    logprobs: list[float]
    """Raw log-probability of each sampled token (one per entry of `token_ids`)."""
    top_logprobs: list[dict[int, float]] | None
    """Per step: {token id: logprob} of the top `params.logprobs` tokens and the sampled one."""
    finish_reason: str
    """`stop` (a stop token or stop string) or `length` (max_tokens or the context ran out)."""
    stop_reason: int | str | None = None
    """The stop token id or stop string that ended the completion (vLLM's field); None for `length`."""


@runtime_checkable
class Sampler(Protocol):
    def generate(self, prompts: list[str | list[int]], params: SamplingParams) -> list[list[Completion]]:
        """For each prompt, `params.n` completions."""
        ...

    def score(self, prompts: list[list[int]]) -> list[list[float]]:
        """For each prompt, log p(token_i | tokens_<i) for every i; entry 0 is nan."""
        ...


def make_sampler(engine_cfg: "EngineConfig", model_path: str | None = None) -> Sampler:
    """The sampler `engine_cfg` names over the checkpoint at `model_path` (else `engine_cfg.model`).

    With neither, the model is a freshly initialised `engine_cfg.preset`: an offline stand-in
    for tests and dry runs, whose samples are noise. vLLM is imported only when asked for.
    """
    path = model_path or engine_cfg.model
    if engine_cfg.engine == "vllm":
        from phi4ray.inference.vllm_engine import VLLMSampler

        if path is None:
            path = _fresh_checkpoint(engine_cfg.preset)
        return VLLMSampler(path, engine_cfg)
    from phi4ray.inference.hf_engine import TransformersSampler

    if path is None:
        import torch

        from phi4ray.model import build_model

        model = build_model(engine_cfg.preset)
        if engine_cfg.dtype != "auto":
            model = model.to(getattr(torch, engine_cfg.dtype))
        return TransformersSampler(model, device=engine_cfg.device, max_batch_rows=engine_cfg.max_batch_rows,
                                   max_model_len=engine_cfg.max_model_len)
    return TransformersSampler.from_pretrained(
        path, device=engine_cfg.device, dtype=None if engine_cfg.dtype == "auto" else engine_cfg.dtype,
        max_batch_rows=engine_cfg.max_batch_rows, max_model_len=engine_cfg.max_model_len,
    )


def _fresh_checkpoint(preset: str) -> str:
    """Save a freshly built `preset` to a temporary HF folder (vLLM reads only folders)."""
    import tempfile

    from phi4ray.model import build_model, save_checkpoint

    out = tempfile.mkdtemp(prefix=f"phi4ray-{preset}-")
    save_checkpoint(build_model(preset), out)
    return out
