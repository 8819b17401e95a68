"""Corruption filters: per-record functions that reject repetitive, binary and garbled text.

Each filter is `fn(record, cfg) -> record | Reject`, pure and independent of Ray, in the style
of datatrove's filters; `filter_steps(cfg)` binds the enabled ones to their config and names
them. A reject's reason is the statistic that failed and its detail the value against the
threshold, so a reject row reads `dup_line_frac: 0.420 > 0.300`.

- **characters**: text that cannot be written as UTF-8 (lone surrogates), control characters
  (binary read as text), U+FFFD replacement characters (a lossy decode upstream).
- **mojibake**: UTF-8 decoded as Latin-1/cp1252 (`cafÃ©`, `donâ€™t`), counted by
  `ftfy.badness`, which matches the character sequences that such decoding produces.
- **compression**: zlib compressed size / raw UTF-8 size. Below the minimum the text is one
  thing said over and over; above the maximum it is random characters, base64 or binary.
- **repetition** (Gopher, Rae et al. 2021, appendix A and Table A1): duplicate lines and
  paragraphs, by count and by characters; the character fraction of the most frequent 2-, 3-
  and 4-gram; the character fraction covered by duplicated 5- to 10-grams. `FilterConfig`
  documents where our defaults differ from Gopher's and why.

Code (`source == "code"`) legitimately repeats lines (`}`, `end`, imports) and short n-grams,
so the repetition statistics, written for prose, are not applied to it, and for the same reason
fenced code blocks, inline code spans and LaTeX math inside prose are left out of them. The
character, mojibake and compression filters apply to code as to prose: binary, garbled or
base64-stuffed source is as useless as such prose.

Words for the repetition statistics are whitespace-separated tokens, lowercased, with their
punctuation removed, so that an API name or signature is one word
(`tkinter.messagebox.showinfo(title=None,`), not a run of n-grams that repeat on every line of
a reference page. Lines and paragraphs compare stripped; blank lines and lines without a letter
or digit (rules, table separators) do not count.
"""

from __future__ import annotations

import re
import zlib
from collections import Counter
from functools import partial
from typing import Callable, Iterator

import ftfy.badness

from phi4ray.config import FilterConfig
from phi4ray.stage import Reject

RecordFn = Callable[[dict], "dict | Reject"]

_CONTROL = re.compile(r"[\x00-\x08\x0e-\x1f\x7f-\x9f]")
"""Unicode category Cc, less the whitespace controls tab, LF, VT, FF and CR."""
REPLACEMENT_CHAR = "\ufffd"
_FENCED_CODE = re.compile(r"^[ \t]*(`{3,}|~{3,})[^\n]*\n.*?^[ \t]*\1[ \t]*$", re.S | re.M)
_INLINE_CODE = re.compile(r"(`+)[^`\n]+?\1")
_LATEX_MATH = re.compile(r"\\\(.*?\\\)|\\\[.*?\\\]|\$\$.*?\$\$", re.S)
_PARAGRAPH_BREAK = re.compile(r"\n[ \t]*\n")
_HAS_WORD = re.compile(r"\w")
_NOT_WORD = re.compile(r"\W+")


def filter_steps(cfg: FilterConfig) -> list[tuple[str, RecordFn]]:
    """The enabled filters as (step name, per-record function), cheapest first."""
    if not cfg.enabled:
        return []
    candidates: list[tuple[str, Callable, bool]] = [
        ("characters", character_filter, _characters_enabled(cfg)),
        ("mojibake", mojibake_filter, cfg.max_mojibake_per_kchar is not None),
        ("compression", compression_filter, _compression_enabled(cfg)),
        ("repetition", repetition_filter, bool(repetition_limits(cfg))),
    ]
    return [(name, partial(fn, cfg=cfg)) for name, fn, on in candidates if on]


def is_code(record: dict) -> bool:
    return record.get("source") == "code"


def text_of(record: dict) -> str | Reject:
    text = record.get("text")
    return text if isinstance(text, str) else Reject("no_text", f"'text' is {type(text).__name__}, not a string")


def _over(stat: str, value: float, limit: float | None) -> Reject | None:
    if limit is not None and value > limit:
        return Reject(stat, f"{value:.3f} > {limit:.3f}")
    return None


def _under(stat: str, value: float, limit: float | None) -> Reject | None:
    if limit is not None and value < limit:
        return Reject(stat, f"{value:.3f} < {limit:.3f}")
    return None


# -- characters --------------------------------------------------------------------------------
def _characters_enabled(cfg: FilterConfig) -> bool:
    return cfg.reject_invalid_utf8 or cfg.max_control_frac is not None or cfg.max_replacement_frac is not None


def invalid_utf8(text: str) -> str | None:
    """Why `text` cannot be written as UTF-8 (a lone surrogate, from a JSON `\\ud800` escape or
    a `surrogateescape` decode), or None when it can."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        return f"{e.reason} at char {e.start}: {text[e.start : e.end]!a}"
    return None


def control_frac(text: str) -> float:
    return len(_CONTROL.findall(text)) / max(len(text), 1)


def replacement_frac(text: str) -> float:
    return text.count(REPLACEMENT_CHAR) / max(len(text), 1)


def character_filter(record: dict, cfg: FilterConfig) -> dict | Reject:
    text = text_of(record)
    if isinstance(text, Reject):
        return text
    why = invalid_utf8(text) if cfg.reject_invalid_utf8 else None
    if why is not None:
        return Reject("invalid_utf8", why)
    return (
        _over("control_frac", control_frac(text), cfg.max_control_frac)
        or _over("replacement_frac", replacement_frac(text), cfg.max_replacement_frac)
        or record
    )


# -- mojibake ----------------------------------------------------------------------------------
def mojibake_count(text: str) -> int:
    """`ftfy.badness.badness(text)`, computed on the lines that hold a non-ASCII character:
    every mojibake pattern needs one, and none spans a newline except by matching it, so the
    count is the same and most of an English page is never scanned."""
    if text.isascii():
        return 0
    kept = [line for line in text.split("\n") if not line.isascii()]
    return ftfy.badness.badness("\n" + "\n".join(kept))


def mojibake_filter(record: dict, cfg: FilterConfig) -> dict | Reject:
    text = text_of(record)
    if isinstance(text, Reject):
        return text
    count = mojibake_count(text)
    if count < cfg.mojibake_min_count:
        return record
    return _over("mojibake_per_kchar", 1000 * count / len(text), cfg.max_mojibake_per_kchar) or record


# -- compression -------------------------------------------------------------------------------
def _compression_enabled(cfg: FilterConfig) -> bool:
    return cfg.min_compression_ratio is not None or cfg.max_compression_ratio is not None


def compression_ratio(data: bytes) -> float:
    """zlib (level 6) compressed size over raw size."""
    return len(zlib.compress(data, 6)) / max(len(data), 1)


def compression_filter(record: dict, cfg: FilterConfig) -> dict | Reject:
    text = text_of(record)
    if isinstance(text, Reject):
        return text
    data = text.encode("utf-8", "surrogatepass")
    if len(data) < cfg.compression_min_bytes:  # zlib's fixed overhead dominates short texts
        return record
    ratio = compression_ratio(data)
    return (
        _under("compression_ratio_low", ratio, cfg.min_compression_ratio)
        or _over("compression_ratio_high", ratio, cfg.max_compression_ratio)
        or record
    )


# -- repetition (Gopher) -----------------------------------------------------------------------
def repetition_limits(cfg: FilterConfig) -> dict[str, float]:
    """{statistic name: threshold} of the enabled repetition statistics, in evaluation order."""
    limits = {
        "dup_line_frac": cfg.dup_line_frac,
        "dup_para_frac": cfg.dup_para_frac,
        "dup_line_char_frac": cfg.dup_line_char_frac,
        "dup_para_char_frac": cfg.dup_para_char_frac,
        **{f"top_{n}gram_char_frac": v for n, v in sorted(cfg.top_ngram_char_frac.items())},
        **{f"dup_{n}gram_char_frac": v for n, v in sorted(cfg.dup_ngram_char_frac.items())},
    }
    return {k: v for k, v in limits.items() if v is not None}


def prose_only(text: str) -> str:
    """`text` without fenced code blocks, inline code spans and LaTeX math."""
    text = _FENCED_CODE.sub("\n", text)
    text = _LATEX_MATH.sub(" ", text)
    return _INLINE_CODE.sub(" ", text)


def words(text: str) -> list[str]:
    """Lowercased whitespace tokens with their punctuation removed; empty ones dropped."""
    return [w for w in (_NOT_WORD.sub("", t) for t in text.lower().split()) if w]


def _content_units(parts: list[str]) -> list[str]:
    stripped = (p.strip() for p in parts)
    return [p for p in stripped if _HAS_WORD.search(p)]


def duplicate_fractions(units: list[str]) -> tuple[float, float]:
    """(fraction of units that repeat an earlier unit, fraction of all unit characters in them)."""
    if not units:
        return 0.0, 0.0
    seen: set[str] = set()
    dup_units = dup_chars = 0
    for u in units:
        if u in seen:
            dup_units += 1
            dup_chars += len(u)
        else:
            seen.add(u)
    return dup_units / len(units), dup_chars / max(sum(map(len, units)), 1)


class NGrams:
    """Integer ids of a word list's n-grams, n = 1, 2, ...: equal n-grams get equal ids. Each
    level is built from the one below by interning (id of the (n-1)-gram, next word) pairs,
    which is cheaper than hashing n-tuples of strings for every n."""

    def __init__(self, ws: list[str]):
        self.char_lens = [len(w) for w in ws]
        self.total_chars = sum(self.char_lens)
        table: dict[str, int] = {}
        self._levels = [[table.setdefault(w, len(table)) for w in ws]]

    def ids(self, n: int) -> list[int]:
        while len(self._levels) < n:
            prev, unigrams, k = self._levels[-1], self._levels[0], len(self._levels)
            table: dict[tuple[int, int], int] = {}
            level = [table.setdefault((prev[i], unigrams[i + k]), len(table)) for i in range(len(prev) - 1)]
            self._levels.append(level)
        return self._levels[n - 1]


def top_ngram_char_frac(grams: NGrams, n: int) -> float:
    """Characters in all occurrences of the most frequent n-gram, over all word characters."""
    ids = grams.ids(n)
    if not ids or not grams.total_chars:
        return 0.0
    top, freq = Counter(ids).most_common(1)[0]
    if freq < 2:
        return 0.0
    start = ids.index(top)
    chars = freq * sum(grams.char_lens[start : start + n])
    return min(chars, grams.total_chars) / grams.total_chars


def dup_ngram_char_frac(grams: NGrams, n: int) -> float:
    """Characters of the words covered by any occurrence of an n-gram that occurs more than
    once, over all word characters; overlapping n-grams count each word once (Gopher)."""
    ids = grams.ids(n)
    if not ids or not grams.total_chars:
        return 0.0
    counts = Counter(ids)
    covered = bytearray(len(grams.char_lens))
    for i, g in enumerate(ids):
        if counts[g] > 1:
            covered[i : i + n] = b"\x01" * n
    return sum(c for c, on in zip(grams.char_lens, covered) if on) / grams.total_chars


def _repetition_values(prose: str, ws: list[str], names: list[str]) -> Iterator[tuple[str, float]]:
    """(name, value) for each statistic in `names`, computed lazily in that order."""
    lines = paras = grams = None
    for name in names:
        if name.startswith("dup_line"):
            lines = lines or duplicate_fractions(_content_units(prose.splitlines()))
            yield name, lines[0] if name == "dup_line_frac" else lines[1]
        elif name.startswith("dup_para"):
            paras = paras or duplicate_fractions(_content_units(_PARAGRAPH_BREAK.split(prose)))
            yield name, paras[0] if name == "dup_para_frac" else paras[1]
        else:
            grams = grams or NGrams(ws)
            n = int(name.split("_")[1].removesuffix("gram"))
            yield name, top_ngram_char_frac(grams, n) if name.startswith("top_") else dup_ngram_char_frac(grams, n)


def repetition_stats(text: str, cfg: FilterConfig) -> dict[str, float]:
    """Every enabled repetition statistic of `text` (for reports and threshold tuning)."""
    prose = prose_only(text)
    return dict(_repetition_values(prose, words(prose), list(repetition_limits(cfg))))


def repetition_filter(record: dict, cfg: FilterConfig) -> dict | Reject:
    text = text_of(record)
    if isinstance(text, Reject):
        return text
    if is_code(record):
        return record
    prose = prose_only(text)
    ws = words(prose)
    if len(ws) < cfg.repetition_min_words:
        return record
    limits = repetition_limits(cfg)
    for name, value in _repetition_values(prose, ws, list(limits)):
        if value > limits[name]:
            return Reject(name, f"{value:.3f} > {limits[name]:.3f}")
    return record
