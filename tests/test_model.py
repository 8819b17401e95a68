import json

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers import AutoModelForCausalLM, AutoTokenizer

from phi4ray import model as M
from phi4ray import tokenizer as tok


def test_phi4_preset_is_the_released_shape():
    c = M.phi3_config("phi-4")
    assert (c.num_hidden_layers, c.hidden_size, c.intermediate_size) == (40, 5120, 17920)
    assert (c.num_attention_heads, c.num_key_value_heads, c.vocab_size) == (40, 10, 100352)
    assert c.hidden_act == "silu" and c.rms_norm_eps == 1e-5 and c.tie_word_embeddings is False
    assert c.max_position_embeddings == 16384 and c.rope_parameters["rope_theta"] == 250_000
    assert (c.bos_token_id, c.eos_token_id, c.pad_token_id) == (100257, 100265, 100351)
    assert M.count_params(c) == pytest.approx(14.66e9, rel=0.005)


def test_small_presets_are_their_sizes():
    assert M.count_params(M.phi3_config("1b")) == pytest.approx(1.0e9, rel=0.1)
    assert M.count_params(M.phi3_config("125m")) == pytest.approx(125e6, rel=0.05)
    tiny = M.phi3_config("tiny")
    assert (tiny.num_hidden_layers, tiny.hidden_size, tiny.intermediate_size) == (4, 128, 512)
    assert (tiny.num_attention_heads, tiny.num_key_value_heads, tiny.max_position_embeddings) == (4, 2, 4096)


@pytest.mark.parametrize("preset", ["tiny", "micro"])
def test_count_params_equals_a_built_model(preset):
    model = M.build_model(preset)
    assert M.count_params(model.config) == sum(p.numel() for p in model.parameters())


def test_count_params_follows_tied_embeddings():
    config = M.phi3_config("micro", tie_word_embeddings=True)
    assert M.count_params(config) == M.count_params(M.phi3_config("micro")) - 100352 * 64


def test_flops_per_token_by_hand():
    # micro: vocab 100352, hidden 64, intermediate 256, 2 layers, 2 heads of 32, 1 KV head.
    qkv = 64 * (2 + 2 * 1) * 32  # 8192
    o = 64 * 64  # 4096
    gate_up = 64 * 2 * 256  # 32768
    down = 256 * 64  # 16384
    dense = 2 * (qkv + o + gate_up + down) + 100352 * 64  # 122880 + 6422528 (lm_head) = 6545408
    attention = 2 * 2 * 2 * 128 * 64  # 2 FLOPs x (QK^T + AV) x layers x seq_len x heads*head_dim
    forward = 2 * dense + attention
    assert forward == 13_156_352
    config = M.phi3_config("micro")
    assert M.flops_per_token(config, 128, training=False) == forward
    assert M.flops_per_token(config, 128) == 3 * forward


def test_flops_per_token_equals_torchs_count_on_the_real_model():
    model = M.build_model("micro")
    model.set_attn_implementation("eager")  # SDPA's CPU kernel is invisible to the FLOP counter
    seq_len = 96
    ids = torch.randint(0, 1000, (1, seq_len))
    with FlopCounterMode(display=False) as forward:
        model(ids)
    with FlopCounterMode(display=False) as training:
        model(ids).logits.sum().backward()
    assert forward.get_total_flops() == seq_len * M.flops_per_token(model.config, seq_len, training=False)
    assert training.get_total_flops() == seq_len * M.flops_per_token(model.config, seq_len)


def test_phi3_config_overrides_and_errors():
    c = M.phi3_config("tiny", num_hidden_layers=3, rope_theta=250_000, max_position_embeddings=16384)
    assert c.num_hidden_layers == 3 and c.max_position_embeddings == 16384
    assert c.rope_parameters["rope_theta"] == 250_000
    assert M.phi3_config("tiny").rope_parameters["rope_theta"] == 10_000  # presets are not mutated
    with pytest.raises(ValueError, match="presets: phi-4, 1b, 125m, tiny, micro"):
        M.phi3_config("phi-5")
    with pytest.raises(ValueError, match="num_layers"):
        M.phi3_config("tiny", num_layers=3)
    with pytest.raises(ValueError, match="hidden"):
        M.build_model(M.phi3_config("micro"), hidden=32)


def test_rope_theta_reaches_the_rotary_embedding():
    config = M.set_rope_theta(M.phi3_config("micro"), 250_000)
    model = M.build_model(config)
    head_dim = 32
    expected = 1.0 / 250_000 ** (torch.arange(0, head_dim, 2, dtype=torch.float) / head_dim)
    assert torch.allclose(model.model.rotary_emb.inv_freq, expected)
    assert not torch.allclose(M.build_model("micro").model.rotary_emb.inv_freq, expected)


def test_build_model_is_fp32_and_deterministic_per_seed():
    rng_before = torch.get_rng_state()
    a, b, c = M.build_model("micro", seed=1), M.build_model("micro", seed=1), M.build_model("micro", seed=2)
    assert torch.equal(torch.get_rng_state(), rng_before)  # the caller's RNG stream is untouched
    assert all(p.dtype == torch.float32 for p in a.parameters())
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    qkv = "model.layers.0.self_attn.qkv_proj.weight"
    assert not torch.equal(sa[qkv], sc[qkv])
    assert M.build_model(M.phi3_config("micro"), seed=1, num_hidden_layers=1).config.num_hidden_layers == 1


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "step-1"
    model = M.build_model("micro", seed=3).eval()
    M.save_checkpoint(model, path, extra={"step": 1, "tokens": 4096})
    return path, model


def _logits(model, ids):
    with torch.no_grad():
        return model(ids).logits


PROMPT = [{"role": "user", "content": "What is 2 + 2?"}]
IDS = torch.tensor([tok.render_chat(PROMPT, add_generation_prompt=True)[0]])


def test_checkpoint_loads_with_plain_transformers(checkpoint):
    path, model = checkpoint
    loaded = AutoModelForCausalLM.from_pretrained(path).eval()
    assert type(loaded).__name__ == "Phi3ForCausalLM"
    assert torch.equal(_logits(loaded, IDS), _logits(model, IDS))
    assert loaded.generation_config.eos_token_id == [100257, 100265]
    assert json.loads((path / M.EXTRA_FILE).read_text()) == {"step": 1, "tokens": 4096}

    hf = AutoTokenizer.from_pretrained(path)
    text = "Checkpoints carry their tokenizer: ÿ 中文 12345"
    assert hf.encode(text, add_special_tokens=False) == tok.encode(text)
    assert hf.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False) == tok.chat_text(
        [{"role": "user", "content": "hi"}]
    )
    assert hf.eos_token_id == loaded.config.eos_token_id == 100265
    assert hf.pad_token_id == loaded.config.pad_token_id == 100351


def test_load_model(checkpoint):
    path, model = checkpoint
    loaded = M.load_model(path)
    assert not loaded.training
    assert torch.equal(_logits(loaded, IDS), _logits(model, IDS))
    for dtype in (torch.bfloat16, "bfloat16"):
        assert all(p.dtype == torch.bfloat16 for p in M.load_model(path, dtype=dtype).parameters())


def test_save_checkpoint_replaces_an_existing_folder(tmp_path):
    path = tmp_path / "latest"
    M.save_checkpoint(M.build_model("micro", seed=1), path, extra={"step": 1})
    newer = M.build_model("micro", seed=2).eval()
    M.save_checkpoint(newer, path)
    assert torch.equal(_logits(M.load_model(path), IDS), _logits(newer, IDS))
    assert not (path / M.EXTRA_FILE).exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest"]  # no .tmp or .old left behind


def test_save_checkpoint_rejects_unserializable_extra_before_writing(tmp_path):
    with pytest.raises(TypeError):
        M.save_checkpoint(M.build_model("micro"), tmp_path / "ckpt", extra={"bad": object()})
    assert list(tmp_path.iterdir()) == []


def test_load_model_without_config_says_so(tmp_path):
    with pytest.raises(FileNotFoundError, match="has no config.json"):
        M.load_model(tmp_path)
