"""Phi-4 model presets, FLOPs per token, and the one checkpoint format: a Hugging Face
`Phi3ForCausalLM` folder with safetensors weights and the Phi-4 tokenizer files.

`phi-4` is the released model's config.json: the shape after midtraining, 16K positions and RoPE
base 250,000. The smaller presets keep its proportions (MLP 3.5x hidden, 4 query heads per KV head
where the size allows) at pretraining settings, 4K positions and RoPE base 10,000; midtraining
raises both with `phi3_config(..., max_position_embeddings=16384, rope_theta=250_000)`.

Special ids, the same everywhere: bos <|endoftext|> 100257; eos <|im_end|> 100265 (Phi-4's); pad
<|dummy_87|> 100351, a token that never occurs in data, so masking labels by pad id never hides a
real <|endoftext|>. Generation stops at either <|endoftext|> or <|im_end|>.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from transformers import GenerationConfig, Phi3Config, Phi3ForCausalLM

from phi4ray.tokenizer import EOT_ID, IM_END_ID, PAD_ID, VOCAB_SIZE, export_hf_tokenizer

GENERATION_EOS_IDS = [EOT_ID, IM_END_ID]
EXTRA_FILE = "phi4ray.json"
"""Where save_checkpoint writes its `extra` dict (step, tokens seen, ...)."""

_COMMON: dict[str, Any] = dict(
    vocab_size=VOCAB_SIZE,
    hidden_act="silu",
    rms_norm_eps=1e-5,
    tie_word_embeddings=False,
    attention_dropout=0.0,
    resid_pdrop=0.0,
    embd_pdrop=0.0,
    initializer_range=0.02,
    bos_token_id=EOT_ID,
    eos_token_id=IM_END_ID,
    pad_token_id=PAD_ID,
)


def _preset(
    layers: int, hidden: int, intermediate: int, heads: int, kv_heads: int, positions: int, theta: float
) -> dict[str, Any]:
    return dict(
        _COMMON,
        num_hidden_layers=layers,
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=positions,
        original_max_position_embeddings=positions,
        rope_theta=theta,
    )


PRESETS: dict[str, dict[str, Any]] = {
    "phi-4": _preset(40, 5120, 17920, 40, 10, 16384, 250_000.0),  # 14.66B
    "1b": _preset(12, 2048, 7168, 16, 4, 4096, 10_000.0),  # 1.07B
    "125m": _preset(6, 512, 2048, 8, 2, 4096, 10_000.0),  # 125.6M, 82% of it embeddings
    "tiny": _preset(4, 128, 512, 4, 2, 4096, 10_000.0),  # 26.7M
    "micro": _preset(2, 64, 256, 2, 1, 4096, 10_000.0),  # 13.0M
}
"""Phi3Config keyword arguments. Parameter counts include both (untied) 100352-row embeddings."""


def _config_keys() -> set[str]:
    # rope_theta is accepted as a constructor argument and folded into rope_parameters.
    return set(Phi3Config().to_dict()) | {"rope_theta"}


def set_rope_theta(config: Phi3Config, theta: float) -> Phi3Config:
    """Set the RoPE base in place (transformers 5 keeps it in `rope_parameters`, 4 in `rope_theta`).

    It acts on a config: a model built before the change keeps its old rotary frequencies.
    """
    rope = getattr(config, "rope_parameters", None)
    if isinstance(rope, dict):
        config.rope_parameters = {**rope, "rope_theta": float(theta)}
    else:
        config.rope_theta = float(theta)
    return config


def _check_overrides(overrides: dict[str, Any]) -> None:
    unknown = sorted(set(overrides) - _config_keys())
    if unknown:
        raise ValueError(f"unknown Phi3Config field(s) {unknown}; see transformers.Phi3Config for valid ones")


def phi3_config(preset: str, **overrides: Any) -> Phi3Config:
    """The Phi3Config of a preset, with single fields overridden (`rope_theta=` included)."""
    if preset not in PRESETS:
        raise ValueError(f"unknown model preset {preset!r}; presets: {', '.join(PRESETS)}")
    _check_overrides(overrides)
    kwargs = {**PRESETS[preset], **overrides}
    theta = kwargs.pop("rope_theta")
    return set_rope_theta(Phi3Config(**kwargs), theta)


def _shape(config: Phi3Config) -> tuple[int, int, int, int, int, int, int]:
    heads, kv_heads = config.num_attention_heads, config.num_key_value_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return (
        config.vocab_size,
        config.hidden_size,
        config.intermediate_size,
        config.num_hidden_layers,
        heads,
        kv_heads,
        head_dim,
    )


def _layer_matmul_params(config: Phi3Config) -> int:
    """Weights of one decoder layer's projections: qkv, o, gate_up, down (Phi-3 has no biases)."""
    _, d, ff, _, heads, kv_heads, head_dim = _shape(config)
    return d * (heads + 2 * kv_heads) * head_dim + heads * head_dim * d + d * 2 * ff + ff * d


def count_params(config: Phi3Config) -> int:
    """Parameters of Phi3ForCausalLM(config), counted without building it."""
    vocab, d, _, layers, *_ = _shape(config)
    embeddings = vocab * d * (1 if config.tie_word_embeddings else 2)
    norms = layers * 2 * d + d
    return embeddings + layers * _layer_matmul_params(config) + norms


def flops_per_token(config: Phi3Config, seq_len: int, training: bool = True) -> float:
    """Matmul FLOPs per token (2 per multiply-add), in the PaLM / Chinchilla convention.

    Forward: 2 x (the projection weights of every layer + the lm_head; the embedding lookup is
    free) + 2 * 2 * layers * seq_len * (heads * head_dim) for attention scores and values, with
    no causal halving. Training counts forward and backward as 3 x forward. Norms, activations
    and softmax are not counted.
    """
    vocab, d, _, layers, heads, _, head_dim = _shape(config)
    dense = layers * _layer_matmul_params(config) + vocab * d
    forward = 2 * dense + 2 * 2 * layers * seq_len * heads * head_dim
    return float(3 * forward if training else forward)


def generation_config() -> GenerationConfig:
    return GenerationConfig(bos_token_id=EOT_ID, eos_token_id=GENERATION_EOS_IDS, pad_token_id=PAD_ID)


def build_model(config_or_preset: Phi3Config | str, seed: int = 0, **overrides: Any) -> Phi3ForCausalLM:
    """A freshly initialized fp32 model; the same seed gives the same weights."""
    if isinstance(config_or_preset, str):
        config = phi3_config(config_or_preset, **overrides)
    else:
        _check_overrides(overrides)
        config = Phi3Config.from_dict(config_or_preset.to_dict())
        theta = overrides.pop("rope_theta", None)
        for key, value in overrides.items():
            setattr(config, key, value)
        if theta is not None:
            set_rope_theta(config, theta)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Phi3ForCausalLM(config).to(torch.float32)
    model.generation_config = generation_config()
    return model


def save_checkpoint(model: Phi3ForCausalLM, out_dir: str | os.PathLike, extra: dict | None = None) -> None:
    """Write an HF checkpoint folder (config, safetensors, tokenizer, generation config, and
    `extra` as phi4ray.json). It is built next to `out_dir` and renamed into place, replacing any
    folder already there, so a reader never sees a half-written checkpoint."""
    out = Path(out_dir)
    # Serialize first so that an unserializable `extra` fails before anything is written.
    extra_json = json.dumps(extra, indent=2, sort_keys=True) if extra is not None else None
    tmp, old = out.with_name(out.name + ".tmp"), out.with_name(out.name + ".old")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    model.save_pretrained(tmp, safe_serialization=True)
    generation_config().save_pretrained(tmp)
    export_hf_tokenizer(tmp)
    if extra_json is not None:
        (tmp / EXTRA_FILE).write_text(extra_json + "\n")
    shutil.rmtree(old, ignore_errors=True)
    if out.exists():
        out.rename(old)
    tmp.rename(out)
    shutil.rmtree(old, ignore_errors=True)


def load_model(
    path: str | os.PathLike, dtype: torch.dtype | str | None = None, device: str | torch.device = "cpu"
) -> Phi3ForCausalLM:
    """A checkpoint folder's model in eval mode. `dtype` is a torch dtype or its name ('bfloat16');
    None keeps the dtype the weights were saved in."""
    if not (Path(path) / "config.json").is_file():
        raise FileNotFoundError(f"{path} is not a model checkpoint: it has no config.json")
    model = Phi3ForCausalLM.from_pretrained(path, dtype=dtype if dtype is not None else "auto")
    return model.to(device).eval()
