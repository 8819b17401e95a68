"""The synthesis operations (synth/ops.py and one module per op): chains, parsing, voting, judging,
instruction reversal with the real sandbox, rejects and provenance; and the stage end to end with
the real transformers engine in Ray Data actor pools.

Most tests drive the ops with `ScriptedSampler`, a `Sampler` that answers with canned, realistic
completions chosen by what the prompt contains. That is deliberate: no capable LLM runs offline
here (the stand-in models are random), and the ops' logic (what they parse, keep, vote, judge and
reject) can only be checked against completions whose content is known. The end-to-end test runs
the real engine with a random model, where most records are rejects with their reasons.
"""

import json

import pyarrow as pa
import pytest

from phi4ray.config import (
    AgentsConfig, ArithmeticConfig, EngineConfig, PluralityConfig, QAConfig, ResponsesConfig, ReverseConfig,
    ReviseConfig, RewriteConfig, SamplingConfig, SynthConfig,
)
from phi4ray.inference.sampler import Completion, Sampler
from phi4ray.run import RunDir
from phi4ray.synth.ops import LLM, Work, make_op, run_records, template_id
from phi4ray.synth.run import run_synth
from phi4ray.tokenizer import decode, encode

PASSAGE = (
    "The struct module converts between Python values and C structs represented as bytes objects. "
    "pack(format, v1, v2, ...) returns a bytes object containing the values packed according to the "
    "format string. The format '>h' means a big-endian short of 2 bytes, so pack('>h', 1) is b'\\x00\\x01'. "
    "calcsize(format) returns the size of the struct, so calcsize('>hh') is 4."
)


class ScriptedSampler:
    """A `Sampler` whose completions are scripted: the first rule whose key occurs in the decoded
    prompt answers. A rule's answer is a string, a list (the n samples), or a callable of the
    prompt text. It records every prompt it was given, and can be told to fail on some."""

    max_model_len = 4096

    def __init__(self, rules, fail_on=()):
        self.rules = list(rules)
        self.fail_on = fail_on
        self.prompts: list[str] = []
        self.calls = 0

    def generate(self, prompts, params):
        self.calls += 1
        texts = [p if isinstance(p, str) else decode(p) for p in prompts]
        for t in texts:
            if any(f in t for f in self.fail_on):
                raise RuntimeError("scripted engine failure")
        out = []
        for t in texts:
            self.prompts.append(t)
            answer = next((a for k, a in self.rules if k in t), "I cannot help with that.")
            answer = answer(t) if callable(answer) else answer
            samples = answer if isinstance(answer, list) else [answer] * params.n
            # a template's prefill ends the prompt (after the assistant header): the model continues it
            prefill = t.rsplit("<|im_sep|>", 1)[-1]
            samples = [x[len(prefill):] if prefill and x.startswith(prefill) else x for x in samples]
            assert len(samples) == params.n, (len(samples), params.n)
            out.append([Completion(text=s, token_ids=encode(s) or [0], logprobs=[0.0] * max(1, len(encode(s))),
                                   top_logprobs=None, finish_reason="stop") for s in samples])
        return out

    def score(self, prompts):
        return [[float("nan")] + [0.0] * (len(p) - 1) for p in prompts]


def run_op(name, cfg, recs, sampler):
    op = make_op(name, cfg, "scripted-model")
    works = [Work(r) for r in recs]
    op.run(works, LLM(sampler))
    return works


def kept(works):
    return {w.rec["id"]: w.out for w in works if w.out is not None}


def rejected(works):
    return {w.rec["id"]: (w.reject[0], w.reject[1].reason, w.reject[1].detail) for w in works if w.reject}


def test_scripted_sampler_is_a_sampler():
    assert isinstance(ScriptedSampler([]), Sampler)


# -- framework ----------------------------------------------------------------------------------------
def test_prompt_too_long_and_engine_failures_become_rejects_without_losing_the_batch():
    cfg = QAConfig(enabled=True, max_answer_chars=20)
    good = "Question: What is calcsize('>hh')?\nReasoning: two shorts of 2 bytes each.\nAnswer: 4"
    sampler = ScriptedSampler([("chain of deductions", good)], fail_on=["POISON"])
    sampler.max_model_len = 400
    recs = [{"id": "ok1", "seed_id": "ok1", "text": PASSAGE}, {"id": "bad", "seed_id": "bad", "text": "POISON " + PASSAGE},
            {"id": "long", "seed_id": "long", "text": "word " * 600}, {"id": "ok2", "seed_id": "ok2", "text": PASSAGE}]
    cfg.seed_chars = 3000
    works = run_op("qa", cfg, recs, sampler)
    assert set(kept(works)) == {"ok1", "ok2"}
    r = rejected(works)
    assert r["bad"][:2] == ("extract", "generation_failed") and "scripted engine failure" in r["bad"][2]
    assert r["long"][:2] == ("extract", "prompt_too_long") and "context 400" in r["long"][2]
    # one batch call failed as a whole, then each of the 3 remaining prompts went alone
    assert sampler.calls == 4


def test_an_op_that_raises_rejects_its_records_and_spares_the_other_ops():
    class Boom:
        def run(self, works, llm):
            raise ZeroDivisionError("bug")

        def provenance(self):
            return json.dumps({"op": "boom"})

    qa = make_op("qa", QAConfig(enabled=True), "m")
    sampler = ScriptedSampler([("chain of deductions", "Question: q?\nReasoning: r\nAnswer: 4")])
    out = run_records({"boom": Boom(), "qa": qa}, ["boom", "qa"], [{"id": "a"}, {"id": "b", "seed_id": "b", "text": PASSAGE}], LLM(sampler))
    (r1, _), (r2, t2) = out
    assert r1["reason"] == "op_error" and "ZeroDivisionError" in r1["detail"] and r1["record"]["provenance"]["op"] == "boom"
    assert r2["row"]["kind"] == "qa" and t2 > 0


# -- rewrite ------------------------------------------------------------------------------------------
def test_rewrite_extracts_facts_then_writes_the_form_from_them():
    facts = "Here are the facts:\n- pack(format, ...) returns bytes\n- '>h' is a big-endian 2-byte short\n* calcsize('>hh') is 4\n"
    exercise = "Exercise: What does calcsize('>hh') return?\nSolution: each short is 2 bytes, so 4."
    sampler = ScriptedSampler([("list its key facts", facts), ("self-contained exercise", exercise),
                               ("structured reasoning task", "Question: ... Answer: 4"),
                               ("discussion between", "Student: ...\nTeacher: ...")])
    cfg = RewriteConfig(forms=["exercise", "reasoning"], forms_per_seed=2)
    recs = [{"id": f"s1:{f}", "seed_id": "s1", "text": PASSAGE, "form": f} for f in ("exercise", "reasoning")]
    recs.append({"id": "s2:exercise", "seed_id": "s2", "text": "No facts here.", "form": "exercise"})
    sampler.rules.insert(0, ("No facts here.", "I could not find any facts."))
    works = run_op("rewrite", cfg, recs, sampler)
    out = kept(works)
    row = out["s1:exercise"]
    assert row["kind"] == "rewrite" and row["source"] == "web_rewrite" and row["seed_id"] == "s1"
    assert row["text"] == exercise and row["messages"] is None
    checks = json.loads(row["checks"])
    assert checks["facts"] == ["pack(format, ...) returns bytes", "'>h' is a big-endian 2-byte short", "calcsize('>hh') is 4"]
    prov = json.loads(row["provenance"])
    assert prov["templates"] == {"facts": template_id("rewrite_facts"), "write": template_id("rewrite_exercise")}
    assert prov["model"] == "scripted-model" and prov["seed"] == cfg.sampling.seed and prov["input_id"] == "s1:exercise"
    assert prov["sampling"]["generate"]["temperature"] == cfg.sampling.temperature and prov["sampling"]["check"]["temperature"] == 0.0
    assert json.loads(out["s1:reasoning"]["checks"])["form"] == "reasoning"
    assert out["s1:exercise"]["id"] != out["s1:reasoning"]["id"]
    # step 2 saw the facts of step 1, not the passage
    step2 = [p for p in sampler.prompts if "self-contained exercise" in p]
    assert step2 and "- calcsize('>hh') is 4" in step2[0] and "C structs" not in step2[0]
    assert rejected(works) == {"s2:exercise": ("facts", "unparseable", "0 fact lines < min_facts 1")}


# -- self-revision ------------------------------------------------------------------------------------
def test_self_revision_critiques_revises_and_keeps_the_history():
    def critique(prompt):
        if "REVISED" in prompt:
            return "No problems left.\nReasoning: 5\nAccuracy: 5"
        if "HOPELESS" in prompt:
            return "The size is wrong.\n**Reasoning**: 2/5\n**Accuracy**: 1/5"
        if "GIBBERISH" in prompt:
            return "It is fine, I guess."
        return "1. Step 2 says calcsize('>hh') is 2; it is 4.\nReasoning: 3\nAccuracy: 2"

    def draft(prompt):
        return {"s1": "Q: size? A: 2", "s2": "HOPELESS draft", "s3": "GIBBERISH draft"}[next(k for k in ("s1", "s2", "s3") if f"[{k}]" in prompt)]

    sampler = ScriptedSampler([("Review the draft", critique), ("Revise the draft", "REVISED: calcsize('>hh') is 4.\nFinal answer: 4"),
                               ("tests real understanding", draft)])
    cfg = ReviseConfig(enabled=True, rounds=2, min_score=4)
    recs = [{"id": k, "seed_id": k, "text": f"[{k}] {PASSAGE}"} for k in ("s1", "s2", "s3")]
    works = run_op("revise", cfg, recs, sampler)
    row = kept(works)["s1"]
    assert row["text"].startswith("REVISED") and row["kind"] == "revise" and row["source"] == "synthetic"
    checks = json.loads(row["checks"])
    assert checks["revisions"] == 1 and checks["scores"] == {"reasoning": 5, "accuracy": 5}
    assert [h["scores"] for h in checks["history"]] == [{"reasoning": 3, "accuracy": 2}, {"reasoning": 5, "accuracy": 5}]
    assert checks["history"][0]["draft"] == "Q: size? A: 2" and "it is 4" in checks["history"][0]["critique"]
    revise_prompt = next(p for p in sampler.prompts if "Revise the draft" in p)
    assert "Q: size? A: 2" in revise_prompt and "it is 4" in revise_prompt  # the revision saw draft and critique
    r = rejected(works)
    # HOPELESS is revised into REVISED (5/5) too: the revise step cannot tell; GIBBERISH never parses
    assert "s2" in kept(works)
    assert r == {"s3": ("critique:0", "unparseable", "no 'Reasoning: <1-5>' and 'Accuracy: <1-5>' scores")}


def test_self_revision_rejects_low_scores_after_the_last_round():
    sampler = ScriptedSampler([("Review the draft", "Reasoning: 2\nAccuracy: 4"), ("Revise the draft", "still weak"),
                               ("tests real understanding", "weak draft")])
    works = run_op("revise", ReviseConfig(enabled=True, rounds=1, min_score=4), [{"id": "s", "text": PASSAGE}], sampler)
    step, reason, detail = rejected(works)["s"]
    assert (step, reason) == ("critique:1", "low_score") and "after 1 revisions" in detail
    assert [h["draft"] for h in works[0].data["history"]] == ["weak draft", "still weak"]


# -- QA extraction and the plurality filter ----------------------------------------------------------------
@pytest.mark.parametrize("text,expected", [
    ("Question: How many bytes does calcsize('>hh') give?\nReasoning: 2 + 2.\nAnswer: 4",
     {"question": "How many bytes does calcsize('>hh') give?", "reasoning": "2 + 2.", "answer": "4"}),
    ("**Question:** Why?\n**Answer:** because\n\nMore chatter after a blank line.", {"question": "Why?", "reasoning": "", "answer": "because"}),
    ("Question: A?\nAnswer: 1\nQuestion: B?\nAnswer: 2", {"question": "A?", "reasoning": "", "answer": "1"}),
    ("Answer: 4\nQuestion: backwards?", "no 'Answer:' after the question"),
    ("Sure! The answer is 4.", "no 'Question:' line"),
    ("Question: ?\nAnswer:   ", "empty answer"),
])
def test_parse_qa(text, expected):
    from phi4ray.synth.qa import parse_qa

    assert parse_qa(text) == expected


def test_qa_rows_have_no_messages_and_long_answers_are_rejects():
    sampler = ScriptedSampler([("LONG", "Question: q?\nAnswer: " + "x" * 50), ("chain of deductions", "Question: Size of '>hh'?\nReasoning: 2+2\nAnswer: 4")])
    works = run_op("qa", QAConfig(enabled=True, max_answer_chars=20), [{"id": "a", "text": PASSAGE}, {"id": "b", "text": "LONG"}], sampler)
    row = kept(works)["a"]
    assert row["messages"] is None and row["text"].startswith("Question: Size of '>hh'?")
    assert json.loads(row["checks"]) == {"question": "Size of '>hh'?", "reasoning": "2+2", "answer": "4"}
    assert rejected(works)["b"][:2] == ("extract", "answer_too_long")


def test_vote_cases():
    from phi4ray.synth.plurality import vote

    assert vote(["4", "4", "4", "4"], 0.5)[0] == "unanimous"
    decision, top, counts = vote(["4", "4", "4", "5"], 0.5)
    assert (decision, top, dict(counts)) == ("keep", "4", {"4": 3, "5": 1})
    assert vote(["4", "4", "5", "5"], 0.5)[0] == "no_majority"  # 2 of 4 is not more than half
    assert vote(["4", "4", "4", None], 0.5)[:2] == ("keep", "4")  # an abstention is not unanimous...
    assert vote(["4", "4", None, None], 0.5)[0] == "no_majority"  # ...and counts against the majority
    assert vote([None, None], 0.5)[0] == "no_majority"
    assert vote(["1", "1", "2", "2", "3"], 0.3)[0] == "no_majority"  # a tie at the top is no majority


def test_plurality_filter_votes_with_the_oracle_normaliser():
    answers = {
        "EASY": ["The sum is 17.", "17", "so 17", "\\boxed{17}"],                      # unanimous
        "MID": ["8 10 17", "17", "It is 17.", "12"],                                     # 3 of 4: keep
        "HARD": ["1", "2", "3", "no idea"],                                              # no majority
        "WRONG": ["9", "9", "9", "17"],                                                  # majority disagrees with the trusted answer
        "HALF": ["so \\boxed{\\frac{1}{2}}", "0.5", "\\boxed{1/2}", "\\boxed{2}"],      # 1/2 = 0.5 = \frac{1}{2}
    }
    sampler = ScriptedSampler([(k, v) for k, v in answers.items()])
    recs = [{"id": k, "question": f"{k}: 3+5+2+7=", "answer": "17", "origin": "questions", "seed_id": None} for k in ("EASY", "MID", "HARD", "WRONG")]
    recs.append({"id": "HALF", "question": "HALF: what fraction is shaded?", "answer": "one half", "origin": "qa", "seed_id": "s9"})
    works = run_op("plurality", PluralityConfig(enabled=True, n_answers=4), recs, sampler)
    out, rej = kept(works), rejected(works)
    assert set(out) == {"MID", "HALF"}
    assert {k: v[1] for k, v in rej.items()} == {"EASY": "unanimous", "HARD": "no_majority", "WRONG": "majority_disagrees"}
    mid = json.loads(out["MID"]["checks"])
    assert mid["votes"] == {"17": 3, "12": 1} and mid["n"] == 4 and mid["abstained"] == 0 and mid["majority_share"] == 0.75
    assert mid["answer"] == "17" and mid["answer_source"] == "original" and mid["original_agrees"]
    assert json.loads(out["MID"]["messages"]) == [{"role": "user", "content": "MID: 3+5+2+7="}, {"role": "assistant", "content": "8 10 17"}]
    half = json.loads(out["HALF"]["checks"])
    assert half["votes"] == {"1/2": 3, "2": 1} and half["answer"] == "\\frac{1}{2}" and half["answer_source"] == "majority"
    assert half["original_answer"] == "one half" and not half["original_agrees"]
    assert out["HALF"]["seed_id"] == "s9"
    user = json.loads(out["HALF"]["messages"])[0]["content"]
    assert user.startswith("HALF: what fraction is shaded?") and "\\boxed" in user  # the qa template asks for a boxed answer
    assert json.loads(out["HALF"]["provenance"])["templates"] == {"answer": template_id("plurality_qa")}
    hard = rej["HARD"][2]
    assert "'1': 1" in hard and "1 abstained of 4" in hard


# -- multi-agent ---------------------------------------------------------------------------------------
def test_agents_solver_and_checker_take_turns_until_the_checker_accepts():
    def solver(prompt):
        if "[checker]" in prompt:
            return "Problem: How many bytes does calcsize('>hh') return?\nSolution: Two shorts of 2 bytes.\nFinal answer: 4"
        if "MUTE" in prompt:
            return "I am not sure what to do."
        return "Problem: How many bytes does calcsize('>hh') return?\nSolution: One short.\nFinal answer: 2"

    def checker(prompt):
        if "STUBBORN" in prompt:
            return "Step 1 is wrong.\nVerdict: incorrect"
        if "Final answer: 4" in prompt:
            return "Every step checks out.\nVerdict: correct"
        if "VAGUE" in prompt:
            return "Looks plausible."
        return "There are two shorts, not one.\n**Verdict:** incorrect"

    sampler = ScriptedSampler([("You are the solver", solver), ("You are the checker", checker)])
    recs = [{"id": k, "seed_id": k, "text": f"{k} {PASSAGE}"} for k in ("GOOD", "STUBBORN", "VAGUE", "MUTE")]
    works = run_op("agents", AgentsConfig(enabled=True, turns=4), recs, sampler)
    row = kept(works)["GOOD"]
    checks = json.loads(row["checks"])
    assert [m["role"] for m in checks["transcript"]] == ["solver", "checker", "solver", "checker"]
    assert checks["turns"] == 4 and checks["final_answer"] == "4" and checks["verdict"] == "correct"
    msgs = json.loads(row["messages"])
    assert msgs[0] == {"role": "user", "content": "How many bytes does calcsize('>hh') return?"}
    assert msgs[1]["content"] == "Two shorts of 2 bytes.\n\nFinal answer: 4"
    second = [p for p in sampler.prompts if "You are the solver" in p and "GOOD" in p][1]
    assert "[checker]\nThere are two shorts" in second  # the solver saw the checker's message
    r = rejected(works)
    assert r["STUBBORN"][:2] == ("verdict", "not_accepted")
    assert r["VAGUE"] == ("turn:1:checker", "unparseable", "no 'Verdict: correct|incorrect' line")
    assert r["MUTE"] == ("turn:0:solver", "unparseable", "no 'Solution:' part")


# -- SFT responses --------------------------------------------------------------------------------------
def test_responses_judge_picks_the_best_and_writes_chatml():
    from phi4ray.synth.responses import parse_judgement
    from phi4ray.tokens.tokenize import sft_examples

    assert parse_judgement("Response 1: 4\nResponse 2: 9/10\nResponse 3: 6\nBest: 2") == (2, {1: 4.0, 2: 9.0, 3: 6.0})
    assert parse_judgement("The best response is Response 3.") == (3, {})
    assert parse_judgement("All fine.") == (None, {})

    def judge(prompt):
        if "ODD" in prompt:
            return "Response 1: 5\nBest: 7"
        if "SHRUG" in prompt:
            return "They are all good."
        return "Response 1: 3\nResponse 2: 9\nResponse 3: 5\nBest: 2"

    cands = ["It packs values.", "pack(format, v1, ...) returns a bytes object with the values laid out as the format says.", "Bytes."]
    sampler = ScriptedSampler([("Below are a user's request", judge), ("write one request", lambda p: "Request: " + p.split("Passage:\n")[1].split()[0] + " Explain struct.pack."),
                               ("Explain struct.pack.", cands)])
    recs = [{"id": k, "seed_id": k, "text": f"{k} {PASSAGE}"} for k in ("GOOD", "ODD", "SHRUG")]
    recs.append({"id": "NOREQ", "seed_id": "NOREQ", "text": "x"})
    sampler.rules.insert(0, ("Passage:\nx", "Request:\n\nI will not."))  # nothing on the Request line
    works = run_op("responses", ResponsesConfig(enabled=True, n_responses=3), recs, sampler)
    row = kept(works)["GOOD"]
    assert row["source"] == "sft" and row["kind"] == "responses"
    msgs = json.loads(row["messages"])
    assert msgs == [{"role": "user", "content": "GOOD Explain struct.pack."}, {"role": "assistant", "content": cands[1]}]
    checks = json.loads(row["checks"])
    assert checks["best"] == 2 and checks["scores"] == {"1": 3.0, "2": 9.0, "3": 5.0} and checks["candidates"] == cands
    examples, bad = sft_examples([{"id": row["id"], "messages": row["messages"]}])  # tokenize's SFT path reads it
    assert len(examples) == 1 and not bad and sum(examples[0][1]) > 0
    r = rejected(works)
    assert r["ODD"] == ("judge", "judge_out_of_range", "best 7 not in 1..3")
    assert r["SHRUG"] == ("judge", "unparseable", "no 'Best: <k>' line")
    assert r["NOREQ"] == ("request", "unparseable", "no 'Request:' line")


# -- instruction reversal (real sandbox) ----------------------------------------------------------------
SESSION = """>>> from struct import *
>>> pack('>bhl', 1, 2, 3)
b'\\x01\\x00\\x02\\x00\\x00\\x00\\x03'
>>> calcsize('>bhl')
7
>>> 'Py' 'thon'
'Python'
"""


def test_snippets_from_fenced_blocks_and_sessions():
    from phi4ray.synth.ops import Inputs
    from phi4ray.synth.reverse import as_program, code_blocks, echo_program

    page = f"Intro.\n\n```pycon\n{SESSION}```\n\nText.\n\n````python\nx = 1\nprint(x + 1)\n````\n\n```bash\nls -l\n```\n\n```python\nprint(1)\n```\n"
    assert [lang for lang, _ in code_blocks(page)] == ["pycon", "python", "bash", "python"]
    prog = as_program(code_blocks(page)[0][1])
    assert prog == "from struct import *\npack('>bhl', 1, 2, 3)\ncalcsize('>bhl')\n'Py' 'thon'"
    assert "print(repr(__echo__))" in echo_program(prog)

    class Src(Inputs):
        def __init__(self):
            self._cache = {"pages": [{"id": "p1", "text": page, "source": "web"}],
                           "seeds": [{"id": "c1", "doc_id": "c1", "text": "def f(a):\n    return a * 2\nprint(f(21))\n", "source": "code"}]}

    op = make_op("reverse", ReverseConfig(enabled=True, min_lines=2), "m")
    recs = op.inputs(Src())
    assert [(r["id"], r["from"]) for r in recs] == [("c1:all", "code_document"), ("p1:0", "fence:pycon"), ("p1:1", "fence:python")]
    assert op.stats == {"candidates": 4, "taken": 3, "skipped/too_few_lines": 1}  # bash is not in `languages`


def test_instruction_reversal_fidelity_with_the_sandbox():
    from phi4ray.synth.reverse import as_program

    regenerated = {
        "GOOD": "Here you go:\n```python\nimport struct\nprint(struct.pack('>bhl', 1, 2, 3))\nprint(struct.calcsize('>bhl'))\nprint('Python')\n```",
        "WRONG": "```python\nfrom struct import *\nprint(pack('<bhl', 1, 2, 3))\nprint(calcsize('<bhl'))\nprint('Python')\n```",
        "HARDCODED": "```python\nprint(b'\\x01\\x00\\x02\\x00\\x00\\x00\\x03')\nprint(3 + 4)\nprint('Py' + 'thon')\n```",
        "BROKEN": "```python\nprint(pack('>bhl', 1, 2\n```",
    }

    def instruction(prompt):
        return next(f"[{k}] Pack 1, 2, 3 as a big-endian signed char, short and long; print the bytes, the size of that format, and the word Python."
                    for k in regenerated if f"# {k}" in prompt)

    def code(prompt):
        return next(v for k, v in regenerated.items() if f"[{k}]" in prompt)

    sampler = ScriptedSampler([("Write the instruction", instruction), ("Reply with the complete Python program", code)])
    prog = as_program(SESSION)
    recs = [{"id": k, "seed_id": "page", "code": f"# {k}\n{prog}", "session": True} for k in regenerated]
    recs += [{"id": "FAILS", "seed_id": "page", "code": "print(undefined_name)\nx = 1", "session": False},
             {"id": "SILENT", "seed_id": "page", "code": "x = 1\ny = x + 1", "session": False}]
    works = run_op("reverse", ReverseConfig(enabled=True, min_similarity=0.6, sandbox={"timeout_s": 10}), recs, sampler)
    out, rej = kept(works), rejected(works)
    assert set(out) == {"GOOD"}
    row = out["GOOD"]
    assert row["source"] == "code" and row["kind"] == "reverse"
    msgs = json.loads(row["messages"])
    assert msgs[0]["content"].startswith("[GOOD] Pack 1, 2, 3") and msgs[1]["content"] == f"```python\n# GOOD\n{prog}\n```"
    checks = json.loads(row["checks"])
    assert checks["original_run"]["status"] == checks["regenerated_run"]["status"] == "passed"
    assert checks["original_run"]["stdout"] == "b'\\x01\\x00\\x02\\x00\\x00\\x00\\x03'\n7\n'Python'\n"
    assert checks["regenerated_run"]["stdout"] == "b'\\x01\\x00\\x02\\x00\\x00\\x00\\x03'\n7\nPython\n"  # 'Python' vs Python: the same line
    assert checks["similarity"]["ast"] >= 0.6 and set(checks["similarity"]) == {"ast", "token"}
    assert rej["WRONG"][:2] == ("fidelity", "tests_failed") and "line 1" in rej["WRONG"][2]
    assert rej["HARDCODED"][:2] == ("fidelity", "low_fidelity") and rej["HARDCODED"][2].startswith("ast 0.")
    assert rej["BROKEN"][:2] == ("regenerate", "unparseable")
    assert rej["FAILS"][:2] == ("original", "original_failed") and "NameError" in rej["FAILS"][2]
    assert rej["SILENT"][:2] == ("original", "no_observable_output")
    # no LLM call was spent on the snippets that could not be checked
    assert not any("undefined_name" in p or "y = x + 1" in p for p in sampler.prompts)
    hard = next(w for w in works if w.rec["id"] == "HARDCODED")
    assert hard.data["regenerated_run"]["status"] == "passed" and hard.data["output_match"]


# -- the stage, end to end --------------------------------------------------------------------------------
def _pages():
    code_page = ("# struct examples\n\nPacking values into bytes.\n\n```pycon\n" + SESSION + "```\n\n"
                 "The size of a format follows from its characters; " + PASSAGE)
    return [
        {"id": "page-struct", "text": code_page, "source": "web", "url": "u1", "lang": "en", "lang_score": 1.0, "quality": 0.9, "meta": "{}"},
        {"id": "page-prose", "text": PASSAGE * 3, "source": "web", "url": "u2", "lang": "en", "lang_score": 1.0, "quality": 0.9, "meta": "{}"},
    ]


def test_op_phases_put_plurality_after_qa_only_when_it_reads_qa():
    from phi4ray.synth.run import op_phases

    on = dict(enabled=True)
    cfg = SynthConfig(rewrite=RewriteConfig(enabled=False), qa=QAConfig(**on), plurality=PluralityConfig(**on), revise=ReviseConfig(**on))
    assert [list(p) for p in op_phases(cfg)] == [["revise", "qa"], ["plurality"]]
    cfg.plurality = PluralityConfig(include_qa=False, **on)
    assert [list(p) for p in op_phases(cfg)] == [["revise", "qa", "plurality"]]
    cfg.qa = QAConfig()
    assert [list(p) for p in op_phases(SynthConfig(rewrite=RewriteConfig(enabled=False)))] == []


def test_run_synth_every_op_on_ray_actor_pools_with_the_real_engine(ray_local, tmp_path):
    from phi4ray.synth.ops import Inputs
    from phi4ray.synth.run import _commit, _sample

    run_dir = RunDir(tmp_path / "run")
    run_dir.commit_table("curated", "part-00000", pa.Table.from_pylist(_pages()))
    engine = EngineConfig(preset="micro", device="cpu", batch_size=4)
    small = dict(enabled=True, engine=engine, sampling=SamplingConfig(max_tokens=6), check_sampling=SamplingConfig(temperature=0.0, max_tokens=6))
    cfg = SynthConfig(
        arithmetic=ArithmeticConfig(n_train=40, n_heldout=4, n_pts=3),
        rewrite=RewriteConfig(max_seeds=2, **small), revise=ReviseConfig(max_seeds=1, rounds=1, **small),
        agents=AgentsConfig(max_seeds=1, turns=2, **small), qa=QAConfig(max_seeds=2, **small),
        responses=ResponsesConfig(max_seeds=1, n_responses=2, **small), reverse=ReverseConfig(max_seeds=1, **small),
        plurality=PluralityConfig(n_answers=3, **small),
    )
    # An earlier attempt was killed after committing the qa op's only shard (produced here by the
    # scripted sampler: one question extracted, one reject). The run must keep it, not redo it, and
    # the plurality filter must vote on its question.
    model = "preset:micro (randomly initialised)"
    qa = make_op("qa", cfg.qa, model)
    recs = _sample(qa, qa.inputs(Inputs(run_dir)), 2)
    sampler = ScriptedSampler([("chain of deductions", lambda p: "no idea" if "struct examples" in p else "Question: What is 2+2?\nReasoning: add.\nAnswer: 4")])
    results = run_records({"qa": qa}, ["qa"] * len(recs), recs, LLM(sampler))
    _commit(run_dir, "qa", "qa-00000", [(r, res, t) for r, (res, t) in zip(recs, results)])
    assert sorted("row" in res for res, _ in results) == [False, True]

    counts = run_synth(cfg, run_dir)
    ops = counts["ops"]
    assert list(ops) == ["rewrite", "revise", "agents", "qa", "responses", "reverse", "plurality"]
    assert counts["seed_table"] == "curated"  # no seeds/ in this run: whole pages, and the manifest says so
    syn = run_dir.read_table("synthetic").to_pylist()
    rej = run_dir.read_table("rejects/synth").to_pylist() if run_dir.exists("rejects/synth") else []
    expected_read = {"rewrite": 2, "revise": 1, "agents": 1, "qa": 2, "responses": 1, "reverse": 1, "plurality": 3 + 1}
    for name, c in ops.items():
        rows = [r for r in syn if r["kind"] == name]
        rejects = [r for r in rej if r["step"].startswith(name + "/")]
        assert c["read"] == expected_read[name] == c["kept"] + c["rejected"], (name, c)
        assert (len(rows), len(rejects)) == (c["kept"], c["rejected"]) and rows + rejects, name
        assert sum(c["rejects"].values()) == c["rejected"]
        for r in rows:
            assert json.loads(r["provenance"])["model"] == model
        for r in rejects:
            prov = json.loads(r["record"])["provenance"]
            assert prov["op"] == name and prov["model"] == model and prov["templates"]
        assert c["gen_tokens"] > 0 or name == "reverse"
    assert ops["qa"]["skipped_shards"] == 1 and ops["qa"]["kept"] == 1  # kept from the killed attempt
    voted = [json.loads(r["record"]) for r in rej if r["step"].startswith("plurality/")]
    voted += [json.loads(r["checks"]) for r in syn if r["kind"] == "plurality"]
    assert sum(1 for v in voted if v.get("origin") == "qa") == 1  # the qa question was voted on
    assert counts["rewrite_seeds"] == 2 and counts["arithmetic_rows"] == 40
    entry = run_dir.stage_entry("synth")
    assert entry["status"] == "complete" and entry["counts"]["ops"] == ops
    pools = entry["metrics"]["pools"]  # two phases (plurality reads qa), each one pool for all its ops
    assert [p["ops"] for p in pools] == [["agents", "responses", "reverse", "revise", "rewrite"], ["plurality"]]
    assert run_synth(cfg, run_dir) == entry  # complete: a rerun does nothing


def test_run_plurality_answers_with_a_trained_stage_checkpoint(ray_local, tmp_path):
    from phi4ray.model import build_model, save_checkpoint
    from phi4ray.synth.run import QUESTION_SCHEMA, resolve_model, run_plurality

    run_dir = RunDir(tmp_path / "run")
    qs = [{"id": f"q{i}", "prompt": f"{i}+{i}=", "answer": str(2 * i), "split": "pts"} for i in range(1, 3)]
    qs.append({"id": "h", "prompt": "1+1=", "answer": "2", "split": "heldout"})
    run_dir.commit_table("questions", "arithmetic", pa.Table.from_pylist(qs, schema=QUESTION_SCHEMA))
    with pytest.raises(FileNotFoundError, match="neither a checkpoint folder, a .gguf file, a bundled model nor a trained stage"):
        resolve_model(EngineConfig(model="sft"), run_dir)
    save_checkpoint(build_model("micro"), run_dir.path("checkpoints/sft/hf"))  # stands in for the SFT export
    path, name, tag = resolve_model(EngineConfig(model="sft"), run_dir)
    assert path == run_dir.path("checkpoints/sft/hf") and name == run_dir.uri_of("checkpoints/sft/hf") and tag == "sft"

    cfg = SynthConfig(plurality=PluralityConfig(n_answers=2, engine=EngineConfig(device="cpu"), sampling=SamplingConfig(max_tokens=4)))
    counts = run_plurality(cfg, run_dir, "sft")
    assert counts["read"] == 2 == counts["kept"] + counts["rejected"] and counts["model"] == name  # pts only, not heldout
    assert run_dir.shards("synthetic") == ["plurality-sft-00000"]
    entry = run_dir.stage_entry("plurality:sft")
    assert entry["status"] == "complete" and entry["counts"] == counts
    for r in run_dir.read_table("rejects/synth").to_pylist() if counts["rejected"] else []:
        assert json.loads(r["record"])["provenance"]["model"] == name and r["step"] == "plurality/vote"
    assert run_plurality(cfg, run_dir, "sft") == entry  # complete: nothing is redone
