"""PTS against models whose p(success | prefix) is known exactly, and judge-guided DPO pairs.

The scripted sampler (`phi4ray.pts.testing.ScriptedModel`) answers a request for n completions
of query + prefix with exactly round(p(prefix) * n) successes, so every estimate PTS makes is
the planted p and the pivots it must find are known. Subdivide is checked to find exactly the
planted pivots with fewer estimates and oracle calls than a token-by-token scan; the whole stage
runs through the CLI against an OpenAI-compatible HTTP server over the scripted model.

Judge pairs run with real (random) micro models as responders, plus a scripted judge for the
labelling logic and a real micro judge for the reject path.
"""

from __future__ import annotations

import json
import random

import pytest

from phi4ray.config import EngineConfig, JudgePairsConfig, PTSConfig, SamplingConfig
from phi4ray.pts.oracles import math_oracle
from phi4ray.pts.search import QuestionSearch, pivotal_segments, scan_pivots, subdivide
from phi4ray.pts.testing import ScriptedClient, ScriptedModel, planted_p, serve_scripted, word_tokens
from phi4ray.run import RunDir
from phi4ray.tokenizer import EOT_ID, IM_END_ID, decode, encode

K = 20  # samples per estimate: every planted p is a multiple of 1/K, so estimates are exact
GAP = 0.3


def query(text: str = "q") -> list[int]:
    return encode(f"<|im_start|>user<|im_sep|>{text}<|im_end|><|im_start|>assistant<|im_sep|>", allow_special=True)


def search(model: ScriptedModel, **cfg) -> QuestionSearch:
    cfg = PTSConfig(**{"samples": K, "p_gap": GAP, "candidates": 2, "max_tokens": 256, **cfg})
    return QuestionSearch(cfg=cfg, client=ScriptedClient(model), question_id="q", query_ids=model.query_ids,
                          answer="17", oracle=math_oracle, stop_ids=frozenset([IM_END_ID, EOT_ID]))


def mixed_model(q=None) -> ScriptedModel:
    """48 body tokens; p: 0.5, +0.4 at 6, -0.5 at 30, -0.35 at 45 (and drift of 0.05 at 15, 22,
    47); the solution fails. The alternatives at the pivots move p the other way."""
    body, alts = word_tokens(48), word_tokens(48, skip=48)
    p_fn, alternatives = planted_p(body, 0.5, {6: 0.4, 15: -0.05, 22: 0.05, 30: -0.5, 45: -0.35, 47: -0.05},
                                   alt_p={6: 0.2, 30: 0.9, 45: 0.4}, alt_tokens=alts)
    return ScriptedModel(q or query(), body, p_fn, alternatives, solution_succeeds=False)


def localisation_costs(model: ScriptedModel, method) -> tuple[list[int], int, int]:
    """(pivot positions, estimates, oracle calls) of one localisation method on the planted
    solution, from a fresh cache; p(query) (which samples the solution) included."""
    qs = search(model)
    qs.p(())
    sol = qs.root_samples[0]["token_ids"]
    found = method(sol, qs.p)
    return [s.start for s in found], qs.estimates, qs.oracle_calls


def by_subdivide(sol, p):
    return pivotal_segments(subdivide((), sol, p, GAP), GAP)


def by_scan(sol, p):
    return scan_pivots((), sol, p, GAP)


# -- the algorithm, exactly -------------------------------------------------------------------
def test_search_finds_exactly_the_planted_pivots_and_their_pairs():
    model = mixed_model()
    qs = search(model)
    out = qs.run()
    assert out["question"]["p"] == 0.5 and out["question"]["searched"]
    pv = {p["position"]: p for p in out["pivots"]}
    assert sorted(pv) == [6, 30, 45]
    body, alts = model.body, word_tokens(48, skip=48)
    for pos, before, after in [(6, 0.5, 0.9), (30, 0.9, 0.4), (45, 0.4, 0.05)]:
        r = pv[pos]
        assert r["pivot_token_id"] == body[pos] and r["pivot_token"] == decode([body[pos]])
        assert r["prob_before"] == pytest.approx(before) and r["prob_after"] == pytest.approx(after)
        assert r["prob_delta"] == pytest.approx(after - before) and r["is_positive"] == (after > before)
        assert r["pivot_context"] == decode(body[:pos]) and r["query"] == decode(model.query_ids)
        assert r["emitted"]
    # a positive pivot is the accepted token; at a negative one the alternative is accepted
    assert (pv[6]["accepted_token_id"], pv[6]["rejected_token_id"]) == (body[6], alts[6])
    assert (pv[30]["accepted_token_id"], pv[30]["rejected_token_id"]) == (alts[30], body[30])
    assert (pv[45]["accepted_token_id"], pv[45]["rejected_token_id"]) == (alts[45], body[45])
    assert (pv[30]["p_accepted"], pv[30]["p_rejected"]) == (pytest.approx(0.9), pytest.approx(0.4))
    pairs = {tuple(p["prompt_ids"]): p for p in out["pairs"]}
    assert len(pairs) == 3
    for pos in (6, 30, 45):
        pair = pairs[tuple(model.query_ids + body[:pos])]
        assert pair["chosen_ids"] == [pv[pos]["accepted_token_id"]]
        assert pair["rejected_ids"] == [pv[pos]["rejected_token_id"]]
        assert pair["prompt"] == decode(model.query_ids) + decode(body[:pos])
    # every estimate is one request of n=K; the costs are counted
    s = out["question"]
    assert s["estimates"] == qs.client.requests == len(qs.cache) - 1  # the terminal prefix is checked, not sampled
    assert s["oracle_calls"] == K * s["estimates"] + 1


@pytest.mark.parametrize("seed", range(6))
def test_subdivide_matches_the_scan_with_fewer_oracle_calls(seed):
    """Random monotone plantings (no changes that cancel inside a segment, Algorithm 1's blind
    spot): Subdivide finds exactly the planted pivots, as the scan does, for less."""
    rng = random.Random(seed)
    n = 64
    body = word_tokens(n)
    positions = sorted(rng.sample(range(n), rng.randint(1, 2)))
    jumps = {p: 0.35 for p in positions}
    for d in rng.sample([i for i in range(n) if i not in positions], 3):
        jumps[d] = 0.05  # drift below the gap
    p0 = 0.95 - sum(jumps.values())
    p_fn, alternatives = planted_p(body, round(p0, 2), jumps)
    model = ScriptedModel(query(), body, p_fn, alternatives, solution_succeeds=True)

    found, est, calls = localisation_costs(model, by_subdivide)
    scan_found, scan_est, scan_calls = localisation_costs(model, by_scan)
    assert found == positions == scan_found
    assert est < scan_est and calls < scan_calls
    assert scan_est == len(model.solution)  # every prefix but the terminal one (checked, not sampled)


def test_oracle_calls_subdivide_vs_scan_on_the_mixed_planting():
    model = mixed_model()
    found, est, calls = localisation_costs(model, by_subdivide)
    scan_found, scan_est, scan_calls = localisation_costs(model, by_scan)
    assert found == scan_found == [6, 30, 45]
    # 55 solution tokens (48 + 6 tail + <|im_end|>); these numbers are in docs/pts.md
    assert (est, calls) == (15, 301) and (scan_est, scan_calls) == (55, 1101)


def test_cancelling_changes_hide_pivots_from_subdivide_not_from_the_scan():
    body = word_tokens(48)
    p_fn, alternatives = planted_p(body, 0.5, {11: 0.4, 20: 0.05, 30: -0.6, 41: 0.5})
    model = ScriptedModel(query(), body, p_fn, alternatives, solution_succeeds=True)
    # [27, 55) goes from 0.95 to 1.0: below the gap, so Subdivide keeps it whole (as in the paper)
    assert localisation_costs(model, by_subdivide)[0] == [11]
    assert localisation_costs(model, by_scan)[0] == [11, 30, 41]


@pytest.mark.parametrize("p0, searched", [(0.15, False), (0.2, True), (0.8, True), (0.85, False)])
def test_only_questions_in_the_band_are_searched(p0, searched):
    body = word_tokens(8)
    p_fn, alternatives = planted_p(body, p0, {3: 0.0})
    model = ScriptedModel(query(), body, p_fn, alternatives, solution_succeeds=p0 > 0.5)
    qs = search(model, p_gap=0.9)  # nothing is pivotal: only the band decides the cost
    out = qs.run()
    assert out["question"]["p"] == pytest.approx(p0) and out["question"]["searched"] == searched
    assert out["question"]["estimates"] == 1  # p(query); a searched one also checks its solution
    assert out["question"]["oracle_calls"] == K + searched


def test_code_questions_take_their_tests_and_run_them_in_the_sandbox():
    import os

    from phi4ray.pts.search import search_question

    if not os.path.exists(os.path.join(os.path.dirname(__file__), "..", "phi4ray", "synth", "sandbox.py")):
        pytest.skip("no sandbox")
    body = word_tokens(8)
    p_fn, alternatives = planted_p(body, 0.5, {3: 0.45})
    code = "\n```python\ndef add(a, b):\n    return a {} b\n```"
    model = ScriptedModel(query("add"), body, p_fn, alternatives, right=code.format("+"), wrong=code.format("-"))
    cfg = PTSConfig(samples=K, p_gap=GAP, candidates=2, max_tokens=256, oracle="code")
    question = {"id": "c1", "prompt": decode(model.query_ids), "tests": "assert add(2, 3) == 5"}
    out = search_question(cfg, "unused", "unused", question, client=ScriptedClient(model))
    assert "error" not in out["question"], out["question"]
    assert out["question"]["p"] == 0.5 and [p["position"] for p in out["pivots"]] == [3]
    assert out["pivots"][0]["prob_after"] == pytest.approx(0.95) and out["pivots"][0]["is_positive"]


def test_pairs_jsonl_rows_tokenize_to_the_same_ids():
    from phi4ray.pts.search import _trl_pair
    from phi4ray.tokens.dpo import tokenize_pair

    out = search(mixed_model()).run()
    for pair in out["pairs"]:
        row = json.loads(json.dumps(_trl_pair(pair)))
        assert {"id", "prompt", "chosen", "rejected", "prompt_ids", "chosen_ids", "rejected_ids"} <= set(row)
        tok = tokenize_pair(row)
        assert tok["prompt_ids"] == row["prompt_ids"]
        assert tok["chosen_ids"] == row["chosen_ids"] and tok["rejected_ids"] == row["rejected_ids"]


# -- the stage, through the CLI, against an HTTP endpoint ----------------------------------------
def test_cli_pts_against_an_openai_endpoint_with_bad_lines(ray_local, tmp_path):
    from phi4ray.cli import main

    models, lines = {}, []
    for i in range(4):
        q = query(f"question {i}")
        models[tuple(q)] = mixed_model(q)
        lines.append(json.dumps({"id": f"q{i}", "prompt": decode(q), "answer": "17"}))
    lines += [
        "{not json",
        json.dumps({"id": "noanswer", "prompt": "x"}),
        json.dumps(["a", "list"]),
        json.dumps({"id": "empty", "prompt": "", "answer": "1"}),
        "",
    ]
    qfile = tmp_path / "q.jsonl"
    qfile.write_text("\n".join(lines) + "\n")
    url, server = serve_scripted(models, delay_s=0.02)
    run = tmp_path / "run"
    try:
        rc = main(["pts", "--endpoint", url, "--model", "scripted", "--questions", str(qfile), "--oracle", "math",
                   "--run-dir", str(run), f"pts.samples={K}", f"pts.p_gap={GAP}", "pts.candidates=2",
                   "pts.max_tokens=256", "pts.concurrency=2", "pts.solutions_per_question=1"])
    finally:
        server.shutdown()
    assert rc == 0
    assert 1 <= server.max_inflight <= 2  # bounded: at most `concurrency` questions, one request each
    rd = RunDir(run)
    entry = rd.stage_entry("pts")
    assert entry["status"] == "complete"
    c = entry["counts"]
    assert c["questions"] == 8 and c["rejected"] == 4 and c["searched"] == 4 and c["pivots"] == 12 and c["pairs"] == 12
    assert c["estimates"] == 4 * 18 and c["oracle_calls"] == 4 * (18 * K + 1)
    reasons = sorted(r["reason"] for r in rd.read_table("rejects/pts").to_pylist())
    assert [r.split(":")[0] for r in reasons] == ["invalid_question"] * 4
    assert any("not JSON" in r for r in reasons) and any("missing 'answer'" in r for r in reasons)
    assert any("not a JSON object" in r for r in reasons) and any("non-empty string" in r for r in reasons)

    pivots = rd.read_jsonl("pts/pivots.jsonl")
    assert len(pivots) == 12
    need = {"question_id", "query", "pivot_context", "pivot_token", "pivot_token_id", "position",
            "prob_before", "prob_after", "prob_delta", "is_positive"}
    assert all(need <= set(p) for p in pivots)
    assert sorted({p["question_id"] for p in pivots}) == ["q0", "q1", "q2", "q3"]
    assert sorted(p["position"] for p in pivots if p["question_id"] == "q2") == [6, 30, 45]
    pairs = rd.read_jsonl("pts/pairs.jsonl")
    assert len(pairs) == 12 and len({p["id"] for p in pairs}) == 12
    assert rd.read_table("pts/pairs").num_rows == 12
    for p in pairs:
        assert len(p["chosen_ids"]) == len(p["rejected_ids"]) == 1 and p["p_chosen"] - p["p_rejected"] >= GAP


# -- judge-guided pairs -----------------------------------------------------------------------
def test_parse_verdict_and_label_pair():
    from phi4ray.pts.judge import label_pair, parse_verdict

    assert parse_verdict("A is longer but wrong.\nVerdict: B") == "B"
    assert parse_verdict("**Verdict:** **A**") == "A"
    assert parse_verdict("Verdict: tie") == parse_verdict("Verdict: a tie") == parse_verdict("[[C]]") == "tie"
    assert parse_verdict("[[A]]") == "A"
    assert parse_verdict("Verdict: A\nOn reflection... Verdict: B") == "B"  # the last one counts
    assert parse_verdict("Response A is better") is None and parse_verdict("") is None
    assert parse_verdict("verdict: a bit unclear") is None  # a lower-case article is no verdict

    assert label_pair(["A", "B"], [False, True]) == "x"  # x shown as A, then as B: chosen both times
    assert label_pair(["B", "A"], [False, True]) == "y"
    assert label_pair(["A", "A"], [False, True]) == "inconsistent"  # position bias
    assert label_pair(["A", "tie"], [False, True]) == "tie"
    assert label_pair(["A", None], [False, True]) == "unparseable"
    assert label_pair(["B"], [True]) == "x"


def test_fill_template_leaves_other_braces_alone():
    from phi4ray.pts.judge import fill_template, load_template

    t = load_template("judge_pair")
    out = fill_template(t, question="def f(): return {1: 2}", response_a="{response_b}", response_b="b {x}")
    assert "def f(): return {1: 2}" in out and "Response A:\n{response_b}" in out and "b {x}" in out
    with pytest.raises(ValueError, match="not found"):
        load_template("no_such_template")


def prefer_17(prompt: str) -> str:
    """A scripted judge: prefers the response mentioning 17, else says nothing parseable or tie."""
    a = prompt.split("Response A:\n", 1)[1].split("\n\nResponse B:\n", 1)[0]
    b = prompt.split("Response B:\n", 1)[1].split("\n\nExplain your reasoning", 1)[0]
    if ("17" in a) != ("17" in b):
        return "A is right." + "\nVerdict: " + ("A" if "17" in a else "B")
    if "tie" in a or "tie" in b:
        return "Both fine.\nVerdict: tie"
    return "I cannot decide."


ANSWERS = {"good": "the answer is 17", "bad": "the answer is 19", "meh": "maybe"}


def chat_stub():
    """An OpenAI chat completions stub: models good/bad/meh answer as in ANSWERS (question
    "same": all the same; "tie?": distinct non-answers; "fails": `bad` errors); model `judge`
    answers judge prompts as `prefer_17` does."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            q, model = body["messages"][-1]["content"], body["model"]
            if model == "judge":
                text = prefer_17(q)
            else:
                text = {"same": "identical", "tie?": f"tie {model}"}.get(q, ANSWERS[model])
            if q == "fails" and model == "bad":
                data, status = json.dumps({"error": {"message": "boom"}}).encode(), 400
            else:
                data, status = json.dumps({"choices": [{"index": i, "message": {"role": "assistant", "content": text}}
                                                       for i in range(body["n"])]}).encode(), 200
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{server.server_port}/v1", server


JUDGE_QUESTIONS = [
    {"id": "a", "prompt": "9+8?"}, {"id": "b", "messages": [{"role": "user", "content": "9+8 again?"}]},
    {"id": "same", "prompt": "same"}, {"id": "f", "prompt": "fails"}, {"id": "t", "prompt": "tie?"},
    {"id": "chatml", "prompt": "<|im_start|>user<|im_sep|>x<|im_end|>"}, {"prompt": "no id"},
]


def check_judged(out: dict, rd: RunDir, judge: str, bad_lines: int = 0) -> None:
    # "a", "b": good/bad -> kept (good), good/meh -> kept (good), bad/meh -> no verdict (reject);
    # "same": three identical answers, nothing to judge; "f": bad failed, good/meh kept;
    # "t": three distinct answers, all ties
    assert out["questions"] == 7 + bad_lines and out["questions_rejected"] == 2 + bad_lines
    assert out["identical"] == 3 and out["response_errors"] == 1
    assert out["candidates"] == 10 and out["kept"] == 5 and out["rejected"] == 2 and out["ties"] == 3
    assert out["candidates"] == out["kept"] + out["ties"] + out["inconsistent"] + out["rejected"]
    rows = rd.read_jsonl("dpo/judged_pairs.jsonl")
    assert len(rows) == out["pairs"] == 5
    for r in rows:
        assert r["chosen"] == [{"role": "assistant", "content": "the answer is 17"}]
        assert r["chosen_model"].endswith("#good") and r["rejected_model"] != r["chosen_model"]
        assert r["prompt"][-1]["role"] == "user" and r["judge"] == judge and len(r["verdicts"]) == 2
        assert sorted(r["orders"]) == ["chosen=A", "chosen=B"]
    reasons = sorted(x["reason"].split(":")[0] for x in rd.read_table("rejects/judge_pairs").to_pylist())
    assert reasons == ["invalid_question"] * (2 + bad_lines) + ["response_error"] + ["unparseable_verdict"] * 2


def test_judge_pairs_labelling_with_a_scripted_judge(ray_local, tmp_path):
    """Responders are endpoints (a stub of the chat API) so the answers are known."""
    from phi4ray.pts.judge import run_judge_pairs
    from phi4ray.tokens.dpo import tokenize_pair

    base, server = chat_stub()
    cfg = JudgePairsConfig(responders=[f"{base}#good", f"{base}#bad", f"{base}#meh"], judge="unused",
                           sampling=SamplingConfig(n=1, temperature=1.0, max_tokens=8), shard_questions=2)
    rd = RunDir(tmp_path / "run")
    try:
        out = run_judge_pairs(cfg, rd, JUDGE_QUESTIONS, judge_fn=prefer_17)
        check_judged(out, rd, "judge_fn")
        # the pairs are what tokenize.dpo_pairs reads
        tok = tokenize_pair(rd.read_jsonl("dpo/judged_pairs.jsonl")[0])
        assert tok["chosen_ids"][-1] == IM_END_ID and decode(tok["chosen_ids"][:-1]) == "the answer is 17"
        # a rerun is a no-op
        assert run_judge_pairs(cfg, rd, JUDGE_QUESTIONS, judge_fn=prefer_17) == out
    finally:
        server.shutdown()


def test_cli_judge_pairs_with_an_endpoint_judge(ray_local, tmp_path):
    from phi4ray.cli import main

    base, server = chat_stub()
    qfile = tmp_path / "q.jsonl"
    qfile.write_text("".join(json.dumps(q) + "\n" for q in JUDGE_QUESTIONS) + "{bad json\n")
    run = tmp_path / "run"
    try:
        rc = main(["pts", "--judge", "--questions", str(qfile), "--run-dir", str(run),
                   f"pts.judge.responders=[{base}#good, {base}#bad, {base}#meh]", f"pts.judge.judge={base}#judge",
                   "pts.judge.sampling.n=1", "pts.judge.sampling.max_tokens=8"])
    finally:
        server.shutdown()
    assert rc == 0
    rd = RunDir(run)
    entry = rd.stage_entry("judge_pairs")
    assert entry["status"] == "complete"
    check_judged(entry["counts"], rd, f"{base}#judge", bad_lines=1)


def test_judge_pairs_with_real_micro_models(ray_local, tmp_path):
    """Plumbing with real models: a random micro preset and the run's `sft` checkpoint (another
    random micro model) answer, a third judges. Its verdicts are noise, so pairs become rejects;
    the counts must add up and the layout must hold."""
    from phi4ray.model import build_model, save_checkpoint
    from phi4ray.pts.judge import run_judge_pairs

    rd = RunDir(tmp_path / "run")
    save_checkpoint(build_model("micro", seed=2), rd.path("checkpoints/sft/hf"))
    engine = EngineConfig(preset="micro", device="cpu", num_cpus_per_actor=0.5, max_model_len=512)
    cfg = JudgePairsConfig(responders=["preset:micro@1", "sft"], judge="preset:micro@3",
                           sampling=SamplingConfig(n=2, temperature=1.0, max_tokens=6),
                           judge_sampling=SamplingConfig(temperature=0.0, max_tokens=4), engine=engine,
                           max_pairs_per_question=3)
    questions = [{"id": f"q{i}", "prompt": f"What is {i}+{i}?"} for i in range(3)] + [{"id": "bad"}]
    out = run_judge_pairs(cfg, rd, questions)
    assert out["questions"] == 4 and out["questions_rejected"] == 1
    assert out["responses"] == 3 * 2 * 2 and out["response_errors"] == 0
    assert out["candidates"] == out["kept"] + out["ties"] + out["inconsistent"] + out["rejected"]
    assert 0 < out["candidates"] <= 3 * 3
    assert out["judge"] == "preset:micro@3" and out["responders"] == ["preset:micro@1", "sft"]
    rejects = rd.read_table("rejects/judge_pairs").to_pylist()
    assert len(rejects) == out["rejected"] + out["questions_rejected"]
    rows = rd.read_jsonl("dpo/judged_pairs.jsonl")
    assert len(rows) == out["kept"]
    resp = rd.read_jsonl("dpo/judged/responses-00000.jsonl")
    assert [r["question_id"] for r in resp] == ["q0", "q1", "q2"]
    assert all(len(r["replies"]) == 2 and all(len(x) == 2 for x in r["replies"]) for r in resp)
    assert rd.read_json("dpo/judged/meta-00000.json")["candidates"] == out["candidates"]
