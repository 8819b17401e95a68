"""The tokenize stage: `curated/` and `synthetic/` into packed training rows.

1. Tokenize every document of every input shard (`tokens/docs/`), counting tokens per source.
2. Plan the mixture from those counts (`mixture.plan`).
3. Write `tokens/pretrain/`: each output shard takes its hash bucket of every document copy,
   in a seeded order, packed into rows of seq_len + 1 (`pack.pack_stream`).
4. Write `tokens/sft/`: ChatML conversations with the assistant-only loss mask (`pack.pack_examples`).
"""

from __future__ import annotations

import json
import logging
import math

import pyarrow as pa

from phi4ray.config import TokenizeConfig
from phi4ray.run import RunDir, config_hash
from phi4ray.stage import Reject, ShardResult, reject_row, run_shards
from phi4ray.tokens import mixture
from phi4ray.tokens.pack import pack_examples, pack_stream

log = logging.getLogger(__name__)
STAGE = "tokenize"
INPUTS = ("curated", "synthetic")
ROW_SCHEMA = pa.schema(
    [("input_ids", pa.list_(pa.int32())), ("loss_mask", pa.list_(pa.int8())), ("segment_ids", pa.list_(pa.int32()))]
)
DOC_SCHEMA = pa.schema([("id", pa.string()), ("source", pa.string()), ("ids", pa.list_(pa.int32()))])


def tokenize_docs(rows: list[dict]) -> tuple[list[dict], list[dict]]:
    """Per-record: text -> token ids. Rows without text are rejects (never silently dropped)."""
    from phi4ray.tokenizer import get_encoding

    good, rejects = [], []
    for r in rows:
        if not isinstance(r.get("text"), str) or not r["text"]:
            rejects.append(reject_row(r, STAGE, "tokenize", Reject("no_text")))
        elif not r.get("source"):
            rejects.append(reject_row(r, STAGE, "tokenize", Reject("no_source")))
        else:
            good.append(r)
    ids = get_encoding().encode_ordinary_batch([r["text"] for r in good]) if good else []
    return [{"id": r["id"], "source": r["source"], "ids": t} for r, t in zip(good, ids)], rejects


def sft_examples(rows: list[dict]) -> tuple[list[tuple[list[int], list[int]]], list[dict]]:
    """Per-record: ChatML messages -> (ids, assistant-only loss mask)."""
    from phi4ray.tokenizer import render_chat

    out, rejects = [], []
    for r in rows:
        try:
            msgs = json.loads(r["messages"])
            ids, mask = render_chat(msgs)
            if not any(mask):
                raise ValueError("no assistant turn to learn from")
            out.append((ids, mask))
        except Exception as e:
            rejects.append(reject_row(r, STAGE, "chatml", Reject("bad_messages", f"{type(e).__name__}: {e}")))
    return out, rejects


def _table_rows(run_dir: RunDir, rel: str, shard: str, columns: list[str]) -> list[dict]:
    import pyarrow.parquet as pq

    t = pq.read_table(run_dir.shard_path(rel, shard), filesystem=run_dir.fs)
    return t.select([c for c in columns if c in t.column_names]).to_pylist()


def _prefixed(counts: dict, prefix: str) -> dict:
    """The shard counts named `prefix<key>`, keyed by `<key>`."""
    return {k[len(prefix):]: v for k, v in counts.items() if k.startswith(prefix)}


def run_tokenize(cfg: TokenizeConfig, run_dir: RunDir, force: bool = False) -> dict:
    from phi4ray.tokenizer import EOT_ID

    h = config_hash(cfg)
    if not run_dir.begin_stage(STAGE, h, outputs=["tokens", f"rejects/{STAGE}"], force=force):
        log.warning("tokenize: already complete in %s; skipping", run_dir.uri)
        return run_dir.stage_entry(STAGE)

    # 1. documents -> token ids, one output shard per input shard
    units = [
        {"shard": f"{table}-{s}", "table": table, "input": s}
        for table in INPUTS
        if run_dir.exists(table)
        for s in run_dir.shards(table)
    ]
    if not units:
        raise FileNotFoundError(f"no input for tokenize in {run_dir.uri}: run curate and synth first")

    def docs_unit(u: dict) -> ShardResult:
        rows = _table_rows(run_dir, u["table"], u["input"], ["id", "source", "text"])
        docs, rejects = tokenize_docs(rows)
        per_source: dict[str, int] = {}
        for d in docs:
            per_source[d["source"]] = per_source.get(d["source"], 0) + len(d["ids"]) + 1  # + <|endoftext|>
        return ShardResult(
            pa.Table.from_pylist(docs, schema=DOC_SCHEMA), rejects, read=len(rows),
            extra={f"tokens.{s}": n for s, n in per_source.items()},
        )

    doc_counts = run_shards(run_dir, STAGE, "tokens/docs", units, docs_unit)
    unique = _prefixed(doc_counts.extra, "tokens.")

    # 2. the mixture plan
    plans = mixture.plan(unique, cfg.mixture, cfg.total_tokens)
    target = sum(p.target_tokens for p in plans.values())
    n_out = max(1, math.ceil(target / (cfg.rows_per_shard * (cfg.seq_len + 1))))
    doc_shards = run_dir.shards("tokens/docs")

    # 3. pretraining rows: output shard k packs bucket k of every document copy
    def pretrain_unit(u: dict) -> ShardResult:
        k = u["k"]
        picked: list[tuple[str, list[int], str]] = []
        for s in doc_shards:
            for d in _table_rows(run_dir, "tokens/docs", s, ["id", "source", "ids"]):
                p = plans.get(d["source"])
                if p is None:
                    continue
                for j in range(mixture.copies(d["id"], p.epochs, cfg.seed)):
                    key = f"{d['id']}:{j}"
                    if mixture.bucket(key, n_out, cfg.seed) == k:
                        picked.append((key, d["ids"], d["source"]))
        picked.sort(key=lambda t: mixture.bucket(t[0], 2**31, cfg.seed + 1))
        rows, st = pack_stream((ids for _, ids, _ in picked), cfg.seq_len, EOT_ID)
        realised: dict[str, int] = {}
        for _, ids, src in picked:
            realised[f"mix.{src}"] = realised.get(f"mix.{src}", 0) + len(ids) + 1
        return ShardResult(
            pa.Table.from_pydict(rows.as_columns(), schema=ROW_SCHEMA), read=len(picked),
            extra={**realised, **{f"pack.{k2}": v for k2, v in st.as_dict().items()}},
        )

    pre = run_shards(
        run_dir, STAGE, "tokens/pretrain", [{"shard": f"part-{k:05d}", "k": k} for k in range(n_out)], pretrain_unit
    )

    # 4. SFT rows from synthetic conversations
    sft_units = [{"shard": s, "input": s} for s in run_dir.shards("synthetic")] if run_dir.exists("synthetic") else []

    def sft_unit(u: dict) -> ShardResult:
        rows = [r for r in _table_rows(run_dir, "synthetic", u["input"], ["id", "messages"]) if r.get("messages")]
        examples, rejects = sft_examples(rows)
        packed, st = pack_examples(examples, cfg.seq_len, EOT_ID)
        return ShardResult(
            pa.Table.from_pydict(packed.as_columns(), schema=ROW_SCHEMA), rejects, read=len(rows),
            extra={f"pack.{k2}": v for k2, v in st.as_dict().items()},
        )

    sft = run_shards(run_dir, STAGE, "tokens/sft", sft_units, sft_unit) if sft_units else None

    mixed = _prefixed(pre.extra, "mix.")
    total = sum(mixed.values()) or 1
    report = {
        s: {
            "target_fraction": round(p.weight, 4),
            "realised_fraction": round(mixed.get(s, 0) / total, 4),
            "unique_tokens": p.unique_tokens,
            "target_epochs": round(p.epochs, 3),
            "realised_epochs": round(mixed.get(s, 0) / p.unique_tokens, 3),
        }
        for s, p in plans.items()
    }
    pack_pre = _prefixed(pre.extra, "pack.")
    pack_sft = _prefixed(sft.extra if sft else {}, "pack.")
    counts = {
        "docs_read": doc_counts.read,
        "docs_rejected": doc_counts.rejected,
        "pretrain_rows": pre.kept,
        "pretrain_tokens": total,
        "sft_rows": sft.kept if sft else 0,
        "sft_rejected": sft.rejected if sft else 0,
    }
    metrics = {
        "mixture": report,
        "pretrain_packing": {**pack_pre, "waste": round(pack_pre.get("dropped_tail_tokens", 0) / max(total, 1), 5)},
        "sft_packing": {
            **pack_sft,
            "waste": round(
                (pack_sft.get("pad_tokens", 0) + pack_sft.get("truncated_tokens", 0))
                / max(pack_sft.get("rows", 0) * (cfg.seq_len + 1), 1), 5),
        },
    }
    run_dir.finish_stage(STAGE, counts=counts, metrics=metrics)
    return {"counts": counts, "metrics": metrics}
