"""Training: objectives against full forward passes, the loop without Ray, and DPO on Ray Train."""

import math
import os

import pyarrow as pa
import pytest
import torch
import torch.nn.functional as F

from phi4ray.config import DPOConfig, Recipe, TrainConfig
from phi4ray.model import build_model, load_model, save_checkpoint
from phi4ray.run import RunDir
from phi4ray.train import objectives
from phi4ray.train.loop import LocalContext, LoopSpec, dpo_batch, steps_for, train_local
from phi4ray.train.trainer import run_train


@pytest.fixture(scope="module")
def micro():
    return build_model("micro", seed=3)


def test_causal_lm_loss_is_cross_entropy_over_masked_targets_only(micro):
    ids = torch.randint(0, 1000, (2, 9))
    mask = torch.tensor([[0, 0, 0, 1, 1, 1, 0, 0, 1], [0, 1, 1, 1, 1, 1, 1, 1, 1]])
    out = objectives.CausalLM(micro)(ids, mask)
    logits = micro(input_ids=ids[:, :-1]).logits
    ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1), reduction="none")
    w = mask[:, 1:].reshape(-1).float()
    expected = (ce * w).sum() / w.sum()
    assert out["tokens"].item() == int(w.sum())
    assert torch.allclose(out["loss"], expected, atol=1e-5)


def test_sequence_logps_sum_the_completion_tokens_of_each_row(micro):
    ids = torch.tensor([[5, 6, 7, 8, 9], [11, 12, 13, 0, 0]])
    comp = torch.tensor([[0, 0, 1, 1, 1], [0, 0, 1, 0, 0]])
    att = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    got = objectives.sequence_logps(micro, ids, comp, att)
    logp = micro(input_ids=ids, attention_mask=att).logits.log_softmax(-1)
    want0 = sum(logp[0, t - 1, ids[0, t]] for t in (2, 3, 4))
    want1 = logp[1, 1, ids[1, 2]]
    assert torch.allclose(got, torch.stack([want0, want1]), atol=1e-5)


def test_dpo_batch_lays_out_chosen_then_rejected_with_completion_masks():
    b = {"prompt_ids": [[1, 2, 3], [4]], "chosen_ids": [[7], [8, 9]], "rejected_ids": [[5], [6]]}
    out = dpo_batch(b, "cpu", pad_id=0)
    assert out["input_ids"].tolist() == [[1, 2, 3, 7], [4, 8, 9, 0], [1, 2, 3, 5], [4, 6, 0, 0]]
    assert out["completion_mask"].tolist() == [[0, 0, 0, 1], [0, 1, 1, 0], [0, 0, 0, 1], [0, 1, 0, 0]]
    assert out["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 1, 0], [1, 1, 1, 1], [1, 1, 0, 0]]


def test_steps_for_counts_full_global_batches_over_epochs():
    cfg = TrainConfig(micro_batch_size=4, global_batch_size=16, epochs=2)
    assert steps_for(70, cfg, world_size=2) == 8  # 64 usable rows per epoch -> 4 steps x 2 epochs
    assert steps_for(70, cfg.model_copy(update={"max_steps": 3}), world_size=2) == 3
    with pytest.raises(ValueError, match="no full optimizer step"):
        steps_for(10, cfg.model_copy(update={"epochs": 1}), world_size=2)  # 8 usable rows < 16


def test_local_loop_learns_a_fixed_sequence_and_exports_an_hf_checkpoint(tmp_path):
    """One process, no Ray: DeepSpeed ZeRO-2 over gloo with world size 1."""
    row = [100, 200, 300, 400, 500, 600, 700, 800, 900]
    rows = {"input_ids": [row] * 32, "loss_mask": [[1] * len(row)] * 32}
    cfg = TrainConfig(num_workers=1, micro_batch_size=4, global_batch_size=8, lr=3e-2, warmup_steps=0, epochs=6)
    spec = LoopSpec(stage="pretrain", objective="lm", train=cfg.model_dump(mode="json"), total_steps=24,
                    run_dir=str(tmp_path / "run"), export_rel="checkpoints/pretrain/hf", preset="micro", log_every=1)
    last, history = train_local(spec, rows, str(tmp_path / "ckpt"))
    assert [h["step"] for h in history] == list(range(1, 25))
    assert [h["epoch"] for h in history][::4] == [0, 1, 2, 3, 4, 5]  # 4 steps of 8 rows per epoch
    assert history[0]["loss"] > 9.0 and last["loss"] < 1.0, [h["loss"] for h in history]
    assert all(h["grad_norm"] > 0 for h in history) and history[0]["grad_norm"] > last["grad_norm"]
    model = load_model(str(tmp_path / "run" / "checkpoints/pretrain/hf"))
    with torch.no_grad():
        pred = model(input_ids=torch.tensor([row[:-1]])).logits.argmax(-1)[0].tolist()
    assert pred == row[1:]  # the export holds the trained weights
    assert (tmp_path / "ckpt").is_dir() and any(p.name.startswith("step_") for p in (tmp_path / "ckpt").iterdir())


class _Recording(LocalContext):
    """A LocalContext that records which rows each micro-batch holds."""

    def __init__(self, *a, **k):
        super().__init__(*a, **k)
        self.seen: list[int] = []

    def batches(self, micro_batch_size, intervals):
        for b in super().batches(micro_batch_size, intervals):
            self.seen += b["rid"]
            yield b


class _Crash(Exception):
    pass


def test_a_resumed_loop_continues_from_its_data_position(tmp_path):
    """Crash right after the step-5 checkpoint, resume from it: across both runs every row of
    each epoch is trained on exactly once, in the order of an uninterrupted run."""
    n = 30  # micro 2, global 4: 15 micro-batches per epoch, so step 8 spans two epochs
    rows = {"input_ids": [[7, 8, 9]] * n, "loss_mask": [[1, 1, 1]] * n, "rid": list(range(n))}
    cfg = TrainConfig(num_workers=1, micro_batch_size=2, global_batch_size=4, epochs=2, checkpoint_every=5)
    spec = LoopSpec(stage="pretrain", objective="lm", train=cfg.model_dump(mode="json"), total_steps=14,
                    run_dir=str(tmp_path / "run"), export_rel="checkpoints/pretrain/hf", preset="micro", log_every=1)

    def crash_after_5(metrics):
        if metrics["step"] == 5:
            raise _Crash

    first = _Recording(rows, str(tmp_path / "ckpt"), on_report=crash_after_5)
    with pytest.raises(_Crash):
        _, _ = train_local(spec, rows, str(tmp_path / "ckpt"), on_report=crash_after_5, context=first)
    second = _Recording(rows, str(tmp_path / "ckpt"))
    train_local(spec, rows, str(tmp_path / "ckpt"), context=second)
    assert first.seen == list(range(20))  # 5 steps x 4 rows, then the crash
    assert second.seen == list(range(20, 30)) + list(range(26))  # the rest of epoch 0, then epoch 1
    assert [h["step"] for h in second.history] == list(range(6, 15))


def _pairs_table(n: int) -> pa.Table:
    from phi4ray.pts.search import PAIRS_SCHEMA

    rows = []
    for i in range(n):
        prompt = [1000 + i % 4, 2000, 3000]
        rows.append({"question_id": f"q{i}", "prompt": "p", "chosen": "a", "rejected": "b",
                     "prompt_ids": prompt, "chosen_ids": [42], "rejected_ids": [43],
                     "p_before": 0.5, "p_after": 0.9, "p_chosen": 0.9, "p_rejected": 0.1})
    return pa.Table.from_pylist(rows, schema=PAIRS_SCHEMA)


def test_dpo_on_ray_train_prefers_chosen_tokens_over_the_reference(ray_local, tmp_path):
    run_dir = RunDir(tmp_path / "run")
    ref = build_model("micro", seed=5)
    save_checkpoint(ref, run_dir.path("checkpoints/sft/hf"))
    table = _pairs_table(32)
    run_dir.commit_table("pts/pairs", "part-00000", table)
    recipe = Recipe(
        model={"preset": "micro"},
        dpo=DPOConfig(init_from="sft", num_workers=2, cpus_per_worker=0.5, micro_batch_size=4,
                      global_batch_size=8, lr=5e-3, warmup_steps=0, epochs=2, beta=0.1),
    )
    entry = run_train("dpo", recipe, run_dir)
    assert entry["status"] == "complete"
    assert entry["counts"]["rows"] == 32 and entry["counts"]["steps"] == 8
    assert entry["metrics"]["rewards/accuracy"] == 1.0 and entry["metrics"]["rewards/margins"] > 0

    policy = load_model(run_dir.path("checkpoints/dpo/hf"))
    prompts = torch.tensor(table.column("prompt_ids").to_pylist())
    with torch.no_grad():
        new = policy(input_ids=prompts).logits[:, -1].log_softmax(-1)
        old = ref(input_ids=prompts).logits[:, -1].log_softmax(-1)
    margin_new = (new[:, 42] - new[:, 43]).mean().item()
    margin_old = (old[:, 42] - old[:, 43]).mean().item()
    assert margin_new > margin_old + 1.0, (margin_old, margin_new)
    assert math.isfinite(entry["metrics"]["loss"]) and entry["metrics"]["loss"] < math.log(2)

    # complete with the same config: a rerun is a no-op
    again = run_train("dpo", recipe, run_dir)
    assert again["finished"] == entry["finished"]

    # --force trains again from the start; it must not resume from the finished run's checkpoint
    def ray_ckpts():
        root = run_dir.path("checkpoints/dpo/ray")
        return {d for d in os.listdir(root) if d.startswith("checkpoint_") and os.path.isdir(os.path.join(root, d))}

    before = ray_ckpts()
    assert before
    forced = run_train("dpo", recipe.model_copy(update={"dpo": recipe.dpo.model_copy(update={"max_steps": 2})}), run_dir, force=True)
    assert forced["counts"]["steps"] == 2 and forced["metrics"]["tokens"] == 2 * 8 * 2  # 2 steps x 8 pairs x 2 rows
    assert ray_ckpts() and not before & ray_ckpts()


def test_document_masking_makes_a_packed_document_see_only_itself():
    from phi4ray.train.objectives import _hidden, document_positions

    seg = torch.tensor([[1, 1, 1, 2, 2, 2, 2, 0, 0]])
    assert document_positions(seg).tolist() == [[0, 1, 2, 0, 1, 2, 3, 0, 1]]
    model = build_model("micro", seed=0).eval()
    a, b = [11, 12, 13], [21, 22, 23, 24]
    packed = torch.tensor([a + b])
    with torch.no_grad():
        masked = _hidden(model, packed, position_ids=document_positions(torch.tensor([[1] * 3 + [2] * 4])))
        alone = _hidden(model, torch.tensor([b]))
        plain = _hidden(model, packed)
    torch.testing.assert_close(masked[0, 3:], alone[0], rtol=1e-5, atol=1e-5)  # as if b stood alone
    assert not torch.allclose(plain[0, 3:], alone[0], atol=1e-3)  # without it, b attends to a


def test_precomputed_reference_logps_match_the_in_loop_reference_and_train(ray_local, tmp_path):
    from phi4ray.tokenizer import EOT_ID
    from phi4ray.train.objectives import sequence_logps
    from phi4ray.train.reference import precompute_ref_logps

    run_dir = RunDir(tmp_path / "run")
    ref = build_model("micro", seed=5)
    save_checkpoint(ref, run_dir.path("checkpoints/sft/hf"))
    run_dir.commit_table("pts/pairs", "part-00000", _pairs_table(16))
    n = precompute_ref_logps(run_dir, "pts/pairs", "checkpoints/dpo/ref_logps", run_dir.path("checkpoints/sft/hf"),
                             "micro", batch_size=4, rows_per_shard=8)
    assert n == 16 and len(run_dir.shards("checkpoints/dpo/ref_logps")) == 2
    got = run_dir.read_table("checkpoints/dpo/ref_logps").to_pydict()
    b = dpo_batch(got, torch.device("cpu"), EOT_ID)
    with torch.no_grad():
        want = sequence_logps(ref.eval(), b["input_ids"], b["completion_mask"], b["attention_mask"])
    torch.testing.assert_close(b["ref_logps"], want, rtol=1e-4, atol=1e-4)

    # the loop trains against them with no reference model in memory
    cfg = DPOConfig(num_workers=1, micro_batch_size=4, global_batch_size=4, lr=5e-3, epochs=2, precompute_ref_logps=True)
    spec = LoopSpec(stage="dpo", objective="dpo", train=cfg.model_dump(mode="json"), total_steps=8,
                    run_dir=str(tmp_path / "run"), export_rel="checkpoints/dpo/hf",
                    init_path=run_dir.path("checkpoints/sft/hf"), log_every=1)
    last, history = train_local(spec, got, str(tmp_path / "ckpt"))
    assert history[0]["rewards/margins"] == pytest.approx(0.0, abs=1e-3)  # policy == reference at step 1
    assert last["rewards/margins"] > 0.1 and last["rewards/accuracy"] == 1.0
