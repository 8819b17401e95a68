"""Decontamination against generated eval sets whose answers a program checks (GSM8K-style word
problems, short trivia, arithmetic), on planted documents and on the real documentation pages."""

from __future__ import annotations

import gzip
import json
import pickle
import random
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from phi4ray.config import DecontamConfig
from phi4ray.data import decontam
from phi4ray.data.decontam import DecontamIndex
from phi4ray.data.extract import extract_text
from phi4ray.stage import Reject, apply_steps

from realpages import shared_pages
NAMES = "Natalia Weng Betty Julie James Albert Ken Alexis Tina Randy Joy Mark".split()
THINGS = "apples clips marbles stickers cookies pencils shells stamps".split()
STRETCH = "at the big grocery store near the old train station on the corner of the main street"
"""Template text that every GSM8K-style item shares: the allow-list must learn it."""
TRIVIA = [
    ("t0", "Which gas makes up most of the air we breathe?", "Nitrogen"),
    ("t1", "What is the largest planet in our solar system by mass?", "Jupiter"),
    ("t2", "Who wrote the novel about a whale named Moby Dick?", "Herman Melville"),
]


def gsm8k_items(n: int = 40, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    items = []
    for i in range(n):
        name, friend = rng.sample(NAMES, 2)
        thing = rng.choice(THINGS)
        a, b, c = rng.randint(20, 90), rng.randint(2, 19), rng.randint(2, 19)
        question = (
            f"{name} had {a} {thing} in the morning. She gave {b} {thing} to her friend {friend} and then "
            f"bought {c} more {thing} {STRETCH}. How many {thing} does {name} have at the end of the day?"
        )
        answer = a - b + c
        solution = f"{name} had {a} - {b} = {a - b} {thing} left. Then {a - b} + {c} = {answer}.\n#### {answer}"
        items.append({"id": f"gsm8k-{i}", "question": question, "answer": solution, "_value": answer})
    return items


def write_jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.fixture(scope="module")
def eval_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("evals")
    write_jsonl(d / "gsm8k.jsonl", gsm8k_items())
    write_jsonl(d / "trivia.jsonl", [{"id": i, "question": q, "answer": a} for i, q, a in TRIVIA])
    rng = random.Random(1)
    arith = []
    for i in range(50):
        xs = [rng.randint(1, 9) for _ in range(rng.randint(2, 4))]
        arith.append({"problem": f"What is {' + '.join(map(str, xs))}?", "solution": str(sum(xs))})
    write_jsonl(d / "arith.jsonl", arith)
    return d


@pytest.fixture(scope="module")
def cfg(eval_dir) -> DecontamConfig:
    names = ("gsm8k", "trivia", "arith")
    return DecontamConfig(eval_sets={n: str(eval_dir / f"{n}.jsonl") for n in names})


@pytest.fixture(scope="module")
def index(cfg) -> DecontamIndex:
    return DecontamIndex.build(cfg)


def test_generated_answers_are_right():
    for item in gsm8k_items():
        numbers = [int(w) for w in item["question"].replace(".", " ").split() if w.isdigit()]
        a, b, c = numbers
        assert item["_value"] == a - b + c and item["answer"].endswith(f"#### {a - b + c}")


def test_index_summary(index):
    s = index.summary()
    assert s["benchmarks"]["gsm8k"] == {"items": 40, "indexed": 40, "too_short": 0}
    assert s["benchmarks"]["trivia"] == {"items": 3, "indexed": 3, "too_short": 0}
    # "what is 3 4 5" has fewer than 7 words: too short to tell from a common phrase.
    assert s["benchmarks"]["arith"] == {"items": 50, "indexed": 0, "too_short": 50}
    assert s["allow_listed"] > 0 and s["long_n"] == 13 and s["short_n"] == 7


def test_quoted_question_with_other_casing_punctuation_and_spacing_is_rejected(index):
    q = gsm8k_items()[17]["question"]
    mangled = q.upper().replace(".", " ...").replace(" ", "\n  ", 5).replace("?", "!!")
    text = f"My homework for Monday.\n\n{mangled}\n\nI think the answer is easy."
    out = index.check({"id": "d", "text": text})
    assert isinstance(out, Reject) and out.reason == "contaminated"
    m = decontam.parse_detail(f"{out.reason}: {out.detail}")
    assert (m.benchmark, m.item_id, m.n) == ("gsm8k", "gsm8k-17", 13)
    assert m.ngram in " ".join(decontam.normalize(q)) and len(m.ngram.split()) == 13
    assert index.check({"id": "d", "text": "My homework for Monday. I think the answer is easy."})["id"] == "d"


def test_quoted_solution_is_rejected(index):
    sol = gsm8k_items()[3]["answer"]
    out = index.check({"text": "Worked example from a forum post: " + sol + " Hope this helps with it all."})
    assert isinstance(out, Reject)
    assert decontam.parse_detail(f"contaminated: {out.detail}").item_id == "gsm8k-3"


def test_short_item_matched_by_7gram_coverage(index):
    out = index.check({"text": "Quiz night! which gas MAKES up most of the air we breathe -- answer below."})
    assert isinstance(out, Reject)
    m = decontam.parse_detail(f"contaminated: {out.detail}")
    assert (m.benchmark, m.item_id, m.n) == ("trivia", "t0", 7) and "(4 of 4 7-grams, 1.00 >= 0.50)" in out.detail
    # One shared 7-gram of four is a common phrase, not the item.
    kept = {"text": "Nitrogen makes up most of the air we know, said the chemist, and the rest is other gases."}
    assert index.check(kept) is kept


def test_allow_listed_template_text_is_kept(cfg, index):
    text = f"Meet me {STRETCH}. The shop has plenty of everything at the end of the day."
    assert index.check({"text": text})["text"] == text
    no_allow = DecontamIndex.build(cfg.model_copy(update={"common_min_items": None}))
    out = no_allow.check({"text": text})
    assert isinstance(out, Reject) and "13-gram" in out.detail


def test_a_record_without_text_is_a_reject_not_an_error(index):
    assert index.check({"id": "x"}).reason == "no_text"


def test_user_allow_list(tmp_path, eval_dir):
    allow = tmp_path / "allow.txt"
    allow.write_text("Which gas makes up most of the air we breathe\n\n")
    cfg = DecontamConfig(eval_sets={"trivia": str(eval_dir / "trivia.jsonl")}, allow_list=str(allow))
    idx = DecontamIndex.build(cfg)
    assert idx.check({"text": "which gas makes up most of the air we breathe"}) == {
        "text": "which gas makes up most of the air we breathe"
    }
    assert isinstance(idx.check({"text": "What is the largest planet in our solar system by mass"}), Reject)
    allow.write_text("too short a line\n")
    with pytest.raises(ValueError, match="allow.txt line 1"):
        DecontamIndex.build(cfg)


def test_real_pages_are_not_flagged_unless_an_eval_item_quotes_them(cfg, index, tmp_path):
    pages = shared_pages()
    records = [{"id": p.name, "text": extract_text(p.read_text(encoding="utf-8"))} for p in pages]
    kept, rejects = apply_steps(records, [("decontam", index.check)], "curate")
    assert [r["reason"] for r in rejects] == [] and len(kept) == len(pages)

    atexit = next(r["text"] for r in records if r["id"] == "library__atexit.html")
    sentence = next(line for line in atexit.split("\n") if len(line.split()) >= 20)
    quoted = write_jsonl(tmp_path / "quoted.jsonl", [{"id": "q0", "question": f"Explain: {sentence}"}])
    idx = DecontamIndex.build(cfg.model_copy(update={"eval_sets": {**cfg.eval_sets, "quoted": quoted}}))
    kept, rejects = apply_steps(records, [("decontam", idx.check)], "curate")
    flagged = {r["id"]: decontam.parse_detail(r["reason"]) for r in rejects}
    assert "library__atexit.html" in flagged and len(flagged) <= 3
    assert all((m.benchmark, m.item_id, m.n) == ("quoted", "q0", 13) for m in flagged.values())


def test_report_from_reject_rows(index):
    items = gsm8k_items()
    docs = [
        {"id": "a", "text": "copy: " + items[5]["question"]},
        {"id": "b", "text": "another copy: " + items[5]["question"].lower()},
        {"id": "c", "text": "and: " + items[9]["question"]},
        {"id": "d", "text": "quiz: Who wrote the novel about a whale named Moby Dick"},
        {"id": "e", "text": "nothing to see here, just a page about gardening and tomatoes"},
    ]
    kept, rejects = apply_steps(docs, [("decontam", index.check)], "curate")
    assert [r["id"] for r in kept] == ["e"] and all(r["step"] == "decontam" for r in rejects)
    other = {"reason": "too_short: 3 < 200 chars"}
    report = decontam.contamination_report([*rejects, other])
    assert report["documents"] == 4
    g = report["benchmarks"]["gsm8k"]
    assert g["documents"] == 3 and g["items"] == {"gsm8k-5": 2, "gsm8k-9": 1} and g["by_rule"] == {"13-gram": 3}
    assert sum(g["ngrams"].values()) == 3 and all(len(n.split()) == 13 for n in g["ngrams"])
    t = report["benchmarks"]["trivia"]
    assert t["documents"] == 1 and t["items"] == {"t2": 1} and t["by_rule"] == {"7-gram": 1}
    assert decontam.contamination_counts(rejects) == {"contaminated/gsm8k": 3, "contaminated/trivia": 1}
    json.dumps(report)  # goes into manifest.json


def test_index_pickles_and_works_in_another_process(index, tmp_path):
    again = pickle.loads(pickle.dumps(index))
    assert again == index
    q = gsm8k_items()[17]["question"]
    assert again.check({"text": q}) == index.check({"text": q})
    path = tmp_path / "index.pkl"
    path.write_bytes(pickle.dumps(index))
    code = (
        "import pickle, sys; idx = pickle.loads(open(sys.argv[1], 'rb').read()); "
        "print(idx.check({'text': sys.argv[2]}).detail)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(path), q], capture_output=True, text=True, check=True,
        env={"PYTHONHASHSEED": "12345", "PATH": "/usr/bin:/bin"}, cwd=Path(__file__).resolve().parents[1],
    )  # fmt: skip
    assert out.stdout.strip() == index.check({"text": q}).detail


# -- eval set formats ------------------------------------------------------------------------------
def test_common_field_names(tmp_path):
    rows = [
        {"task_id": "HumanEval/0", "prompt": "def has_close_elements(numbers, threshold):\n"
         "    \"\"\"Check if in given list of numbers, are any two numbers closer to each other than threshold.\"\"\"",
         "canonical_solution": "    return any(abs(a - b) < threshold for a in numbers for b in numbers if a is not b)"},
        {"question_id": 7, "problem": "Find the remainder when the sum of the first one hundred primes is divided by 7.",
         "solution": "The sum is 24133 and 24133 mod 7 is 4."},
        {"question": "Which planet is known as the red planet in our solar system?",
         "choices": ["Venus", "Mars", "Jupiter", "Saturn"], "answer": 1},
    ]  # fmt: skip
    cfg = DecontamConfig(eval_sets={"mixed": write_jsonl(tmp_path / "m.jsonl", rows)})
    items = decontam.load_eval_set("mixed", cfg.eval_sets["mixed"], cfg)
    assert [i.item_id for i in items] == ["HumanEval/0", "7", "2"]
    assert items[2].fields == (
        ("question", "Which planet is known as the red planet in our solar system?"),
        ("answer", "1"),
        ("choices", "Venus Mars Jupiter Saturn"),
    )
    gz = tmp_path / "m.jsonl.gz"
    gz.write_bytes(gzip.compress((tmp_path / "m.jsonl").read_bytes()))
    assert decontam.load_eval_set("mixed", str(gz), cfg) == items
    idx = DecontamIndex.build(cfg)
    out = idx.check({"text": "    return any(abs(a - b) < threshold for a in numbers for b in numbers if a is not b)"})
    assert isinstance(out, Reject) and 'mixed item "HumanEval/0"' in out.detail


def test_bad_eval_files_are_errors_that_name_the_line(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "fine question with enough words to be indexed here"}\nnot json\n')
    with pytest.raises(ValueError, match="bad.jsonl line 2"):
        DecontamIndex.build(DecontamConfig(eval_sets={"b": str(bad)}))
    bad.write_text('{"title": "no text fields"}\n')
    with pytest.raises(ValueError, match="line 1: has none of the text fields"):
        DecontamIndex.build(DecontamConfig(eval_sets={"b": str(bad)}))
    with pytest.raises(FileNotFoundError):
        DecontamIndex.build(DecontamConfig(eval_sets={"b": str(tmp_path / "missing.jsonl")}))


def test_config_validation():
    with pytest.raises(ValidationError, match="short_n"):
        DecontamConfig(short_n=13, long_n=13)
    with pytest.raises(ValidationError, match="eval set names"):
        DecontamConfig(eval_sets={"gsm 8k": "x.jsonl"})
