"""The Phi-4 tokenizer: tiktoken's cl100k_base padded to 100352 ids, ChatML, and its HF export.

Ids 0..100255 are cl100k_base's ranks. Ids 100256..100351 are special tokens: cl100k's own, Phi-4's
ChatML tokens, and `<|dummy_N|>` on every id left over, numbered from 0 in increasing id order
(100256 is `<|dummy_0|>`, 100351 is `<|dummy_87|>`), the names Phi-4's released tokenizer uses.

The ranks come from tiktoken's own cache when it holds a verified cl100k_base file, and otherwise
from the copy bundled in the `quicktok-v1` package, checked against the sha256 that tiktoken
expects. Nothing here touches the network. A verified rebuild is written into tiktoken's cache,
so `tiktoken.get_encoding("cl100k_base")` works offline afterwards too.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import logging
import os
import struct
import tempfile
import uuid
from collections.abc import Iterable, Sequence
from importlib import resources
from pathlib import Path

import tiktoken

log = logging.getLogger(__name__)

VOCAB_SIZE = 100352

ENDOFTEXT = "<|endoftext|>"
FIM_PREFIX = "<|fim_prefix|>"
FIM_MIDDLE = "<|fim_middle|>"
FIM_SUFFIX = "<|fim_suffix|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
IM_SEP = "<|im_sep|>"
ENDOFPROMPT = "<|endofprompt|>"

EOT_ID = 100257
IM_START_ID = 100264
IM_END_ID = 100265
IM_SEP_ID = 100266
ENDOFPROMPT_ID = 100276

CL100K_URL = "https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken"
CL100K_SHA256 = "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7"
CL100K_PAT_STR = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+"""
    r"""|\s++$|\s*[\r\n]|\s+(?!\S)|\s"""
)
# The same split without possessive quantifiers, as transformers' TikTokenConverter writes it:
# `tokenizers` runs Oniguruma, which reads `\p{N}{1,3}+` as "one or more runs of 1-3 digits".
HF_PAT_STR = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
    r"""|\s*[\r\n]+|\s+(?!\S)|\s+"""
)

_NAMED_SPECIAL = {
    ENDOFTEXT: EOT_ID,
    FIM_PREFIX: 100258,
    FIM_MIDDLE: 100259,
    FIM_SUFFIX: 100260,
    IM_START: IM_START_ID,
    IM_END: IM_END_ID,
    IM_SEP: IM_SEP_ID,
    ENDOFPROMPT: ENDOFPROMPT_ID,
}
_N_RANKS = 100256
_UNUSED_IDS = sorted(set(range(_N_RANKS, VOCAB_SIZE)) - set(_NAMED_SPECIAL.values()))
SPECIAL_TOKENS: dict[str, int] = dict(
    sorted(
        {**_NAMED_SPECIAL, **{f"<|dummy_{n}|>": i for n, i in enumerate(_UNUSED_IDS)}}.items(),
        key=lambda kv: kv[1],
    )
)
"""Every special token, in id order."""

# The HF export follows Phi-4's release: generation stops at <|im_end|>, and padding uses a token
# that never occurs in data, so masking labels by pad id never hides a real <|endoftext|>.
BOS_TOKEN = ENDOFTEXT
EOS_TOKEN = IM_END
PAD_TOKEN = "<|dummy_87|>"
PAD_ID = SPECIAL_TOKENS[PAD_TOKEN]
MODEL_MAX_LENGTH = 16384

ROLES = ("system", "user", "assistant", "tool")


# -- cl100k_base ranks --------------------------------------------------------------------------
def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _tiktoken_cache_file() -> Path | None:
    """Where tiktoken caches cl100k_base (same lookup as tiktoken.load.read_file_cached)."""
    cache_dir = os.environ.get("TIKTOKEN_CACHE_DIR", os.environ.get("DATA_GYM_CACHE_DIR"))
    if cache_dir is None:
        cache_dir = os.path.join(tempfile.gettempdir(), "data-gym-cache")
    if cache_dir == "":  # tiktoken's switch for "no cache"
        return None
    return Path(cache_dir) / hashlib.sha1(CL100K_URL.encode()).hexdigest()


def _quicktok_to_tiktoken(data: bytes) -> bytes:
    """quicktok's vocab (u32 count, then u16 length, bytes, u32 rank; little-endian) as tiktoken lines."""
    (count,) = struct.unpack_from("<I", data, 0)
    offset, tokens = 4, []
    for _ in range(count):
        (length,) = struct.unpack_from("<H", data, offset)
        token = data[offset + 2 : offset + 2 + length]
        (rank,) = struct.unpack_from("<I", data, offset + 2 + length)
        offset += 6 + length
        tokens.append((rank, token))
    if offset != len(data):
        raise ValueError(f"{len(data) - offset} trailing bytes after {count} tokens")
    return b"".join(base64.b64encode(t) + b" " + str(r).encode() + b"\n" for r, t in sorted(tokens))


def _parse_tiktoken(blob: bytes) -> dict[bytes, int]:
    ranks = {}
    for line in blob.splitlines():
        token, rank = line.split()
        ranks[base64.b64decode(token)] = int(rank)
    return ranks


def _write_tiktoken_cache(blob: bytes) -> None:
    path = _tiktoken_cache_file()
    if path is None or (path.is_file() and _sha256(path.read_bytes()) == CL100K_SHA256):
        return
    tmp = path.with_name(f"{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_bytes(blob)
        os.replace(tmp, path)
    except OSError as e:  # a read-only cache only costs the next process a rebuild
        log.warning("could not cache cl100k_base at %s: %s", path, e)
        tmp.unlink(missing_ok=True)


def _bundled_vocab() -> Path:
    return Path(str(resources.files("quicktok").joinpath("data", "cl100k.vocab")))


def load_cl100k_ranks(vocab_path: str | os.PathLike | None = None) -> dict[bytes, int]:
    """cl100k_base's mergeable ranks, verified against tiktoken's sha256.

    `vocab_path` is a quicktok-format vocab; None tries tiktoken's cache first, then the copy
    bundled in quicktok-v1. Raises ValueError naming the file and both hashes when it does not hold
    cl100k_base.
    """
    if vocab_path is None:
        cached = _tiktoken_cache_file()
        if cached is not None and cached.is_file():
            blob = cached.read_bytes()
            if _sha256(blob) == CL100K_SHA256:
                return _parse_tiktoken(blob)
            log.warning("ignoring %s: its sha256 is not cl100k_base's", cached)
        vocab_path = _bundled_vocab()
    try:
        blob = _quicktok_to_tiktoken(Path(vocab_path).read_bytes())
    except (struct.error, ValueError) as e:
        raise ValueError(f"{vocab_path} is not a valid quicktok vocab file: {e}") from e
    actual = _sha256(blob)
    if actual != CL100K_SHA256:
        raise ValueError(
            f"{vocab_path} does not hold cl100k_base: its tiktoken form has sha256 {actual}, "
            f"expected {CL100K_SHA256}. Reinstall quicktok-v1 or pass an intact file."
        )
    _write_tiktoken_cache(blob)
    return _parse_tiktoken(blob)


@functools.cache
def _ranks() -> dict[bytes, int]:
    return load_cl100k_ranks()


@functools.cache
def get_encoding() -> tiktoken.Encoding:
    """The Phi-4 encoding: cl100k_base plus special tokens on every id up to 100351."""
    return tiktoken.Encoding(
        name="phi4",
        pat_str=CL100K_PAT_STR,
        mergeable_ranks=_ranks(),
        special_tokens=SPECIAL_TOKENS,
        explicit_n_vocab=VOCAB_SIZE,
    )


def encode(text: str, allow_special: bool = False) -> list[int]:
    """Token ids of `text`. Special-token strings become their ids only with `allow_special`."""
    enc = get_encoding()
    return enc.encode(text, allowed_special="all") if allow_special else enc.encode_ordinary(text)


def decode(ids: Iterable[int]) -> str:
    return get_encoding().decode(list(ids))


# -- ChatML -------------------------------------------------------------------------------------
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] not in ['system', 'user', 'assistant', 'tool'] %}"
    "{{ raise_exception('role must be one of system, user, assistant, tool; got ' + message['role']) }}"
    "{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '<|im_sep|>' + message['content'] + '<|im_end|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant<|im_sep|>' }}{% endif %}"
)
"""Jinja for HF's apply_chat_template; renders exactly what chat_text renders."""


def _validate(messages: Sequence[dict]) -> None:
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise ValueError(f"message {i} must be a dict with 'role' and 'content'; got {message!r}")
        role, content = message.get("role"), message.get("content")
        if role not in ROLES:
            raise ValueError(f"message {i}: role must be one of {', '.join(ROLES)}; got {role!r}")
        if not isinstance(content, str):
            raise ValueError(f"message {i}: content must be a str, got {type(content).__name__}")


def chat_text(messages: Sequence[dict], add_generation_prompt: bool = False) -> str:
    """`<|im_start|>{role}<|im_sep|>{content}<|im_end|>` per turn, then the generation prompt if asked."""
    _validate(messages)
    text = "".join(f"{IM_START}{m['role']}{IM_SEP}{m['content']}{IM_END}" for m in messages)
    return text + (f"{IM_START}assistant{IM_SEP}" if add_generation_prompt else "")


def render_chat(messages: Sequence[dict], add_generation_prompt: bool = False) -> tuple[list[int], list[int]]:
    """(ids, loss_mask) of a conversation. The mask is 1 on each assistant turn's content and its
    closing <|im_end|>, 0 elsewhere. Content is ordinary text: it cannot inject special tokens."""
    _validate(messages)
    enc = get_encoding()
    ids: list[int] = []
    mask: list[int] = []
    for m in messages:
        header = [IM_START_ID, *enc.encode_ordinary(m["role"]), IM_SEP_ID]
        body = [*enc.encode_ordinary(m["content"]), IM_END_ID]
        ids += header + body
        mask += [0] * len(header) + [int(m["role"] == "assistant")] * len(body)
    if add_generation_prompt:
        prompt = [IM_START_ID, *enc.encode_ordinary("assistant"), IM_SEP_ID]
        ids += prompt
        mask += [0] * len(prompt)
    return ids, mask


# -- Hugging Face export ------------------------------------------------------------------------
def _bpe_split(ranks: dict[bytes, int], token: bytes) -> list[bytes]:
    """Run BPE on `token` with only the ranks below its own: the two parts its last merge joins."""
    max_rank = ranks[token]
    parts = [bytes([b]) for b in token]
    while True:
        best = None
        for i in range(len(parts) - 1):
            rank = ranks.get(parts[i] + parts[i + 1])
            if rank is not None and rank < max_rank and (best is None or rank < best[1]):
                best = (i, rank)
        if best is None:
            return parts
        i = best[0]
        parts[i : i + 2] = [parts[i] + parts[i + 1]]


@functools.cache
def hf_tokenizer_json() -> str:
    """tokenizer.json for a `tokenizers` byte-level BPE that encodes exactly like get_encoding()."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    ranks = _ranks()
    byte_to_char = bytes_to_unicode()

    def to_str(token: bytes) -> str:
        return "".join(byte_to_char[b] for b in token)

    vocab = {to_str(t): r for t, r in ranks.items()}
    merges = []
    for token in sorted(ranks, key=ranks.get):
        if len(token) > 1:
            left, right = _bpe_split(ranks, token)
            merges.append((to_str(left), to_str(right)))

    # ignore_merges: a pre-token that is itself in the vocab becomes that token, as in tiktoken.
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, ignore_merges=True, fuse_unk=False))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(HF_PAT_STR), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    # add_special_tokens assigns consecutive ids after the vocab, so SPECIAL_TOKENS' order is its ids.
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    if tok.get_vocab_size() != VOCAB_SIZE or tok.token_to_id(PAD_TOKEN) != PAD_ID:
        raise AssertionError("HF special tokens did not land on their tiktoken ids")
    return tok.to_str()


def _write_json(path: Path, obj: dict) -> None:
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def export_hf_tokenizer(out_dir: str | os.PathLike) -> None:
    """Write tokenizer.json, tokenizer_config.json and special_tokens_map.json into `out_dir`,
    loadable offline by `transformers.AutoTokenizer.from_pretrained(out_dir)`."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "tokenizer.json").write_text(hf_tokenizer_json(), encoding="utf-8")
    special_map = {"bos_token": BOS_TOKEN, "eos_token": EOS_TOKEN, "pad_token": PAD_TOKEN}
    _write_json(
        out / "tokenizer_config.json",
        {
            # PreTrainedTokenizerFast reads tokenizer.json as is in transformers 4 and 5 (where it
            # is an alias of TokenizersBackend); GPT2Tokenizer would rebuild GPT-2's pre-tokenizer.
            "tokenizer_class": "PreTrainedTokenizerFast",
            **special_map,
            "add_bos_token": False,
            "add_eos_token": False,
            "clean_up_tokenization_spaces": False,
            "model_max_length": MODEL_MAX_LENGTH,
            "chat_template": CHAT_TEMPLATE,
            "added_tokens_decoder": {
                str(i): {
                    "content": t,
                    "lstrip": False,
                    "normalized": False,
                    "rstrip": False,
                    "single_word": False,
                    "special": True,
                }
                for t, i in SPECIAL_TOKENS.items()
            },
        },
    )
    _write_json(out / "special_tokens_map.json", special_map)
