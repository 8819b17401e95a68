"""An OpenAI-compatible endpoint on Ray Serve over a phi4ray `Sampler`.

    url = start(cfg.serve, "runs/x/checkpoints/sft/hf")     # http://127.0.0.1:8000/v1
    openai.OpenAI(base_url=url, api_key="x").completions.create(model=cfg.serve.model_name, ...)
    stop()

Routes: `GET /v1/models`, `POST /v1/completions`, `POST /v1/chat/completions`, `GET /health`.
docs/serve.md is the user's reference; in short:

* The request and response fields are OpenAI's, plus vLLM's extensions spelled as vLLM spells
  them (`return_token_ids`, `return_tokens_as_token_ids`, `stop_token_ids`, `stop_reason`), so
  that clients (PTS above all) work against either server. A `prompt` may be text (tokenised
  with special tokens allowed: ChatML prompts), token ids, or a batch of either. Chat messages
  are rendered with the Phi-4 ChatML template.
* `stream: true` answers server-sent events (`text_completion` / `chat.completion.chunk`
  chunks, then `data: [DONE]`), one chunk per sampled token as the engine decodes it
  (`phi4ray.serve.streaming`). The streamed text adds up to the non-streamed text.
* Bad requests (unknown fields, wrong types, empty prompts, ids outside the vocabulary,
  prompt + max_tokens beyond `max_model_len`, unsupported options) are 4xx with OpenAI's error
  body `{"error": {"message", "type", "param", "code"}}`.
* Overload: each replica takes at most `max_ongoing_requests`; beyond those Serve's router
  queues at most `max_queued_requests` more, and refuses the rest at once with
  `overload_status` (503 or 429) and `Retry-After: retry_after_s` (Serve's `backpressure_config`).
* Replicas are fixed or autoscaled between `min_replicas` and `max_replicas` on
  `target_ongoing_requests`; each asks Ray for `engine.num_cpus_per_actor`,
  `engine.num_gpus_per_actor` and `engine.resources`.

A replica runs one engine call at a time (the engine batches a request's prompts and samples
itself), in a worker thread so that health checks and streams stay responsive. With
`serve.engine.engine: vllm` the app is Ray's own `ray.serve.llm` app instead (`llm_app.py`).
"""

import asyncio
import inspect
import logging
import time
import uuid
from typing import Any, AsyncIterator

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from ray import serve
from starlette.exceptions import HTTPException as StarletteHTTPException

from phi4ray.config import ServeConfig
from phi4ray.serve.protocol import (
    MAX_LOGPROBS,
    ChatCompletionRequest,
    CompletionRequest,
    OpenAIError,
    chat_logprob_entry,
    completion_logprobs,
    message_text,
    parse_request,
)
from phi4ray.serve.streaming import SSE_DONE, TextStream, run_locked, sse, stream_generate, supports_on_token

log = logging.getLogger(__name__)

__all__ = [
    "APP_NAME", "DEPLOYMENT_NAME", "MAX_LOGPROBS", "OpenAIServer", "CompletionRequest", "ChatCompletionRequest",
    "build_app", "start", "stop", "deployment_options", "backpressure_options",
]

APP_NAME = "phi4ray"
DEPLOYMENT_NAME = "OpenAIServer"
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


# -- the deployment ---------------------------------------------------------------------------
api = FastAPI(title="phi4ray", description="OpenAI-compatible completions over a phi4ray checkpoint")


@api.exception_handler(OpenAIError)
async def _openai_error(_: Request, e: OpenAIError) -> JSONResponse:
    return e.response()


@api.exception_handler(StarletteHTTPException)
async def _http_error(_: Request, e: StarletteHTTPException) -> JSONResponse:
    return OpenAIError(str(e.detail), status=e.status_code, type="invalid_request_error").response()


@api.exception_handler(Exception)
async def _internal_error(_: Request, e: Exception) -> JSONResponse:
    log.exception("request failed")
    return OpenAIError(f"Internal server error: {type(e).__name__}: {e}", status=500,
                       type="internal_server_error").response()


async def _json_body(request: Request) -> Any:
    try:
        return await request.json()
    except ValueError:
        raise OpenAIError("The request body is not valid JSON.") from None


# Everything the deployment uses is defined above it: Serve pickles the class when it is decorated.
def _usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def _usage_flags(req) -> tuple[bool, bool]:
    """(a final usage chunk, usage on every chunk), as vLLM reads `stream_options`."""
    so = req.stream_options
    on = bool(so and so.include_usage)
    return on, on and bool(so.continuous_usage_stats)


@serve.deployment(name=DEPLOYMENT_NAME)
@serve.ingress(api)
class OpenAIServer:
    def __init__(self, cfg: dict, model_path: str | None):
        from phi4ray.inference.sampler import make_sampler
        from phi4ray.tokenizer import VOCAB_SIZE

        self.cfg = ServeConfig.model_validate(cfg)
        self.model_path = model_path
        self.sampler = make_sampler(self.cfg.engine, model_path)
        engine_len = getattr(self.sampler, "max_model_len", None) or self.cfg.max_model_len
        self.max_model_len = min(self.cfg.max_model_len, engine_len)
        self.vocab_size = getattr(self.sampler, "vocab_size", VOCAB_SIZE)
        self.incremental = supports_on_token(self.sampler)
        self.lock = asyncio.Lock()
        self.created = int(time.time())

    # -- checks -----------------------------------------------------------------------------
    def _check_common(self, req) -> None:
        if req.model != self.cfg.model_name:
            raise OpenAIError(f"The model `{req.model}` does not exist. This server serves `{self.cfg.model_name}`.",
                              status=404, param="model", code="model_not_found")
        for name in ("frequency_penalty", "presence_penalty"):
            if getattr(req, name):
                raise OpenAIError(f"'{name}' is not supported (only 0).", param=name, code="unsupported_value")
        if req.stop_token_ids is not None:
            self._check_ids(req.stop_token_ids, "stop_token_ids")

    def _check_ids(self, ids: list[int], param: str) -> None:
        bad = [t for t in ids if not 0 <= t < self.vocab_size]
        if bad:
            raise OpenAIError(f"Token id {bad[0]} in '{param}' is outside the vocabulary [0, {self.vocab_size}).",
                              param=param, code="invalid_value")

    def _check_len(self, n_prompt: int, max_tokens: int, param: str) -> None:
        if n_prompt + max_tokens > self.max_model_len:
            raise OpenAIError(
                f"This model's maximum context length is {self.max_model_len} tokens. However, you requested "
                f"{n_prompt + max_tokens} tokens ({n_prompt} in the prompt, {max_tokens} in the completion). "
                "Please reduce the prompt or max_tokens.", param=param, code="context_length_exceeded")

    def _params(self, req, max_tokens: int, logprobs: int | None):
        from phi4ray.inference.sampler import SamplingParams

        stop = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
        kw: dict[str, Any] = dict(n=req.n, temperature=req.temperature, top_p=req.top_p, max_tokens=max_tokens,
                                  stop=stop, seed=req.seed, logprobs=logprobs)
        if req.stop_token_ids is not None:
            kw["stop_token_ids"] = list(req.stop_token_ids)
        return SamplingParams(**kw)

    async def _run(self, fn, *args):
        # one engine call at a time per replica (the engine batches inside it), held until the
        # thread ends even if this request is cancelled
        return await asyncio.shield(await run_locked(self.lock, fn, *args))

    def _completion_prompts(self, req: CompletionRequest) -> tuple[list[list[int]], list[str]]:
        from phi4ray.inference.hf_engine import TransformersSampler
        from phi4ray.tokenizer import decode

        p = req.prompt
        if isinstance(p, str):
            raw: list = [p]
        elif p and isinstance(p[0], int):
            raw = [list(p)]
        else:
            raw = list(p)
        if not raw:
            raise OpenAIError("'prompt' must not be empty.", param="prompt", code="invalid_value")
        prompts, texts = [], []
        for item in raw:
            if not item:
                raise OpenAIError("'prompt' must not be empty.", param="prompt", code="invalid_value")
            if isinstance(item, str):
                ids = TransformersSampler.encode_prompt(item)
                texts.append(item)
            else:
                ids = list(item)
                self._check_ids(ids, "prompt")
                texts.append(decode(ids))
            self._check_len(len(ids), req.max_tokens, "max_tokens")
            prompts.append(ids)
        return prompts, texts

    async def _prompt_logprobs(self, prompts: list[list[int]], k: int):
        """Per prompt, the logprob of each token (first: None) and its top-k alternatives (echo)."""
        if hasattr(self.sampler, "score_with_top"):
            lps, tops = await self._run(self.sampler.score_with_top, prompts, k)
        else:
            lps, tops = await self._run(self.sampler.score, prompts), None
        out = []
        for i, ids in enumerate(prompts):
            t = tops[i] if tops is not None else [{tid: lp} for tid, lp in zip(ids, lps[i])]
            out.append((lps[i], [None] + list(t[1:])))
        return out

    # -- routes -----------------------------------------------------------------------------
    @api.get("/v1/models")
    async def models(self) -> dict:
        return {"object": "list", "data": [{
            "id": self.cfg.model_name, "object": "model", "created": self.created, "owned_by": "phi4ray",
            "root": self.model_path, "max_model_len": self.max_model_len,
        }]}

    @api.get("/v1/models/{model_id:path}")
    async def model(self, model_id: str) -> dict:
        if model_id != self.cfg.model_name:
            raise OpenAIError(f"The model `{model_id}` does not exist.", status=404, param="model",
                              code="model_not_found")
        return (await self.models())["data"][0]

    @api.get("/health")
    async def health(self) -> dict:
        return {"status": "ok"}

    @api.post("/v1/completions")
    async def completions(self, request: Request):
        req: CompletionRequest = parse_request(CompletionRequest, await _json_body(request))
        self._check_common(req)
        if req.best_of not in (None, req.n):
            raise OpenAIError("'best_of' different from 'n' is not supported.", param="best_of",
                              code="unsupported_value")
        if req.suffix:
            raise OpenAIError("'suffix' is not supported.", param="suffix", code="unsupported_value")
        if req.logit_bias:
            raise OpenAIError("'logit_bias' is not supported.", param="logit_bias", code="unsupported_value")
        prompts, texts = self._completion_prompts(req)
        params = self._params(req, req.max_tokens, req.logprobs)
        echo_lp = None
        if req.echo and req.logprobs is not None:
            echo_lp = await self._prompt_logprobs(prompts, req.logprobs)
        if req.stream:
            return StreamingResponse(self._stream_completions(req, prompts, texts, params, echo_lp),
                                     media_type="text/event-stream", headers=SSE_HEADERS)

        outs = await self._run(self.sampler.generate, prompts, params)
        as_ids = req.return_tokens_as_token_ids
        choices = []
        completion_tokens = 0
        for i, (ids, text, comps) in enumerate(zip(prompts, texts, outs)):
            for j, c in enumerate(comps):
                completion_tokens += len(c.token_ids)
                lp_obj = None
                if req.logprobs is not None:
                    out_part = completion_logprobs(list(c.token_ids), list(c.logprobs), c.top_logprobs, as_ids,
                                                   len(text) if req.echo else 0)
                    if req.echo:
                        prompt_part = completion_logprobs(ids, echo_lp[i][0], echo_lp[i][1], as_ids)
                        lp_obj = {k: (prompt_part[k] or []) + (out_part[k] or []) for k in prompt_part}
                    else:
                        lp_obj = out_part
                choice: dict[str, Any] = {
                    "index": i * req.n + j, "text": (text + c.text) if req.echo else c.text, "logprobs": lp_obj,
                    "finish_reason": c.finish_reason, "stop_reason": c.stop_reason,
                }
                if req.return_token_ids:
                    choice["token_ids"] = list(c.token_ids)
                    choice["prompt_token_ids"] = list(ids)
                choices.append(choice)
        prompt_tokens = sum(len(x) for x in prompts)
        return JSONResponse({
            "id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time()),
            "model": self.cfg.model_name, "choices": choices,
            "usage": _usage(prompt_tokens, completion_tokens),
        })

    @api.post("/v1/chat/completions")
    async def chat_completions(self, request: Request):
        from phi4ray.tokenizer import render_chat

        req: ChatCompletionRequest = parse_request(ChatCompletionRequest, await _json_body(request))
        self._check_common(req)
        if req.top_logprobs is not None and not req.logprobs:
            raise OpenAIError("'top_logprobs' needs 'logprobs' set to true.", param="top_logprobs",
                              code="invalid_value")
        messages = [{"role": "system" if m.role == "developer" else m.role, "content": message_text(m)}
                    for m in req.messages]
        ids, _ = render_chat(messages, add_generation_prompt=True)
        max_tokens = req.max_completion_tokens or req.max_tokens
        if max_tokens is None:
            max_tokens = max(1, min(4096, self.max_model_len - len(ids)))
        self._check_len(len(ids), max_tokens, "max_tokens")
        k = (req.top_logprobs or 0) if req.logprobs else None
        params = self._params(req, max_tokens, k)
        if req.stream:
            return StreamingResponse(self._stream_chat(req, ids, params), media_type="text/event-stream",
                                     headers=SSE_HEADERS)

        outs = await self._run(self.sampler.generate, [ids], params)
        choices = []
        for j, c in enumerate(outs[0]):
            lp = None
            if req.logprobs:
                tops = c.top_logprobs or [None] * len(c.token_ids)
                lp = {"content": [chat_logprob_entry(t, v, top, k or 0)
                                  for t, v, top in zip(c.token_ids, c.logprobs, tops)]}
            choice: dict[str, Any] = {
                "index": j, "message": {"role": "assistant", "content": c.text}, "logprobs": lp,
                "finish_reason": c.finish_reason, "stop_reason": c.stop_reason,
            }
            if req.return_token_ids:
                choice["token_ids"] = list(c.token_ids)
            choices.append(choice)
        completion_tokens = sum(len(c.token_ids) for c in outs[0])
        resp: dict[str, Any] = {
            "id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()),
            "model": self.cfg.model_name, "choices": choices, "usage": _usage(len(ids), completion_tokens),
        }
        if req.return_token_ids:
            resp["prompt_token_ids"] = ids
        return JSONResponse(resp)

    # -- streaming --------------------------------------------------------------------------
    async def _token_events(self, prompts, params, n: int) -> AsyncIterator[tuple]:
        """("token", choice index, token, logprob, top) per sampled token, then ("done", outputs)."""
        async for ev in stream_generate(self.sampler.generate, prompts, params, self.lock, self.incremental):
            if ev[0] == "token":
                _, i, j, t, lp, top = ev
                yield "token", i * n + j, t, lp, top
            else:
                yield ev

    async def _stream_completions(self, req: CompletionRequest, prompts, texts, params, echo_lp):
        from phi4ray.tokenizer import decode

        rid, created, n = f"cmpl-{uuid.uuid4().hex}", int(time.time()), req.n
        as_ids, want_lp = req.return_tokens_as_token_ids, req.logprobs is not None
        usage_on, usage_each = _usage_flags(req)
        keys = range(len(prompts) * n)
        streams = {k: TextStream(params.stop, params.stop_token_ids) for k in keys}
        seen: dict[int, list] = {k: [] for k in keys}  # (token, logprob, top) per choice
        sent = dict.fromkeys(keys, 0)  # tokens already in a chunk
        offset = {k: len(texts[k // n]) if req.echo else 0 for k in keys}
        n_prompt = sum(len(p) for p in prompts)

        def frame(choices: list, usage: dict | None = None) -> str:
            body = {"id": rid, "object": "text_completion", "created": created, "model": self.cfg.model_name,
                    "choices": choices}
            if usage is not None:
                body["usage"] = usage
            return sse(body)

        def usage_now() -> dict | None:
            return _usage(n_prompt, sum(len(v) for v in seen.values())) if usage_each else None

        def choice(k: int, text: str, finish: str | None = None, stop_reason=None) -> dict:
            toks = seen[k][sent[k] :]
            sent[k] = len(seen[k])
            c: dict[str, Any] = {"index": k, "text": text, "logprobs": None, "finish_reason": finish,
                                 "stop_reason": stop_reason}
            if want_lp:
                c["logprobs"] = completion_logprobs([t for t, _, _ in toks], [v for _, v, _ in toks],
                                                    [top for _, _, top in toks], as_ids, offset[k])
            offset[k] += sum(len(decode([t])) for t, _, _ in toks)
            if req.return_token_ids:
                c["token_ids"] = [t for t, _, _ in toks]
            return c

        try:
            for k in keys:  # the first chunk of each choice: the echoed prompt, and its ids
                i = k // n
                first: dict[str, Any] | None = None
                if req.echo:
                    first = {"index": k, "text": texts[i], "logprobs": None, "finish_reason": None}
                    if want_lp:
                        first["logprobs"] = completion_logprobs(prompts[i], *echo_lp[i], as_ids)
                if req.return_token_ids:
                    first = first or {"index": k, "text": "", "logprobs": None, "finish_reason": None}
                    first["prompt_token_ids"] = list(prompts[i])
                    first.setdefault("token_ids", list(prompts[i]) if req.echo else [])
                if first is not None:
                    yield frame([first], usage_now())
            outs = None
            async for ev in self._token_events(prompts, params, n):
                if ev[0] == "done":
                    outs = ev[1]
                    break
                _, k, t, lp, top = ev
                seen[k].append((t, lp, top))
                delta = streams[k].push(t)
                if delta or want_lp or req.return_token_ids:
                    yield frame([choice(k, delta)], usage_now())
            for i, comps in enumerate(outs):
                for j, c in enumerate(comps):
                    k = i * n + j
                    tops = c.top_logprobs or [None] * len(c.token_ids)
                    seen[k] = list(zip(c.token_ids, c.logprobs, tops))  # the engine's record settles it
                    yield frame([choice(k, streams[k].finish(c.text), c.finish_reason, c.stop_reason)], usage_now())
            if usage_on:
                yield frame([], _usage(n_prompt, sum(len(v) for v in seen.values())))
        except OpenAIError as e:
            yield sse(e.body())
        except Exception as e:  # noqa: BLE001 - the stream has started: the error goes in it
            log.exception("streaming completion failed")
            yield sse(OpenAIError(f"{type(e).__name__}: {e}", status=500, type="internal_server_error").body())
        yield SSE_DONE

    async def _stream_chat(self, req: ChatCompletionRequest, ids: list[int], params):
        rid, created, n = f"chatcmpl-{uuid.uuid4().hex}", int(time.time()), req.n
        k_top = req.top_logprobs or 0
        usage_on, usage_each = _usage_flags(req)
        streams = {j: TextStream(params.stop, params.stop_token_ids) for j in range(n)}
        seen: dict[int, list] = {j: [] for j in range(n)}
        sent = dict.fromkeys(range(n), 0)

        def frame(choices: list, usage: dict | None = None, **extra) -> str:
            body = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": self.cfg.model_name,
                    "choices": choices, **extra}
            if usage is not None:
                body["usage"] = usage
            return sse(body)

        def usage_now() -> dict | None:
            return _usage(len(ids), sum(len(v) for v in seen.values())) if usage_each else None

        def choice(j: int, delta: dict, finish: str | None = None, stop_reason=None) -> dict:
            toks = seen[j][sent[j] :]
            sent[j] = len(seen[j])
            c: dict[str, Any] = {"index": j, "delta": delta, "logprobs": None, "finish_reason": finish}
            if finish is not None:
                c["stop_reason"] = stop_reason
            if req.logprobs:
                c["logprobs"] = {"content": [chat_logprob_entry(t, v, top, k_top) for t, v, top in toks]}
            if req.return_token_ids:
                c["token_ids"] = [t for t, _, _ in toks]
            return c

        try:
            extra = {"prompt_token_ids": ids} if req.return_token_ids else {}
            for j in range(n):  # the role first, as OpenAI does
                yield frame([choice(j, {"role": "assistant", "content": ""})], usage_now(), **(extra if j == 0 else {}))
            outs = None
            async for ev in self._token_events([ids], params, n):
                if ev[0] == "done":
                    outs = ev[1]
                    break
                _, j, t, lp, top = ev
                seen[j].append((t, lp, top))
                delta = streams[j].push(t)
                if delta or req.logprobs or req.return_token_ids:
                    yield frame([choice(j, {"content": delta} if delta else {})], usage_now())
            for j, c in enumerate(outs[0]):
                tops = c.top_logprobs or [None] * len(c.token_ids)
                seen[j] = list(zip(c.token_ids, c.logprobs, tops))
                rest = streams[j].finish(c.text)
                yield frame([choice(j, {"content": rest} if rest else {}, c.finish_reason, c.stop_reason)], usage_now())
            if usage_on:
                yield frame([], _usage(len(ids), sum(len(v) for v in seen.values())))
        except OpenAIError as e:
            yield sse(e.body())
        except Exception as e:  # noqa: BLE001 - the stream has started: the error goes in it
            log.exception("streaming chat completion failed")
            yield sse(OpenAIError(f"{type(e).__name__}: {e}", status=500, type="internal_server_error").body())
        yield SSE_DONE


# -- building and running ---------------------------------------------------------------------
def _serve_accepts(option: str) -> bool:
    try:
        return option in inspect.signature(serve.deployment).parameters
    except (TypeError, ValueError):
        return False


def backpressure_options(cfg: ServeConfig) -> dict[str, Any]:
    """Serve's `backpressure_config` for `cfg`: the status and `Retry-After` of refused requests.

    Empty on a Ray whose Serve has no `backpressure_config` (before 2.5x): there the proxy
    answers 503 without `Retry-After`, and clients fall back to their own backoff."""
    if not _serve_accepts("backpressure_config"):
        if cfg.overload_status != 503 or cfg.retry_after_s:
            log.warning("this Ray Serve has no backpressure_config: overload is a 503 without Retry-After")
        return {}
    return {"backpressure_config": {"status_code": cfg.overload_status, "retry_after_s": cfg.retry_after_s}}


def deployment_options(cfg: ServeConfig) -> dict[str, Any]:
    """`Deployment.options(...)` for `cfg`: replicas or autoscaling, request limits, resources."""
    actor: dict[str, Any] = {"num_cpus": cfg.engine.num_cpus_per_actor}
    if cfg.engine.num_gpus_per_actor:
        actor["num_gpus"] = cfg.engine.num_gpus_per_actor
    if cfg.engine.resources:
        actor["resources"] = dict(cfg.engine.resources)
    opts: dict[str, Any] = {
        "ray_actor_options": actor,
        "max_ongoing_requests": cfg.max_ongoing_requests,
        "max_queued_requests": cfg.max_queued_requests,
        **backpressure_options(cfg),
    }
    if cfg.min_replicas > cfg.max_replicas:
        raise ValueError(f"serve.min_replicas ({cfg.min_replicas}) > serve.max_replicas ({cfg.max_replicas})")
    if cfg.min_replicas == cfg.max_replicas:
        opts["num_replicas"] = cfg.max_replicas
    else:
        opts["autoscaling_config"] = {
            "min_replicas": cfg.min_replicas,
            "initial_replicas": max(1, cfg.min_replicas),
            "max_replicas": cfg.max_replicas,
            "target_ongoing_requests": cfg.target_ongoing_requests,
        }
    return opts


def build_app(cfg: ServeConfig, model_path: str | None):
    """The Serve application serving `model_path` as `cfg.model_name`.

    `model_path` None serves a fresh `cfg.engine.preset` model (an offline stand-in). With
    `cfg.engine.engine == "vllm"` this is `ray.serve.llm`'s OpenAI app (`llm_app.py`)."""
    if cfg.engine.engine == "vllm":
        from phi4ray.inference.sampler import _fresh_checkpoint
        from phi4ray.serve.llm_app import build_llm_app

        return build_llm_app(cfg, model_path or cfg.engine.model or _fresh_checkpoint(cfg.engine.preset))
    return OpenAIServer.options(**deployment_options(cfg)).bind(cfg.model_dump(mode="json"), model_path)


def _client_host(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "::", "") else host


def start(cfg: ServeConfig, model_path: str | None, *, timeout_s: float | None = None) -> str:
    """Deploy the app on the connected Ray cluster and return its base URL (`http://host:port/v1`),
    once `GET /v1/models` answers. The HTTP proxy listens on `cfg.host:cfg.port`. `timeout_s`
    defaults to 300 s (30 min for vLLM, which may load a large model)."""
    import httpx

    if timeout_s is None:
        timeout_s = 1800.0 if cfg.engine.engine == "vllm" else 300.0
    serve.start(http_options={"host": cfg.host, "port": cfg.port})
    try:
        from ray.serve.context import _get_global_client

        running = _get_global_client().http_config
        if running.port != cfg.port or running.host != cfg.host:
            raise RuntimeError(
                f"Ray Serve is already running on {running.host}:{running.port}, not {cfg.host}:{cfg.port}; "
                "call phi4ray.serve.app.stop() (or `serve shutdown`) first, or use that port"
            )
    except (ImportError, AttributeError):  # private API moved: the readiness poll below still checks
        pass
    serve.run(build_app(cfg, model_path), name=APP_NAME, route_prefix="/", blocking=False)
    url = f"http://{_client_host(cfg.host)}:{cfg.port}/v1"
    deadline = time.time() + timeout_s
    last: Exception | str = "no answer"
    while time.time() < deadline:
        try:
            r = httpx.get(f"{url}/models", timeout=5.0)
            if r.status_code == 200 and any(m.get("id") == cfg.model_name for m in r.json().get("data", [])):
                return url
            last = f"HTTP {r.status_code}: {r.text[:200]}"
        except httpx.HTTPError as e:
            last = e
        time.sleep(0.5)
    raise TimeoutError(f"the Serve app did not answer at {url}/models within {timeout_s:.0f}s: {last}")


def stop(shutdown: bool = True) -> None:
    """Delete the app; with `shutdown`, also shut Serve down if no other application is left."""
    try:
        serve.delete(APP_NAME)
    except Exception as e:  # not running
        log.debug("serve.delete(%s): %s", APP_NAME, e)
    if shutdown:
        try:
            others = serve.status().applications
        except Exception:
            others = {}
        if not others:
            serve.shutdown()
