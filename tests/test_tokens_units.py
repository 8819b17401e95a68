"""Pure units of the token and training path: packing, the mixture, the LR schedule, ZeRO batch
arithmetic and the DPO loss. No Ray, no files."""

import math
import random

import numpy as np
import pytest
import torch

from phi4ray.config import TrainConfig, load_recipe
from phi4ray.tokens import mixture
from phi4ray.tokens.pack import pack_examples, pack_stream
from phi4ray.train.objectives import dpo_loss
from phi4ray.train.schedule import lr_at
from phi4ray.train.zero import ds_config, grad_accum_steps

EOT = 100257
PAD = 100351


def _docs(n: int, seed: int = 0, max_len: int = 40) -> list[list[int]]:
    rng = random.Random(seed)
    # token values encode (doc, position) so a misplaced token is detectable
    return [[d * 1000 + i for i in range(rng.randint(0, max_len))] for d in range(n)]


# -- pack_stream ------------------------------------------------------------------------------
@pytest.mark.parametrize("seq_len", [8, 15, 64])
def test_pack_stream_keeps_every_token_once_in_order(seq_len):
    docs = _docs(50, seed=seq_len)
    rows, st = pack_stream(docs, seq_len, EOT)
    width = seq_len + 1
    assert all(len(r) == width for r in rows.input_ids)
    assert all(len(m) == width and all(m) for m in rows.loss_mask)
    stream = [t for d in docs for t in d + [EOT]]
    flat = [t for r in rows.input_ids for t in r]
    # the rows are exactly the stream, cut every `width` tokens; only the incomplete tail is dropped
    assert flat == stream[: len(flat)]
    assert len(flat) == st.rows * width and st.rows == len(rows.input_ids)
    assert st.dropped_tail_tokens == len(stream) - len(flat) < width
    assert st.docs == 50 and st.tokens == len(stream) == sum(len(d) + 1 for d in docs)
    assert st.pad_tokens == 0 and st.truncated_tokens == 0


def test_pack_stream_segment_ids_restart_per_row_and_step_at_doc_boundaries():
    docs = _docs(30, seed=7, max_len=12)
    rows, _ = pack_stream(docs, 10, EOT)
    assert rows.input_ids, "no rows"
    for ids, seg in zip(rows.input_ids, rows.segment_ids):
        assert seg[0] == 1
        for j in range(1, len(ids)):
            # a new segment starts exactly after an <|endoftext|>, and only there
            assert seg[j] == seg[j - 1] + (1 if ids[j - 1] == EOT else 0)


def test_pack_stream_exact_small_case():
    rows, st = pack_stream([[1, 2, 3], [4, 5], [6, 7, 8, 9]], seq_len=3, eot=0)
    # stream: 1 2 3 0 | 4 5 0 6 | 7 8 9 0  -> 3 rows of 4, no tail
    assert rows.input_ids == [[1, 2, 3, 0], [4, 5, 0, 6], [7, 8, 9, 0]]
    assert rows.segment_ids == [[1, 1, 1, 1], [1, 1, 1, 2], [1, 1, 1, 1]]
    assert (st.rows, st.tokens, st.dropped_tail_tokens) == (3, 12, 0)
    rows, st = pack_stream([[1, 2, 3, 4, 5, 6]], seq_len=3, eot=0)
    assert rows.input_ids == [[1, 2, 3, 4]] and st.dropped_tail_tokens == 3  # 5 6 <eot> dropped


def test_pack_stream_columns():
    rows, _ = pack_stream([[1] * 20], 4, EOT)
    cols = rows.as_columns()
    assert set(cols) == {"input_ids", "loss_mask", "segment_ids"} and len(cols["input_ids"]) == 4


# -- pack_examples ----------------------------------------------------------------------------
def _examples(n: int, seed: int = 0, max_len: int = 20):
    rng = random.Random(seed)
    out = []
    for e in range(n):
        k = rng.randint(1, max_len)
        ids = [e * 1000 + i for i in range(k)]
        mask = [1 if i >= k // 2 else 0 for i in range(k)]  # prompt then answer
        out.append((ids, mask))
    return out


def _segments(ids, mask, seg):
    """(ids, mask) of each segment of a packed row, in order; padding (segment 0) left out."""
    out: dict[int, tuple[list, list]] = {}
    for t, m, s in zip(ids, mask, seg):
        if s:
            out.setdefault(s, ([], []))
            out[s][0].append(t), out[s][1].append(m)
    assert list(out) == list(range(1, len(out) + 1)), "segments must be numbered 1, 2, ... in order"
    return list(out.values())


def test_pack_examples_never_splits_and_carries_masks():
    exs = _examples(60, seed=3)
    rows, st = pack_examples(exs, 31, PAD)
    width = 32
    found = []
    for ids, mask, seg in zip(rows.input_ids, rows.loss_mask, rows.segment_ids):
        assert len(ids) == len(mask) == len(seg) == width
        n = sum(1 for s in seg if s)
        assert all(s == 0 for s in seg[n:]) and all(t == PAD for t in ids[n:]) and not any(mask[n:])
        found += _segments(ids, mask, seg)
    # every example appears whole, exactly once, with its own loss mask
    assert sorted(map(repr, found)) == sorted(map(repr, [(list(i), list(m)) for i, m in exs]))
    assert st.docs == 60 and st.rows == len(rows.input_ids)
    assert st.tokens == sum(len(i) for i, _ in exs)
    assert st.pad_tokens == st.rows * width - st.tokens == sum(s.count(0) for s in rows.segment_ids)
    assert st.truncated_tokens == 0


def test_pack_examples_first_fit_exact():
    exs = [([1] * 5, [1] * 5), ([2] * 4, [0, 0, 1, 1]), ([3] * 2, [1, 1]), ([4] * 3, [1] * 3)]
    rows, st = pack_examples(exs, 5, 0)  # width 6
    assert rows.input_ids == [[1, 1, 1, 1, 1, 0], [2, 2, 2, 2, 3, 3], [4, 4, 4, 0, 0, 0]]
    assert rows.segment_ids == [[1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 2, 2], [1, 1, 1, 0, 0, 0]]
    assert rows.loss_mask == [[1, 1, 1, 1, 1, 0], [0, 0, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0]]
    assert (st.pad_tokens, st.truncated_tokens, st.tokens) == (4, 0, 14)


def test_pack_examples_truncates_long_examples_and_counts_it():
    long_ids, long_mask = list(range(100, 120)), [0] * 5 + [1] * 15
    rows, st = pack_examples([(long_ids, long_mask), ([7, 8], [0, 1])], 9, PAD)  # width 10
    assert rows.input_ids[0] == long_ids[:10]  # the beginning (the prompt) is kept
    assert rows.loss_mask[0] == long_mask[:10]
    assert st.truncated_tokens == 10 and st.tokens == 12
    assert rows.input_ids[1][:2] == [7, 8] and st.pad_tokens == 8


def test_pack_examples_ignores_empty_examples():
    rows, st = pack_examples([([], []), ([1, 2], [1, 1])], 8, 0)
    assert rows.input_ids == [[1, 2] + [0] * 7]
    assert st.rows == 1


# -- mixture.plan -----------------------------------------------------------------------------
PHI4_MIX = {"web": 0.15, "web_rewrite": 0.15, "synthetic": 0.40, "code": 0.20, "acquired": 0.10}
# unique tokens per source, from the paper's pretraining data-mixture table (§3.1)
PHI4_UNIQUE = {"web": 1_300e9, "web_rewrite": 290e9, "synthetic": 290e9, "code": 820e9, "acquired": 580e9}


def test_plan_gives_the_target_fractions_and_the_papers_epochs():
    unique = {k: int(v) for k, v in PHI4_UNIQUE.items()}
    plans = mixture.plan(unique, PHI4_MIX, 10**13)
    assert set(plans) == set(PHI4_MIX)
    total = sum(p.target_tokens for p in plans.values())
    assert total == pytest.approx(10**13, abs=5)
    for s, p in plans.items():
        assert p.weight == pytest.approx(PHI4_MIX[s])
        assert p.target_tokens / total == pytest.approx(PHI4_MIX[s], abs=1e-9)
        assert p.unique_tokens == unique[s]
    # the table's epochs follow from fraction x 10T / unique tokens (the paper rounds to 0.1;
    # its synthetic 13.8 is 13.79 here, web 1.2 is 1.15)
    epochs = {s: round(p.epochs, 1) for s, p in plans.items()}
    assert epochs == {"web": 1.2, "web_rewrite": 5.2, "synthetic": 13.8, "code": 2.4, "acquired": 1.7}


def test_plan_renormalises_when_a_source_is_missing():
    unique = {"web": 1000, "synthetic": 1000, "code": 1000}  # no web_rewrite, no acquired
    plans = mixture.plan(unique, PHI4_MIX, 7500)
    assert set(plans) == {"web", "synthetic", "code"}
    norm = 0.15 + 0.40 + 0.20
    for s in plans:
        assert plans[s].weight == pytest.approx(PHI4_MIX[s] / norm)
    assert sum(p.weight for p in plans.values()) == pytest.approx(1.0)
    assert plans["synthetic"].target_tokens == 4000 and plans["web"].target_tokens == 1500
    # a source with zero tokens counts as missing, and so does one with weight 0
    plans = mixture.plan({"web": 10, "code": 0, "acquired": 5}, {"web": 0.5, "code": 0.3, "acquired": 0.0}, 100)
    assert set(plans) == {"web"} and plans["web"].weight == 1.0 and plans["web"].target_tokens == 100


def test_plan_total_none_uses_the_scarcest_source_exactly_once():
    unique = {"web": 10_000, "synthetic": 1_000, "code": 5_000}
    weights = {"web": 0.2, "synthetic": 0.5, "code": 0.3}
    plans = mixture.plan(unique, weights, None)
    # synthetic binds: 1000 / 0.5 = 2000 tokens in all; nothing repeats, the rest is subsampled
    assert plans["synthetic"].target_tokens == 1000 and plans["synthetic"].epochs == 1.0
    assert plans["web"].target_tokens == 400 and plans["code"].target_tokens == 600
    assert all(p.epochs <= 1.0 for p in plans.values())


def test_plan_with_nothing_to_mix_is_a_clear_error():
    with pytest.raises(ValueError) as e:
        mixture.plan({"web": 0, "other": 50}, PHI4_MIX, None)
    msg = str(e.value)
    assert "no source of the mixture" in msg and "curate and synth" in msg and "'other': 50" in msg
    with pytest.raises(ValueError, match="no source"):
        mixture.plan({}, PHI4_MIX, 1000)


# -- mixture: cuts and copies -----------------------------------------------------------------
def _corpus(seed: int, sizes: dict[str, int]) -> dict[str, tuple[list[str], np.ndarray]]:
    """Generated documents per source: ids and lognormal token counts (no text needed)."""
    rng = np.random.default_rng(seed)
    out = {}
    for s, n in sizes.items():
        toks = np.maximum(1, rng.lognormal(mean=6.0, sigma=1.2, size=n)).astype(np.int64)
        out[s] = ([f"{s}-{i}" for i in range(n)], toks)
    return out


def _realise(corpus, weights, total, seed):
    unique = {s: int(t.sum()) for s, (_, t) in corpus.items()}
    hists, us = {}, {}
    for s, (ids, toks) in corpus.items():
        us[s] = np.array([mixture.doc_u(i, seed, s) for i in ids])
        hists[s] = mixture.histogram(us[s], toks)
    plans = mixture.set_cuts(mixture.plan(unique, weights, total), hists)
    realised = {
        s: int(sum(mixture.copies(u, plans[s]) * t for u, t in zip(us[s], corpus[s][1]))) for s in plans
    }
    return plans, realised


def test_mixture_of_ten_million_tokens_realises_the_fractions_within_half_a_point():
    # the paper's mixture over sources whose sizes force repeats (synthetic, web_rewrite) and
    # subsampling (web): 10M tokens drawn from about 8.7M unique
    corpus = _corpus(0, {"web": 4000, "web_rewrite": 800, "synthetic": 1500, "code": 3000, "acquired": 1500})
    plans, realised = _realise(corpus, PHI4_MIX, 10_000_000, seed=0)
    total = sum(realised.values())
    assert total >= 10_000_000 * 0.99
    report = mixture.report(plans, realised)
    for s, r in report.items():
        assert abs(r["realised_fraction"] - PHI4_MIX[s]) < 0.005, (s, r)
        assert r["realised_epochs"] == pytest.approx(r["target_epochs"], rel=0.02)
    assert report["synthetic"]["realised_epochs"] > 2 and report["web"]["realised_epochs"] < 1
    # deterministic for a seed, different for another
    assert _realise(corpus, PHI4_MIX, 10_000_000, seed=0)[1] == realised
    assert _realise(corpus, PHI4_MIX, 10_000_000, seed=1)[1] != realised


def test_copies_are_whole_epochs_plus_one_below_the_cut():
    p = mixture.SourcePlan("web", 1.0, 100, 250, cut=0.5)
    assert p.whole == 2 and [mixture.copies(u, p) for u in (0.0, 0.49, 0.5, 0.99)] == [3, 3, 2, 2]
    with pytest.raises(ValueError, match="set_cuts"):
        mixture.copies(0.1, mixture.SourcePlan("web", 1.0, 100, 250))


def test_cut_is_exact_at_document_granularity_on_a_small_source():
    ids = [f"d{i}" for i in range(10)]
    toks = np.full(10, 100)
    us = np.array([mixture.doc_u(i, 0, "web") for i in ids])
    plan = mixture.set_cuts(mixture.plan({"web": 1000}, {"web": 1.0}, 1300), {"web": mixture.histogram(us, toks)})
    got = sum(mixture.copies(u, plan["web"]) * t for u, t in zip(us, toks))
    assert got == 1300  # 1 epoch plus exactly 3 of the 10 documents


def test_midtrain_weights_split_long_and_recall_and_upweight_the_longest():
    unique = {"recall/web": 600, "recall/synthetic": 400, "long": 100, "long_up": 100}
    w = mixture.midtrain_weights({"web": 0.3, "synthetic": 0.7, "code": 0.2}, unique, 0.3, 2.0)
    assert sum(w.values()) == pytest.approx(1.0)
    assert w["recall/web"] == pytest.approx(0.7 * 0.3) and w["recall/synthetic"] == pytest.approx(0.7 * 0.7)
    assert w["long"] + w["long_up"] == pytest.approx(0.3) and w["long_up"] == pytest.approx(2 * w["long"])
    assert mixture.long_pool(8191, 8192, 16384) is None
    assert mixture.long_pool(8192, 8192, 16384) == "long" and mixture.long_pool(16384, 8192, 16384) == "long_up"


def test_bucket_is_stable_and_spreads():
    b = [mixture.bucket(f"k{i}", 8, seed=0) for i in range(8000)]
    assert b == [mixture.bucket(f"k{i}", 8, seed=0) for i in range(8000)]
    counts = [b.count(k) for k in range(8)]
    assert min(counts) > 850 and max(counts) < 1150  # about 1000 each


# -- schedule.lr_at ---------------------------------------------------------------------------
def test_lr_warms_up_linearly_to_the_peak():
    peak, total, warm = 3e-4, 110, 10
    lrs = [lr_at(s, peak, total, warm) for s in range(warm)]
    assert lrs[0] == pytest.approx(peak / 10)
    assert lrs[4] == pytest.approx(peak / 2)
    assert lrs[9] == pytest.approx(peak)
    steps = [b - a for a, b in zip(lrs, lrs[1:])]
    assert all(d == pytest.approx(peak / warm) for d in steps)  # linear


def test_lr_decays_linearly_to_the_min_ratio():
    peak, total, warm = 1.0, 110, 10
    assert lr_at(10, peak, total, warm) == pytest.approx(1.0)
    assert lr_at(60, peak, total, warm) == pytest.approx(0.5)  # half-way through the decay
    assert lr_at(110, peak, total, warm) == pytest.approx(0.0)
    assert lr_at(500, peak, total, warm) == pytest.approx(0.0)  # clamped after the end
    assert lr_at(60, peak, total, warm, min_ratio=0.1) == pytest.approx(0.1 + 0.9 * 0.5)
    assert lr_at(110, peak, total, warm, min_ratio=0.1) == pytest.approx(0.1)
    decay = [lr_at(s, peak, total, warm) for s in range(10, 111)]
    assert all(b - a == pytest.approx(-0.01) for a, b in zip(decay, decay[1:]))  # linear


def test_lr_without_warmup_starts_at_peak_and_rejects_bad_totals():
    assert lr_at(0, 2.0, 4, 0) == 2.0
    assert [lr_at(s, 1.0, 4, 0) for s in range(4)] == pytest.approx([1.0, 0.75, 0.5, 0.25])
    with pytest.raises(ValueError, match="total_steps"):
        lr_at(0, 1.0, 0, 0)


# -- zero.grad_accum_steps --------------------------------------------------------------------
def test_phi4_global_batch_with_the_recipes_cluster():
    pre = load_recipe("phi-4").pretrain
    assert pre.global_batch_size == 5760
    accum = grad_accum_steps(pre, pre.num_workers)
    assert accum == 3  # 5760 = micro 1 x 1920 workers x 3
    assert pre.micro_batch_size * pre.num_workers * accum == 5760
    ds = ds_config(pre, pre.num_workers, bf16=True)
    assert (ds["train_batch_size"], ds["train_micro_batch_size_per_gpu"], ds["gradient_accumulation_steps"]) == (5760, 1, 3)
    # the same batch on other cluster sizes
    assert grad_accum_steps(pre.model_copy(update={"micro_batch_size": 3}), 1920) == 1
    assert grad_accum_steps(pre.model_copy(update={"micro_batch_size": 2}), 480) == 6


def test_grad_accum_error_when_the_batch_does_not_divide():
    cfg = TrainConfig(global_batch_size=5760, micro_batch_size=4)
    with pytest.raises(ValueError) as e:
        grad_accum_steps(cfg, 1920)  # 4 x 1920 = 7680 > 5760
    assert "5760" in str(e.value) and "1920" in str(e.value) and "micro_batch_size 4" in str(e.value)
    with pytest.raises(ValueError):
        grad_accum_steps(TrainConfig(global_batch_size=5760, micro_batch_size=1), 1000)  # 5760 % 1000


# -- objectives.dpo_loss ----------------------------------------------------------------------
def _hand_dpo(pc, pr, rc, rr, beta):
    z = beta * ((pc - rc) - (pr - rr))
    return -math.log(1 / (1 + math.exp(-z)))


def test_dpo_loss_equals_the_formula():
    pc, pr = [-10.0, -20.0, -5.0], [-12.0, -15.0, -5.5]
    rc, rr = [-11.0, -18.0, -6.0], [-11.5, -16.0, -5.0]
    beta = 0.1
    loss, m = dpo_loss(torch.tensor(pc), torch.tensor(pr), torch.tensor(rc), torch.tensor(rr), beta)
    want = sum(_hand_dpo(*x, beta) for x in zip(pc, pr, rc, rr)) / 3
    assert loss.item() == pytest.approx(want, rel=1e-6)
    # metrics: implicit rewards beta * (policy - reference)
    ch = [beta * (a - b) for a, b in zip(pc, rc)]  # 0.1, -0.2, 0.1
    rj = [beta * (a - b) for a, b in zip(pr, rr)]  # -0.05, 0.1, -0.05
    assert m["rewards/chosen"].item() == pytest.approx(sum(ch) / 3, abs=1e-6)
    assert m["rewards/rejected"].item() == pytest.approx(sum(rj) / 3, abs=1e-6)
    assert m["rewards/margins"].item() == pytest.approx((sum(ch) - sum(rj)) / 3, abs=1e-6)
    assert m["rewards/accuracy"].item() == pytest.approx(2 / 3)
    assert m["logps/chosen"].item() == pytest.approx(sum(pc) / 3)
    assert m["logps/rejected"].item() == pytest.approx(sum(pr) / 3)


def test_dpo_loss_at_equal_policy_and_reference_is_log2_and_grads_push_the_right_way():
    pc = torch.tensor([-3.0], requires_grad=True)
    pr = torch.tensor([-3.0], requires_grad=True)
    loss, m = dpo_loss(pc, pr, torch.tensor([-3.0]), torch.tensor([-3.0]), beta=0.5)
    assert loss.item() == pytest.approx(math.log(2))
    assert m["rewards/margins"].item() == 0 and m["rewards/accuracy"].item() == 0
    loss.backward()
    assert pc.grad.item() == pytest.approx(-0.25)  # -beta * sigmoid(0): raise the chosen log-prob
    assert pr.grad.item() == pytest.approx(0.25)  # lower the rejected one
    assert not m["rewards/chosen"].requires_grad  # metrics are detached
