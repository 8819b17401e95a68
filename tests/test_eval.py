"""`phi4ray eval`: benchmark layouts, scoring and extraction with known log-probabilities and
completions (scripted samplers), pass@1 in the real sandbox, exact needle planting, the
decontamination section, and every task type on a real micro model through the pipeline stage.

The benchmark files are the small generated sets shipped in phi4ray/eval/data (public layouts,
items whose answers the generator computed)."""

import gzip
import json
import math
import re
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from phi4ray.config import EngineConfig, EvalConfig, load_recipe
from phi4ray.eval import code_exec, fixtures, formats, needle
from phi4ray.eval import multiple_choice as mc
from phi4ray.eval.generation import (
    extract_prediction,
    gsm8k_prompt,
    math_prompt,
    run_fewshot,
    same_answer,
)
from phi4ray.eval.run import (
    NO_CURATE,
    NO_EVAL_SETS,
    check_tasks,
    decontamination,
    format_table,
    run_task,
)
from phi4ray.inference.sampler import Completion
from phi4ray.run import RunDir
from phi4ray.tokenizer import decode, encode


# -- scripted samplers ------------------------------------------------------------------------------
class TokenLogprobSampler:
    """`score` gives every token a fixed log-probability (by token id, default -100), so a
    continuation's summed log-probability is known in advance."""

    def __init__(self, lp_of_token: dict[int, float]):
        self.lp = lp_of_token
        self.calls: list[int] = []

    def score(self, prompts):
        self.calls.append(len(prompts))
        return [[math.nan] + [self.lp.get(t, -100.0) for t in p[1:]] for p in prompts]


class CannedSampler:
    """`generate` answers each prompt with `answer(prompt)`, and records the params it was given."""

    def __init__(self, answer, raw: bool = False):
        self.answer, self.raw = answer, raw  # raw: the prompt as given (token ids stay ids)
        self.params = []

    def generate(self, prompts, params):
        self.params.append(params)
        out = []
        for p in prompts:
            text = self.answer(p if isinstance(p, str) or self.raw else decode(p))
            for s in params.stop:  # what an engine does with stop strings
                if s in text:
                    text = text[: text.index(s)]
            out.append([Completion(text=text, token_ids=encode(text), logprobs=[], top_logprobs=None,
                                   finish_reason="stop")])
        return out


# -- data layouts -----------------------------------------------------------------------------------
def test_shipped_sets_are_the_generators_output(tmp_path):
    for p in fixtures.write_fixtures(tmp_path):
        assert p.read_bytes() == (formats.DATA_DIR / p.name).read_bytes(), p.name
    assert set(formats.shipped_sets()) == {f"{k}.jsonl" for k in fixtures.SETS}


def test_every_shipped_set_loads_in_its_public_layout():
    sizes = {}
    for kind in ("mmlu", "arc", "gsm8k", "math", "humaneval", "mbpp"):
        items, rejected = formats.load_items(kind, formats.resolve_path(f"{kind}.jsonl"))
        assert not rejected and len({i["id"] for i in items}) == len(items)
        sizes[kind] = len(items)
    assert all(8 <= n <= 16 for n in sizes.values()), sizes
    mmlu, _ = formats.load_items("mmlu", formats.resolve_path("mmlu.jsonl"))
    first = json.loads((formats.DATA_DIR / "mmlu.jsonl").read_text().splitlines()[0])
    assert mmlu[0]["choices"] == first["choices"] and mmlu[0]["answer"] == first["answer"]
    assert mmlu[0]["choices"][mmlu[0]["answer"]] == str(eval(re.sub(r"What is (.*)\?", r"\1", first["question"])))
    gsm, _ = formats.load_items("gsm8k", formats.resolve_path("gsm8k.jsonl"))
    assert all(g["target"] == g["solution"].rsplit("#### ", 1)[1] for g in gsm)
    mth, _ = formats.load_items("math", formats.resolve_path("math.jsonl"))
    assert all(f"\\boxed{{{m['target']}}}" in m["solution"] for m in mth)


def test_arc_layouts_labels_and_bad_records_are_reported_not_dropped(tmp_path):
    rows = [
        {"id": "hf", "question": "Q1?", "choices": {"text": ["a", "bb"], "label": ["A", "B"]}, "answerKey": "B"},
        {"id": "orig", "question": {"stem": "Q2?", "choices": [{"label": "1", "text": "x"}, {"label": "2", "text": "y"}]},
         "answerKey": "1"},
        {"id": "badkey", "question": "Q3?", "choices": {"text": ["a", "b"], "label": ["A", "B"]}, "answerKey": "E"},
    ]
    p = tmp_path / "arc.jsonl"
    p.write_text("\n".join(json.dumps(r) for r in rows) + "\nnot json\n")
    items, rejected = formats.load_items("arc", str(p))
    assert [(i["id"], i["question"], i["answer"]) for i in items] == [("hf", "Q1?", 1), ("orig", "Q2?", 0)]
    assert items[1]["labels"] == ["1", "2"]
    assert [r["line"] for r in rejected] == [3, 4]
    assert "answerKey 'E'" in rejected[0]["reason"] and "not JSON" in rejected[1]["reason"]

    bad = tmp_path / "g.jsonl"
    bad.write_text(json.dumps({"question": "q", "answer": "no marker"}) + "\n"
                   + json.dumps({"question": "q", "choices": ["a", "b"], "answer": 5}) + "\n")
    assert "####" in formats.load_items("gsm8k", str(bad))[1][0]["reason"]
    assert "out of range" in formats.load_items("mmlu", str(bad))[1][1]["reason"]
    # the same records as .jsonl.gz and as Parquet (what the hub serves)
    src = formats.resolve_path("mmlu.jsonl")
    want = formats.load_items("mmlu", src)[0]
    gz = tmp_path / "m.jsonl.gz"
    gz.write_bytes(gzip.compress(Path(src).read_bytes()))
    pqf = tmp_path / "m.parquet"
    pq.write_table(pa.Table.from_pylist([json.loads(x) for x in Path(src).read_text().splitlines()]), pqf)
    strip = lambda items: [{k: v for k, v in i.items() if k != "id"} for i in items]
    assert strip(formats.load_items("mmlu", str(gz))[0]) == strip(want)
    assert strip(formats.load_items("mmlu", str(pqf))[0]) == strip(want)


def test_task_kinds_paths_and_config():
    assert formats.kind_of("arc_challenge", None) == "arc" and formats.kind_of("x", "mbpp") == "mbpp"
    with pytest.raises(ValueError, match="set `kind`"):
        formats.kind_of("hellaswag", None)
    with pytest.raises(FileNotFoundError, match="mmlu.jsonl"):
        check_tasks(EvalConfig(tasks={"mmlu": {"path": "nope.jsonl"}}))
    with pytest.raises(ValueError, match="no `path`"):
        check_tasks(EvalConfig(tasks={"gsm8k": {}}))
    with pytest.raises(ValueError, match="depths"):
        EvalConfig.Task(depths=[1.5])
    assert EvalConfig().stages is None  # every training stage that has a checkpoint
    tiny = load_recipe("tiny").eval
    check_tasks(tiny)
    assert {formats.kind_of(n, t.kind) for n, t in tiny.tasks.items()} == set(formats.KINDS)


# -- log-likelihood multiple choice ---------------------------------------------------------------
def test_mmlu_prompt_is_the_standard_layout():
    items, _ = formats.load_items("mmlu", formats.resolve_path("mmlu.jsonl"))
    shot, item = items[0], items[4]  # same subject
    reqs = mc.requests_for("mmlu", item, [shot])
    ctx = reqs[0][0]
    assert ctx.startswith("The following are multiple choice questions (with answers) about elementary mathematics.\n\n")
    block = lambda it: it["question"] + "".join(f"\n{lab}. {c}" for lab, c in zip("ABCD", it["choices"])) + "\nAnswer:"
    assert ctx.endswith(block(shot) + f" {'ABCD'[shot['answer']]}\n\n" + block(item))
    assert [c for _, c in reqs] == [" A", " B", " C", " D"]
    arc_items, _ = formats.load_items("arc", formats.resolve_path("arc.jsonl"))
    ctx, cont = mc.requests_for("arc", arc_items[1], [arc_items[0]])[0]
    assert ctx == (f"Question: {arc_items[0]['question']}\nAnswer: {arc_items[0]['choices'][arc_items[0]['answer']]}\n\n"
                   f"Question: {arc_items[1]['question']}\nAnswer:")
    assert cont == " " + arc_items[1]["choices"][0]


def test_continuation_tokens_are_lm_evals_split():
    ctx, cont = mc.encode_pair("Question: 2+2?\nAnswer:", " four")
    assert ctx + cont == encode("Question: 2+2?\nAnswer: four") and decode(cont) == " four"
    ctx2, cont2 = mc.encode_pair("Question: 2+2?\nAnswer: ", "four")  # trailing space moves over
    assert (ctx2, cont2) == (ctx, cont)


def test_acc_and_acc_norm_from_known_logprobs():
    """Choice A (" yes") is one token at -2.0; choice B is 8 tokens at -0.5 each (-4.0 in all):
    acc takes A (-2.0 > -4.0); per character B wins (-4.0/len(B) > -2.0/3)."""
    long = "a much longer answer, over forty characters"
    a_ids, b_ids = encode(" yes"), encode(" " + long)
    assert len(a_ids) == 1
    lp = {a_ids[0]: -2.0, **{t: -4.0 / len(b_ids) for t in b_ids}}
    sampler = TokenLogprobSampler(lp)
    item = {"id": "q", "question": "Is it?", "choices": ["yes", long], "labels": ["A", "B"], "answer": 1}
    metrics, [rec] = mc.run_mc(sampler, "arc", [item], [], 0, batch_size=1)
    assert rec["loglikelihoods"] == [-2.0, pytest.approx(-4.0)]
    assert (rec["pred"], rec["pred_norm"]) == ("A", "B")
    assert metrics == {"acc": 0.0, "acc_norm": 1.0}
    assert sampler.calls == [1, 1]  # batch_size 1: one prompt per score call


def test_score_requests_sums_only_the_continuation_and_keeps_input_order():
    cont_lp = {11: -1.5, 12: -0.25}
    sampler = TokenLogprobSampler(cont_lp)  # every other token -100: a context token counted would show
    pairs = [([1, 2, 3], [11]), ([1] * 10, [11, 12]), ([5, 6], [12, 12, 12])]
    assert mc.score_requests(sampler, pairs, batch_size=2) == [-1.5, -1.75, -0.75]
    assert sampler.calls == [2, 1]
    # too long for the context: the context loses tokens from the left, the continuation stays whole
    assert mc.score_requests(sampler, [([1] * 10, [11, 12])], max_len=4) == [-1.75]
    assert mc.pick([-1.0, -1.0, -3.0]) == 0  # ties: the first


# -- few-shot generation ---------------------------------------------------------------------------
def test_answer_extraction_and_the_oracles_normaliser():
    assert extract_prediction("gsm8k", " She has 3 + 4 = 7 apples.\n#### 1,234") == ("1,234", "1,234")
    assert extract_prediction("gsm8k", "The answer is 42.") == ("42", None)  # flexible only
    assert extract_prediction("math", "so $x = \\boxed{\\frac{1}{2}}$. Then 7") == ("\\frac{1}{2}", None)
    assert same_answer("1,234", "1234") and same_answer("\\frac{1}{2}", "0.5") and same_answer("$5", "5.00")
    assert not same_answer("12", "1/2") and not same_answer(None, "3")


def test_gsm8k_and_math_few_shot_prompts_and_scoring():
    gsm, _ = formats.load_items("gsm8k", formats.resolve_path("gsm8k.jsonl"))
    pool, items = gsm[:2], gsm[2:6]
    p = gsm8k_prompt(items[0], pool)
    assert p.count("Question: ") == 3 and p.endswith(f"Question: {items[0]['question']}\nAnswer:")
    assert f"Answer: {pool[0]['solution']}\n\nQuestion:" in p
    by_q = {it["question"]: it for it in items}

    def answer(prompt):  # right (strict form) for the first two, flexible-only for the third, wrong for the last
        q = prompt.rsplit("Question: ", 1)[1].split("\nAnswer:")[0]
        k = list(by_q).index(q)
        t = by_q[q]["target"]
        return [f" ok\n#### {t}\n\nQuestion: next", f" #### {t}", f" so it is {t}.", " #### 99999"][k]

    sampler = CannedSampler(answer)
    metrics, recs = run_fewshot(sampler, "gsm8k", items, pool, 2, max_tokens=64)
    assert metrics == {"exact_match": 0.75, "exact_match_strict": 0.5}
    assert sampler.params[0].stop[0] == "Question:" and sampler.params[0].temperature == 0.0
    assert recs[0]["completion"] == f" ok\n#### {items[0]['target']}\n\n"  # cut at the stop string

    mth, _ = formats.load_items("math", formats.resolve_path("math.jsonl"))
    p = math_prompt(mth[2], mth[:1])
    assert p == f"Problem:\n{mth[0]['problem']}\n\nSolution: {mth[0]['solution']}\n\nProblem:\n{mth[2]['problem']}\n\nSolution:"
    target = {it["problem"]: it["target"] for it in mth}
    canned = CannedSampler(lambda pr: f" We get $\\boxed{{{target[pr.rsplit('Problem:', 1)[1].split(chr(10) * 2)[0].strip()]}}}$.")
    metrics, _ = run_fewshot(canned, "math", mth[1:], mth[:1], 1, max_tokens=64)
    assert metrics == {"exact_match": 1.0}


def test_prompts_too_long_for_the_context_lose_tokens_from_the_left():
    from phi4ray.eval.generation import generate_all
    from phi4ray.inference.sampler import SamplingParams

    seen = []
    sampler = CannedSampler(lambda p: seen.append(p) or " 7", raw=True)
    sampler.max_model_len = 40
    long = "Question: " + "one two three " * 30 + "how many?\nAnswer:"
    out = generate_all(sampler, [long, "Question: 2+2?\nAnswer:"], SamplingParams(temperature=0.0, max_tokens=8))
    assert [c.text for c in out] == [" 7", " 7"]
    assert seen[0] == encode(long)[-32:]  # 40 - 8 tokens, the end of the prompt
    assert seen[1] == "Question: 2+2?\nAnswer:"  # short prompts go as they are


# -- code, in the real sandbox ------------------------------------------------------------------------
def test_canonical_solutions_pass_and_wrong_ones_fail_in_the_sandbox():
    he, _ = formats.load_items("humaneval", formats.resolve_path("humaneval.jsonl"))
    mb, _ = formats.load_items("mbpp", formats.resolve_path("mbpp.jsonl"))
    by_prompt = {it["prompt"]: it["canonical_solution"] for it in he}
    good = CannedSampler(lambda p: by_prompt[p] + "\n\ndef unrelated():\n    pass\n")  # cut at "\ndef "
    metrics, recs = code_exec.run_code_task(good, "humaneval", he, [], 0, max_tokens=64)
    assert metrics == {"pass@1": 1.0}, [r for r in recs if not r["passed"]]
    assert good.params[0].stop == ["\ndef ", "\nclass ", "\nif __name__", "\nprint("]
    code_of = {it["text"]: it["code"] for it in mb}
    pool, todo = mb[:1], mb[1:]
    shots_seen = []

    def mbpp_answer(prompt):
        shots_seen.append(prompt.count("[DONE]"))
        text = prompt.rsplit("here is your task: ", 1)[1].split(" Your code should")[0]
        return "\n" + code_of[text] + "\n[DONE]\nmore text"

    metrics, recs = code_exec.run_code_task(CannedSampler(mbpp_answer), "mbpp", todo, pool, 1, max_tokens=64)
    assert metrics == {"pass@1": 1.0}, [r for r in recs if not r["passed"]]
    assert set(shots_seen) == {1}
    # wrong programs fail, each with the sandbox's status
    bad = CannedSampler(lambda p: "    return None\n" if p.startswith("def ") else "def f():\n    return 0\n")
    metrics, recs = code_exec.run_code_task(bad, "humaneval", he[:2], [], 0, max_tokens=64)
    assert metrics == {"pass@1": 0.0} and {r["status"] for r in recs} == {"failed"}
    metrics, recs = code_exec.run_code_task(bad, "mbpp", mb[:2], [], 0, max_tokens=64)
    assert metrics == {"pass@1": 0.0} and all(r["status"] in ("failed", "error") for r in recs)


# -- long-context recall -----------------------------------------------------------------------------
def test_needle_is_planted_at_exact_token_positions():
    fill = needle.filler_ids()
    intro, question = encode(needle.INTRO), encode(needle.QUESTION)
    for length in (256, 333, 512):
        for depth in (0.0, 0.1, 0.5, 0.9, 1.0):
            ids, at, n = needle.build_prompt(length, depth, 48213, fill)
            n_fill = length - len(intro) - n - len(question)
            assert len(ids) == length
            assert at == len(intro) + round(depth * n_fill)
            assert ids[at : at + n] == encode(needle.NEEDLE.format(key=48213))
            assert ids[: len(intro)] == encode(needle.INTRO) and ids[-len(question):] == question
    ids, at, n = needle.build_prompt(256, 0.0, 11111, fill)
    assert at == len(intro)
    ids, at, n = needle.build_prompt(256, 1.0, 11111, fill)
    assert at + n == 256 - len(question)
    with pytest.raises(ValueError, match="at least"):
        needle.build_prompt(20, 0.5, 11111, fill)


def test_needle_accuracy_per_length_and_depth():
    n_intro = len(encode(needle.INTRO))

    def reader(ids):  # finds the key, except in 512-token prompts where it is not right after the intro
        text = decode(ids)
        key = re.search(r"The pass key is (\d+)\.", text).group(1)
        at_start = decode(ids[n_intro:]).startswith(needle.NEEDLE.format(key=key))
        return " 00000." if len(ids) == 512 and not at_start else f" {key}. Remember"

    sampler = CannedSampler(reader, raw=True)
    sampler.max_model_len = 600
    metrics, recs, skipped = needle.run_needle(sampler, [256, 512, 1024], [0.0, 0.5, 1.0], 2, 6, max_len=600)
    assert [s["length"] for s in skipped] == [1024]
    assert len(recs) == 2 * 3 * 2 and len({r["key"] for r in recs}) > 1
    assert metrics["by_length_depth"] == {"256": {"0": 1.0, "0.5": 1.0, "1": 1.0}, "512": {"0": 1.0, "0.5": 0.0, "1": 0.0}}
    assert metrics["by_length"] == {"256": 1.0, "512": pytest.approx(1 / 3)} and metrics["acc"] == pytest.approx(2 / 3)


# -- decontamination in the report ---------------------------------------------------------------------
def test_report_carries_curations_decontamination_or_says_there_is_none(tmp_path):
    cfg = EvalConfig(tasks={"gsm8k": {"path": str(formats.DATA_DIR / "gsm8k.jsonl")}, "needle": {}})
    rd = RunDir(tmp_path / "a")
    assert decontamination(rd, cfg)["note"] == NO_CURATE
    rd.update_stage("curate", status="complete", counts={"read": 3})
    assert decontamination(rd, cfg)["note"] == NO_EVAL_SETS
    rd = RunDir(tmp_path / "b")
    rd.set_manifest_field("recipe", {"curate": {"decontam": {"eval_sets": {"gsm8k": str(formats.DATA_DIR / "gsm8k.jsonl")}}}})
    rep = {"documents": 2, "benchmarks": {"gsm8k": {"documents": 2, "by_rule": {"13-gram": 2}, "items": {"gsm8k.jsonl:3": 2},
                                                    "ngrams": {"a b c": 2}}}}
    rd.update_stage("curate", status="complete", counts={"decontamination": {"index": {"items": 16}, **rep}})
    d = decontamination(rd, cfg)
    assert d["documents_removed"] == 2 and d["benchmarks"] == rep["benchmarks"]
    assert d["tasks_checked"] == {"gsm8k": ["gsm8k"]}
    report = {"tasks": {"gsm8k": {"kind": "gsm8k", "n": 4, "metrics": {"exact_match": 0.25}}}, "decontamination": d}
    table = format_table({"sft": report, "dpo": report})
    assert table.splitlines()[0].split() == ["task", "metric", "n", "sft", "dpo"]
    assert "gsm8k  exact_match  4  0.25" in re.sub(r" +", "  ", table)
    assert table.splitlines()[-1].startswith("decontamination: 2 training documents removed (gsm8k 2)")


# -- every task type on a real model, through the pipeline's eval stage -------------------------------------
@pytest.fixture(scope="module")
def micro_run(tmp_path_factory):
    """A run directory with pretrain and sft checkpoints (one micro model), held-out arithmetic
    questions, and a curate stage without decontamination."""
    from phi4ray.model import build_model, save_checkpoint
    from phi4ray.synth.run import QUESTION_SCHEMA

    rd = RunDir(tmp_path_factory.mktemp("evalrun"))
    save_checkpoint(build_model("micro", seed=0), rd.path("checkpoints/sft/hf"))
    shutil.copytree(rd.path("checkpoints/sft/hf"), rd.path("checkpoints/pretrain/hf"))
    rows = [{"id": f"q{i}", "prompt": f"{i}+{i + 1}=", "answer": str(2 * i + 1), "split": s}
            for i, s in enumerate(["heldout"] * 3 + ["pts"] * 2)]
    rd.commit_table("questions", "arithmetic", pa.Table.from_pylist(rows, schema=QUESTION_SCHEMA))
    rd.update_stage("curate", status="complete", counts={"read": 1, "kept": 1, "rejected": 0})
    return rd


def test_pipeline_eval_runs_every_task_type_on_every_checkpoint(micro_run, capsys):
    from phi4ray import pipeline

    recipe = load_recipe("smoke", [
        "eval.max_tokens=4", "serve.engine.device=cpu", "eval.tasks.mmlu.shots=1", "eval.tasks.gsm8k.shots=1",
        "eval.tasks.mmlu.limit=2", "eval.tasks.arc.limit=3", "eval.tasks.gsm8k.limit=2", "eval.tasks.gsm8k.max_tokens=8",
        "eval.tasks.math.limit=2", "eval.tasks.math.max_tokens=8", "eval.tasks.humaneval.limit=2",
        "eval.tasks.humaneval.max_tokens=8", "eval.tasks.mbpp.limit=2", "eval.tasks.mbpp.max_tokens=8",
        "eval.tasks.needle.samples=1", "eval.tasks.needle.depths=[0.0,1.0]",
    ])
    entry = pipeline.STAGE_FNS["eval"](recipe, micro_run, False)
    assert entry["status"] == "complete" and list(entry["metrics"]) == ["pretrain", "sft"]  # midtrain, dpo: none
    out = capsys.readouterr().out
    assert out.splitlines()[0].split() == ["task", "metric", "n", "pretrain", "sft"]
    assert NO_EVAL_SETS in out
    want_n = {"arithmetic": 3, "mmlu": 2, "arc": 3, "gsm8k": 2, "math": 2, "humaneval": 2, "mbpp": 2, "needle": 4}
    reports = {s: micro_run.read_json(f"eval/{s}.json") for s in ("pretrain", "sft")}
    for rep in reports.values():
        assert {t: v["n"] for t, v in rep["tasks"].items()} == want_n
        assert rep["n"] == 3 and rep["accuracy"] == rep["tasks"]["arithmetic"]["metrics"]["acc"]
        assert rep["decontamination"]["note"] == NO_EVAL_SETS
        for t, v in rep["tasks"].items():
            assert 0.0 <= v["metrics"][v["primary"]] <= 1.0, t
        assert rep["tasks"]["humaneval"]["examples"][0]["status"] in code_exec_statuses()
        assert [r["length"] for r in rep["tasks"]["needle"]["examples"]] == [256, 256, 512, 512]
    # one set of weights: both stages give the same numbers
    strip = lambda rep: {t: v["metrics"] for t, v in rep["tasks"].items()}
    assert strip(reports["pretrain"]) == strip(reports["sft"])
    assert entry["tasks"]["sft"] == {t: v["metrics"][v["primary"]] for t, v in reports["sft"]["tasks"].items()}
    # the real engine's scores are what the scorer reports: recompute MMLU's log-likelihoods directly
    from phi4ray.inference.sampler import make_sampler

    sampler = make_sampler(EngineConfig(device="cpu"), micro_run.path("checkpoints/sft/hf"))
    items, _ = formats.load_items("mmlu", formats.resolve_path("mmlu.jsonl"))
    rec = reports["sft"]["tasks"]["mmlu"]["examples"][0]
    assert rec["id"] == items[1]["id"]  # one shot: the first item is it
    pairs = [mc.encode_pair(c, k) for c, k in mc.requests_for("mmlu", items[1], items[:1])]
    direct = [sum(sampler.score([c + k])[0][len(c):]) for c, k in pairs]
    assert rec["loglikelihoods"] == pytest.approx(direct, abs=2e-3)
    # complete with this config: a rerun only prints the table
    again = pipeline.STAGE_FNS["eval"](recipe, micro_run, False)
    assert again["finished"] == entry["finished"]
    assert capsys.readouterr().out.splitlines()[0].split() == ["task", "metric", "n", "pretrain", "sft"]


def code_exec_statuses():
    from phi4ray.synth.sandbox import STATUSES

    return STATUSES


def test_run_task_respects_shots_limit_and_fewshot_file(tmp_path):
    few = tmp_path / "dev.jsonl"
    few.write_text("".join(json.dumps({"question": f"Dev {i}?", "choices": ["1", "2"], "answer": 0, "subject": "x"}) + "\n"
                           for i in range(3)))
    lp = TokenLogprobSampler({})
    cfg = EvalConfig(examples=100)
    rep = run_task(lp, "mmlu", EvalConfig.Task(path="mmlu.jsonl", shots=2, limit=5, fewshot_path=str(few)), cfg)
    assert rep["n"] == 5 and rep["shots"] == 2  # shots from the dev file: the test file's first items are evaluated
    items, _ = formats.load_items("mmlu", formats.resolve_path("mmlu.jsonl"))
    assert [r["id"] for r in rep["examples"]] == [i["id"] for i in items[:5]]
    rep = run_task(lp, "mmlu", EvalConfig.Task(path="mmlu.jsonl", shots=3), cfg)
    assert rep["n"] == len(items) - 3  # no dev file: the first 3 are the shots and are not evaluated
