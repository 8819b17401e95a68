"""The Phi-4 tokenizer: tiktoken's cl100k_base padded to 100352 ids, ChatML, and its HF export.

Ids 0..100255 are cl100k_base's ranks. Ids 100256..100351 are special tokens: cl100k's own, Phi-4's
ChatML tokens, and `<|dummy_N|>` on every id left over, numbered from 0 in increasing id order
(100256 is `<|dummy_0|>`, 100351 is `<|dummy_87|>`), the names Phi-4's released tokenizer uses.

The ranks come from tiktoken's own cache when it holds a verified cl100k_base file, and otherwise
from the copy bundled in the `quicktok-v1` package, checked against the sha256 that tiktoken
expects. Nothing here touches the network. A verified rebuild is written into tiktoken's cache,
so `tiktoken.get_encoding("cl100k_base")` works offline afterwards too.

`encode_ordinary_batch` encodes many documents with quicktok's native encoder where it is installed
and proven to give tiktoken's ids, and with tiktoken otherwise: the ids are the same either way.
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
import unicodedata
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


# -- fast batch encoding (quicktok) -------------------------------------------------------------
# quicktok-v1, the package that bundles our vocab, also has a native cl100k_base encoder that is
# several times faster than tiktoken on a batch. It is used only where it gives tiktoken's ids:
#
# - Once per process it must prove that its ranks are exactly the sha256-verified ranks above and
#   that it encodes `_PROBES` exactly as tiktoken does. Otherwise every batch goes to tiktoken.
# - Its Unicode tables are newer than tiktoken's. quicktok 0.4 knows Unicode 17's letters, and
#   tiktoken 0.14's regex does not, so a character assigned in Unicode 17 (CJK Extension J, Tai
#   Yo, Beria Erfe, ...) splits differently: "\U000323b0,s" is [\U000323b0][,s] for quicktok and
#   [\U000323b0,][s] for tiktoken. A text holding any character that this Python's Unicode
#   database leaves unassigned (or a lone surrogate, which quicktok refuses) is therefore
#   encoded by tiktoken. Python 3.11 to 3.14 carry Unicode 14 to 16, no newer than tiktoken's.
#   On a Python whose database already holds Unicode 17, the Unicode 17 probes below differ,
#   and the fast path switches itself off.
_PROBES = (
    "",
    "The quick brown fox jumps over the lazy dog. It's 3:45pm, isn't it? I'd've gone; THEY'LL say",
    "12345678 and 3.14159 and 1,000,000 and 0x1F; ٣٤٥ ١٢٣٤ ⅷ ²³",
    'def f(x):\n    if x:\n\t\treturn {"a": [1, 2]}  # tab\n    return None\n\n\nclass A:\n    pass\n',
    r"\begin{align} \int_0^\infty e^{-x^2}\,dx &= \frac{\sqrt{\pi}}{2} \\ \sum_{n=1}^{N} n^2 \end{align}",
    "   \n\n\t  x", "line   \nand more  ", "first\r\nsecond\r\n\r\n", "a\u00a0b\u3000c\u2009d\u2028e\u0085f ",
    "Größenwahn, L'été ; Съешь же ещё; 我能吞下玻璃; ガラスを食べられます; 유리를 먹을 수 있어요",
    "أنا قادر على أكل الزجاج; मैं काँच खा सकता हूँ; e\u0301 \ufeffbom 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 ｆｕｌｌ",
    "Family: 👨‍👩‍👧‍👦, flags 🇩🇪🇯🇵, skin tones 👍🏽, heart ❤️‍🔥, plain 😀😀😀",
    "<|endoftext|>a<|im_start|>user<|im_sep|>x<|im_end|><|endofprompt|><|fim_prefix|><|dummy_3|>",
    # One Unicode 17 letter of each block where quicktok 0.4 and tiktoken 0.14 disagree.
    *(
        chr(c) + ",s"
        for c in (0x088F, 0x0C5C, 0x0CDC, 0xA7CE, 0x10940, 0x10EC5, 0x11DB0, 0x16EA0, 0x16FF2, 0x187F8,
                  0x18D09, 0x18D80, 0x1E6C0, 0x2B73A, 0x2CEA2, 0x323B0)
    ),
    "a\ud800b",
)
_GUARD_CHUNK_CHARS = 1 << 22
"""Characters per pass of the Unicode check: bounds its UTF-32 copy to 16 MiB."""


def _unassigned_chars(texts: Sequence[str]) -> set[str]:
    """The characters of `texts` that Python's Unicode database does not assign, and lone surrogates."""
    import numpy as np

    found: set[str] = set()

    def scan(chunk: list[str]) -> None:
        cps = np.frombuffer("".join(chunk).encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
        for c in np.unique(cps[cps > 0x7F]).tolist():
            if unicodedata.category(chr(c)) in ("Cn", "Cs"):
                found.add(chr(c))

    chunk: list[str] = []
    size = 0
    for text in texts:
        if not text.isascii():  # O(1) in CPython; ASCII is all assigned
            chunk.append(text)
            size += len(text)
            if size >= _GUARD_CHUNK_CHARS:
                scan(chunk)
                chunk, size = [], 0
    if chunk:
        scan(chunk)
    return found


def _quicktok_batch(qt, texts: list[str]) -> list[list[int]]:
    """quicktok's ordinary (special-token strings as text) ids of each text; texts that tiktoken
    might split differently (see above) are encoded by tiktoken."""
    for i, text in enumerate(texts):
        if not isinstance(text, str):  # quicktok would take bytes; tiktoken raises
            raise TypeError(f"text {i} is a {type(text).__name__}, not a str")
    odd = _unassigned_chars(texts)
    slow = {i for i, t in enumerate(texts) if not t.isascii() and any(c in t for c in odd)} if odd else set()
    fast = [i for i in range(len(texts)) if i not in slow]
    out: list[list[int]] = [[] for _ in texts]
    if fast:
        tokens, offsets = qt.encode_batch([texts[i] for i in fast], threads=0, with_special=False)
        bounds = offsets.tolist()
        for i, start, end in zip(fast, bounds, bounds[1:]):
            out[i] = tokens[start:end].tolist()
    if slow:
        slow_ids = sorted(slow)
        for i, ids in zip(slow_ids, get_encoding().encode_ordinary_batch([texts[i] for i in slow_ids])):
            out[i] = ids
    return out


@functools.cache
def _quicktok():
    """quicktok's cl100k_base encoder once it has proven to match tiktoken here, else None."""
    try:
        import quicktok
    except ImportError:
        log.info("quicktok is not installed: batches are encoded by tiktoken")
        return None
    try:
        qt = quicktok.get_encoding("cl100k_base")
        ranks = _ranks()  # sha256-verified
        if len(qt.token_byte_values()) != len(ranks) or any(
            qt.decode_single_token_bytes(rank) != token for token, rank in ranks.items()
        ):
            raise ValueError("its cl100k_base ranks are not the verified ones")
        want = get_encoding().encode_ordinary_batch(list(_PROBES))
        got = _quicktok_batch(qt, list(_PROBES))
        differ = [p for p, a, b in zip(_PROBES, want, got) if a != b]
        if differ:
            raise ValueError(f"it encodes {len(differ)} probe texts unlike tiktoken, first {differ[0]!r}")
    except Exception as e:  # noqa: BLE001 - any failure means: do not use it
        log.warning("not using quicktok %s: %s; batches are encoded by tiktoken",
                    getattr(quicktok, "__version__", "?"), e)
        return None
    return qt


def encode_ordinary_batch(texts: Sequence[str]) -> list[list[int]]:
    """Token ids of each text, special-token strings encoded as ordinary text: always exactly
    `get_encoding().encode_ordinary_batch(texts)`, computed by quicktok where it is installed and
    verified (see above), by tiktoken otherwise."""
    texts = list(texts)
    qt = _quicktok() if texts else None
    if qt is None:
        return get_encoding().encode_ordinary_batch(texts)
    return _quicktok_batch(qt, texts)


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
