"""Decontamination: hybrid 13-gram / 7-gram matching against evaluation sets (Phi-4).

`DecontamIndex.build(cfg)` reads the eval sets (small: thousands of items) once, on the
driver, into plain dicts and sets; the index pickles, so the stage ships it to Ray workers by
value (`ray.put`, or inside the `partial` of a map function). `index.check(record)` is the
per-record step: it returns the record, or `Reject("contaminated", detail)` whose detail names
the benchmark, the eval item and the matching n-gram:

    gsm8k item "17": 13-gram "natalia sold clips to 48 of her friends in april and then she"
    trivia item "t0": 7-gram "which gas makes up most of the" (4 of 4 7-grams, 1.00 >= 0.50)

The matching rule and the allow-list are documented on `DecontamConfig`. Reject rows carry
the detail, so `contamination_report(reject_rows)` aggregates documents removed per
benchmark, per item and per n-gram for the manifest, and `contamination_counts` gives the
numeric per-shard counters (`contaminated/<benchmark>`) that `StageCounts` sums.
"""

from __future__ import annotations

import json
import os
import re
import unicodedata
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator

import pyarrow.fs as pafs

from phi4ray.config import DecontamConfig
from phi4ray.stage import Reject

REASON = "contaminated"
_TOKEN = re.compile(r"[^\W_]+")
_DETAIL = re.compile(
    r'^(?P<benchmark>[\w.-]+) item (?P<item>"(?:[^"\\]|\\.)*"): (?P<n>\d+)-gram (?P<ngram>"(?:[^"\\]|\\.)*")'
)


def normalize(text: str) -> list[str]:
    """NFKC, casefolded runs of letters and digits: case, punctuation and spacing vanish."""
    return _TOKEN.findall(unicodedata.normalize("NFKC", text).casefold())


def ngrams(tokens: list[str], n: int) -> list[str]:
    return [" ".join(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]


@dataclass(frozen=True)
class EvalItem:
    benchmark: str
    item_id: str
    fields: tuple[tuple[str, str], ...]
    """(field name, text) pairs; n-grams never span two fields."""


@dataclass(frozen=True)
class Match:
    benchmark: str
    item_id: str
    n: int
    ngram: str
    shared: int = 1
    """Rule (b): how many of the short n-grams of one of the item's fields the document holds,
    of `total`."""
    total: int = 1

    def detail(self, min_frac: float | None = None) -> str:
        gram = json.dumps(self.ngram, ensure_ascii=False)
        head = f"{self.benchmark} item {json.dumps(self.item_id, ensure_ascii=False)}: {self.n}-gram {gram}"
        if min_frac is None:
            return head
        frac = self.shared / self.total
        return f"{head} ({self.shared} of {self.total} {self.n}-grams, {frac:.2f} >= {min_frac:.2f})"


# -- eval sets ---------------------------------------------------------------------------------
def _read_lines(path: str) -> list[str]:
    """The lines of a small text file (`.gz` decompressed), local or at a `pyarrow.fs` URI."""
    if "://" in path:
        fs, inner = pafs.FileSystem.from_uri(path)
    else:
        fs, inner = pafs.LocalFileSystem(), os.path.abspath(path)
    with fs.open_input_stream(inner, compression="gzip" if path.endswith(".gz") else None) as s:
        data = s.read()
    try:
        return data.decode("utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise ValueError(f"{path} is not UTF-8: {e}") from None


def _flatten(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        yield str(value)
    elif isinstance(value, dict):
        for v in value.values():
            yield from _flatten(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _flatten(v)


def item_from_json(obj: dict, benchmark: str, line: int, cfg: DecontamConfig) -> EvalItem:
    fields = tuple((f, " ".join(_flatten(obj[f]))) for f in cfg.text_fields if obj.get(f) is not None)
    if not any(text.strip() for _, text in fields):
        raise ValueError(f"has none of the text fields {cfg.text_fields} (its keys: {sorted(obj)[:20]})")
    item_id = next((str(obj[f]) for f in cfg.id_fields if obj.get(f) is not None), str(line))
    return EvalItem(benchmark, item_id, fields)


def load_eval_set(benchmark: str, path: str, cfg: DecontamConfig) -> list[EvalItem]:
    """Items of one JSONL eval set. A missing file or a bad line is an error that names it: an
    eval set that silently lost items would let contamination through."""
    items = []
    for i, line in enumerate(_read_lines(path)):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
            if not isinstance(obj, dict):
                raise ValueError(f"expected an object, got {type(obj).__name__}")
            items.append(item_from_json(obj, benchmark, i, cfg))
        except ValueError as e:
            raise ValueError(f"eval set {benchmark}: {path} line {i + 1}: {e}") from None
    if not items:
        raise ValueError(f"eval set {benchmark}: {path} has no items")
    return items


def load_allow_list(path: str, cfg: DecontamConfig) -> set[str]:
    allowed: set[str] = set()
    for i, line in enumerate(_read_lines(path)):
        tokens = normalize(line)
        if not tokens:
            continue
        if len(tokens) < cfg.short_n:
            raise ValueError(f"allow list {path} line {i + 1}: {len(tokens)} words, fewer than {cfg.short_n}")
        allowed.update(ngrams(tokens, cfg.short_n))
        allowed.update(ngrams(tokens, cfg.long_n))
    return allowed


# -- the index ---------------------------------------------------------------------------------
@dataclass
class DecontamIndex:
    """N-grams of the eval items -> where they occur. Plain containers, so it pickles."""

    long_n: int
    short_n: int
    short_min_frac: float
    items: list[tuple[str, str]] = field(default_factory=list)
    """(benchmark, item id) of each indexed item."""
    field_items: list[int] = field(default_factory=list)
    """The item (position in `items`) of each indexed field."""
    field_totals: list[int] = field(default_factory=list)
    """Distinct short n-grams of each indexed field that are not allow-listed."""
    long_grams: dict[str, tuple[int, ...]] = field(default_factory=dict)
    """long_n-gram -> items that hold it (allow-listed ones left out)."""
    short_grams: dict[str, tuple[int, ...]] = field(default_factory=dict)
    """short_n-gram -> fields that hold it (allow-listed ones left out)."""
    vocab: frozenset[str] = frozenset()
    """Every word of every indexed n-gram: a document window with another word cannot match."""
    allow_listed: int = 0
    benchmarks: dict[str, dict[str, int]] = field(default_factory=dict)
    """Per benchmark: items read, items indexed, items too short to match."""

    @classmethod
    def build(cls, cfg: DecontamConfig) -> "DecontamIndex":
        items = [it for name, path in sorted(cfg.eval_sets.items()) for it in load_eval_set(name, path, cfg)]
        allowed = load_allow_list(cfg.allow_list, cfg) if cfg.allow_list else set()
        return cls.from_items(items, cfg, allowed)

    @classmethod
    def from_items(
        cls, items: Iterable[EvalItem], cfg: DecontamConfig, allowed: Iterable[str] = ()
    ) -> "DecontamIndex":
        index = cls(cfg.long_n, cfg.short_n, cfg.short_min_frac)
        grams = []
        for it in items:
            stats = index.benchmarks.setdefault(it.benchmark, {"items": 0, "indexed": 0, "too_short": 0})
            stats["items"] += 1
            tokens = [normalize(text) for _, text in it.fields]
            shorts = [set(ngrams(t, cfg.short_n)) for t in tokens]
            if not any(shorts):
                stats["too_short"] += 1
                continue
            stats["indexed"] += 1
            long = {g for t in tokens for g in ngrams(t, cfg.long_n)}
            grams.append(((it.benchmark, it.item_id), [s for s in shorts if s], long))
        blocked = set(allowed) | _common_ngrams(grams, cfg.common_min_items)
        index.allow_listed = len(blocked)
        long_map: dict[str, list[int]] = {}
        short_map: dict[str, list[int]] = {}
        for pos, (key, field_shorts, long) in enumerate(grams):
            index.items.append(key)
            for g in long - blocked:
                long_map.setdefault(g, []).append(pos)
            for short in field_shorts:
                kept = short - blocked
                if not kept:
                    continue
                for g in kept:
                    short_map.setdefault(g, []).append(len(index.field_items))
                index.field_items.append(pos)
                index.field_totals.append(len(kept))
        index.long_grams = {g: tuple(v) for g, v in long_map.items()}
        index.short_grams = {g: tuple(v) for g, v in short_map.items()}
        index.vocab = frozenset(w for g in (*long_map, *short_map) for w in g.split(" "))
        return index

    def summary(self) -> dict:
        """For the manifest: what was indexed."""
        return {
            "benchmarks": self.benchmarks,
            "long_n": self.long_n,
            "short_n": self.short_n,
            "long_ngrams": len(self.long_grams),
            "short_ngrams": len(self.short_grams),
            "allow_listed": self.allow_listed,
        }

    # -- matching -------------------------------------------------------------------------------
    def _candidates(self, tokens: list[str], n: int) -> list[str]:
        """The n-grams of `tokens` made only of indexed words, in document order."""
        runs = [0] * (len(tokens) + 1)
        for i in range(len(tokens) - 1, -1, -1):
            runs[i] = runs[i + 1] + 1 if tokens[i] in self.vocab else 0
        return [" ".join(tokens[i : i + n]) for i in range(len(tokens) - n + 1) if runs[i] >= n]

    def _long_match(self, tokens: list[str]) -> Match | None:
        for g in self._candidates(tokens, self.long_n):
            hits = self.long_grams.get(g)
            if hits:
                bench, item = self.items[hits[0]]
                return Match(bench, item, self.long_n, g)
        return None

    def _short_match(self, tokens: list[str]) -> Match | None:
        shared: Counter = Counter()
        first: dict[int, str] = {}
        for g in dict.fromkeys(self._candidates(tokens, self.short_n)):
            for f in self.short_grams.get(g, ()):
                shared[f] += 1
                first.setdefault(f, g)
        best = max(shared, key=lambda f: (shared[f] / self.field_totals[f], -f), default=None)
        if best is None or shared[best] / self.field_totals[best] < self.short_min_frac:
            return None
        bench, item = self.items[self.field_items[best]]
        return Match(bench, item, self.short_n, first[best], shared[best], self.field_totals[best])

    def match(self, text: str) -> Match | None:
        """The first evidence that `text` holds an eval item: rule (a), else rule (b)."""
        tokens = normalize(text)
        return self._long_match(tokens) or self._short_match(tokens)

    def check(self, record: dict) -> dict | Reject:
        """Curation step: the record, or `Reject("contaminated", <benchmark, item, n-gram>)`."""
        text = record.get("text")
        if not isinstance(text, str):
            return Reject("no_text", f"'text' is {type(text).__name__}, not a string")
        m = self.match(text)
        if m is None:
            return record
        return Reject(REASON, m.detail(self.short_min_frac if m.n == self.short_n else None))


def _common_ngrams(per_item: list[tuple[Any, list[set[str]], set[str]]], min_items: int | None) -> set[str]:
    """N-grams that at least `min_items` distinct items hold."""
    if min_items is None:
        return set()
    counts: Counter = Counter()
    for _, field_shorts, long in per_item:
        counts.update(set().union(*field_shorts))
        counts.update(long)
    return {g for g, c in counts.items() if c >= min_items}


# -- reports -----------------------------------------------------------------------------------
def parse_detail(reason: str) -> Match | None:
    """A reject row's `reason` ("contaminated: <detail>") -> its Match; None for other reasons."""
    code, _, detail = reason.partition(": ")
    if code != REASON:
        return None
    m = _DETAIL.match(detail)
    if m is None:
        return None
    return Match(m["benchmark"], json.loads(m["item"]), int(m["n"]), json.loads(m["ngram"]))


def contamination_counts(reject_rows: Iterable[dict]) -> dict[str, int]:
    """{'contaminated/<benchmark>': documents} for a shard's `ShardResult.extra`."""
    c = Counter(f"{REASON}/{m.benchmark}" for r in reject_rows if (m := parse_detail(r["reason"])))
    return dict(sorted(c.items()))


def contamination_report(reject_rows: Iterable[dict], max_ngrams: int = 20, max_items: int = 50) -> dict:
    """Documents removed per benchmark, with the items and n-grams that matched most often.

    `reject_rows` are the stage's reject rows (or any dicts with a `reason`), e.g. the
    `reason` column of `rejects/curate` read back at the end of the stage."""
    per: dict[str, dict[str, Counter]] = {}
    docs: Counter = Counter()
    for r in reject_rows:
        m = parse_detail(r["reason"])
        if m is None:
            continue
        docs[m.benchmark] += 1
        b = per.setdefault(m.benchmark, {"items": Counter(), "ngrams": Counter(), "rule": Counter()})
        b["items"][m.item_id] += 1
        b["ngrams"][m.ngram] += 1
        b["rule"][f"{m.n}-gram"] += 1
    return {
        "documents": sum(docs.values()),
        "benchmarks": {
            name: {
                "documents": docs[name],
                "by_rule": dict(sorted(b["rule"].items())),
                "items": dict(b["items"].most_common(max_items)),
                "ngrams": dict(b["ngrams"].most_common(max_ngrams)),
            }
            for name, b in sorted(per.items())
        },
    }
