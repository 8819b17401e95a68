"""The Serve app through the official `openai` client: completions, chat, n, seeds, logprobs, echo,
token-id prompts, streaming, errors, overload; plus the pure pieces (incremental detokenisation,
deployment options, the ray.serve.llm translation) without Serve.

One app for the module: a fresh `micro` model (random weights: its text is noise, but the same
weights on every replica and every run), one replica with room for 2 requests and a queue of 2,
so that the overload test can fill it.
"""

import asyncio
import socket
import time

import pytest

from phi4ray.config import EngineConfig, ServeConfig
from phi4ray.tokenizer import EOT_ID, IM_END_ID, decode, encode, get_encoding, render_chat

MODEL = "phi4ray-micro"
PROMPT = "The three primary colours are"
RETRY_AFTER = 2


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(ray_local):
    from ray import serve

    from phi4ray.serve import app

    cfg = ServeConfig(
        port=free_port(), model_name=MODEL, max_model_len=256, max_ongoing_requests=2, max_queued_requests=2,
        overload_status=429, retry_after_s=RETRY_AFTER,
        engine=EngineConfig(preset="micro", device="cpu", num_cpus_per_actor=0.5),
    )
    url = app.start(cfg, None)
    try:
        yield url
    finally:
        app.stop()
        serve.shutdown()


@pytest.fixture(scope="module")
def client(server):
    import openai

    return openai.OpenAI(base_url=server, api_key="x", max_retries=0)


# -- the pure pieces --------------------------------------------------------------------------
def test_text_stream_holds_back_split_characters_and_stop_strings():
    from phi4ray.serve.streaming import TextStream

    enc = get_encoding()
    # "é" is two bytes; single-byte tokens split it
    byte_ids = [enc.encode_single_token(bytes([b])) for b in "é".encode()]
    s = TextStream()
    assert s.push(byte_ids[0]) == ""  # half a character: held back
    assert s.push(byte_ids[1]) == "é"
    # a stop string: text that may begin it is held back, and it never shows
    s = TextStream(stop=["END"])
    got = "".join(s.push(t) for t in encode("ab EN"))
    assert got == "ab "  # " EN" could begin " END": "EN" waits
    assert s.push(encode("Dx")[0]) == ""  # "END" completed: stopped, nothing more shows
    assert s.finish("ab ") == ""
    s = TextStream(stop=["END"])
    assert "".join(s.push(t) for t in encode("ab ENa")) == "ab ENa"  # "ENa" is not "END": released
    # a stop token is counted but never shown; the engine's final text settles the rest
    s = TextStream(stop_token_ids=[IM_END_ID])
    assert s.push(encode("hi")[0]) == "hi" and s.push(IM_END_ID) == "" and s.finish("hi") == ""


def test_stream_generate_bridges_tokens_errors_and_cancellation():
    """The engine thread's per-token hook reaches the event loop in order; an engine error is raised
    to the consumer; a consumer that stops early aborts the engine at its next token, and the
    replica's lock is held until the engine call has really returned."""
    import threading

    from phi4ray.serve.streaming import stream_generate

    calls = {"tokens": 0, "returned": threading.Event()}

    def generate(prompts, params, on_token=None):
        try:
            for t in range(params):
                if on_token is not None:
                    on_token(0, 0, t, -1.0, None)
                calls["tokens"] += 1
                time.sleep(0.002)
            return [["done"]]
        finally:
            calls["returned"].set()

    async def collect(n, incremental=True, stop_after=None):
        lock = asyncio.Lock()
        events = []
        agen = stream_generate(generate, ["p"], n, lock, incremental)
        async for ev in agen:
            events.append(ev)
            if stop_after is not None and len(events) == stop_after:
                await agen.aclose()
                held = lock.locked()
                await asyncio.to_thread(calls["returned"].wait, 5)
                await asyncio.sleep(0.05)
                return events, held, lock.locked()
        await asyncio.to_thread(calls["returned"].wait, 5)
        await asyncio.sleep(0.05)
        return events, None, lock.locked()

    calls["returned"].clear()
    events, _, locked = asyncio.run(collect(5))
    assert [e[3] for e in events[:-1]] == [0, 1, 2, 3, 4] and events[-1] == ("done", [["done"]]) and not locked
    calls["returned"].clear()
    events, _, _ = asyncio.run(collect(5, incremental=False))  # an engine without the hook: one event
    assert events == [("done", [["done"]])]
    calls["tokens"] = 0
    calls["returned"].clear()
    events, held, locked_after = asyncio.run(collect(10_000, stop_after=3))
    assert held and not locked_after and calls["tokens"] < 100  # aborted, and only then unlocked

    def broken(prompts, params, on_token=None):
        raise ValueError("engine says no")

    async def drain():
        async for _ in stream_generate(broken, ["p"], 1, asyncio.Lock()):
            pass

    with pytest.raises(ValueError, match="engine says no"):
        asyncio.run(drain())


def test_deployment_options_from_the_recipe():
    from phi4ray.config import load_recipe
    from phi4ray.serve.app import OpenAIServer, deployment_options

    cfg = ServeConfig(min_replicas=0, max_replicas=4, target_ongoing_requests=3, max_ongoing_requests=6,
                      max_queued_requests=10, overload_status=429, retry_after_s=7,
                      engine=EngineConfig(num_cpus_per_actor=2, resources={"serve": 1}))
    d = OpenAIServer.options(**deployment_options(cfg))  # Serve validates the options itself
    dc = d._deployment_config
    auto = dc.autoscaling_config
    assert (auto.min_replicas, auto.initial_replicas, auto.max_replicas, auto.target_ongoing_requests) == (0, 1, 4, 3)
    assert (dc.max_ongoing_requests, dc.max_queued_requests) == (6, 10)
    assert (dc.backpressure_config.status_code, dc.backpressure_config.retry_after_s) == (429, 7)
    assert d.ray_actor_options["num_cpus"] == 2 and d.ray_actor_options["resources"] == {"serve": 1}
    assert "num_gpus" not in d.ray_actor_options
    # the shipped recipes: tiny serves one CPU replica, phi-4 one GPU per replica on `serve` nodes
    tiny = load_recipe("tiny").serve
    assert deployment_options(tiny)["num_replicas"] == 1
    with pytest.raises(ValueError, match="min_replicas"):
        deployment_options(ServeConfig(min_replicas=3, max_replicas=2))


def test_vllm_config_translates_to_ray_serve_llm():
    from phi4ray.config import load_recipe
    from phi4ray.serve.llm_app import llm_config_dict, llm_serving_args

    cfg = load_recipe("phi-4").serve.model_copy(update={"min_replicas": 1, "max_replicas": 4})
    assert cfg.engine.engine == "vllm"
    d = llm_config_dict(cfg, "/ckpt/dpo/hf")
    assert d["model_loading_config"] == {"model_id": cfg.model_name, "model_source": "/ckpt/dpo/hf"}
    assert d["engine_kwargs"]["tensor_parallel_size"] == 1 and d["engine_kwargs"]["dtype"] == "bfloat16"
    assert d["engine_kwargs"]["max_model_len"] == 16384
    assert d["engine_kwargs"]["gpu_memory_utilization"] == cfg.engine.gpu_memory_utilization
    dep = d["deployment_config"]
    assert dep["autoscaling_config"]["max_replicas"] == 4 and dep["autoscaling_config"]["min_replicas"] == 1
    assert dep["autoscaling_config"]["target_ongoing_requests"] == cfg.target_ongoing_requests
    assert dep["ray_actor_options"] == {"num_cpus": cfg.engine.num_cpus_per_actor, "resources": {"serve": 1}}
    assert dep["backpressure_config"]["status_code"] == cfg.overload_status
    half = llm_config_dict(cfg.model_copy(update={"engine": cfg.engine.model_copy(update={"num_gpus_per_actor": 0.5})}), "/m")
    assert half["placement_group_config"] == {"bundle_per_worker": {"GPU": 0.5}}
    assert "tensor_parallel_size" not in half["engine_kwargs"]
    assert llm_serving_args(cfg, "/m")["llm_configs"][0]["model_loading_config"]["model_id"] == cfg.model_name
    # Ray's own model accepts it (its module imports without vLLM; the public ray.serve.llm does not)
    llm_config = pytest.importorskip("ray.llm._internal.serve.core.configs.llm_config")
    parsed = llm_config.LLMConfig.model_validate(d)
    assert parsed.model_id == cfg.model_name and parsed.deployment_config["max_ongoing_requests"] == cfg.max_ongoing_requests


@pytest.mark.gpu
def test_vllm_app_live(ray_local, tmp_path):
    pytest.importorskip("vllm")
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    import openai

    from phi4ray.serve import app

    cfg = ServeConfig(port=free_port(), model_name="phi4ray-vllm", max_model_len=256,
                      engine=EngineConfig(engine="vllm", preset="micro", num_gpus_per_actor=1, gpu_memory_utilization=0.3))
    url = app.start(cfg, None)
    try:
        client = openai.OpenAI(base_url=url, api_key="x")
        ids = encode(PROMPT)
        r = client.completions.create(model=cfg.model_name, prompt=ids, max_tokens=4, temperature=0,
                                      extra_body={"return_token_ids": True})
        assert r.choices[0].model_extra["prompt_token_ids"] == ids and len(r.choices[0].model_extra["token_ids"]) >= 1
    finally:
        app.stop()


# -- the API through the openai client --------------------------------------------------------
def test_models(client, server):
    import httpx

    assert [m.id for m in client.models.list().data] == [MODEL]
    assert client.models.retrieve(MODEL).id == MODEL
    assert httpx.get(f"{server}/models/other", timeout=10).json()["error"]["code"] == "model_not_found"


def test_completions_n_seed_and_greedy(client):
    prompt_ids = encode(PROMPT)
    r = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=6, temperature=0, n=3,
                                  extra_body={"return_token_ids": True, "stop_token_ids": []})
    assert [c.index for c in r.choices] == [0, 1, 2]
    c0 = r.choices[0]
    assert c0.model_extra["prompt_token_ids"] == prompt_ids and len(c0.model_extra["token_ids"]) == 6
    assert c0.finish_reason == "length" and c0.text == decode(c0.model_extra["token_ids"])
    assert len({c.text for c in r.choices}) == 1  # greedy: n copies
    assert r.usage.prompt_tokens == len(prompt_ids) and r.usage.completion_tokens == 18

    kw = dict(model=MODEL, prompt=PROMPT, max_tokens=5, temperature=1.0, top_p=0.9, n=4, seed=11,
              extra_body={"return_token_ids": True})
    a, b = client.completions.create(**kw), client.completions.create(**kw)
    ids_a = [c.model_extra["token_ids"] for c in a.choices]
    assert ids_a == [c.model_extra["token_ids"] for c in b.choices]  # same seed, same samples
    assert len({tuple(x) for x in ids_a}) > 1  # the n samples differ
    other = client.completions.create(**{**kw, "seed": 12})
    assert [c.model_extra["token_ids"] for c in other.choices] != ids_a


def test_logprobs_echo_and_token_id_prompts(client):
    prompt_ids = encode(PROMPT)
    r = client.completions.create(model=MODEL, prompt=prompt_ids, max_tokens=4, temperature=0, logprobs=3,
                                  extra_body={"return_token_ids": True, "stop_token_ids": []})
    c = r.choices[0]
    gen = c.model_extra["token_ids"]
    assert c.model_extra["prompt_token_ids"] == prompt_ids
    assert c.logprobs.tokens == [decode([t]) for t in gen] and len(c.logprobs.token_logprobs) == 4
    assert all(len(d) in (3, 4) for d in c.logprobs.top_logprobs)  # top 3, plus the sampled one
    for d, lp in zip(c.logprobs.top_logprobs, c.logprobs.token_logprobs):
        assert max(d.values()) == pytest.approx(lp, abs=1e-5)  # greedy: the sampled token is the top one
    assert c.logprobs.text_offset == [len(decode(gen[:i])) for i in range(4)]

    # echo scores the prompt: fed back as a prompt, the completion's tokens get the same logprobs
    e = client.completions.create(model=MODEL, prompt=[prompt_ids + gen, prompt_ids], max_tokens=1, temperature=0,
                                  echo=True, logprobs=1, extra_body={"return_tokens_as_token_ids": True})
    assert len(e.choices) == 2 and e.choices[0].text.startswith(PROMPT + c.text)
    lp = e.choices[0].logprobs
    assert lp.tokens[: len(prompt_ids) + 4] == [f"token_id:{t}" for t in prompt_ids + gen]
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
    n = len(prompt_ids)
    assert lp.token_logprobs[n : n + 4] == pytest.approx(c.logprobs.token_logprobs, abs=1e-4)
    assert e.choices[1].text.startswith(PROMPT)


def test_chat(client):
    msgs = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Name a colour."}]
    r = client.chat.completions.create(model=MODEL, messages=msgs, max_tokens=5, n=2, seed=3, logprobs=True,
                                       top_logprobs=2, extra_body={"return_token_ids": True})
    assert r.model_extra["prompt_token_ids"] == render_chat(msgs, add_generation_prompt=True)[0]  # ChatML
    assert r.usage.prompt_tokens == len(r.model_extra["prompt_token_ids"])
    for c in r.choices:
        ids = c.model_extra["token_ids"]
        shown = ids[:-1] if c.finish_reason == "stop" and ids[-1] in (EOT_ID, IM_END_ID) else ids
        assert c.message.role == "assistant" and c.message.content == decode(shown)
        assert len(c.logprobs.content) == len(ids)
        assert all(len(x.top_logprobs) == 2 for x in c.logprobs.content)
        assert c.logprobs.content[0].bytes == list(get_encoding().decode_single_token_bytes(ids[0]))
    # content parts are joined as text
    parts = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": [{"type": "text", "text": "Name a colour."}]}],
        max_tokens=3, temperature=0, extra_body={"return_token_ids": True})
    plain = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Name a colour."}],
                                           max_tokens=3, temperature=0, extra_body={"return_token_ids": True})
    assert parts.model_extra["prompt_token_ids"] == plain.model_extra["prompt_token_ids"]
    assert parts.choices[0].message.content == plain.choices[0].message.content


def test_chat_streaming_is_incremental_and_adds_up(client):
    msgs = [{"role": "user", "content": "Tell me a long story."}]
    kw = dict(model=MODEL, messages=msgs, max_tokens=160, temperature=0, extra_body={"return_token_ids": True,
                                                                                      "stop_token_ids": []})
    whole = client.chat.completions.create(**kw)
    t0 = time.perf_counter()
    chunks, arrivals = [], []
    for ch in client.chat.completions.create(**kw, stream=True, stream_options={"include_usage": True}):
        chunks.append(ch)
        arrivals.append(time.perf_counter() - t0)
    assert all(ch.object == "chat.completion.chunk" for ch in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[0].model_extra["prompt_token_ids"] == whole.model_extra["prompt_token_ids"]
    body = [ch for ch in chunks if ch.choices]
    text = "".join(ch.choices[0].delta.content or "" for ch in body)
    assert text == whole.choices[0].message.content  # greedy: the stream adds up to the answer
    assert sum((ch.choices[0].model_extra.get("token_ids") or [] for ch in body), []) == whole.choices[0].model_extra["token_ids"]
    assert body[-1].choices[0].finish_reason == whole.choices[0].finish_reason == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    content = [i for i, ch in enumerate(chunks) if ch.choices and ch.choices[0].delta.content]
    assert len(content) > 20  # one chunk per token, not one at the end
    # incremental: the first words arrive while most of the answer is still being decoded
    first, last = arrivals[content[0]], arrivals[-1]
    assert first < 0.5 * last, (first, last)


def test_completion_streaming_with_stop_logprobs_and_echo(client, server):
    import httpx

    base = dict(model=MODEL, prompt=PROMPT, max_tokens=40, temperature=0, logprobs=2,
                extra_body={"return_token_ids": True, "stop_token_ids": []})
    full = client.completions.create(**base).choices[0]
    stop = full.text[len(full.text) // 2 :][:3]  # a stop string from the middle of the greedy answer
    assert stop.strip()
    kw = {**base, "stop": [stop]}
    whole = client.completions.create(**kw).choices[0]
    assert whole.finish_reason == "stop" and whole.model_extra["stop_reason"] == stop
    assert stop not in whole.text and full.text.startswith(whole.text)
    chunks = list(client.completions.create(**kw, stream=True))
    assert all(ch.object == "text_completion" for ch in chunks)
    assert "".join(ch.choices[0].text for ch in chunks) == whole.text
    toks = sum((ch.choices[0].model_extra.get("token_ids") or [] for ch in chunks), [])
    assert toks == whole.model_extra["token_ids"]
    lps = sum((ch.choices[0].logprobs.token_logprobs for ch in chunks if ch.choices[0].logprobs), [])
    assert lps == pytest.approx(whole.logprobs.token_logprobs, abs=1e-6)
    offs = sum((ch.choices[0].logprobs.text_offset for ch in chunks if ch.choices[0].logprobs), [])
    assert offs == whole.logprobs.text_offset
    assert chunks[-1].choices[0].finish_reason == "stop"
    # echo in a stream: the prompt comes first
    echo = list(client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=3, temperature=0, echo=True,
                                          stream=True))
    assert echo[0].choices[0].text == PROMPT and "".join(c.choices[0].text for c in echo).startswith(PROMPT)
    # the raw wire format: server-sent events ending with [DONE]
    with httpx.stream("POST", f"{server}/completions", timeout=60,
                      json={"model": MODEL, "prompt": PROMPT, "max_tokens": 3, "stream": True}) as resp:
        assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/event-stream")
        events = [line for line in resp.iter_lines() if line]
    assert all(e.startswith("data: ") for e in events) and events[-1] == "data: [DONE]"


def test_client_disconnect_stops_the_stream(client):
    """A client that leaves mid-stream frees the replica at once: the decode loop stops at its next
    token instead of finishing 240 tokens nobody reads."""
    kw = dict(model=MODEL, prompt=PROMPT, temperature=0, extra_body={"stop_token_ids": []})
    t0 = time.perf_counter()
    client.completions.create(**kw, max_tokens=240)
    full = time.perf_counter() - t0
    stream = client.completions.create(**kw, max_tokens=240, stream=True)
    for i, _ in enumerate(stream):
        if i == 3:
            break
    stream.close()
    t0 = time.perf_counter()
    r = client.completions.create(**kw, max_tokens=2)  # waits for the replica's engine lock
    after = time.perf_counter() - t0
    assert len(r.choices[0].text) > 0
    assert after < 0.5 * full, (after, full)


@pytest.mark.parametrize(
    "kind, kw, param, code",
    [
        ("completions", dict(prompt=PROMPT, extra_body={"frobnicate": 1}), "frobnicate", "unknown_parameter"),
        ("completions", dict(prompt=PROMPT, n="2"), "n", "invalid_value"),  # wrong type
        ("completions", dict(prompt=PROMPT, max_tokens=1000), "max_tokens", "context_length_exceeded"),
        ("completions", dict(prompt=""), "prompt", "invalid_value"),
        ("completions", dict(prompt=[]), "prompt", "invalid_value"),
        ("completions", dict(prompt=[5, 10**7]), "prompt", "invalid_value"),
        ("completions", dict(prompt=PROMPT, logprobs=21), "logprobs", "invalid_value"),
        ("completions", dict(prompt=PROMPT, stream=True, temperature=-1), "temperature", "invalid_value"),
        ("completions", dict(prompt=PROMPT, stream_options={"include_usage": True}), "stream_options", "invalid_value"),
        ("chat", dict(messages=[]), "messages", "invalid_value"),
        ("chat", dict(messages=[{"role": "wizard", "content": "hi"}]), "messages", "invalid_value"),
        ("chat", dict(messages=[{"role": "user", "content": "hi"}], max_tokens=300), "max_tokens",
         "context_length_exceeded"),
        ("chat", dict(messages=[{"role": "user", "content": "hi"}], top_logprobs=2), "top_logprobs", "invalid_value"),
    ],
)
def test_bad_requests_raise_bad_request_error(client, kind, kw, param, code):
    import openai

    create = client.completions.create if kind == "completions" else client.chat.completions.create
    with pytest.raises(openai.BadRequestError) as e:
        create(model=MODEL, **kw)
    assert e.value.status_code == 400
    err = e.value.body  # the openai client hands over the "error" object
    assert set(err) == {"message", "type", "param", "code"}
    assert err["param"] == param and err["code"] == code and err["type"] == "invalid_request_error" and err["message"]


def test_unknown_model_and_route(client, server):
    import httpx
    import openai

    with pytest.raises(openai.NotFoundError) as e:
        client.completions.create(model="gpt-4", prompt=PROMPT)
    assert e.value.body["code"] == "model_not_found"
    r = httpx.post(f"{server}/nowhere", json={}, timeout=10)
    assert r.status_code == 404 and r.json()["error"]["message"]


def test_overload_is_refused_with_retry_after_then_served(server):
    """1 replica x 2 ongoing + 2 queued: 12 requests at once get 429 + Retry-After at once, not a
    collapse; the openai client, retrying as told, then gets every answer."""
    import httpx
    import openai

    body = {"model": MODEL, "prompt": PROMPT, "max_tokens": 120, "temperature": 0, "stop_token_ids": []}

    async def burst():
        async with httpx.AsyncClient(timeout=120) as http:
            async def one():
                t0 = time.perf_counter()
                r = await http.post(f"{server}/completions", json=body)
                return r, time.perf_counter() - t0

            return await asyncio.gather(*(one() for _ in range(12)))

    replies = asyncio.run(burst())
    codes = [r.status_code for r, _ in replies]
    assert set(codes) <= {200, 429}, codes
    refused = [(r, dt) for r, dt in replies if r.status_code == 429]
    served = [(r, dt) for r, dt in replies if r.status_code == 200]
    assert refused and len(served) >= 2, codes
    assert all(r.headers["retry-after"] == str(RETRY_AFTER) for r, _ in refused)
    assert max(dt for _, dt in refused) < max(dt for _, dt in served)  # refused at once, not after a wait
    assert len({r.json()["choices"][0]["text"] for r, _ in served}) == 1  # the served ones are whole answers

    async def patient():
        c = openai.AsyncOpenAI(base_url=server, api_key="x", max_retries=8)
        try:
            return await asyncio.gather(*(c.completions.create(model=MODEL, prompt=PROMPT, max_tokens=20, temperature=0)
                                          for _ in range(8)))
        finally:
            await c.close()

    answers = asyncio.run(patient())
    assert len(answers) == 8 and len({a.choices[0].text for a in answers}) == 1
