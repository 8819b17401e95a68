"""The transformers engine against plain full forward passes, and the Ray Data actor path."""

import math

import pytest
import torch

from phi4ray.config import EngineConfig
from phi4ray.inference.hf_engine import TransformersSampler
from phi4ray.inference.sampler import Sampler, SamplingParams, make_sampler
from phi4ray.model import build_model, load_model, save_checkpoint
from phi4ray.tokenizer import IM_END_ID, decode, encode

CHAT = "<|im_start|>user<|im_sep|>3+5+2=<|im_end|><|im_start|>assistant<|im_sep|>"
PROMPTS = [CHAT, "Hello", "The quick brown fox jumps over the lazy dog, and then it ran far away"]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    path = tmp_path_factory.mktemp("micro") / "hf"
    save_checkpoint(build_model("micro", seed=3), path)
    return str(path)


@pytest.fixture(scope="module")
def sampler(ckpt):
    return TransformersSampler.from_pretrained(ckpt, device="cpu")


@pytest.fixture(scope="module")
def ref_model(ckpt):
    return load_model(ckpt)


def full_logprobs(model, ids):
    """log_softmax of one full forward pass, no cache, no padding: [len(ids), vocab]."""
    with torch.no_grad():
        return torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), dim=-1)


def test_interface(sampler):
    assert isinstance(sampler, Sampler)
    assert SamplingParams().stop_token_ids == [100257, IM_END_ID]
    with pytest.raises(ValueError):
        SamplingParams(top_p=0)


def test_greedy_matches_uncached_argmax_in_a_padded_batch(sampler, ref_model):
    steps = 10
    params = SamplingParams(temperature=0, max_tokens=steps, stop_token_ids=[])
    out = sampler.generate(PROMPTS, params)
    assert out == sampler.generate(PROMPTS, params)  # deterministic
    assert len({len(encode(p, allow_special=True)) for p in PROMPTS}) == 3  # really padded
    for prompt, [c] in zip(PROMPTS, out):
        ids = encode(prompt, allow_special=True)  # str prompts: special tokens allowed
        assert ids[0] == 100264 or prompt[0] != "<"
        ref = []
        for _ in range(steps):
            ref.append(int(full_logprobs(ref_model, ids + ref)[-1].argmax()))
        assert c.token_ids == ref
        assert c.finish_reason == "length" and c.text == decode(ref)
    # token-id prompts give the same as their text
    [[c_ids]] = sampler.generate([encode(CHAT, allow_special=True)], params)
    assert c_ids.token_ids == out[0][0].token_ids


def test_seeded_samples_reproducible_distinct_and_logprobs_exact(sampler, ref_model):
    params = SamplingParams(n=4, temperature=1.0, max_tokens=6, seed=11, logprobs=3, stop_token_ids=[])
    a = sampler.generate(PROMPTS[:2], params)
    b = sampler.generate([PROMPTS[1], PROMPTS[0]], params)  # other batch order and neighbours
    assert [c.token_ids for c in a[0]] == [c.token_ids for c in b[1]]
    assert [c.token_ids for c in a[1]] == [c.token_ids for c in b[0]]
    assert len({tuple(c.token_ids) for c in a[0]}) == 4  # n samples differ
    other = sampler.generate(PROMPTS[:1], SamplingParams(n=4, temperature=1.0, max_tokens=6, seed=12,
                                                         stop_token_ids=[]))
    assert [c.token_ids for c in other[0]] != [c.token_ids for c in a[0]]
    ids = encode(PROMPTS[0], allow_special=True)
    for c in a[0]:
        ref = full_logprobs(ref_model, ids + c.token_ids)
        for i, (t, lp, top) in enumerate(zip(c.token_ids, c.logprobs, c.top_logprobs)):
            row = ref[len(ids) - 1 + i]
            assert lp == pytest.approx(float(row[t]), abs=1e-4)  # raw logprob of the sampled token
            best = row.topk(3).indices.tolist()
            assert set(top) == set(best) | {t}
            for k, v in top.items():
                assert v == pytest.approx(float(row[k]), abs=1e-4)


def test_top_p_and_stop_ids(sampler, ref_model):
    # top_p so small that only the argmax survives: sampling at any temperature is greedy
    greedy = sampler.generate([PROMPTS[2]], SamplingParams(temperature=0, max_tokens=5, stop_token_ids=[]))
    nucleus = sampler.generate([PROMPTS[2]], SamplingParams(n=3, temperature=1.5, top_p=1e-6, max_tokens=5, seed=1,
                                                             stop_token_ids=[]))
    assert all(c.token_ids == greedy[0][0].token_ids for c in nucleus[0])
    # make the greedy path's 3rd token a stop id: generation ends there, id kept, text without it
    ids = greedy[0][0].token_ids
    [[c]] = sampler.generate([PROMPTS[2]], SamplingParams(temperature=0, max_tokens=5, stop_token_ids=[ids[2]]))
    assert c.token_ids == ids[:3] and c.finish_reason == "stop" and c.stop_reason == ids[2]
    assert c.text == decode(ids[:2])


def _truncate_at(ids, stop):
    return ids[: ids.index(stop) + 1] if stop in ids else ids


def test_rows_that_stop_early_leave_the_batch_cleanly(sampler):
    # Greedy: a stop id from prompt 0's path ends row 0 early; the other rows go on, unchanged.
    free = SamplingParams(temperature=0, max_tokens=10, stop_token_ids=[])
    paths = [c.token_ids for [c] in sampler.generate(PROMPTS, free)]
    stop = paths[0][2]
    stopped = sampler.generate(PROMPTS, SamplingParams(temperature=0, max_tokens=10, stop_token_ids=[stop]))
    assert [c.token_ids for [c] in stopped] == [_truncate_at(p, stop) for p in paths]
    assert len(stopped[0][0].token_ids) == 3 and any(len(c.token_ids) == 10 for [c] in stopped)
    # Sampled, n=4: one sample stopping early changes neither its siblings nor the other prompt.
    kw = dict(n=4, temperature=1.0, max_tokens=8, seed=5)
    free = sampler.generate(PROMPTS[:2], SamplingParams(**kw, stop_token_ids=[]))
    stop = free[0][1].token_ids[1]
    stopped = sampler.generate(PROMPTS[:2], SamplingParams(**kw, stop_token_ids=[stop]))
    for f, s in zip(free, stopped):
        assert [c.token_ids for c in s] == [_truncate_at(c.token_ids, stop) for c in f]
    assert len(stopped[0][1].token_ids) == 2 and stopped[0][1].finish_reason == "stop"


def test_stop_strings_truncate(sampler):
    [[full]] = sampler.generate([PROMPTS[0]], SamplingParams(temperature=0, max_tokens=12, stop_token_ids=[]))
    text = full.text
    # a stop string that starts inside the output: the text ends right before it
    stop = text[len(text) // 2 : len(text) // 2 + 3]
    cut = text.index(stop)
    [[c]] = sampler.generate([PROMPTS[0]], SamplingParams(temperature=0, max_tokens=12, stop=[stop], stop_token_ids=[]))
    assert c.finish_reason == "stop" and c.stop_reason == stop
    assert c.text == text[:cut]
    assert len(c.token_ids) < len(full.token_ids) and full.token_ids[: len(c.token_ids)] == c.token_ids
    assert stop in decode(c.token_ids)  # the ids keep the token that completed the stop string


def test_score_matches_full_forward(sampler, ref_model):
    seqs = [encode(PROMPTS[2]), encode(CHAT, allow_special=True), [42]]
    scores = sampler.score(seqs)
    for ids, s in zip(seqs, scores):
        assert len(s) == len(ids) and math.isnan(s[0])
        ref = full_logprobs(ref_model, ids)
        for i in range(1, len(ids)):
            assert s[i] == pytest.approx(float(ref[i - 1, ids[i]]), abs=1e-4)


def test_make_sampler_and_context_limit(ckpt):
    s = make_sampler(EngineConfig(preset="micro", device="cpu", max_model_len=32), ckpt)
    assert isinstance(s, TransformersSampler) and s.max_model_len == 32
    [[c]] = s.generate(["x" * 1], SamplingParams(temperature=0, max_tokens=100, stop_token_ids=[]))
    assert len(c.token_ids) == 31 and c.finish_reason == "length"  # the context ran out
    with pytest.raises(ValueError, match="empty"):
        s.generate([[]], SamplingParams())
    fresh = make_sampler(EngineConfig(preset="micro", device="cpu"), None)  # offline stand-in
    assert fresh.model.config.num_hidden_layers == 2


def test_vllm_is_imported_lazily():
    import subprocess
    import sys

    code = (
        "import sys, phi4ray.inference.sampler, phi4ray.inference.hf_engine, phi4ray.inference.vllm_engine, "
        "phi4ray.inference.actor, phi4ray.pts.search, phi4ray.serve.app; assert 'vllm' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    try:
        import vllm  # noqa: F401
    except ImportError:
        from phi4ray.inference.vllm_engine import VLLMSampler

        with pytest.raises(ImportError, match=r"phi4ray\[gpu\]"):
            VLLMSampler("/nonexistent")


@pytest.mark.gpu
def test_vllm_engine_matches_transformers(ckpt):
    pytest.importorskip("vllm")
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    from phi4ray.inference.vllm_engine import VLLMSampler

    v = VLLMSampler(ckpt, EngineConfig(engine="vllm", dtype="float32", max_model_len=512, gpu_memory_utilization=0.3))
    h = TransformersSampler.from_pretrained(ckpt, device="cuda")
    params = SamplingParams(temperature=0, max_tokens=8, logprobs=2, stop_token_ids=[])
    for (cv,), (ch,) in zip(v.generate(PROMPTS, params), h.generate(PROMPTS, params)):
        assert cv.token_ids == ch.token_ids
        assert cv.logprobs == pytest.approx(ch.logprobs, abs=1e-3)
    ids = encode(PROMPTS[2])
    assert v.score([ids])[0][1:] == pytest.approx(h.score([ids])[0][1:], abs=1e-3)


def test_ray_data_actor_pool(ray_local, ckpt):
    import ray

    from phi4ray.inference.actor import SamplerPredictor, map_batches_kwargs

    params = SamplingParams(temperature=0, max_tokens=4, stop_token_ids=[])
    ds = ray.data.from_items([{"id": "a", "prompt": PROMPTS[0]}, {"id": "b", "prompt": PROMPTS[1]}])
    kw = map_batches_kwargs(EngineConfig(preset="micro", device="cpu", num_actors=1, batch_size=2), ckpt, params)
    rows = sorted(ds.map_batches(SamplerPredictor, **kw).take_all(), key=lambda r: r["id"])
    assert [r["id"] for r in rows] == ["a", "b"]  # other columns kept
    local = TransformersSampler.from_pretrained(ckpt, device="cpu").generate(PROMPTS[:2], params)
    for r, [c] in zip(rows, local):
        assert r["completion"] == c.text
        assert list(r["completion_token_ids"]) == c.token_ids
        assert list(r["completion_logprobs"]) == pytest.approx(c.logprobs, abs=1e-5)
        assert r["finish_reason"] == "length"
