"""Tokenizer throughput: tiktoken against quicktok and phi4ray's fast path, in one process and on Ray Data.

Run (from the repository root; everything it needs is a phi4ray dependency):

    python benchmarks/tokenize_throughput.py [--html-dir ../shared/data/html] [--copies 4]
        [--repeats 5] [--batch-size 16] [--no-ray]

It prints one table and writes benchmarks/results/tokenize_throughput.json.

Corpus: every page under --html-dir, through `phi4ray.data.extract.extract_text`, the list of
documents repeated --copies times (4 gives about 14 MB of text, so that Ray's fixed costs do not
hide the encoders).

Methods, each fed the whole corpus as one list (in one process) or as a Ray dataset:

- `tiktoken` (THE BASELINE): `phi4ray.tokenizer.get_encoding().encode_ordinary_batch(docs)`,
  tiktoken's own batch call with its default `num_threads=8`. `tiktoken, 1 thread`: the same
  with `num_threads=1`.
- `quicktok raw`: `quicktok.get_encoding("cl100k_base").encode_batch(docs, threads=...)` (0: one
  thread per core, quicktok's default; 1), which returns numpy arrays (all ids, offsets).
- `quicktok + lists`: the same, converted to the `list[list[int]]` that tiktoken returns.
- `phi4ray fast path`: `phi4ray.tokenizer.encode_ordinary_batch(docs)`: quicktok, the Unicode
  check that routes a text tiktoken could split differently to tiktoken, and the conversion to
  `list[list[int]]` that callers get from tiktoken.
- `ray: ...`: a local `ray.init(num_cpus=2)`; the corpus as a materialised
  `ray.data.from_items([{id, source, text}])`, then `.map_batches(fn, batch_size=--batch-size,
  compute=TaskPoolStrategy(size=2), batch_format="pyarrow")` (`concurrency=2` in older Ray),
  materialised by collecting every document's token count on the driver. `fn` calls
  `phi4ray.tokens.tokenize.tokenize_docs`, the stage's per-record function, and returns each
  document's token count. `tiktoken` and `fast path` pin its encoder (see `_pinned`), so these
  rows mean the same whether or not `tokenize_docs` already calls the fast path.
  `tokenize_docs as is` runs it unpatched: the encoder the code calls today.

"mismatched docs": documents whose ids (in one process) or token count (Ray) differ from the
baseline's. Seconds: the median of --repeats rounds, after one warm-up run of each method that
builds the encodings and starts Ray's workers; each round runs every method once, in an order
rotated from round to round, so that a change in the machine's load hits all of them alike.
"x base": tokens/s over the baseline's tokens/s in the same run. Absolute speeds depend on the
machine and its load; the ratios are what carry over.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import json
import logging
import os
import platform
import statistics
import sys
import time
import types
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from phi4ray import tokenizer  # noqa: E402
from phi4ray.data.extract import extract_text  # noqa: E402

BASELINE = "tiktoken"


def load_corpus(html_dir: Path, copies: int) -> list[dict]:
    pages = sorted(html_dir.glob("*/*.html"))
    if not pages:
        raise SystemExit(f"no pages under {html_dir}/*/*.html")
    docs = [(p.relative_to(html_dir).as_posix(), extract_text(p.read_text(encoding="utf-8"))) for p in pages]
    docs = [(name, text) for name, text in docs if text]
    return [{"id": f"{c}:{name}", "source": "web", "text": text} for c in range(copies) for name, text in docs]


def measure(cases: list[tuple[str, Callable[[], object]]], repeats: int) -> tuple[dict, dict]:
    """Run each case once to warm up (encodings built, quicktok verified, Ray workers started) and
    keep that output, then time `repeats` rounds. Each round runs every case once, starting one
    case later than the round before, so that neither a change of load on the machine nor the
    position in a round favours a case."""
    outputs = {}
    for label, fn in cases:
        outputs[label] = fn()
    seconds: dict[str, list[float]] = {label: [] for label, _ in cases}
    for r in range(repeats):
        k = r % len(cases)
        for label, fn in cases[k:] + cases[:k]:
            start = time.perf_counter()
            fn()
            seconds[label].append(time.perf_counter() - start)
        print(f"  round {r + 1}/{repeats}: " + ", ".join(f"{c} {t[-1]:.2f}s" for c, t in seconds.items()),
              file=sys.stderr, flush=True)
    return seconds, outputs


# -- Ray ----------------------------------------------------------------------------------------
@contextlib.contextmanager
def _pinned(encoder: str):
    """Make `tokenize_docs` encode with `encoder`: "tiktoken", "fast", or "as_is" (unpatched).

    `tokenize_docs` imports its encoder from `phi4ray.tokenizer` when it is called. For the
    duration, that module name resolves to a stand-in whose `get_encoding().encode_ordinary_batch`
    (what the function calls today) and `encode_ordinary_batch` (the fast path) are both the chosen
    batch call. The real module is untouched, so the fast path's own tiktoken fallback still works.
    """
    if encoder == "as_is":
        yield
        return
    if encoder == "tiktoken":
        batch = tokenizer.get_encoding().encode_ordinary_batch
    else:
        batch = tokenizer.encode_ordinary_batch
    stand_in = types.ModuleType(tokenizer.__name__)
    stand_in.__dict__.update(vars(tokenizer))
    stand_in.encode_ordinary_batch = batch
    stand_in.get_encoding = lambda: types.SimpleNamespace(encode_ordinary_batch=batch)
    sys.modules[tokenizer.__name__] = stand_in
    try:
        yield
    finally:
        sys.modules[tokenizer.__name__] = tokenizer


def ray_count_tokens(batch, encoder: str) -> dict:
    import numpy as np

    from phi4ray.tokens.tokenize import tokenize_docs

    rows = batch.to_pylist()
    with _pinned(encoder):
        docs, rejects = tokenize_docs(rows)
    if rejects:
        raise RuntimeError(f"{len(rejects)} benchmark rows rejected: {rejects[0]}")
    return {"id": np.array([d["id"] for d in docs], dtype=object), "n_tokens": np.array([len(d["ids"]) for d in docs])}


def run_ray(rows: list[dict], expected: dict[str, int], repeats: int, batch_size: int) -> list[dict]:
    import ray

    os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        ray.data.DataContext.get_current().enable_progress_bars = False
        source = ray.data.from_items(rows).materialize()
        logging.getLogger("ray.data").setLevel(logging.WARNING)  # after Ray Data set up its logging

        def tokens_per_doc(encoder: str) -> Callable[[], dict[str, int]]:
            def run() -> dict[str, int]:
                ds = source.map_batches(
                    ray_count_tokens, fn_kwargs={"encoder": encoder}, batch_size=batch_size,
                    batch_format="pyarrow", compute=ray.data.TaskPoolStrategy(size=2),
                )
                counts: dict[str, int] = {}
                for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
                    counts.update(zip(batch["id"].tolist(), batch["n_tokens"].tolist()))
                return counts

            return run

        cases = [
            ("ray: tokenize_docs, tiktoken", tokens_per_doc("tiktoken")),
            ("ray: tokenize_docs, fast path", tokens_per_doc("fast")),
            ("ray: tokenize_docs as is", tokens_per_doc("as_is")),
        ]
        seconds, outputs = measure(cases, repeats)
    finally:
        ray.shutdown()
    return [
        {
            "method": label, "tokens": sum(counts.values()), "seconds": seconds[label],
            "mismatched_docs": sum(counts.get(k) != v for k, v in expected.items()) + len(counts.keys() - expected),
        }
        for label, counts in outputs.items()
    ]


# -- in one process -----------------------------------------------------------------------------
def run_local(texts: list[str], repeats: int) -> tuple[list[dict], list[list[int]]]:
    import quicktok

    enc = tokenizer.get_encoding()
    qt = quicktok.get_encoding("cl100k_base")

    def as_lists(result) -> list[list[int]]:
        if isinstance(result, list):
            return result
        tokens, offsets = result
        bounds = offsets.tolist()
        return [tokens[a:b].tolist() for a, b in zip(bounds, bounds[1:])]

    cases = [
        (BASELINE, lambda: enc.encode_ordinary_batch(texts)),
        ("tiktoken, 1 thread", lambda: enc.encode_ordinary_batch(texts, num_threads=1)),
        ("quicktok raw, threads=0", lambda: qt.encode_batch(texts, threads=0)),
        ("quicktok raw, threads=1", lambda: qt.encode_batch(texts, threads=1)),
        ("quicktok + lists, threads=0", lambda: as_lists(qt.encode_batch(texts, threads=0))),
        ("phi4ray fast path", lambda: tokenizer.encode_ordinary_batch(texts)),
    ]
    seconds, outputs = measure(cases, repeats)
    reference = outputs[BASELINE]
    rows = []
    for label, _ in cases:
        ids = as_lists(outputs[label])
        mismatched = sum(a != b for a, b in zip(ids, reference)) + abs(len(ids) - len(reference))
        rows.append(
            {"method": label, "tokens": sum(map(len, ids)), "seconds": seconds[label], "mismatched_docs": mismatched}
        )
    return rows, reference


def table(rows: list[dict]) -> str:
    base = next(r for r in rows if r["method"] == BASELINE)
    base_rate = base["tokens"] / statistics.median(base["seconds"])
    lines = [
        f"{'method':<32} {'tokens':>10} {'seconds':>8} {'tokens/s':>12} {'x base':>7} {'mismatched docs':>16}",
        "-" * 90,
    ]
    for r in rows:
        s = statistics.median(r["seconds"])
        r["median_seconds"] = round(s, 4)
        r["tokens_per_s"] = round(r["tokens"] / s)
        r["x_base"] = round(r["tokens"] / s / base_rate, 2)
        lines.append(
            f"{r['method']:<32} {r['tokens']:>10} {s:>8.3f} {r['tokens_per_s']:>12,} {r['x_base']:>7.2f}"
            f" {r['mismatched_docs']:>16}"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--html-dir", type=Path, default=ROOT.parent / "shared" / "data" / "html")
    ap.add_argument("--copies", type=int, default=4, help="times the extracted corpus is repeated")
    ap.add_argument("--repeats", type=int, default=5, help="timed rounds; each method's median is reported")
    ap.add_argument("--batch-size", type=int, default=16, help="documents per Ray Data batch")
    ap.add_argument("--no-ray", action="store_true", help="skip the Ray Data rows")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "tokenize_throughput.json")
    args = ap.parse_args()

    rows_in = load_corpus(args.html_dir, args.copies)
    texts = [r["text"] for r in rows_in]
    n_chars = sum(map(len, texts))
    n_bytes = sum(len(t.encode("utf-8")) for t in texts)
    print(f"corpus: {len(texts)} docs ({len(texts) // args.copies} pages x {args.copies}), "
          f"{n_bytes / 1e6:.1f} MB UTF-8; fast path uses quicktok: {tokenizer._quicktok() is not None}",
          file=sys.stderr, flush=True)

    rows, reference = run_local(texts, args.repeats)
    if not args.no_ray:
        expected = {r["id"]: len(ids) for r, ids in zip(rows_in, reference)}
        rows += run_ray(rows_in, expected, args.repeats, args.batch_size)

    printed = table(rows)
    print(printed)
    versions = {p: importlib.metadata.version(p) for p in ("tiktoken", "quicktok-v1", "ray", "numpy")}
    result = {
        "benchmark": "tokenize_throughput",
        "baseline": BASELINE,
        "corpus": {
            "html_dir": str(args.html_dir), "pages": len(texts) // args.copies, "copies": args.copies,
            "docs": len(texts), "chars": n_chars, "utf8_bytes": n_bytes, "tokens": sum(map(len, reference)),
        },
        "params": {"repeats": args.repeats, "batch_size": args.batch_size, "ray_num_cpus": 2, "ray_tasks": 2},
        "machine": {"python": platform.python_version(), "platform": platform.platform(), "cpus": os.cpu_count(),
                    "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None},
        "versions": versions,
        "fast_path_uses_quicktok": tokenizer._quicktok() is not None,
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
