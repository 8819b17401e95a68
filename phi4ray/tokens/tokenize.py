"""The tokenize stage: `curated/`, `synthetic/` and DPO pair files into training-ready tables.

1. `tokens/docs/`: every document of every input shard as Phi-4 token ids (one output shard per
   input shard, in parallel on Ray Data).
2. The mixture: token histograms per source (streamed; the driver holds BINS numbers per source)
   give each source's plan and cut (`mixture`).
3. `tokens/pretrain/` (and `tokens/midtrain/` when the recipe asks): every document copy gets a
   seeded output shard; a Ray Data groupby brings each shard's copies together, and each group
   is ordered by a seeded key, packed into rows of seq_len + 1 (documents separated by
   <|endoftext|>, `segment_ids` marking them) and committed. Finished shards are skipped on a
   re-run, so a killed stage resumes without duplicates.
4. `tokens/sft/`: ChatML conversations, whole examples packed with the assistant-only loss mask.
5. `tokens/dpo/`: TRL-layout pair files (`cfg.dpo_pairs`) tokenized (`tokens.dpo`).

The manifest records the realised fractions and epochs of each source and the packing waste.
"""

from __future__ import annotations

import json
import logging
import math
import os
from functools import partial
from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from phi4ray.config import TokenizeConfig
from phi4ray.run import RunDir, config_hash
from phi4ray.stage import Reject, ShardResult, StageCounts, commit_shard, reject_row, run_shards
from phi4ray.tokens import mixture
from phi4ray.tokens.dpo import DPO_SCHEMA, read_pairs_file, tokenize_pair
from phi4ray.tokens.pack import pack_examples, pack_stream_arrays

log = logging.getLogger(__name__)
STAGE = "tokenize"
INPUTS = ("curated", "synthetic")
DOCS = "tokens/docs"
ROW_SCHEMA = pa.schema(
    [("input_ids", pa.list_(pa.int32())), ("loss_mask", pa.list_(pa.int8())), ("segment_ids", pa.list_(pa.int32()))]
)
DOC_SCHEMA = pa.schema(
    [("id", pa.string()), ("source", pa.string()), ("ids", pa.list_(pa.int32())), ("n", pa.int32())]
)
COPY_SCHEMA = pa.schema(
    [("key", pa.string()), ("bucket", pa.int32()), ("order", pa.int64()), ("pool", pa.string()), ("ids", pa.list_(pa.int32()))]
)
PoolsOf = Callable[[str, int], list[str]]


# -- per record -------------------------------------------------------------------------------
def tokenize_docs(rows: list[dict]) -> tuple[list[dict], list[dict]]:
    """Text -> token ids. Rows without text are rejects (never silently dropped)."""
    from phi4ray.tokenizer import encode_ordinary_batch

    good, rejects = [], []
    for r in rows:
        if not isinstance(r.get("text"), str) or not r["text"]:
            rejects.append(reject_row(r, STAGE, "tokenize", Reject("no_text")))
        elif not r.get("source"):
            rejects.append(reject_row(r, STAGE, "tokenize", Reject("no_source")))
        else:
            good.append(r)
    ids = encode_ordinary_batch([r["text"] for r in good]) if good else []
    return [{"id": r["id"], "source": r["source"], "ids": t, "n": len(t) + 1} for r, t in zip(good, ids)], rejects


def sft_examples(rows: list[dict]) -> tuple[list[tuple[list[int], list[int]]], list[dict]]:
    """ChatML messages -> (ids, assistant-only loss mask)."""
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


# -- pools: which mixture a document feeds -------------------------------------------------------
def pretrain_pools(source: str, n: int) -> list[str]:
    return [source]


def midtrain_pools(source: str, n: int, long_min: int, upweight_min: int) -> list[str]:
    long = mixture.long_pool(n, long_min, upweight_min)
    return [f"recall/{source}"] + ([long] if long else [])


def _placed(resources: dict[str, float] | None) -> dict:
    """Ray Data map arguments that put the tasks on nodes providing these custom resources."""
    return {"resources": dict(resources)} if resources else {}


def pool_histograms(
    run_dir: RunDir, pools_of: PoolsOf, seed: int, resources: dict[str, float] | None = None
) -> tuple[dict[str, int], dict[str, np.ndarray]]:
    """Unique tokens and the token histogram over `u` of each pool, streamed over `tokens/docs`."""

    def per_batch(b: dict) -> dict:
        acc: dict[str, list] = {}
        for id_, src, n in zip(b["id"], b["source"], b["n"]):
            for pool in pools_of(str(src), int(n)):
                us, ns = acc.setdefault(pool, ([], []))
                us.append(mixture.doc_u(str(id_), seed, pool))
                ns.append(int(n))
        pools = sorted(acc)
        return {
            "pool": np.array(pools, dtype=object),
            "hist": np.array([mixture.histogram(*acc[p]) for p in pools]).reshape(len(pools), mixture.BINS),
        }

    unique: dict[str, int] = {}
    hists: dict[str, np.ndarray] = {}
    ds = run_dir.read_dataset(DOCS).select_columns(["id", "source", "n"])
    for b in ds.map_batches(per_batch, batch_format="numpy", **_placed(resources)).iter_batches(batch_format="numpy", batch_size=None):
        for pool, h in zip(b["pool"], b["hist"]):
            hists[pool] = hists.get(pool, 0) + h
    for pool, h in hists.items():
        unique[pool] = int(round(h.sum()))
    return unique, hists


# -- mixtures ---------------------------------------------------------------------------------
def expand_copies(b: dict, plans: dict[str, mixture.SourcePlan], pools_of: PoolsOf, n_out: int, seed: int, done: frozenset) -> dict:
    """Each document of a batch -> its copies in every pool it feeds, with output shard and order."""
    cols: dict[str, list] = {"key": [], "bucket": [], "order": [], "pool": [], "ids": []}
    for id_, src, ids, n in zip(b["id"], b["source"], b["ids"], b["n"]):
        for pool in pools_of(str(src), int(n)):
            p = plans.get(pool)
            if p is None:
                continue
            for j in range(mixture.copies(mixture.doc_u(str(id_), seed, pool), p)):
                key = f"{pool}:{id_}:{j}"
                k = mixture.bucket(key, n_out, seed)
                if k in done:
                    continue
                cols["key"].append(key)
                cols["bucket"].append(k)
                cols["order"].append(mixture.order_key(key, seed))
                cols["pool"].append(pool)
                cols["ids"].append(np.asarray(ids, dtype=np.int32))
    return pa.table(
        {k: pa.array(v, type=COPY_SCHEMA.field(k).type) for k, v in cols.items()}, schema=COPY_SCHEMA
    )


def pack_group(group: pa.Table, run_dir: RunDir, out: str, seq_len: int) -> pa.Table:
    """One output shard: its document copies in their seeded order, packed and committed."""
    from phi4ray.tokenizer import EOT_ID

    group = group.sort_by([("order", "ascending"), ("key", "ascending")])
    k = group.column("bucket")[0].as_py()
    docs = [np.asarray(x, dtype=np.int32) for x in group.column("ids").to_numpy(zero_copy_only=False)]
    cols, st = pack_stream_arrays(docs, seq_len, EOT_ID)
    realised: dict[str, int] = {}
    for pool, d in zip(group.column("pool").to_pylist(), docs):
        realised[f"mix.{pool}"] = realised.get(f"mix.{pool}", 0) + len(d) + 1
    table = pa.table(
        {name: pa.array(list(arr), type=ROW_SCHEMA.field(name).type) for name, arr in cols.items()}, schema=ROW_SCHEMA
    )
    extra = {**realised, **{f"pack.{x}": v for x, v in st.as_dict().items()}}
    meta = commit_shard(run_dir, STAGE, out, f"part-{k:05d}", ShardResult(table, read=group.num_rows, extra=extra))
    return pa.table({"meta": [json.dumps(meta)]})


def build_mixture(
    run_dir: RunDir, out: str, plans: dict[str, mixture.SourcePlan], pools_of: PoolsOf,
    seq_len: int, rows_per_shard: int, seed: int, resources: dict[str, float] | None = None,
) -> StageCounts:
    """Write the packed mixture `out` (exactly once per output shard). Returns the summed shard counts."""
    target = sum(p.target_tokens for p in plans.values())
    n_out = max(1, math.ceil(target / (rows_per_shard * (seq_len + 1))))
    counts = StageCounts(shards=n_out)
    done = set()
    for k in range(n_out):
        if run_dir.has_shard(out, f"part-{k:05d}"):
            done.add(k)
            counts.add(run_dir.shard_meta(out, f"part-{k:05d}"))
            counts.skipped_shards += 1
    if len(done) == n_out:
        return counts
    from phi4ray.data.minhash import SORT_SHUFFLE, shuffle_strategy

    ds = run_dir.read_dataset(DOCS).select_columns(["id", "source", "ids", "n"])
    copies = ds.map_batches(
        partial(expand_copies, plans=plans, pools_of=pools_of, n_out=n_out, seed=seed, done=frozenset(done)),
        batch_format="numpy", **_placed(resources),
    )
    # one group per output shard; the sort shuffle has no fixed cost, where Ray Data's default hash
    # shuffle starts 200 aggregators (about 10 s on 2 CPUs for a few thousand documents)
    with shuffle_strategy(copies, SORT_SHUFFLE):
        groups = copies.groupby("bucket", num_partitions=min(n_out, 200)).map_groups(
            partial(pack_group, run_dir=run_dir, out=out, seq_len=seq_len), batch_format="pyarrow", **_placed(resources)
        )
        for row in groups.iter_rows():
            counts.add(json.loads(row["meta"]))
    return counts


def _prefixed(counts: dict, prefix: str) -> dict:
    """The shard counts named `prefix<key>`, keyed by `<key>`."""
    return {k[len(prefix):]: v for k, v in counts.items() if k.startswith(prefix)}


def _packing(extra: dict, seq_len: int) -> dict:
    p = _prefixed(extra, "pack.")
    tokens = p.get("tokens", 0)
    waste = p.get("pad_tokens", 0) + p.get("truncated_tokens", 0) + p.get("dropped_tail_tokens", 0)
    return {**p, "seq_len": seq_len, "waste": round(waste / max(tokens + p.get("pad_tokens", 0), 1), 5)}


# -- the stage --------------------------------------------------------------------------------
def run_tokenize(cfg: TokenizeConfig, run_dir: RunDir, force: bool = False) -> dict:
    h = config_hash(cfg)
    if not run_dir.begin_stage(STAGE, h, outputs=["tokens", f"rejects/{STAGE}"], force=force):
        log.warning("tokenize: already complete in %s; skipping", run_dir.uri)
        return run_dir.stage_entry(STAGE)
    with run_dir.failure_recorded(STAGE):
        return _run(cfg, run_dir)


def _run(cfg: TokenizeConfig, run_dir: RunDir) -> dict:
    units = [
        {"shard": f"{table}-{s}", "table": table, "input": s}
        for table in INPUTS
        if run_dir.exists(table)
        for s in run_dir.shards(table)
    ]
    if not units:
        raise FileNotFoundError(f"no input for tokenize in {run_dir.uri}: run curate and synth first")

    def docs_unit(u: dict) -> ShardResult:
        t = pq.read_table(run_dir.shard_path(u["table"], u["input"]), filesystem=run_dir.fs)
        rows = t.select([c for c in ("id", "source", "text") if c in t.column_names]).to_pylist()
        docs, rejects = tokenize_docs(rows)
        return ShardResult(pa.Table.from_pylist(docs, schema=DOC_SCHEMA), rejects, read=len(rows))

    doc_counts = run_shards(run_dir, STAGE, DOCS, units, docs_unit, resources=cfg.resources)
    log.info("tokenize: %d documents tokenized (%d rejected)", doc_counts.kept, doc_counts.rejected)

    unique, hists = pool_histograms(run_dir, pretrain_pools, cfg.seed, cfg.resources)
    plans = mixture.set_cuts(mixture.plan(unique, cfg.mixture, cfg.total_tokens), hists)
    pre = build_mixture(run_dir, "tokens/pretrain", plans, pretrain_pools, cfg.seq_len, cfg.rows_per_shard, cfg.seed, cfg.resources)
    mix = mixture.report(plans, _prefixed(pre.extra, "mix."))
    counts = {
        "docs_read": doc_counts.read,
        "docs_rejected": doc_counts.rejected,
        "pretrain_rows": pre.kept,
        "pretrain_tokens": sum(v["realised_tokens"] for v in mix.values()),
    }
    metrics: dict = {"mixture": mix, "pretrain_packing": _packing(pre.extra, cfg.seq_len)}
    _log_mixture("pretrain", mix, metrics["pretrain_packing"])

    if cfg.midtrain is not None:
        m = cfg.midtrain
        pools_of = partial(midtrain_pools, long_min=m.long_min_tokens, upweight_min=m.upweight_min_tokens)
        m_unique, m_hists = pool_histograms(run_dir, pools_of, cfg.seed, cfg.resources)
        weights = mixture.midtrain_weights(cfg.mixture, m_unique, m.long_fraction, m.upweight)
        total = m.total_tokens or sum(p.target_tokens for p in plans.values())
        m_plans = mixture.set_cuts(mixture.plan(m_unique, weights, total), m_hists)
        mid = build_mixture(run_dir, "tokens/midtrain", m_plans, pools_of, m.seq_len, cfg.rows_per_shard, cfg.seed, cfg.resources)
        m_mix = mixture.report(m_plans, _prefixed(mid.extra, "mix."))
        counts["midtrain_rows"] = mid.kept
        metrics["midtrain_mixture"] = m_mix
        metrics["midtrain_long_fraction"] = round(sum(v["realised_fraction"] for k, v in m_mix.items() if k.startswith("long")), 5)
        metrics["midtrain_packing"] = _packing(mid.extra, m.seq_len)
        _log_mixture("midtrain", m_mix, metrics["midtrain_packing"])

    sft_units = [{"shard": s, "input": s} for s in run_dir.shards("synthetic")] if run_dir.exists("synthetic") else []

    def sft_unit(u: dict) -> ShardResult:
        t = pq.read_table(run_dir.shard_path("synthetic", u["input"]), filesystem=run_dir.fs)
        if "messages" not in t.column_names:
            return ShardResult(ROW_SCHEMA.empty_table())
        rows = [r for r in t.select(["id", "messages"]).to_pylist() if r.get("messages")]
        examples, rejects = sft_examples(rows)
        from phi4ray.tokenizer import EOT_ID

        packed, st = pack_examples(examples, cfg.seq_len, EOT_ID)
        return ShardResult(
            pa.Table.from_pydict(packed.as_columns(), schema=ROW_SCHEMA), rejects, read=len(rows),
            extra={f"pack.{k2}": v for k2, v in st.as_dict().items()},
        )

    if sft_units:
        sft = run_shards(run_dir, STAGE, "tokens/sft", sft_units, sft_unit, resources=cfg.resources)
        counts.update(sft_rows=sft.kept, sft_rejected=sft.rejected)
        metrics["sft_packing"] = _packing(sft.extra, cfg.seq_len)

    if cfg.dpo_pairs:
        dpo = run_shards(
            run_dir, STAGE, "tokens/dpo",
            [{"shard": f"pairs-{i:05d}", "path": p} for i, p in enumerate(cfg.dpo_pairs)], dpo_unit,
            resources=cfg.resources,
        )
        counts.update(dpo_pairs=dpo.kept, dpo_rejected=dpo.rejected)

    run_dir.finish_stage(STAGE, counts=counts, metrics=metrics)
    return {"counts": counts, "metrics": metrics}


def dpo_unit(u: dict) -> ShardResult:
    """One TRL-layout pair file -> a `tokens/dpo` shard; bad lines and pairs are rejects."""
    from phi4ray.data.readers import make_id

    if not os.path.exists(u["path"]):
        raise FileNotFoundError(f"tokenize.dpo_pairs: {u['path']} does not exist")
    rel = os.path.basename(u["path"])
    kept, rejects, read = [], [], 0
    for i, row, err in read_pairs_file(u["path"]):
        read += 1
        rec = {"id": make_id(rel, i), **(row or {})}
        if err:
            rejects.append(reject_row(rec, STAGE, "dpo_pairs", Reject("bad_line", f"line {i + 1}: {err}")))
            continue
        out = tokenize_pair(rec)
        if isinstance(out, Reject):
            rejects.append(reject_row(rec, STAGE, "dpo_pairs", out))
        else:
            kept.append(out)
    return ShardResult(pa.Table.from_pylist(kept, schema=DPO_SCHEMA), rejects, read=read)


def _log_mixture(name: str, mix: dict, packing: dict) -> None:
    lines = [f"{name} mixture (target -> realised fraction, epochs):"]
    for s, v in mix.items():
        lines.append(
            f"  {s:<22} {v['target_fraction']:.4f} -> {v['realised_fraction']:.4f}   "
            f"epochs {v['target_epochs']:.3f} -> {v['realised_epochs']:.3f}"
        )
    lines.append(f"  rows {packing.get('rows', 0)}, packing waste {packing['waste']:.4%}")
    log.warning("\n".join(lines))
