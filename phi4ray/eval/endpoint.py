"""`EndpointSampler`: the `Sampler` interface over an OpenAI-compatible `/v1/completions` endpoint.

    sampler = EndpointSampler("http://127.0.0.1:8000/v1", "phi4ray")
    sampler.generate(["Question: ...\\nAnswer:"], SamplingParams(temperature=0, max_tokens=64))
    sampler.score([[9906, 1917, 13]])       # [[nan, -3.1, -0.4]]

`generate` is a normal completions request (text or token-id prompts, a batch of them per
request, `n` samples each). `score` is the request that lm-evaluation-harness makes for
log-likelihoods: the token ids as the prompt, `echo: true`, `logprobs: 0`, `max_tokens: 1`;
the echoed prompt's `token_logprobs` are the scores (the first is null: no prefix). Both the
phi4ray Serve app and vLLM's server answer these (vLLM's extensions `return_token_ids` and
`stop_token_ids` are sent too). Scoring sends token ids of the Phi-4 tokeniser, so it measures an
endpoint that serves a phi4ray checkpoint (or any model with that tokeniser); for other models
use lm-evaluation-harness (docs/eval.md).

Transport, retries on overload (429/503 with `Retry-After`) and error messages are the PTS
client's (`phi4ray.pts.client.CompletionsClient`). Requests run `concurrency` at a time.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from phi4ray.inference.sampler import Completion, SamplingParams

__all__ = ["EndpointSampler"]


class EndpointSampler:
    def __init__(self, base_url: str, model: str | None = None, *, batch_size: int = 16, concurrency: int = 4,
                 timeout: float = 600.0, max_retries: int = 5, api_key: str | None = None):
        from phi4ray.pts.client import CompletionsClient

        self.client = CompletionsClient(base_url, model or "", timeout=timeout, max_retries=max_retries,
                                        api_key=api_key)
        self.base_url = self.client.base_url
        self.batch_size = max(1, batch_size)
        self.concurrency = max(1, concurrency)
        self.max_model_len: int | None = None
        listed = self._models()
        if model is None:
            if not listed:
                raise ValueError(f"{self.base_url}/models lists no model; pass the model name")
            model = listed[0]["id"]
        info = next((m for m in listed if m.get("id") == model), {})
        if isinstance(info.get("max_model_len"), int):
            self.max_model_len = info["max_model_len"]  # phi4ray serve and vLLM say it; OpenAI does not
        self.model = self.client.model = model

    def _models(self) -> list[dict]:
        import httpx

        try:
            resp = self.client._http.get(f"{self.base_url}/models")
            return list(resp.json().get("data", [])) if resp.status_code == 200 else []
        except (httpx.HTTPError, ValueError):  # an endpoint without /models still serves completions
            return []

    def close(self) -> None:
        self.client.close()

    def _batches(self, prompts: list) -> list[list[int]]:
        """Index batches of at most `batch_size` prompts of one type (OpenAI batches are all
        strings or all token-id lists)."""
        out, cur, kind = [], [], None
        for i, p in enumerate(prompts):
            k = isinstance(p, str)
            if cur and (k != kind or len(cur) == self.batch_size):
                out.append(cur)
                cur = []
            cur.append(i)
            kind = k
        if cur:
            out.append(cur)
        return out

    def _map(self, fn, batches):
        if len(batches) <= 1 or self.concurrency == 1:
            return [fn(b) for b in batches]
        with ThreadPoolExecutor(max_workers=min(self.concurrency, len(batches)), thread_name_prefix="endpoint") as pool:
            return list(pool.map(fn, batches))

    @staticmethod
    def _prompt(p) -> Any:
        return p if isinstance(p, str) else [int(t) for t in p]

    # -- Sampler ----------------------------------------------------------------------------
    def generate(self, prompts: list[str | list[int]], params: SamplingParams) -> list[list[Completion]]:
        def one(idx: list[int]) -> list[list[Completion]]:
            body: dict[str, Any] = {
                "model": self.model, "prompt": [self._prompt(prompts[i]) for i in idx], "n": params.n,
                "temperature": params.temperature, "top_p": params.top_p, "max_tokens": params.max_tokens,
                "return_token_ids": True,
            }
            if params.stop:
                body["stop"] = list(params.stop)
            if params.stop_token_ids:
                body["stop_token_ids"] = list(params.stop_token_ids)
            if params.seed is not None:
                body["seed"] = int(params.seed)
            if params.logprobs is not None:
                body["logprobs"] = int(params.logprobs)
                body["return_tokens_as_token_ids"] = True
            choices = self.client._post("/completions", body).get("choices", [])
            want = len(idx) * params.n
            if len(choices) != want:
                raise RuntimeError(f"{self.base_url}/completions returned {len(choices)} choices for {want}")
            choices = sorted(choices, key=lambda c: c.get("index", 0))
            return [[self._completion(c, params.logprobs is not None) for c in choices[k * params.n:(k + 1) * params.n]]
                    for k in range(len(idx))]

        out: list[list[Completion]] = [[] for _ in prompts]
        batches = self._batches(prompts)
        for idx, res in zip(batches, self._map(one, batches)):
            for i, comps in zip(idx, res):
                out[i] = comps
        return out

    def score(self, prompts: list[list[int]]) -> list[list[float]]:
        def one(idx: list[int]) -> list[list[float]]:
            body = {"model": self.model, "prompt": [self._prompt(prompts[i]) for i in idx], "max_tokens": 1,
                    "temperature": 0.0, "echo": True, "logprobs": 0}
            choices = sorted(self.client._post("/completions", body).get("choices", []), key=lambda c: c.get("index", 0))
            if len(choices) != len(idx):
                raise RuntimeError(f"{self.base_url}/completions returned {len(choices)} choices for {len(idx)} prompts")
            res = []
            for i, c in zip(idx, choices):
                lps = ((c.get("logprobs") or {}).get("token_logprobs")) or []
                n = len(prompts[i])
                if len(lps) < n:
                    raise RuntimeError(f"{self.base_url} echoed {len(lps)} prompt log-probabilities for {n} tokens; "
                                       "it must support `echo` with `logprobs` (vLLM, phi4ray serve)")
                res.append([math.nan if x is None else float(x) for x in lps[:n]])
            return res

        out: list[list[float]] = [[] for _ in prompts]
        batches = self._batches(prompts)
        for idx, res in zip(batches, self._map(one, batches)):
            for i, lp in zip(idx, res):
                out[i] = lp
        return out

    @staticmethod
    def _completion(c: dict, want_logprobs: bool) -> Completion:
        from phi4ray.pts.client import parse_token_key

        lp = c.get("logprobs") or {}
        ids = c.get("token_ids")
        if ids is None and lp.get("tokens"):
            parsed = [parse_token_key(t) for t in lp["tokens"]]
            ids = parsed if all(t is not None for t in parsed) else None
        tops = None
        if want_logprobs:
            tops = [{tid: float(v) for k, v in (d or {}).items() if (tid := parse_token_key(k)) is not None}
                    for d in lp.get("top_logprobs") or []]
        return Completion(
            text=c.get("text") or "", token_ids=[int(t) for t in ids or []],
            logprobs=[math.nan if x is None else float(x) for x in lp.get("token_logprobs") or []] if want_logprobs else [],
            top_logprobs=tops, finish_reason=c.get("finish_reason") or "length", stop_reason=c.get("stop_reason"),
        )
