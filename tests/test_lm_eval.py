"""Evaluation through an OpenAI-compatible endpoint: our Serve app on a micro model, evaluated by
phi4ray's `EndpointSampler` (`phi4ray eval --endpoint`) and by EleutherAI's
lm-evaluation-harness (`local-completions`) on task YAMLs with local JSONL files
(tests/fixtures/eval/lm_eval/). Both must agree with the local transformers engine on the same
checkpoint: the log-likelihoods to float precision, the greedy texts exactly.

The lm-eval tests skip only when `lm_eval` is not importable (`pip install "lm-eval[api]"`).
"""

import json
import math
import socket
from pathlib import Path

import pytest

from phi4ray.config import EngineConfig, ServeConfig
from phi4ray.eval import formats
from phi4ray.eval import multiple_choice as mc
from phi4ray.eval.endpoint import EndpointSampler
from phi4ray.inference.sampler import SamplingParams
from phi4ray.tokenizer import encode

LM_EVAL_TASKS = Path(__file__).parent / "fixtures" / "eval" / "lm_eval"
MODEL = "phi4ray"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    from phi4ray.model import build_model, save_checkpoint

    path = tmp_path_factory.mktemp("micro") / "hf"
    save_checkpoint(build_model("micro", seed=5), path)  # with the Phi-4 tokenizer files lm-eval loads
    return str(path)


@pytest.fixture(scope="module")
def local(ckpt):
    from phi4ray.inference.hf_engine import TransformersSampler

    return TransformersSampler.from_pretrained(ckpt, device="cpu")


@pytest.fixture(scope="module")
def url(ray_local, ckpt):
    from ray import serve

    from phi4ray.serve import app

    cfg = ServeConfig(port=free_port(), model_name=MODEL, max_model_len=1024,
                      engine=EngineConfig(device="cpu", num_cpus_per_actor=0.5))
    base = app.start(cfg, ckpt)
    try:
        yield base
    finally:
        app.stop()
        serve.shutdown()


# -- phi4ray's own endpoint sampler --------------------------------------------------------------------
def test_endpoint_sampler_scores_and_generates_as_the_local_engine(url, local):
    ep = EndpointSampler(url, batch_size=2)
    assert (ep.model, ep.max_model_len) == (MODEL, 1024)  # the endpoint's first model, and its context
    prompts = [encode("Question: What is 2 + 3?\nAnswer: 5"), encode("Hello there"), encode("The pass key is 12345.")]
    got, want = ep.score(prompts), local.score(prompts)
    for g, w, p in zip(got, want, prompts):
        assert len(g) == len(p) and math.isnan(g[0])
        assert g[1:] == pytest.approx(w[1:], abs=1e-4)
    params = SamplingParams(temperature=0.0, max_tokens=12, stop=["\n\n"])
    texts = ["Question: What is 2 + 3?\nAnswer:", "def add(a, b):\n"]
    for batch in (texts, [encode(t) for t in texts]):  # text prompts and token-id prompts
        assert [c[0].text for c in ep.generate(batch, params)] == [c[0].text for c in local.generate(batch, params)]
    ep.close()


def test_phi4ray_eval_cli_against_the_endpoint(url, local, tmp_path, capsys):
    from phi4ray import cli
    from phi4ray.eval.run import NO_CURATE, run_task
    from phi4ray.run import RunDir

    overrides = ["eval.tasks.mmlu.limit=3", "eval.tasks.arc.limit=2", "eval.tasks.gsm8k.limit=2",
                 "eval.tasks.gsm8k.max_tokens=8", "eval.tasks.math.limit=1", "eval.tasks.math.max_tokens=8",
                 "eval.tasks.humaneval.limit=1", "eval.tasks.humaneval.max_tokens=8", "eval.tasks.mbpp.limit=1",
                 "eval.tasks.mbpp.max_tokens=8", "eval.tasks.needle.lengths=[160]", "eval.tasks.needle.depths=[0.5]",
                 "eval.tasks.needle.samples=1"]
    assert cli.main(["eval", "--recipe", "smoke", "--run-dir", str(tmp_path), "--endpoint", url, *overrides]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split() == ["task", "metric", "n", "endpoint-phi4ray"] and NO_CURATE in out
    report = RunDir(tmp_path).read_json("eval/endpoint-phi4ray.json")
    assert report["model"] == f"{url}#{MODEL}" and "arithmetic" not in report["tasks"]  # no questions/ in this run
    assert {t: v["n"] for t, v in report["tasks"].items()} == {
        "mmlu": 3, "arc": 2, "gsm8k": 2, "math": 1, "humaneval": 1, "mbpp": 1, "needle": 1}
    # the same tasks on the local engine: the same scores and the same greedy completions
    from phi4ray.config import load_recipe

    cfg = load_recipe("smoke", overrides).eval
    for name in ("mmlu", "arc", "gsm8k", "mbpp"):
        here = run_task(local, name, cfg.tasks[name], cfg)
        there = report["tasks"][name]
        assert there["metrics"] == here["metrics"], name
        for a, b in zip(there["examples"], here["examples"]):
            if "loglikelihoods" in a:
                assert a["loglikelihoods"] == pytest.approx(b["loglikelihoods"], abs=2e-3)
            else:
                assert a["completion"] == b["completion"]


# -- lm-evaluation-harness ---------------------------------------------------------------------------
@pytest.fixture
def lm_eval(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "datasets"))
    lm_eval = pytest.importorskip("lm_eval")
    monkeypatch.chdir(LM_EVAL_TASKS)  # the task YAMLs name their data files relative to it
    return lm_eval


def _evaluate(lm_eval, task: str, model_args: dict) -> dict:
    from lm_eval.tasks import TaskManager

    return lm_eval.simple_evaluate(
        model="local-completions", model_args=model_args, tasks=[task],
        task_manager=TaskManager(include_path=str(LM_EVAL_TASKS), include_defaults=False), log_samples=True,
    )


def _args(sample: dict) -> list[tuple]:
    """A sample's request arguments: tuples in lm-eval 0.4.x, or {gen_args_i: {arg_j: ...}}."""
    a = sample["arguments"]
    if isinstance(a, dict):
        return [tuple(v[k] for k in sorted(v)) for _, v in sorted(a.items())]
    return [tuple(x) for x in a]


def test_lm_eval_loglikelihood_task_matches_phi4ray(lm_eval, url, ckpt, local):
    res = _evaluate(lm_eval, "phi4ray_mc", {
        "base_url": f"{url}/completions", "model": MODEL, "tokenizer_backend": "huggingface", "tokenizer": ckpt,
        "tokenized_requests": False, "max_length": 1024,
    })
    rows = [json.loads(x) for x in (LM_EVAL_TASKS / "mc.jsonl").read_text().splitlines()]
    samples = sorted(res["samples"]["phi4ray_mc"], key=lambda s: s["doc_id"])
    assert len(samples) == len(rows) == 8
    # lm-eval's requests are phi4ray's MMLU prompts (no subject line, zero-shot), its log-likelihoods
    # (the endpoint's echoed prompt logprobs) are the local engine's
    items, _ = formats.load_items("mmlu", str(LM_EVAL_TASKS / "mc.jsonl"))
    for s, item in zip(samples, items):
        reqs = mc.requests_for("mmlu", item, [])
        assert _args(s) == reqs
        theirs = [r[0][0] if isinstance(r[0], (list, tuple)) else r[0] for r in s["resps"]]
        ours = mc.score_requests(local, [mc.encode_pair(c, k) for c, k in reqs])
        assert theirs == pytest.approx(ours, abs=1e-3)
    metrics, _ = mc.run_mc(local, "mmlu", items, [], 0)
    assert res["results"]["phi4ray_mc"]["acc,none"] == pytest.approx(metrics["acc"])
    assert res["results"]["phi4ray_mc"]["acc_norm,none"] == pytest.approx(metrics["acc_norm"])


def test_lm_eval_generate_until_task_gets_the_greedy_completions(lm_eval, url, local):
    res = _evaluate(lm_eval, "phi4ray_gen", {"base_url": f"{url}/completions", "model": MODEL,
                                             "tokenizer_backend": "None", "tokenized_requests": False})
    samples = sorted(res["samples"]["phi4ray_gen"], key=lambda s: s["doc_id"])
    assert len(samples) == 4 and "exact_match,flexible-extract" in res["results"]["phi4ray_gen"]
    contexts = [_args(s)[0][0] for s in samples]
    assert contexts[0].startswith("Question: ") and contexts[0].endswith("\nAnswer:")
    want = local.generate(contexts, SamplingParams(temperature=0.0, max_tokens=16, stop=["Question:"]))
    assert [s["resps"][0][0] for s in samples] == [c[0].text for c in want]
