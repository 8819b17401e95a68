"""The Serve app through the official OpenAI client, and PTS: the algorithm on a controlled p, and
the whole stage against the live endpoint.

The served checkpoint is a real `micro` Phi3ForCausalLM whose weights are set by hand to be a
bigram model (attention and MLP outputs zeroed, so each next-token distribution depends only on
the current token). It answers `...<|im_sep|>` with `1` or `2` (1/2 each), then `1` -> `7` (0.9)
or `9` (0.1), `2` -> `7`, and `7`/`9` -> `<|im_end|>`. For the answer 17, p(success | query) is
0.45, and the pivotal choices are known exactly: `1` over `2` at the start, `7` over `9` after `1`.
"""

import math
import socket

import pyarrow.parquet as pq
import pytest

from phi4ray.config import EngineConfig, PTSConfig, ServeConfig
from phi4ray.pts.search import PAIRS_SCHEMA, pivotal_segments, run_pts, subdivide
from phi4ray.pts.testing import bigram_checkpoint
from phi4ray.run import RunDir
from phi4ray.tokenizer import IM_END_ID, IM_SEP_ID, decode, encode

ONE, TWO, SEVEN, NINE = (encode(s)[0] for s in "1279")
BIGRAM = {
    IM_SEP_ID: {ONE: 0.5, TWO: 0.5},
    ONE: {SEVEN: 0.9, NINE: 0.1},
    TWO: {SEVEN: 1.0},
    SEVEN: {IM_END_ID: 1.0},
    NINE: {IM_END_ID: 1.0},
}
QUERY = "<|im_start|>user<|im_sep|>9+8=<|im_end|><|im_start|>assistant<|im_sep|>"
MODEL = "phi4ray-test"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def endpoint(ray_local, tmp_path_factory):
    from ray import serve

    from phi4ray.serve import app

    path = bigram_checkpoint(tmp_path_factory.mktemp("bigram") / "hf", BIGRAM)
    cfg = ServeConfig(port=free_port(), model_name=MODEL, max_model_len=64,
                      engine=EngineConfig(preset="micro", device="cpu", num_cpus_per_actor=1))
    url = app.start(cfg, path)
    try:
        yield url
    finally:
        app.stop()
        serve.shutdown()


# -- the OpenAI API ---------------------------------------------------------------------------
def test_deployment_options_follow_serve_config():
    from phi4ray.serve.app import OpenAIServer, deployment_options

    cfg = ServeConfig(min_replicas=1, max_replicas=3, target_ongoing_requests=2, max_ongoing_requests=5,
                      max_queued_requests=7, engine=EngineConfig(num_cpus_per_actor=2, num_gpus_per_actor=1))
    d = OpenAIServer.options(**deployment_options(cfg))  # Serve itself validates the options
    auto = d._deployment_config.autoscaling_config
    assert (auto.min_replicas, auto.max_replicas, auto.target_ongoing_requests) == (1, 3, 2)
    assert d._deployment_config.max_ongoing_requests == 5 and d._deployment_config.max_queued_requests == 7
    assert d.ray_actor_options["num_cpus"] == 2 and d.ray_actor_options["num_gpus"] == 1
    fixed = OpenAIServer.options(**deployment_options(ServeConfig(min_replicas=2, max_replicas=2)))
    assert fixed.num_replicas == 2 and fixed._deployment_config.autoscaling_config is None


def test_openai_client_completions(endpoint):
    import openai

    client = openai.OpenAI(base_url=endpoint, api_key="x")
    assert [m.id for m in client.models.list().data] == [MODEL]
    prompt_ids = encode(QUERY, allow_special=True)
    kw = dict(model=MODEL, prompt=QUERY, n=6, max_tokens=5, temperature=1.0, logprobs=2, seed=5,
              extra_body={"return_token_ids": True})
    r = client.completions.create(**kw)
    assert len(r.choices) == 6 and [c.index for c in r.choices] == list(range(6))
    for c in r.choices:
        ids = c.model_extra["token_ids"]
        assert c.model_extra["prompt_token_ids"] == prompt_ids  # text prompt: special tokens were allowed
        assert ids[0] in (ONE, TWO) and ids[-1] == IM_END_ID and len(ids) == 3
        assert c.finish_reason == "stop" and c.model_extra["stop_reason"] == IM_END_ID
        assert c.text == decode(ids[:-1]) and c.text in ("17", "19", "27")
        assert len(c.logprobs.tokens) == len(c.logprobs.token_logprobs) == len(ids)
        # raw logprobs of the designed distribution: log 0.5 for the first token
        assert c.logprobs.token_logprobs[0] == pytest.approx(math.log(0.5), abs=1e-3)
        assert len(c.logprobs.top_logprobs[0]) == 2
        assert all(v == pytest.approx(math.log(0.5), abs=1e-3) for v in c.logprobs.top_logprobs[0].values())
    assert r.usage.prompt_tokens == len(prompt_ids)
    assert r.usage.completion_tokens == sum(len(c.model_extra["token_ids"]) for c in r.choices)
    again = client.completions.create(**kw)  # same seed, same samples
    assert [c.model_extra["token_ids"] for c in again.choices] == [c.model_extra["token_ids"] for c in r.choices]
    assert len({c.text for c in r.choices}) > 1  # the n samples are not copies

    # token-id prompts, a batch of two, echo, and logprob keys as token ids
    r = client.completions.create(model=MODEL, prompt=[prompt_ids, prompt_ids + [ONE]], max_tokens=2, temperature=0,
                                  echo=True, logprobs=1, extra_body={"return_tokens_as_token_ids": True})
    assert len(r.choices) == 2 and r.choices[1].text == QUERY + "17"
    lp = r.choices[1].logprobs
    assert lp.tokens[: len(prompt_ids) + 1] == [f"token_id:{t}" for t in prompt_ids + [ONE]]
    assert lp.token_logprobs[0] is None
    assert lp.token_logprobs[len(prompt_ids)] == pytest.approx(math.log(0.5), abs=1e-3)  # p(1 | im_sep), prompt side
    assert lp.token_logprobs[len(prompt_ids) + 1] == pytest.approx(math.log(0.9), abs=1e-3)  # p(7 | 1), sampled


def test_openai_client_chat(endpoint):
    import openai

    client = openai.OpenAI(base_url=endpoint, api_key="x")
    r = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "9+8="}], n=3,
                                       max_tokens=4, seed=2, logprobs=True, top_logprobs=2,
                                       extra_body={"return_token_ids": True})
    assert r.model_extra["prompt_token_ids"] == encode(QUERY, allow_special=True)  # rendered as ChatML
    for c in r.choices:
        assert c.message.role == "assistant" and c.message.content in ("17", "19", "27")
        assert c.model_extra["token_ids"][-1] == IM_END_ID and c.finish_reason == "stop"
        assert c.logprobs.content[0].logprob == pytest.approx(math.log(0.5), abs=1e-3)
        assert {t.token for t in c.logprobs.content[0].top_logprobs} == {"1", "2"}


@pytest.mark.parametrize(
    "body, param",
    [
        ({"prompt": "hi", "frobnicate": 1}, "frobnicate"),  # unknown field
        ({"prompt": ""}, "prompt"),  # empty prompt
        ({"prompt": [[]]}, "prompt"),
        ({"prompt": "hi", "max_tokens": 64}, "max_tokens"),  # prompt + max_tokens > max_model_len (64)
        ({"prompt": "hi", "n": "2"}, "n"),  # wrong type
        ({"prompt": "hi", "temperature": -1}, "temperature"),
        ({"prompt": [1, 10**7]}, "prompt"),  # not a token id
        ({"prompt": "hi", "logprobs": 21}, "logprobs"),
    ],
)
def test_bad_requests_get_openai_errors(endpoint, body, param):
    import httpx

    r = httpx.post(f"{endpoint}/completions", json={"model": MODEL, **body}, timeout=30)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["param"] == param and err["type"] == "invalid_request_error" and err["message"]


def test_openai_client_raises_on_bad_request(endpoint):
    import openai

    client = openai.OpenAI(base_url=endpoint, api_key="x", max_retries=0)
    with pytest.raises(openai.BadRequestError, match="context length"):
        client.completions.create(model=MODEL, prompt="hi", max_tokens=1000)
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="other", prompt="hi")


def test_pts_client_retries_overload_then_fails_clearly():
    """CompletionsClient against a real HTTP server: 503 + Retry-After twice, then an answer."""
    import json
    import threading
    import time
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from phi4ray.pts.client import CompletionError, CompletionsClient

    seen = []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            seen.append((time.monotonic(), body))
            if body["prompt"] == [1] and len(seen) <= 2:
                status, reply, headers = 503, {"error": {"message": "busy"}}, {"Retry-After": "0.3"}
            elif body["prompt"] == [1]:
                status, headers = 200, {}
                reply = {"choices": [{"index": 0, "text": "x", "token_ids": [87], "finish_reason": "length",
                                      "logprobs": {"tokens": ["token_id:87"], "token_logprobs": [-0.5],
                                                   "top_logprobs": [{"token_id:87": -0.5, "token_id:88": -1.5}]}}]}
            else:
                status, reply, headers = 400, {"error": {"message": "bad prompt", "type": "invalid_request_error",
                                                         "param": "prompt", "code": None}}, {}
            data = json.dumps(reply).encode()
            self.send_response(status)
            for k, v in {"Content-Type": "application/json", "Content-Length": str(len(data)), **headers}.items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(data)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        client = CompletionsClient(f"http://127.0.0.1:{server.server_port}/v1", "m", max_retries=3)
        [c] = client.complete([1], n=1, max_tokens=1, seed=3, logprobs=1)
        assert c["token_ids"] == [87] and c["logprobs"] == [-0.5] and c["top_logprobs"] == [{87: -0.5, 88: -1.5}]
        assert client.requests == 3 and len(seen) == 3
        assert seen[1][0] - seen[0][0] >= 0.25 and seen[2][0] - seen[1][0] >= 0.25  # Retry-After honoured
        body = seen[0][1]
        assert body["return_token_ids"] and body["return_tokens_as_token_ids"] and body["seed"] == 3
        with pytest.raises(CompletionError, match="400: bad prompt") as e:
            client.complete([2], n=1)
        assert e.value.status == 400 and client.requests == 4  # a 400 is not retried
        impatient = CompletionsClient(f"http://127.0.0.1:{server.server_port}/v1", "m", max_retries=0)
        seen.clear()
        with pytest.raises(CompletionError, match="503"):
            impatient.complete([1], n=1)
    finally:
        server.shutdown()


# -- PTS: the algorithm -----------------------------------------------------------------------
def test_subdivide_finds_exactly_the_pivots():
    solution = list(range(100, 116))  # 16 tokens

    def p_of_length(k):  # p jumps when token 5 is appended (+0.5) and when token 11 is (-0.25); drift elsewhere
        return 0.2 + 0.005 * k + (0.5 if k >= 6 else 0) - (0.25 if k >= 12 else 0)

    calls = []

    def p(prefix):
        calls.append(prefix)
        assert prefix == tuple(solution[: len(prefix)])
        return p_of_length(len(prefix))

    segments = subdivide((), solution, p, p_gap=0.2)
    assert [t for s in segments for t in s.tokens] == solution  # a partition, in order
    assert all(s.start == sum(len(x.tokens) for x in segments[:i]) for i, s in enumerate(segments))
    pivots = pivotal_segments(segments, 0.2)
    assert [(s.start, s.tokens) for s in pivots] == [(5, [105]), (11, [111])]
    assert pivots[0].p_before == pytest.approx(0.225) and pivots[0].p_after == pytest.approx(0.73)
    assert pivots[1].delta == pytest.approx(-0.245)
    assert all(abs(s.delta) < 0.2 for s in segments if s not in pivots)
    # with a cache, the recursion asks each prefix once; Algorithm 1 only splits what changes p
    assert len(set(calls)) < 2 * len(solution)
    # a gap bigger than every change: nothing is pivotal
    assert pivotal_segments(subdivide((), solution, p, p_gap=0.7), 0.7) == []


def test_subdivide_follows_algorithm_1_on_cancelling_changes():
    # +0.4 at token 2 and -0.4 at token 3: the whole solution does not change p, so Algorithm 1
    # keeps it as one segment (a known blind spot of the recursion, as in the paper).
    def p(prefix):
        return 0.5 + (0.4 if len(prefix) == 3 else 0.0)

    assert len(subdivide((), [1, 2, 3, 4, 5, 6, 7, 8], p, 0.2)) == 1
    # with a prefix: segments start after it, and the right half follows the left
    segs = subdivide((9, 9), [1, 2], lambda pre: 0.0 if len(pre) < 3 else 1.0, 0.2, start=2)
    assert [(s.start, s.tokens, s.p_before, s.p_after) for s in segs] == [(2, [1], 0.0, 1.0), (3, [2], 1.0, 1.0)]


# -- PTS: the stage against the live endpoint --------------------------------------------------
def test_run_pts_live(endpoint, tmp_path):
    query_ids = encode(QUERY, allow_special=True)
    questions = [
        {"id": "q17", "prompt": QUERY, "answer": "17"},  # p = 0.45: searched
        {"id": "q99", "prompt": QUERY, "answer": "99"},  # p = 0: out of band
        {"id": "bad", "prompt": QUERY},  # no answer: rejected, not dropped
    ]
    cfg = PTSConfig(samples=32, p_gap=0.3, candidates=2, max_tokens=6, solutions_per_question=4, concurrency=2, seed=1)
    run_dir = RunDir(tmp_path / "run")
    out = run_pts(cfg, run_dir, endpoint, MODEL, questions)

    assert out["questions"] == 3 and out["rejected"] == 1
    assert out["in_band"] == 1 and out["searched"] == 1
    assert out["requests"] > 0 and out["pairs"] >= 1 and out["pivots"] >= out["pairs"]
    assert sum(out["p_histogram"]["counts"]) == 2 and len(out["p_deciles"]) == 11

    qrows = {r["id"]: r for r in run_dir.read_jsonl("pts/questions.jsonl")}
    assert set(qrows) == {"q17", "q99"}
    assert 0.2 <= qrows["q17"]["p"] <= 0.8 and qrows["q17"]["searched"]
    assert qrows["q99"]["p"] == 0.0 and not qrows["q99"]["searched"] and qrows["q99"]["n_pivots"] == 0

    # the pairs: exact schema, and only the two decisions the bigram model really has
    table = run_dir.read_table("pts/pairs")
    assert table.schema.remove_metadata().equals(PAIRS_SCHEMA)
    assert pq.read_schema(run_dir.shard_paths("pts/pairs")[0]).names == PAIRS_SCHEMA.names
    pairs = table.to_pylist()
    assert len(pairs) == out["pairs"]
    expected = {
        (tuple(query_ids), ONE, TWO),  # 1 (then 17 w.p. 0.9) over 2 (27: never right)
        (tuple(query_ids + [ONE]), SEVEN, NINE),  # after 1: 7 over 9
    }
    got = {(tuple(r["prompt_ids"]), r["chosen_ids"][0], r["rejected_ids"][0]) for r in pairs}
    assert got <= expected and (tuple(query_ids), ONE, TWO) in got
    for r in pairs:
        assert r["question_id"] == "q17"
        assert len(r["chosen_ids"]) == len(r["rejected_ids"]) == 1
        assert r["prompt"] == decode(r["prompt_ids"])
        assert r["chosen"] == decode(r["chosen_ids"]) and r["rejected"] == decode(r["rejected_ids"])
        assert r["p_chosen"] - r["p_rejected"] >= cfg.p_gap
        assert abs(r["p_after"] - r["p_before"]) >= cfg.p_gap
        if r["chosen_ids"] == [ONE]:
            assert r["p_chosen"] >= 0.7 and r["p_rejected"] == 0.0

    pivots = run_dir.read_jsonl("pts/pivots.jsonl")
    assert len(pivots) == out["pivots"] == qrows["q17"]["n_pivots"]
    assert sum(p["emitted"] for p in pivots) == len(pairs)
    for pv in pivots:
        assert pv["query"] == QUERY and pv["pivot_context"] == decode(pv["prefix_ids"])
        assert pv["position"] == len(pv["prefix_ids"])
        assert {c["token_id"] for c in pv["candidates"]} >= {pv["accepted_token_id"], pv["rejected_token_id"]}

    assert run_dir.read_table("rejects/pts").column("id").to_pylist() == ["bad"]
    entry = run_dir.stage_entry("pts")
    assert entry["status"] == "complete" and entry["counts"]["pairs"] == out["pairs"]
    # a re-run with the same config is a no-op that reports the same counts
    assert run_pts(cfg, run_dir, endpoint, MODEL, questions) == out


# -- judge-guided pairs from the live endpoint ----------------------------------------------------
def test_judge_pairs_from_the_live_endpoint(endpoint, tmp_path):
    """Two responder specs on the served bigram model, through its chat completions API; a
    scripted judge that prefers the answer 17."""
    from phi4ray.config import JudgePairsConfig, SamplingConfig
    from phi4ray.pts.judge import run_judge_pairs

    def judge(prompt: str) -> str:
        a = prompt.split("Response A:\n", 1)[1].split("\n\nResponse B:\n", 1)[0]
        b = prompt.split("Response B:\n", 1)[1].split("\n\nExplain your reasoning", 1)[0]
        return "Verdict: " + ("tie" if (a == "17") == (b == "17") else "A" if a == "17" else "B")

    cfg = JudgePairsConfig(responders=[f"{endpoint}#{MODEL}", endpoint], judge="unused",
                           sampling=SamplingConfig(n=2, temperature=1.0, max_tokens=4))
    questions = [{"id": f"q{i}", "prompt": "9+8="} for i in range(4)]
    rd = RunDir(tmp_path / "run")
    out = run_judge_pairs(cfg, rd, questions, judge_fn=judge)
    assert out["responses"] == 4 * 2 * 2 and out["response_errors"] == 0
    assert out["candidates"] == out["kept"] + out["ties"] + out["inconsistent"] + out["rejected"]
    assert out["rejected"] == 0 and out["kept"] >= 1
    rows = rd.read_jsonl("dpo/judged_pairs.jsonl")
    assert len(rows) == out["kept"]
    for r in rows:
        assert r["prompt"] == [{"role": "user", "content": "9+8="}]
        assert r["chosen"][0]["content"] == "17" and r["rejected"][0]["content"] in ("19", "27")
        assert {r["chosen_model"], r["rejected_model"]} == {f"{endpoint}#{MODEL}", endpoint}
