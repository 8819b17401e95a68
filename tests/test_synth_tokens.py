"""The arithmetic task, the synth and tokenize stages on a local Ray."""

import json

import pytest

from phi4ray.config import ArithmeticConfig, RewriteConfig, SynthConfig, TokenizeConfig
from phi4ray.run import RunDir
from phi4ray.synth import arithmetic
from phi4ray.synth.run import run_synth
from phi4ray.tokenizer import EOT_ID, encode, render_chat
from phi4ray.tokens.tokenize import run_tokenize, tokenize_docs


def test_questions_are_correct_distinct_deterministic_and_heldout_is_disjoint():
    cfg = ArithmeticConfig(n_train=500, n_heldout=50, min_terms=3, max_terms=4, max_operand=9)
    train, heldout = arithmetic.split(cfg)
    assert (train, heldout) == arithmetic.split(cfg)
    assert len({q["prompt"] for q in train}) == 500
    assert not {q["prompt"] for q in train} & {q["prompt"] for q in heldout}
    for q in train[:50] + heldout:
        terms = [int(t) for t in q["prompt"].rstrip("=").split("+")]
        sums = [int(s) for s in q["solution"].split()]
        assert sums == [sum(terms[: i + 1]) for i in range(1, len(terms))]
        assert q["answer"] == str(sum(terms)) == q["solution"].split()[-1]


def test_every_running_sum_is_one_token():
    """The claim PTS relies on: each step of a solution is a single, decisive token."""
    q = arithmetic.make_question([9, 9, 9, 9, 9])
    ids = encode(" " + q["solution"])
    assert len(ids) == 2 * 4  # (" ", "18"), (" ", "27"), ...
    assert [encode(s) for s in q["solution"].split()] == [[i] for i in ids[1::2]]


def test_impossible_question_counts_are_a_clear_error():
    with pytest.raises(ValueError, match="raise max_terms or max_operand"):
        arithmetic.generate(ArithmeticConfig(min_terms=2, max_terms=2, max_operand=2), 10, seed=0)


def test_tokenize_docs_rejects_rows_without_text_instead_of_dropping_them():
    docs, rejects = tokenize_docs([{"id": "a", "source": "web", "text": "hello"}, {"id": "b", "source": "web", "text": None}])
    assert [d["id"] for d in docs] == ["a"] and docs[0]["ids"] == encode("hello")
    assert [(r["id"], r["reason"]) for r in rejects] == [("b", "no_text")]


def test_synth_and_tokenize_stages_on_ray(ray_local, tmp_path):
    run_dir = RunDir(tmp_path / "run")
    cfg = SynthConfig(arithmetic=ArithmeticConfig(n_train=300, n_heldout=20, n_pts=5), rewrite=RewriteConfig(enabled=False))
    counts = run_synth(cfg, run_dir)
    assert counts == {"arithmetic_rows": 300, "heldout_questions": 20, "pts_questions": 5}
    syn = run_dir.read_table("synthetic").to_pylist()
    q = syn[0]
    assert q["source"] == "synthetic" and q["kind"] == "arithmetic"
    assert json.loads(q["messages"])[1] == {"role": "assistant", "content": q["text"].split(" ", 1)[1]}
    questions = run_dir.read_table("questions").to_pylist()
    assert sorted({r["split"] for r in questions}) == ["heldout", "pts"]

    tcfg = TokenizeConfig(seq_len=64, mixture={"synthetic": 1.0}, total_tokens=None, rows_per_shard=16)
    out = run_tokenize(tcfg, run_dir)
    mix = out["metrics"]["mixture"]["synthetic"]
    assert mix["realised_fraction"] == 1.0 and mix["realised_epochs"] == pytest.approx(1.0, abs=0.02)
    pre = run_dir.read_table("tokens/pretrain")
    assert pre.num_rows == out["counts"]["pretrain_rows"] > 1
    assert all(len(r) == 65 for r in pre.column("input_ids").to_pylist())
    assert len(run_dir.shards("tokens/pretrain")) >= 2  # mixed across several shards
    # SFT rows: the assistant-only masks of render_chat, examples never split
    sft = run_dir.read_table("tokens/sft").to_pylist()
    first = json.loads(syn[0]["messages"])
    ids, mask = render_chat(first)
    row = next(r for r in sft if r["input_ids"][: len(ids)] == ids)
    assert row["loss_mask"][: len(ids)] == mask
    assert sum(sum(r["loss_mask"]) for r in sft) == sum(sum(render_chat(json.loads(s["messages"]))[1]) for s in syn)
    assert EOT_ID in pre.column("input_ids").to_pylist()[0]


def test_tokenize_builds_the_midtraining_mixture_and_dpo_pairs(ray_local, tmp_path):
    import pyarrow as pa

    from phi4ray.config import MidtrainMixConfig

    run_dir = RunDir(tmp_path / "run")
    words = "the quick brown fox jumps over the lazy dog and keeps running far away".split()
    rows = []
    for i in range(60):  # 300-token documents and 40-token ones, web and synthetic
        n = 300 if i % 3 == 0 else 40
        rows.append({"id": f"d{i}", "source": "web" if i % 2 else "synthetic",
                     "text": " ".join(words[(i + j) % len(words)] for j in range(n))})
    run_dir.commit_table("curated", "part-00000", pa.Table.from_pylist(rows))
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(
        json.dumps({"prompt": "1+1=", "chosen": " 2", "rejected": " 3"}) + "\n"
        + "{not json\n"
        + json.dumps({"prompt": "1+2=", "chosen": " 3"}) + "\n"
    )
    cfg = TokenizeConfig(
        seq_len=32, mixture={"web": 0.5, "synthetic": 0.5}, rows_per_shard=64, dpo_pairs=[str(pairs)],
        midtrain=MidtrainMixConfig(seq_len=128, long_fraction=0.3, long_min_tokens=200, upweight_min_tokens=100000),
    )
    out = run_tokenize(cfg, run_dir)
    m = out["metrics"]
    assert set(m["midtrain_mixture"]) == {"recall/web", "recall/synthetic", "long"}
    assert m["midtrain_long_fraction"] == pytest.approx(0.3, abs=0.03)
    mid = run_dir.read_table("tokens/midtrain")
    assert mid.num_rows == out["counts"]["midtrain_rows"] > 0
    assert {len(r) for r in mid.column("input_ids").to_pylist()} == {129}
    for s, v in m["mixture"].items():
        assert v["realised_fraction"] == pytest.approx(0.5, abs=0.05), (s, v)
    assert 0 <= m["pretrain_packing"]["waste"] < 0.05
    dpo = run_dir.read_table("tokens/dpo").to_pylist()
    assert [(r["prompt"], r["chosen_ids"]) for r in dpo] == [("1+1=", encode(" 2"))]
    rejects = run_dir.read_table("rejects/tokenize").to_pylist()
    assert sorted(r["reason"].split(":")[0] for r in rejects) == ["bad_line", "missing_field"]
    assert out["counts"]["dpo_pairs"] == 1 and out["counts"]["dpo_rejected"] == 2
