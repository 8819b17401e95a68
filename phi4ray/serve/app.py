"""An OpenAI-compatible endpoint on Ray Serve over a phi4ray `Sampler`.

    url = start(cfg.serve, "runs/x/checkpoints/sft/hf")     # http://127.0.0.1:8000/v1
    openai.OpenAI(base_url=url, api_key="x").completions.create(model=cfg.serve.model_name, ...)
    stop()

Routes: `GET /v1/models`, `POST /v1/completions`, `POST /v1/chat/completions`.

The request and response fields are OpenAI's, plus vLLM's extensions, spelled as vLLM spells
them so that clients (PTS above all) work against either server:

* `prompt` may be text, token ids, or a batch of either; text is tokenised with special tokens
  allowed (ChatML prompts), ids are used as given.
* `return_token_ids: true` adds `token_ids` (the completion's ids) and `prompt_token_ids` to
  every choice, as vLLM >= 0.10.2 does (whether or not `echo` is set).
* `return_tokens_as_token_ids: true` writes tokens in `logprobs` as `token_id:<id>`, so that
  alternatives in `top_logprobs` are identified exactly.
* `stop_token_ids` (default `<|endoftext|>`, `<|im_end|>`), `seed`, `echo`.
* each choice has vLLM's `stop_reason` (the stop token id or stop string).
* logprobs are raw model log-probabilities (vLLM's default); with `echo`, prompt tokens get
  their logprobs too, the first being null.

Unknown fields, wrong types, empty prompts, ids outside the vocabulary, and prompt + max_tokens
beyond `max_model_len` are 400s with OpenAI's error body
`{"error": {"message", "type", "param", "code"}}`. Streaming is not implemented (400).

Serving settings come from `ServeConfig`: replicas (fixed, or autoscaled between min and max
on `target_ongoing_requests`), `max_ongoing_requests` per replica, `max_queued_requests`
(beyond it the proxy answers 503, which `phi4ray.pts.client` retries), and the replica's CPUs
and GPUs from `cfg.engine`. A replica runs one generate call at a time (the engine batches a
request's prompts and samples itself), in a worker thread so health checks stay responsive.
"""

import asyncio
import logging
import math
import time
import uuid
from typing import Annotated, Any, Literal, Union

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, ValidationError
from ray import serve
from starlette.exceptions import HTTPException as StarletteHTTPException

from phi4ray.config import ServeConfig

log = logging.getLogger(__name__)

__all__ = ["build_app", "start", "stop", "deployment_options", "CompletionRequest", "ChatCompletionRequest", "APP_NAME"]

APP_NAME = "phi4ray"
MAX_LOGPROBS = 20  # vLLM's default max_logprobs

Num = Annotated[float, Field(strict=True)]
TokenIds = list[StrictInt]


# -- requests ---------------------------------------------------------------------------------
class _Req(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    model: StrictStr
    n: StrictInt = Field(1, ge=1, le=128)
    temperature: Num = Field(1.0, ge=0, le=2)
    top_p: Num = Field(1.0, gt=0, le=1)
    stop: StrictStr | list[StrictStr] | None = None
    seed: StrictInt | None = None
    stream: StrictBool = False
    user: StrictStr | None = None
    frequency_penalty: Num = 0.0
    presence_penalty: Num = 0.0
    # vLLM extensions
    stop_token_ids: TokenIds | None = None
    return_token_ids: StrictBool = False


class CompletionRequest(_Req):
    prompt: Union[StrictStr, TokenIds, list[StrictStr], list[TokenIds]]
    max_tokens: StrictInt = Field(16, ge=1)
    logprobs: StrictInt | None = Field(None, ge=0, le=MAX_LOGPROBS)
    echo: StrictBool = False
    best_of: StrictInt | None = None
    suffix: StrictStr | None = None
    logit_bias: dict[str, Num] | None = None
    return_tokens_as_token_ids: StrictBool = False


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Literal["system", "user", "assistant", "tool"]
    content: StrictStr
    name: StrictStr | None = None


class ChatCompletionRequest(_Req):
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: StrictInt | None = Field(None, ge=1)
    max_completion_tokens: StrictInt | None = Field(None, ge=1)
    logprobs: StrictBool = False
    top_logprobs: StrictInt | None = Field(None, ge=0, le=MAX_LOGPROBS)


class OpenAIError(Exception):
    def __init__(self, message: str, status: int = 400, param: str | None = None, code: str | None = None,
                 type: str = "invalid_request_error"):
        super().__init__(message)
        self.message, self.status, self.param, self.code, self.type = message, status, param, code, type

    def response(self) -> JSONResponse:
        return JSONResponse(
            status_code=self.status,
            content={"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}},
        )


def _validation_error(e: ValidationError) -> OpenAIError:
    err = e.errors()[0]
    loc = [str(x) for x in err["loc"] if not str(x).startswith(("function-", "union["))]
    # Union members show up in the location (`prompt.str`, `prompt.list[int]`): keep the field.
    param = loc[0] if loc else None
    if err["type"] == "extra_forbidden":
        return OpenAIError(f"Unrecognized request argument supplied: {param}", param=param, code="unknown_parameter")
    where = ".".join(loc) or "body"
    return OpenAIError(f"Invalid value for '{where}': {err['msg']} (got {err.get('input')!r:.200})", param=param,
                       code="invalid_value" if err["type"] != "missing" else "missing_required_parameter")


def _parse(model_cls: type[BaseModel], body: Any) -> Any:
    if not isinstance(body, dict):
        raise OpenAIError("The request body must be a JSON object.")
    try:
        return model_cls.model_validate(body)
    except ValidationError as e:
        raise _validation_error(e) from None


# -- response pieces (pure; tested without Serve) --------------------------------------------
def _finite(x: float | None) -> float | None:
    """JSON-safe logprob: None for nan (no prefix), and -inf clamped to -9999.0 as vLLM does."""
    if x is None or math.isnan(x):
        return None
    return max(float(x), -9999.0)


def _token_str(tid: int, as_ids: bool) -> str:
    if as_ids:
        return f"token_id:{tid}"
    from phi4ray.tokenizer import decode

    return decode([tid])


def completion_logprobs(
    token_ids: list[int], logprobs: list[float | None], tops: list[dict[int, float] | None] | None,
    as_ids: bool, start_offset: int = 0,
) -> dict:
    """OpenAI's completion `logprobs` object: tokens, token_logprobs, top_logprobs, text_offset.

    `text_offset[i]` is where token i's text starts in the choice's text (from `start_offset`)."""
    from phi4ray.tokenizer import decode

    tokens = [_token_str(t, as_ids) for t in token_ids]
    offsets, pos = [], start_offset
    for t in token_ids:
        offsets.append(pos)
        pos += len(decode([t]))
    top = None
    if tops is not None:
        top = [None if d is None else {_token_str(k, as_ids): _finite(v) for k, v in d.items()} for d in tops]
    return {"tokens": tokens, "token_logprobs": [_finite(x) for x in logprobs], "top_logprobs": top,
            "text_offset": offsets}


# -- the deployment ---------------------------------------------------------------------------
api = FastAPI(title="phi4ray", description="OpenAI-compatible completions over a phi4ray checkpoint")


@api.exception_handler(OpenAIError)
async def _openai_error(_: Request, e: OpenAIError) -> JSONResponse:
    return e.response()


@api.exception_handler(StarletteHTTPException)
async def _http_error(_: Request, e: StarletteHTTPException) -> JSONResponse:
    return OpenAIError(str(e.detail), status=e.status_code, type="invalid_request_error").response()


@serve.deployment(name="OpenAIServer")
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
        self.lock = asyncio.Lock()
        self.created = int(time.time())

    # -- helpers ----------------------------------------------------------------------------
    def _check_common(self, req: _Req) -> None:
        if req.model != self.cfg.model_name:
            raise OpenAIError(f"The model `{req.model}` does not exist. This server serves `{self.cfg.model_name}`.",
                              status=404, param="model", code="model_not_found")
        if req.stream:
            raise OpenAIError("Streaming is not supported by this server; set stream=false.", param="stream",
                              code="unsupported_value")
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

    def _params(self, req: _Req, max_tokens: int, logprobs: int | None):
        from phi4ray.inference.sampler import SamplingParams

        stop = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
        kw: dict[str, Any] = dict(n=req.n, temperature=req.temperature, top_p=req.top_p, max_tokens=max_tokens,
                                  stop=stop, seed=req.seed, logprobs=logprobs)
        if req.stop_token_ids is not None:
            kw["stop_token_ids"] = list(req.stop_token_ids)
        return SamplingParams(**kw)

    async def _run(self, fn, *args):
        async with self.lock:  # one engine call at a time per replica; the engine batches inside it
            return await asyncio.to_thread(fn, *args)

    # -- routes -----------------------------------------------------------------------------
    @api.get("/v1/models")
    async def models(self) -> dict:
        return {"object": "list", "data": [{
            "id": self.cfg.model_name, "object": "model", "created": self.created, "owned_by": "phi4ray",
            "root": self.model_path, "max_model_len": self.max_model_len,
        }]}

    @api.get("/health")
    async def health(self) -> dict:
        return {"status": "ok"}

    @api.post("/v1/completions")
    async def completions(self, request: Request) -> JSONResponse:
        from phi4ray.inference.hf_engine import TransformersSampler
        from phi4ray.tokenizer import decode

        try:
            body = await request.json()
        except ValueError:
            raise OpenAIError("The request body is not valid JSON.") from None
        req: CompletionRequest = _parse(CompletionRequest, body)
        self._check_common(req)
        if req.best_of not in (None, req.n):
            raise OpenAIError("'best_of' different from 'n' is not supported.", param="best_of",
                              code="unsupported_value")
        if req.suffix:
            raise OpenAIError("'suffix' is not supported.", param="suffix", code="unsupported_value")
        if req.logit_bias:
            raise OpenAIError("'logit_bias' is not supported.", param="logit_bias", code="unsupported_value")

        p = req.prompt
        raw: list[str | list[int]]
        if isinstance(p, str):
            raw = [p]
        elif p and isinstance(p[0], int):
            raw = [list(p)]
        else:
            raw = list(p)
        if not raw:
            raise OpenAIError("'prompt' must not be empty.", param="prompt", code="invalid_value")
        prompts: list[list[int]] = []
        texts: list[str] = []
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

        params = self._params(req, req.max_tokens, req.logprobs)
        outs = await self._run(self.sampler.generate, prompts, params)
        echo_lp = None
        if req.echo and req.logprobs is not None:
            if hasattr(self.sampler, "score_with_top"):
                echo_lp = await self._run(self.sampler.score_with_top, prompts, req.logprobs)
            else:
                echo_lp = (await self._run(self.sampler.score, prompts), None)

        choices = []
        completion_tokens = 0
        for i, (ids, text, comps) in enumerate(zip(prompts, texts, outs)):
            for j, c in enumerate(comps):
                completion_tokens += len(c.token_ids)
                out_text = (text + c.text) if req.echo else c.text
                lp_obj = None
                if req.logprobs is not None:
                    tok, lps, tops = list(c.token_ids), list(c.logprobs), c.top_logprobs
                    start = len(text) if req.echo else 0
                    if req.echo:
                        p_lps = echo_lp[0][i]
                        p_tops = echo_lp[1][i] if echo_lp[1] is not None else [{t: lp} for t, lp in zip(ids, p_lps)]
                        p_tops = [None] + [d for d in p_tops[1:]]
                        prompt_part = completion_logprobs(ids, p_lps, p_tops, req.return_tokens_as_token_ids)
                        out_part = completion_logprobs(tok, lps, tops, req.return_tokens_as_token_ids, start)
                        lp_obj = {k: (prompt_part[k] or []) + (out_part[k] or []) for k in prompt_part}
                    else:
                        lp_obj = completion_logprobs(tok, lps, tops, req.return_tokens_as_token_ids)
                choice: dict[str, Any] = {
                    "index": i * req.n + j, "text": out_text, "logprobs": lp_obj,
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
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens},
        })

    @api.post("/v1/chat/completions")
    async def chat_completions(self, request: Request) -> JSONResponse:
        from phi4ray.tokenizer import decode, get_encoding, render_chat

        enc = get_encoding()
        try:
            body = await request.json()
        except ValueError:
            raise OpenAIError("The request body is not valid JSON.") from None
        req: ChatCompletionRequest = _parse(ChatCompletionRequest, body)
        self._check_common(req)
        ids, _ = render_chat([{"role": m.role, "content": m.content} for m in req.messages], add_generation_prompt=True)
        max_tokens = req.max_completion_tokens or req.max_tokens
        if max_tokens is None:
            max_tokens = max(1, min(4096, self.max_model_len - len(ids)))
        self._check_len(len(ids), max_tokens, "max_tokens")
        k = (req.top_logprobs or 0) if req.logprobs else None
        outs = await self._run(self.sampler.generate, [ids], self._params(req, max_tokens, k))
        choices = []
        for j, c in enumerate(outs[0]):
            lp = None
            if req.logprobs:
                content = []
                def entry(t: int, v: float) -> dict:
                    return {"token": decode([t]), "logprob": _finite(v),
                            "bytes": list(enc.decode_single_token_bytes(t))}

                for t, v, top in zip(c.token_ids, c.logprobs, c.top_logprobs or [{}] * len(c.token_ids)):
                    alts = sorted(top.items(), key=lambda kv: -kv[1])[: req.top_logprobs or 0]
                    content.append({**entry(t, v), "top_logprobs": [entry(a, w) for a, w in alts]})
                lp = {"content": content}
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
            "model": self.cfg.model_name, "choices": choices,
            "usage": {"prompt_tokens": len(ids), "completion_tokens": completion_tokens,
                      "total_tokens": len(ids) + completion_tokens},
        }
        if req.return_token_ids:
            resp["prompt_token_ids"] = ids
        return JSONResponse(resp)


# -- building and running ---------------------------------------------------------------------
def deployment_options(cfg: ServeConfig) -> dict[str, Any]:
    """`Deployment.options(...)` for `cfg`: replicas or autoscaling, request limits, resources."""
    actor: dict[str, Any] = {"num_cpus": cfg.engine.num_cpus_per_actor}
    if cfg.engine.num_gpus_per_actor:
        actor["num_gpus"] = cfg.engine.num_gpus_per_actor
    opts: dict[str, Any] = {
        "ray_actor_options": actor,
        "max_ongoing_requests": cfg.max_ongoing_requests,
        "max_queued_requests": cfg.max_queued_requests,
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
    """The Serve application (bound deployment) serving `model_path` as `cfg.model_name`.

    `model_path` None serves a fresh `cfg.engine.preset` model (an offline stand-in)."""
    return OpenAIServer.options(**deployment_options(cfg)).bind(cfg.model_dump(mode="json"), model_path)


def _client_host(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "::", "") else host


def start(cfg: ServeConfig, model_path: str | None, *, timeout_s: float = 300.0) -> str:
    """Deploy the app on the connected Ray cluster and return its base URL (`http://host:port/v1`),
    once `GET /v1/models` answers. The HTTP proxy listens on `cfg.host:cfg.port`."""
    import httpx

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
