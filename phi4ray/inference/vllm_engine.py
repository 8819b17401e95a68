"""`VLLMSampler`: the `Sampler` over `vllm.LLM`, for GPUs.

vLLM is an optional extra (`pip install phi4ray[gpu]`) and is imported only when a
`VLLMSampler` is built. Prompts go to vLLM as token ids (encoded by `phi4ray.tokenizer`, str
prompts with special tokens allowed), so both engines see identical tokens.

Mapping onto vLLM, chosen so that both engines give the same fields with the same meaning:

* stopping is exactly `params.stop_token_ids` + `params.stop`: `ignore_eos=True` turns off
  vLLM's own EOS rule, and the default `stop_token_ids` already hold `<|endoftext|>` and
  `<|im_end|>`; `skip_special_tokens=False` as in the transformers engine (the stop token
  itself never shows in the text, in both).
* logprobs are vLLM's default raw logprobs; `top_logprobs` is vLLM's per-step dict (top k
  plus the sampled token), reduced to {token id: logprob}.
* `score` asks for `prompt_logprobs=0` (the prompt token's own logprob) with one dummy
  decode step; vLLM's leading None becomes nan.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from phi4ray.inference.sampler import Completion, SamplingParams

if TYPE_CHECKING:
    from phi4ray.config import EngineConfig

__all__ = ["VLLMSampler", "import_vllm"]


def import_vllm():
    try:
        import vllm
    except ImportError as e:
        raise ImportError(
            "the vLLM engine needs vLLM and a CUDA GPU: `pip install phi4ray[gpu]`, "
            "or use EngineConfig(engine='transformers') which runs anywhere"
        ) from e
    return vllm


class VLLMSampler:
    def __init__(self, model_path: str, engine_cfg: "EngineConfig | None" = None, **llm_kwargs):
        vllm = import_vllm()
        from phi4ray.inference.models import is_phi4ray_checkpoint, resolve_bundled

        model_path = resolve_bundled(model_path) or model_path
        if not is_phi4ray_checkpoint(model_path):
            raise ValueError(
                f"the vllm engine reads phi4ray checkpoints (Phi-3 architecture, Phi-4 vocabulary); {model_path} "
                "is a teacher model with its own tokenizer: use `engine: transformers` for it, or serve it with "
                "vLLM's OpenAI server"
            )
        self._vllm = vllm
        kw = dict(model=model_path, tokenizer=model_path, seed=0)
        if engine_cfg is not None:
            if engine_cfg.dtype != "auto":
                kw["dtype"] = engine_cfg.dtype
            if engine_cfg.max_model_len:
                kw["max_model_len"] = engine_cfg.max_model_len
            kw["gpu_memory_utilization"] = engine_cfg.gpu_memory_utilization
        kw.update(llm_kwargs)
        self.llm = vllm.LLM(**kw)

    @property
    def max_model_len(self) -> int | None:
        try:
            return int(self.llm.llm_engine.model_config.max_model_len)
        except AttributeError:  # moved in another vLLM version: callers fall back to their own limit
            return None

    def _params(self, params: SamplingParams, **extra):
        return self._vllm.SamplingParams(
            n=params.n,
            temperature=params.temperature,
            top_p=params.top_p,
            max_tokens=params.max_tokens,
            stop=list(params.stop) or None,
            stop_token_ids=list(params.stop_token_ids),
            ignore_eos=True,
            seed=params.seed,
            logprobs=params.logprobs if params.logprobs is not None else 0,
            skip_special_tokens=False,
            spaces_between_special_tokens=False,
            **extra,
        )

    @staticmethod
    def _prompt(p) -> dict:
        from phi4ray.inference.hf_engine import TransformersSampler

        return {"prompt_token_ids": TransformersSampler.encode_prompt(p)}

    def generate(self, prompts: list[str | list[int]], params: SamplingParams) -> list[list[Completion]]:
        outs = self.llm.generate([self._prompt(p) for p in prompts], self._params(params), use_tqdm=False)
        results = []
        for req in outs:
            row = []
            for o in sorted(req.outputs, key=lambda o: o.index):
                ids = list(o.token_ids)
                steps = o.logprobs or []
                lps = [float(step[t].logprob) for step, t in zip(steps, ids)]
                tops = None
                if params.logprobs is not None:
                    tops = [{int(k): float(v.logprob) for k, v in step.items()} for step in steps]
                row.append(Completion(
                    text=o.text, token_ids=ids, logprobs=lps, top_logprobs=tops,
                    finish_reason=o.finish_reason or "length", stop_reason=o.stop_reason,
                ))
            results.append(row)
        return results

    def score(self, prompts: list[list[int]]) -> list[list[float]]:
        sp = self._vllm.SamplingParams(max_tokens=1, prompt_logprobs=0, temperature=0.0)
        outs = self.llm.generate([{"prompt_token_ids": list(map(int, p))} for p in prompts], sp, use_tqdm=False)
        result = []
        for p, req in zip(prompts, outs):
            row = []
            for i, (t, step) in enumerate(zip(p, req.prompt_logprobs or [])):
                row.append(float("nan") if step is None or i == 0 else float(step[int(t)].logprob))
            result.append(row)
        return result
