"""Quality classification and two-stage seed selection (Phi-4 §2.1: "seed curation").

Phi-4 grades web pages with LLM annotations, trains small classifiers on them, applies the
classifiers at scale, and picks synthesis seeds in two stages: a page-level filter for
educational value, then the kept pages are cut into passages and each passage is scored for
factual and reasoning content. Here:

1. **Annotate** (`annotate`, `annotate_dataset`). An LLM behind the `Sampler` interface grades a
   document on the rubric in `prompts/quality_rubric.txt`: *educational value* 0-5 and
   *reasoning density* 0-5. The prompt (`prompts/quality_annotate.txt`) is a ChatML user turn,
   rendered by `tokenizer.render_chat` (the document cannot inject special tokens), and the
   assistant turn is pre-filled with `Educational value:` so that even a weak model answers in
   the format. `parse_grades` reads `Educational value: 4` / `**Reasoning density**: 3/5` /
   `"educational_value": 4` and friends. An answer that does not parse, or parses out of range,
   is kept as `annotation_status="unlabeled"` with its reason (`no_educational_value`,
   `out_of_range`, ...): every input row comes back, labeled or unlabeled, and
   `annotation_counts` counts both. The Ray Data version runs `inference.actor.SamplerPredictor`
   in an actor pool of `cfg.engine.num_actors`, as the synth rewrite step does.
2. **Labels.** Binary: a page is `__label__hq` when its educational value is at least
   `page_label_min` (default 3, "explains a topic correctly"), a passage when *both* its
   educational value is at least `page_label_min` and its reasoning density at least
   `passage_label_min`. Binary rather than six classes because the classifier's output is used
   only as a threshold, p(hq) is that threshold's natural score, and a few thousand grades
   spread over six classes leave the extreme classes nearly empty.
3. **Classify** (`train_classifiers`). fastText supervised, one model per language group
   (`langid.lang_group`, so `LangIdConfig.groups`; a language in no group is its own group)
   with enough examples, plus `all`, trained on every language, which scores the languages
   without their own model. Text for fastText (`preprocess`): one line, lowercased, word and
   punctuation tokens, at most `max_tokens` of them. The held-out split is deterministic and
   by *document*: a hash of (seed, parent document id) decides, so a page and its passages are
   never on both sides. Models are trained on the train split only, so the held-out precision,
   recall and F1 in `report.json` are those of the saved models. Files:
   `<out>/page/<group>.bin`, `<out>/passage/<group>.bin`, `<out>/report.json` (written last:
   its presence with the same config hash means the models are complete).
4. **Apply** (`score`, `quality_step`). A batch step in curate.py's `Step(batch=True)`
   contract: `fn(records) -> (kept, [(record, Reject)])`. It sets `quality` = p(hq) and
   rejects pages below `page_threshold` as `Reject("low_quality", "p=0.12 < 0.50")`. Models load
   once per worker process (`load_models` is cached; a `s3://`/`gs://` model folder is copied
   to a local temporary folder first, since fastText reads local files only).
5. **Seeds** (`split_passages`, `select_seeds`, `seed_step`). Kept pages are cut at headings and
   blank lines into passages of `passage_min_chars`..`passage_max_chars` (code fences are never
   cut at blank lines); each passage is scored by the passage model and those at or above
   `passage_threshold` become seeds: rows of `SEED_SCHEMA`, id = `readers.make_id(doc_id,
   passage_index)`, so the same page always gives the same seed ids.

Where annotations are too few, `train_source="auto"` (the default) trains on the shipped
labeled set instead and says so in the report: the stand-in model of the tiny recipe is random,
its grades almost never parse, and the pipeline must still run end to end.

**The shipped labeled set** (`data/labeled/quality.jsonl`, built by
`data/labeled/build_quality_set.py`, described in `data/labeled/README.md`) is labeled by
provenance, not by an LLM: high = passages of explanatory documentation pages (CPython 3.11
docs, PSF licence; SymPy 1.11 docs, BSD-3-Clause), low = real text of little educational value
(licence texts, changelogs from installed packages' metadata, index and table-of-contents
pages, navigation and footer strings). It is split by source page. Measured with
`python -m phi4ray.data.quality --seed 0 1 2 3 4 5 6 7` (default config): on seed 0's held-out
split (95 rows, 64 hq / 31 lq) precision 1.000, recall 0.984, F1 0.992; over seeds 0-7 the
worst precision was 0.946 and the worst recall 0.956 (predicting hq for everything: precision
0.63-0.75). It measures whether the classifier separates documentation from boilerplate, licences
and changelogs, not agreement with human quality judgements.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import re
import subprocess
import sys
import tempfile
from collections import Counter, defaultdict
from importlib import resources
from typing import Any, Iterable

import pyarrow as pa

from phi4ray.config import LangIdConfig, QualityConfig
from phi4ray.data.langid import lang_group
from phi4ray.data.readers import make_id
from phi4ray.stage import Reject

log = logging.getLogger(__name__)

__all__ = [
    "QualityError",
    "SEED_SCHEMA",
    "ANNOTATION_SCHEMA",
    "load_prompt",
    "preprocess",
    "split_passages",
    "annotation_prompt",
    "parse_grades",
    "annotated_record",
    "annotate",
    "annotate_dataset",
    "annotation_counts",
    "annotation_units",
    "sample_rows",
    "sample_dataset",
    "label_examples",
    "is_heldout",
    "binary_metrics",
    "train_fasttext",
    "train_classifiers",
    "train_from_dataset",
    "read_report",
    "load_labeled_set",
    "evaluate_labeled_set",
    "ModelSet",
    "load_models",
    "score",
    "page_filter",
    "quality_step",
    "select_seeds",
    "seed_step",
]

HQ, LQ = "hq", "lq"
LABEL_PREFIX = "__label__"
FALLBACK = "all"
"""The model trained on every language; it scores languages without a model of their own."""
TARGETS = ("page", "passage")
PREFILL = "Educational value:"
MAX_ANNOTATION_CHARS = 1000
"""Characters of the raw LLM answer kept with each annotation (for auditing the parser)."""
LABELED_SET = "quality.jsonl"

ANNOTATION_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("doc_id", pa.string()),
        ("kind", pa.string()),
        ("passage_index", pa.int32()),
        ("lang", pa.string()),
        ("text", pa.string()),
        ("edu_score", pa.int8()),
        ("reasoning_score", pa.int8()),
        ("annotation_status", pa.string()),
        ("annotation_reason", pa.string()),
        ("annotation", pa.string()),
    ]
)
"""What `train_from_dataset` writes to `<out>/annotations.parquet`."""

SEED_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("doc_id", pa.string()),
        ("passage_index", pa.int32()),
        ("text", pa.string()),
        ("source", pa.string()),
        ("url", pa.string()),
        ("lang", pa.string()),
        ("page_quality", pa.float32()),
        ("quality", pa.float32()),
    ]
)
"""A seed passage: `id` is `make_id(doc_id, passage_index)`; `quality` is the passage model's p(hq)."""


class QualityError(ValueError):
    """Quality models that cannot be trained or loaded. The message says what to fix."""


# -- prompts -----------------------------------------------------------------------------------
@functools.lru_cache(maxsize=16)
def load_prompt(name: str) -> str:
    """A text file of `phi4ray/data/prompts/` by name (without `.txt`)."""
    folder = resources.files("phi4ray.data") / "prompts"
    path = folder / f"{name}.txt"
    if not path.is_file():
        names = sorted(p.name[:-4] for p in folder.iterdir() if p.name.endswith(".txt"))
        raise QualityError(f"unknown quality prompt '{name}'; shipped prompts: {', '.join(names)}")
    return path.read_text()


# -- text --------------------------------------------------------------------------------------
_TOKEN = re.compile(r"\w+|[^\w\s]")


def preprocess(text: str, max_tokens: int = 1024) -> str:
    """fastText's view of a text: one line, lowercased, word and punctuation tokens."""
    head = (text or "")[: max_tokens * 12]  # enough characters for max_tokens tokens
    return " ".join(_TOKEN.findall(head.lower())[:max_tokens])


_HEADING = re.compile(r"^#{1,6}\s")
_FENCE = re.compile(r"^(`{3,}|~{3,})")
_SENTENCE_END = re.compile(r"(?<=[.!?;:])\s+")


def _blocks(text: str) -> list[tuple[str, bool]]:
    """(block, is_heading): paragraphs split at blank lines, headings on their own, and fenced
    code blocks kept whole even when they hold blank lines."""
    blocks: list[tuple[str, bool]] = []
    cur: list[str] = []
    fence: str | None = None

    def flush() -> None:
        if cur:
            block = "\n".join(cur).strip()
            if block:
                blocks.append((block, False))
            cur.clear()

    for line in text.splitlines():
        stripped = line.strip()
        if fence is not None:
            cur.append(line)
            if stripped.startswith(fence) and set(stripped) == {fence[0]}:
                fence = None
            continue
        m = _FENCE.match(stripped)
        if m:
            fence = m.group(1)
            cur.append(line)
        elif not stripped:
            flush()
        elif _HEADING.match(stripped):
            flush()
            blocks.append((stripped, True))
        else:
            cur.append(line)
    flush()
    return blocks


def _pack(units: list[str], max_chars: int, sep: str) -> list[str]:
    out: list[str] = []
    cur = ""
    for u in units:
        if cur and len(cur) + len(sep) + len(u) > max_chars:
            out.append(cur)
            cur = ""
        cur = f"{cur}{sep}{u}" if cur else u
    if cur:
        out.append(cur)
    return out


def _hard_split(block: str, max_chars: int) -> list[str]:
    """A block longer than `max_chars` cut at lines, then sentences, then whitespace. A fenced
    code block is cut at lines and each piece is fenced again, so every piece stays valid."""
    lines = block.split("\n")
    m = _FENCE.match(lines[0].strip())
    if m and len(lines) > 2 and lines[-1].strip().startswith(m.group(1)):
        head, tail = lines[0], lines[-1]
        room = max(1, max_chars - len(head) - len(tail) - 2)
        return [f"{head}\n{body}\n{tail}" for body in _hard_split("\n".join(lines[1:-1]), room)]
    pieces: list[str] = []
    for line in lines:
        if len(line) <= max_chars:
            pieces.append(line)
            continue
        sents: list[str] = []
        for sent in _SENTENCE_END.split(line):
            while len(sent) > max_chars:
                cut = sent.rfind(" ", 0, max_chars)
                cut = cut if cut > max_chars // 2 else max_chars
                sents.append(sent[:cut].rstrip())
                sent = sent[cut:].lstrip()
            if sent:
                sents.append(sent)
        pieces += _pack(sents, max_chars, " ")
    return [p.strip("\n") for p in _pack(pieces, max_chars, "\n") if p.strip()]


def split_passages(text: str, cfg: QualityConfig) -> list[str]:
    """Passages of `cfg.passage_min_chars`..`cfg.passage_max_chars` characters, in order.

    A heading starts a new passage (unless the passage before it is still too short, which
    then runs on into the new section); paragraphs are packed into a passage until the next
    one would overflow it; a paragraph longer than the maximum is cut at lines, then sentences
    (a fenced code block longer than the maximum is cut at lines and each piece re-fenced).
    A passage shorter than the minimum joins its neighbour when they fit together, and is
    dropped otherwise (a lone heading, a stray line).
    """
    lo, hi = cfg.passage_min_chars, cfg.passage_max_chars
    if not isinstance(text, str) or not text.strip():
        return []
    raw: list[str] = []
    cur: list[str] = []
    size = 0

    def flush() -> None:
        nonlocal size
        if cur:
            raw.append("\n\n".join(cur))
            cur.clear()
            size = 0

    for block, heading in _blocks(text):
        if heading and size >= lo:
            flush()
        for piece in [block] if len(block) <= hi else _hard_split(block, hi):
            if cur and size + 2 + len(piece) > hi:
                flush()
            cur.append(piece)
            size += len(piece) + (2 if size else 0)
    flush()
    merged: list[str] = []
    for p in raw:  # short pieces join the passage before them when they fit
        if merged and (len(p) < lo or len(merged[-1]) < lo) and len(merged[-1]) + 2 + len(p) <= hi:
            merged[-1] = f"{merged[-1]}\n\n{p}"
        else:
            merged.append(p)
    return [p for p in merged if len(p) >= lo]


# -- annotation --------------------------------------------------------------------------------
def annotation_prompt(text: str, cfg: QualityConfig) -> list[int]:
    """Token ids: the rubric prompt as a ChatML user turn (rendered as plain text, so a
    document cannot inject special tokens), then the assistant turn pre-filled with
    `Educational value:`."""
    from phi4ray.tokenizer import encode, render_chat

    template = load_prompt(cfg.prompt)
    rubric = load_prompt(cfg.rubric).strip()
    document = (text or "")[: cfg.annotate_chars].strip()
    content = template.replace("{rubric}", rubric).replace("{document}", document).strip()
    ids, _ = render_chat([{"role": "user", "content": content}], add_generation_prompt=True)
    return ids + encode(PREFILL)


_NUM = r"\**\s*[\"'(\[]?\s*(-?\d+(?:\.\d+)?)"
_SEP = r"[\s*_\"'`]*(?:[:=\-–—]|\bis\b|\bof\b)?\s*"
_EDU = re.compile(r"educational[\s_-]*value" + _SEP + _NUM, re.I)
_REASON = re.compile(r"reasoning(?:[\s_-]*(?:density|score|content))?" + _SEP + _NUM, re.I)


def _grade(pattern: re.Pattern, text: str) -> tuple[int | None, str]:
    m = pattern.search(text)
    if m is None:
        return None, "missing"
    value = float(m.group(1))
    if value != int(value):
        return None, "not_integer"
    if not 0 <= value <= 5:
        return None, "out_of_range"
    return int(value), ""


def parse_grades(completion: str, prefilled: bool = True) -> tuple[int | None, int | None, str]:
    """(educational value, reasoning density, reason) from an LLM answer; reason is '' when
    both grades parse, else a stable code: `empty_completion`, `no_educational_value`,
    `no_reasoning_density`, `out_of_range`, `not_integer`. The first match of each grade wins.

    With `prefilled`, the answer continues the pre-filled `Educational value:`.
    """
    body = (completion or "").strip()
    if not body:
        return None, None, "empty_completion"
    text = f"{PREFILL} {body}" if prefilled else body
    edu, why_e = _grade(_EDU, text)
    rea, why_r = _grade(_REASON, text)
    if edu is None:
        return None, rea, "no_educational_value" if why_e == "missing" else why_e
    if rea is None:
        return edu, None, "no_reasoning_density" if why_r == "missing" else why_r
    return edu, rea, ""


def annotated_record(record: dict, completion: str | None, reason: str = "") -> dict:
    """`record` plus its grades: `edu_score`, `reasoning_score` (None when unparsed),
    `annotation_status` (`labeled` | `unlabeled`), `annotation_reason` and `annotation` (the raw
    answer, truncated). `reason` forces unlabeled (e.g. `sampler_error`)."""
    text = record.get("text")
    if not isinstance(text, str) or not text.strip():
        edu, rea, why = None, None, "empty_text"
    elif reason:
        edu, rea, why = None, None, reason
    else:
        edu, rea, why = parse_grades(completion or "")
    return {
        **record,
        "edu_score": edu if not why else None,
        "reasoning_score": rea if not why else None,
        "annotation_status": "unlabeled" if why else "labeled",
        "annotation_reason": why,
        "annotation": (completion or "")[:MAX_ANNOTATION_CHARS],
    }


def _params(cfg: QualityConfig):
    from phi4ray.inference.sampler import SamplingParams

    return SamplingParams.from_config(cfg.sampling, n=1)


def _has_text(record: dict) -> bool:
    t = record.get("text")
    return isinstance(t, str) and bool(t.strip())


def annotate(records: list[dict], sampler, cfg: QualityConfig) -> list[dict]:
    """Grade each record's `text` with `sampler` (in batches of `cfg.engine.batch_size`).

    Returns one annotated record per input record, in order. A batch that the sampler fails
    on is unlabeled with reason `sampler_error`; nothing raises per record.
    """
    params = _params(cfg)
    todo = [i for i, r in enumerate(records) if _has_text(r)]
    answers: dict[int, tuple[str, str]] = {}
    bs = cfg.engine.batch_size
    for start in range(0, len(todo), bs):
        chunk = todo[start : start + bs]
        try:
            outs = sampler.generate([annotation_prompt(records[i]["text"], cfg) for i in chunk], params)
            for i, o in zip(chunk, outs):
                answers[i] = (o[0].text, "")
        except Exception as e:  # an engine failure must not lose the batch's records
            log.warning("quality: annotation batch failed: %s: %s", type(e).__name__, e)
            for i in chunk:
                answers[i] = ("", "sampler_error")
    return [annotated_record(r, *answers.get(i, ("", ""))) for i, r in enumerate(records)]


def _with_prompts(batch: pa.Table, cfg: QualityConfig) -> pa.Table:
    texts = batch.column("text").to_pylist()
    prompts = [annotation_prompt(t or "", cfg) for t in texts]
    return batch.append_column("prompt", pa.array(prompts, type=pa.list_(pa.int64())))


_PREDICTOR_COLUMNS = ("prompt", "completion", "completion_token_ids", "completion_logprobs", "finish_reason", "completions")
_GRADE_FIELDS = [
    pa.field("edu_score", pa.int8()),
    pa.field("reasoning_score", pa.int8()),
    pa.field("annotation_status", pa.string()),
    pa.field("annotation_reason", pa.string()),
    pa.field("annotation", pa.string()),
]


def _parse_batch(batch: pa.Table) -> pa.Table:
    texts = batch.column("text").to_pylist()
    completions = batch.column("completion").to_pylist()
    rows = [annotated_record({"text": t}, c) for t, c in zip(texts, completions)]
    out = batch.drop_columns([c for c in _PREDICTOR_COLUMNS if c in batch.column_names])
    for f in _GRADE_FIELDS:
        out = out.append_column(f, pa.array([r[f.name] for r in rows], type=f.type))
    return out


def annotate_dataset(ds, cfg: QualityConfig):
    """Ray Data: grade every row of `ds` (a `text` column) in an actor pool of
    `cfg.engine.num_actors` `SamplerPredictor`s. Returns `ds` with the annotation columns of
    `annotated_record` added (and no prompt or completion columns)."""
    from phi4ray.inference.actor import SamplerPredictor, map_batches_kwargs

    kw = map_batches_kwargs(cfg.engine, cfg.engine.model, _params(cfg))
    return (
        ds.map_batches(functools.partial(_with_prompts, cfg=cfg), batch_format="pyarrow", batch_size=cfg.engine.batch_size)
        .map_batches(SamplerPredictor, **kw)
        .map_batches(_parse_batch, batch_format="pyarrow")
    )


def annotation_counts(rows: Iterable[dict]) -> dict[str, int]:
    """{'annotated', 'labeled', 'unlabeled', 'unlabeled/<reason>'}: labeled + unlabeled == annotated."""
    c: Counter = Counter()
    for r in rows:
        c["annotated"] += 1
        if r.get("annotation_status") == "labeled":
            c["labeled"] += 1
        else:
            c["unlabeled"] += 1
            c[f"unlabeled/{r.get('annotation_reason') or 'unknown'}"] += 1
    return {"annotated": c.pop("annotated", 0), "labeled": c.pop("labeled", 0), "unlabeled": c.pop("unlabeled", 0), **dict(sorted(c.items()))}


def _rank(key: str, seed: int) -> float:
    """A uniform number in [0, 1) fixed by (seed, key)."""
    return int.from_bytes(hashlib.sha256(f"{seed}\0{key}".encode()).digest()[:8], "big") / 2**64


def sample_rows(rows: list[dict], n: int | None, seed: int, key: str = "id") -> list[dict]:
    """The `n` rows with the smallest hash rank of `row[key]`: a uniform sample that does not
    depend on the rows' order (bottom-k sampling). None: all rows, sorted by rank."""
    ranked = sorted(rows, key=lambda r: (_rank(str(r[key]), seed), str(r[key])))
    return ranked if n is None else ranked[:n]


def _bottom_k(batch: pa.Table, k: int, seed: int) -> pa.Table:
    ids = batch.column("id").to_pylist()
    ranks = [_rank(str(i), seed) for i in ids]
    order = sorted(range(len(ids)), key=lambda i: (ranks[i], str(ids[i])))[:k]
    return batch.take(order).append_column("_rank", pa.array([ranks[i] for i in order], pa.float64()))


def sample_dataset(ds, n: int | None, seed: int) -> list[dict]:
    """`sample_rows` over a Ray Dataset: the bottom-k of every block, then of their union, so
    only k rows per block reach the driver. Returns the k sampled rows."""
    if n is None:
        return sample_rows(ds.take_all(), None, seed)
    small = ds.map_batches(functools.partial(_bottom_k, k=n, seed=seed), batch_format="pyarrow", batch_size=None)
    rows = sorted(small.take_all(), key=lambda r: (r["_rank"], str(r["id"])))[:n]
    for r in rows:
        r.pop("_rank")
    return rows


def annotation_units(pages: list[dict], cfg: QualityConfig) -> list[dict]:
    """What to grade: every page (`kind="page"`, the classifier of stage one) and a sample of at
    most `cfg.max_annotate_passages` of their passages (`kind="passage"`, stage two)."""
    units, passages = [], []
    for p in pages:
        base = {"doc_id": str(p["id"]), "lang": p.get("lang") or ""}
        units.append({**base, "id": str(p["id"]), "kind": "page", "passage_index": -1, "text": p.get("text") or ""})
        for i, t in enumerate(split_passages(p.get("text") or "", cfg)):
            passages.append({**base, "id": make_id(str(p["id"]), i), "kind": "passage", "passage_index": i, "text": t})
    if cfg.max_annotate_passages != 0:
        units += sample_rows(passages, cfg.max_annotate_passages, cfg.seed)
    return units


# -- labels and the held-out split -------------------------------------------------------------
def label_examples(rows: Iterable[dict], cfg: QualityConfig, target: str) -> list[dict]:
    """Labeled annotations of `kind == target` as fastText examples {text, label, group, lang}.

    page: hq iff edu_score >= page_label_min. passage: hq iff edu_score >= page_label_min and
    reasoning_score >= passage_label_min. `group` (the parent document) decides the split.
    """
    out = []
    for r in rows:
        if r.get("annotation_status") != "labeled" or r.get("kind", "page") != target:
            continue
        edu, rea = r.get("edu_score"), r.get("reasoning_score")
        hq = edu >= cfg.page_label_min if target == "page" else (edu >= cfg.page_label_min and rea >= cfg.passage_label_min)
        out.append({"text": r["text"], "label": HQ if hq else LQ, "group": str(r.get("doc_id") or r["id"]), "lang": r.get("lang") or ""})
    return out


def is_heldout(group: str, cfg: QualityConfig) -> bool:
    """Deterministic document-level split: `heldout_fraction` of groups, chosen by hash."""
    return _rank(group, cfg.seed) < cfg.heldout_fraction


# -- fastText ----------------------------------------------------------------------------------
_TRAIN_SCRIPT = """
import json, sys
import fasttext
fasttext.FastText.eprint = lambda *a, **k: None
fasttext.train_supervised(input=sys.argv[1], **json.loads(sys.argv[3])).save_model(sys.argv[2])
"""
NAN_RETRIES = 3


def train_fasttext(texts: list[str], labels: list[str], cfg: QualityConfig, path: str | None = None):
    """A fastText supervised model on `texts` (preprocessed here) with `hq`/`lq` labels, saved
    at `path` (else a temporary file). Returns (model, learning rate used).

    Training runs in a fresh Python process, single-threaded with `cfg.seed`: fastText 0.9.3
    reads uninitialised memory when it trains several models in one process (measured here:
    the same data and seed give different weights from the sixth model on, and sometimes
    NaNs), while a fresh process gives the same model every time. A run that diverges
    (`Encountered NaN`) is retried with half the learning rate, up to NAN_RETRIES times.
    """
    import fasttext

    with tempfile.TemporaryDirectory(prefix="phi4ray-quality-") as tmp:
        data = os.path.join(tmp, "train.txt")
        with open(data, "w", encoding="utf-8") as f:
            for t, y in zip(texts, labels):
                f.write(f"{LABEL_PREFIX}{y} {preprocess(t, cfg.max_tokens)}\n")
        out = path or os.path.join(tmp, "model.bin")
        args = dict(epoch=cfg.epoch, lr=cfg.lr, wordNgrams=cfg.word_ngrams, dim=cfg.dim, minCount=cfg.min_count,
                    bucket=cfg.bucket, loss="softmax", thread=1, seed=cfg.seed, verbose=0)
        for attempt in range(NAN_RETRIES + 1):
            proc = subprocess.run([sys.executable, "-c", _TRAIN_SCRIPT, data, out, json.dumps(args)],
                                  capture_output=True, text=True)
            if proc.returncode == 0:
                break
            if "Encountered NaN" in proc.stderr and attempt < NAN_RETRIES:
                log.warning("quality: fastText diverged at lr=%g; retrying at lr=%g", args["lr"], args["lr"] / 2)
                args["lr"] /= 2
                continue
            raise QualityError(f"fastText training failed (exit {proc.returncode}): {proc.stderr.strip()[-2000:]}")
        fasttext.FastText.eprint = lambda *a, **k: None
        return fasttext.load_model(out), args["lr"]


def _p_hq(model, texts: list[str], max_tokens: int) -> list[float]:
    """p(hq) per text; fastText predicts lists only (numpy 2), one line each."""
    if not texts:
        return []
    labels, probs = model.predict([preprocess(t, max_tokens) for t in texts], k=len(model.labels), threshold=0.0)
    out = []
    for labs, ps in zip(labels, probs):
        d = dict(zip(labs, ps))
        out.append(min(1.0, max(0.0, float(d.get(LABEL_PREFIX + HQ, 0.0)))))
    return out


def binary_metrics(y_true: list[bool], p: list[float], threshold: float = 0.5) -> dict:
    """Precision, recall and F1 of the `hq` class (p >= threshold), accuracy and the counts.
    An undefined ratio (no predicted or no true positives) is None."""
    tp = sum(1 for y, q in zip(y_true, p) if y and q >= threshold)
    fp = sum(1 for y, q in zip(y_true, p) if not y and q >= threshold)
    fn = sum(1 for y, q in zip(y_true, p) if y and q < threshold)
    tn = len(y_true) - tp - fp - fn
    prec = tp / (tp + fp) if tp + fp else None
    rec = tp / (tp + fn) if tp + fn else None
    f1 = 2 * prec * rec / (prec + rec) if prec and rec else (0.0 if prec is not None and rec is not None else None)
    r = lambda x: None if x is None else round(x, 4)  # noqa: E731
    return {"n": len(y_true), "tp": tp, "fp": fp, "fn": fn, "tn": tn, "precision": r(prec), "recall": r(rec),
            "f1": r(f1), "accuracy": r((tp + tn) / len(y_true)) if y_true else None, "threshold": threshold}


def _fs(uri: str):
    import pyarrow.fs as pafs

    if "://" in uri:
        return pafs.FileSystem.from_uri(uri)
    return pafs.LocalFileSystem(), os.path.abspath(uri)


def _train_target(examples: list[dict], cfg: QualityConfig, local_dir: str, langid: LangIdConfig) -> dict:
    """One model per language group with enough examples, plus `all`; saved as <group>.bin."""
    for e in examples:
        e["model_group"] = lang_group(e["lang"], langid) if e["lang"] else ""
    by_group: dict[str, list[dict]] = defaultdict(list)
    for e in examples:
        if e["model_group"]:
            by_group[e["model_group"]].append(e)
    plan = {FALLBACK: examples}
    for g, ex in sorted(by_group.items()):
        if g != FALLBACK and len(ex) >= cfg.min_group_examples:
            plan[g] = ex
    models: dict[str, dict] = {}
    skipped: dict[str, str] = {}
    for g, ex in plan.items():
        train = [e for e in ex if not is_heldout(e["group"], cfg)]
        held = [e for e in ex if is_heldout(e["group"], cfg)]
        counts = Counter(e["label"] for e in train)
        if counts[HQ] == 0 or counts[LQ] == 0:
            if g == FALLBACK:
                raise QualityError(f"cannot train the quality classifier: its train split has {dict(counts)}; both hq and lq are needed")
            skipped[g] = f"train split has {dict(counts)}"
            continue
        model, lr = train_fasttext([e["text"] for e in train], [e["label"] for e in train], cfg,
                                   os.path.join(local_dir, f"{g}.bin"))
        p = _p_hq(model, [e["text"] for e in held], cfg.max_tokens)
        models[g] = {
            "train": dict(sorted(counts.items())),
            "lr": lr,
            "heldout_counts": dict(sorted(Counter(e["label"] for e in held).items())),
            "heldout": binary_metrics([e["label"] == HQ for e in held], p, 0.5),
        }
    return {"models": models, "skipped_groups": skipped}


def load_labeled_set() -> list[dict]:
    """The shipped provenance-labeled set: {id, group, label, source, license, origin, text} rows."""
    path = resources.files("phi4ray.data") / "labeled" / LABELED_SET
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _labeled_examples() -> list[dict]:
    return [{"text": r["text"], "label": r["label"], "group": r["group"], "lang": "en"} for r in load_labeled_set()]


def train_classifiers(
    rows: list[dict], cfg: QualityConfig, out_dir: str, langid: LangIdConfig | None = None, extra: dict | None = None
) -> dict:
    """Train the page and passage classifiers from annotated rows (`annotate` output, with
    `kind`, `doc_id`, `lang`) and save them under `out_dir` (a local path or pyarrow URI).

    A target whose model path is set in `cfg` (`page_model`, `passage_model`) is not trained.
    With `train_source="auto"`, a target with fewer than `min_labels_per_class` labels of
    either class trains on the shipped labeled set instead (the report says which and why).
    Returns the report (plus `extra`), written to `<out_dir>/report.json` after every model
    file; an old report is removed first and old model folders are replaced, not merged.
    """
    import pyarrow.fs as pafs

    from phi4ray.run import config_hash

    langid = langid or LangIdConfig()
    report: dict[str, Any] = {"config_hash": config_hash(cfg), "targets": {}, **(extra or {})}
    fs, root = _fs(out_dir)
    with tempfile.TemporaryDirectory(prefix="phi4ray-quality-") as tmp:
        for target in TARGETS:
            given = cfg.page_model if target == "page" else cfg.passage_model
            if given:
                report["targets"][target] = {"source": "given", "path": given}
                continue
            examples, source, why = [], cfg.train_source, ""
            if cfg.train_source != "labeled_set":
                examples = label_examples(rows, cfg, target)
                c = Counter(e["label"] for e in examples)
                short = min(c[HQ], c[LQ]) < cfg.min_labels_per_class
                if short and cfg.train_source == "annotations":
                    raise QualityError(
                        f"{target} classifier: annotations give {dict(c)} labels; at least "
                        f"{cfg.min_labels_per_class} per class are needed (or train_source: auto / labeled_set)"
                    )
                if short:
                    source, why = "labeled_set", f"annotations gave {dict(sorted(c.items()))}, fewer than {cfg.min_labels_per_class} per class"
                    log.warning("quality: %s classifier: %s; training on the shipped labeled set", target, why)
                else:
                    source = "annotations"
            if source == "labeled_set":
                examples = _labeled_examples()
            local = os.path.join(tmp, target)
            os.makedirs(local)
            entry = {"source": source, **({"reason": why} if why else {}), "examples": len(examples)}
            entry.update(_train_target(examples, cfg, local, langid))
            entry["path"] = f"{out_dir.rstrip('/')}/{target}"
            report["targets"][target] = entry
        fs.create_dir(root, recursive=True)
        if fs.get_file_info(f"{root}/report.json").type == pafs.FileType.File:
            fs.delete_file(f"{root}/report.json")  # no complete-looking report over half-replaced models
        for target in TARGETS:
            if os.path.isdir(os.path.join(tmp, target)):
                fs.create_dir(f"{root}/{target}", recursive=True)
                fs.delete_dir_contents(f"{root}/{target}", missing_dir_ok=True)
                pafs.copy_files(os.path.join(tmp, target), f"{root}/{target}",
                                source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)
        with fs.open_output_stream(f"{root}/report.json") as f:
            f.write(json.dumps(report, indent=2, sort_keys=True).encode())
    for target, entry in report["targets"].items():
        for g, m in entry.get("models", {}).items():
            h = m["heldout"]
            log.info("quality: %s/%s (%s): held-out n=%d precision=%s recall=%s f1=%s",
                     target, g, entry["source"], h["n"], h["precision"], h["recall"], h["f1"])
    return report


def read_report(out_dir: str) -> dict | None:
    """`<out_dir>/report.json`, or None when the models are not complete there."""
    import pyarrow.fs as pafs

    fs, root = _fs(out_dir)
    if fs.get_file_info(f"{root}/report.json").type != pafs.FileType.File:
        return None
    with fs.open_input_stream(f"{root}/report.json") as f:
        return json.loads(f.read())


def train_from_dataset(ds, cfg: QualityConfig, out_dir: str, langid: LangIdConfig | None = None) -> dict:
    """The whole training half on a Ray Dataset of pages (`id`, `text`, `lang`): sample
    `max_annotate_docs` pages, grade them and a sample of their passages with the annotator
    pool, write `<out_dir>/annotations.parquet`, train both classifiers. Skipped (the old report
    returned) when `<out_dir>` already holds complete models for the same config."""
    import ray.data

    from phi4ray.run import config_hash

    old = read_report(out_dir)
    if old is not None and old.get("config_hash") == config_hash(cfg):
        log.info("quality: models in %s are complete for this config; not retraining", out_dir)
        return old
    rows: list[dict] = []
    counts: dict[str, int] = {}
    needs_annotation = cfg.train_source != "labeled_set" and not (cfg.page_model and cfg.passage_model)
    if needs_annotation:
        pages = sample_dataset(ds.select_columns(["id", "text", "lang"]), cfg.max_annotate_docs, cfg.seed)
        units = annotation_units(pages, cfg)
        if units:
            rows = annotate_dataset(ray.data.from_items(units), cfg).take_all()
        counts = annotation_counts(rows)
        if counts.get("annotated", 0) != len(units):
            raise RuntimeError(f"quality: {len(units)} units went to the annotator and {counts.get('annotated', 0)} came back")
        fs, root = _fs(out_dir)
        fs.create_dir(root, recursive=True)
        import pyarrow.parquet as pq

        table = pa.Table.from_pylist([{k: r.get(k) for k in ANNOTATION_SCHEMA.names} for r in rows], schema=ANNOTATION_SCHEMA)
        pq.write_table(table, f"{root}/annotations.parquet", filesystem=fs)
    return train_classifiers(rows, cfg, out_dir, langid, extra={"annotation": counts})


def evaluate_labeled_set(cfg: QualityConfig | None = None) -> dict:
    """Train on the shipped labeled set's train split and measure on its held-out split (by
    source page), overall and per source kind. Nothing is written."""
    cfg = cfg or QualityConfig()
    rows = load_labeled_set()
    train = [r for r in rows if not is_heldout(r["group"], cfg)]
    held = [r for r in rows if is_heldout(r["group"], cfg)]
    model, lr = train_fasttext([r["text"] for r in train], [r["label"] for r in train], cfg)
    p = _p_hq(model, [r["text"] for r in held], cfg.max_tokens)
    per_origin: dict[str, dict] = {}
    for origin in sorted({r["origin"] for r in held}):
        idx = [i for i, r in enumerate(held) if r["origin"] == origin]
        ok = sum(1 for i in idx if (p[i] >= 0.5) == (held[i]["label"] == HQ))
        per_origin[origin] = {"n": len(idx), "correct": ok}
    return {
        "rows": len(rows),
        "train": dict(sorted(Counter(r["label"] for r in train).items())),
        "heldout_counts": dict(sorted(Counter(r["label"] for r in held).items())),
        "groups": {"train": len({r["group"] for r in train}), "heldout": len({r["group"] for r in held})},
        "lr": lr,
        "heldout": binary_metrics([r["label"] == HQ for r in held], p, 0.5),
        "heldout_by_origin": per_origin,
    }


# -- applying the models -----------------------------------------------------------------------
class ModelSet:
    """The fastText models of one target by language group; `all` scores the other languages."""

    def __init__(self, models: dict[str, Any], max_tokens: int = 1024):
        if not models:
            raise QualityError("no quality models")
        self.models = models
        self.fallback = FALLBACK if FALLBACK in models else (next(iter(models)) if len(models) == 1 else None)
        if self.fallback is None:
            raise QualityError(f"quality models {sorted(models)} have no '{FALLBACK}' model for other languages")
        self.max_tokens = max_tokens

    def p_hq(self, texts: list[str], groups: list[str]) -> list[float]:
        out = [0.0] * len(texts)
        todo: dict[str, list[int]] = defaultdict(list)
        for i, g in enumerate(groups):
            todo[g if g in self.models else self.fallback].append(i)
        for g, idx in todo.items():
            for i, p in zip(idx, _p_hq(self.models[g], [texts[i] for i in idx], self.max_tokens)):
                out[i] = p
        return out


def _local_copy(uri: str) -> str:
    """A local path for a model file or folder (a `://` URI is downloaded once per process)."""
    if "://" not in uri:
        return os.path.abspath(uri)
    import pyarrow.fs as pafs

    fs, path = pafs.FileSystem.from_uri(uri)
    dest = os.path.join(tempfile.mkdtemp(prefix="phi4ray-quality-"), os.path.basename(path.rstrip("/")))
    if fs.get_file_info(path).type == pafs.FileType.Directory:
        os.makedirs(dest)
        pafs.copy_files(path, dest, source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem())
    else:
        pafs.copy_files(path, dest, source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem())
    return dest


@functools.lru_cache(maxsize=8)
def load_models(path: str, max_tokens: int = 1024) -> ModelSet:
    """The models at `path`, cached per process: a folder of `<group>.bin` files (`all.bin`
    for languages without their own), or one `.bin`/`.ftz` file for every language."""
    import fasttext

    local = _local_copy(path)
    fasttext.FastText.eprint = lambda *a, **k: None
    if os.path.isfile(local):
        return ModelSet({FALLBACK: fasttext.load_model(local)}, max_tokens)
    if not os.path.isdir(local):
        raise QualityError(f"quality model {path} does not exist; train it (train_classifiers) or set its path")
    files = sorted(f for f in os.listdir(local) if f.endswith((".bin", ".ftz")))
    if not files:
        raise QualityError(f"quality model folder {path} holds no .bin or .ftz model")
    return ModelSet({f.rsplit(".", 1)[0]: fasttext.load_model(os.path.join(local, f)) for f in files}, max_tokens)


def _groups(records: list[dict], langid: LangIdConfig | None) -> list[str]:
    langid = langid or LangIdConfig()
    return [lang_group(r.get("lang") or "", langid) if r.get("lang") else FALLBACK for r in records]


def score(records: list[dict], model_path: str, cfg: QualityConfig, langid: LangIdConfig | None = None,
          field: str = "quality") -> list[dict]:
    """Records with `field` = p(hq) from the models at `model_path` (loaded once per process).
    Records without text score 0.0."""
    models = load_models(model_path, cfg.max_tokens)
    idx = [i for i, r in enumerate(records) if _has_text(r)]
    probs = [0.0] * len(records)
    for i, p in zip(idx, models.p_hq([records[i]["text"] for i in idx], _groups([records[i] for i in idx], langid))):
        probs[i] = p
    return [{**r, field: p} for r, p in zip(records, probs)]


def page_filter(
    records: list[dict], model_path: str, cfg: QualityConfig, langid: LangIdConfig | None = None
) -> tuple[list[dict], list[tuple[dict, Reject]]]:
    """Batch step: set `quality` and reject pages below `cfg.page_threshold` (`low_quality`);
    a record without text is `empty_text`."""
    good = [r for r in records if _has_text(r)]
    rejected: list[tuple[dict, Reject]] = [(r, Reject("empty_text")) for r in records if not _has_text(r)]
    kept = []
    for r in score(good, model_path, cfg, langid):
        if r["quality"] < cfg.page_threshold:
            rejected.append((r, Reject("low_quality", f"p={r['quality']:.2f} < {cfg.page_threshold:.2f}")))
        else:
            kept.append(r)
    return kept, rejected


def _model_path(cfg: QualityConfig, target: str, model_dir: str | None) -> str:
    given = cfg.page_model if target == "page" else cfg.passage_model
    if given:
        return given
    if model_dir is None:
        raise QualityError(f"no {target} quality model: set quality.{target}_model or train one (train_classifiers)")
    return f"{model_dir.rstrip('/')}/{target}"


def quality_step(cfg: QualityConfig, model_dir: str | None = None, langid: LangIdConfig | None = None):
    """The page filter as a curate batch step: `fn(records) -> (kept, [(record, Reject)])`.

    The model is `cfg.page_model`, else `<model_dir>/page` (as `train_classifiers` writes it).
    It is loaded here once, so a missing model fails in the driver and not as one reject per
    record; workers load their own copy on first use. The returned callable pickles small.
    """
    path = _model_path(cfg, "page", model_dir)
    load_models(path, cfg.max_tokens)
    return functools.partial(page_filter, model_path=path, cfg=cfg, langid=langid)


def select_seeds(
    pages: list[dict], model_path: str, cfg: QualityConfig, langid: LangIdConfig | None = None
) -> tuple[list[dict], list[tuple[dict, Reject]]]:
    """Stage two: split each kept page into passages and keep those whose p(hq) under the
    passage model is at least `cfg.passage_threshold`. Returns (seed rows of `SEED_SCHEMA`,
    [(passage row, Reject("low_passage_quality", ...))]); a page with no passage of the allowed
    size gives one `(page, Reject("no_passages"))`."""
    cands: list[dict] = []
    rejected: list[tuple[dict, Reject]] = []
    for page in pages:
        doc_id = str(page.get("id", ""))
        passages = split_passages(page.get("text") or "", cfg)
        if not passages:
            n = len(page.get("text") or "")
            rejected.append((page, Reject("no_passages", f"{n} chars; passages need {cfg.passage_min_chars}")))
            continue
        for i, t in enumerate(passages):
            cands.append({
                "id": make_id(doc_id, i), "doc_id": doc_id, "passage_index": i, "text": t,
                "source": page.get("source") or "", "url": page.get("url") or "", "lang": page.get("lang") or "",
                "page_quality": page.get("quality"),
            })
    seeds = []
    for r in score(cands, model_path, cfg, langid):
        if r["quality"] >= cfg.passage_threshold:
            seeds.append(r)
        else:
            rejected.append((r, Reject("low_passage_quality", f"p={r['quality']:.2f} < {cfg.passage_threshold:.2f}")))
    return seeds, rejected


def seed_step(cfg: QualityConfig, model_dir: str | None = None, langid: LangIdConfig | None = None):
    """`select_seeds` with its model bound (`cfg.passage_model`, else `<model_dir>/passage`),
    loaded once here so that a missing model fails early: `fn(pages) -> (seeds, rejects)`."""
    path = _model_path(cfg, "passage", model_dir)
    load_models(path, cfg.max_tokens)
    return functools.partial(select_seeds, model_path=path, cfg=cfg, langid=langid)


def main(argv: list[str] | None = None) -> int:
    """`python -m phi4ray.data.quality [--seed N ...]`: held-out precision/recall/F1 on the
    shipped labeled set, as JSON."""
    import argparse

    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("--seed", type=int, nargs="*", default=[0])
    args = ap.parse_args(argv)
    out = {str(s): evaluate_labeled_set(QualityConfig(seed=s)) for s in args.seed}
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
