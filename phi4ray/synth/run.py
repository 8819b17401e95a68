"""The synth stage: curated seeds and generators into `synthetic/`, plus question sets.

Operations in the skeleton:
- `arithmetic`: programmatically verified running-sum problems (text for pretraining, ChatML
  for SFT) and the question sets that PTS and evaluation use (`questions/`).
- `rewrite`: curated passages rewritten by an LLM running in a Ray Data actor pool.
"""

from __future__ import annotations

import json
import logging

import pyarrow as pa

from phi4ray.config import SynthConfig
from phi4ray.run import RunDir, config_hash
from phi4ray.stage import ShardResult, StageCounts, apply_steps, commit_shard, run_shards
from phi4ray.synth import arithmetic
from phi4ray.synth.rewrite import load_template, make_prompt, to_synthetic

log = logging.getLogger(__name__)
STAGE = "synth"
SYNTH_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("kind", pa.string()),
        ("source", pa.string()),
        ("seed_id", pa.string()),
        ("text", pa.string()),
        ("messages", pa.string()),
        ("provenance", pa.string()),
        ("checks", pa.string()),
    ]
)
QUESTION_SCHEMA = pa.schema([("id", pa.string()), ("prompt", pa.string()), ("answer", pa.string()), ("split", pa.string())])
ARITH_ROWS_PER_SHARD = 5000


def _arithmetic(cfg: SynthConfig, run_dir: RunDir) -> dict:
    a = cfg.arithmetic
    train, heldout = arithmetic.split(a)
    prov = json.dumps({"generator": "arithmetic", "config": a.model_dump()})

    def unit(u: dict) -> ShardResult:
        qs = train[u["start"] : u["start"] + ARITH_ROWS_PER_SHARD]
        rows = [
            {
                "id": q["id"], "kind": "arithmetic", "source": "synthetic", "seed_id": None,
                "text": arithmetic.as_text(q), "messages": json.dumps(arithmetic.as_messages(q)),
                "provenance": prov, "checks": json.dumps({"answer_verified": True}),
            }
            for q in qs
        ]
        return ShardResult(pa.Table.from_pylist(rows, schema=SYNTH_SCHEMA), read=len(qs))

    units = [{"shard": f"arithmetic-{i:05d}", "start": i} for i in range(0, len(train), ARITH_ROWS_PER_SHARD)]
    counts = run_shards(run_dir, STAGE, "synthetic", units, unit)
    if not run_dir.has_shard("questions", "arithmetic"):
        qrows = [{"id": q["id"], "prompt": q["prompt"], "answer": q["answer"], "split": "pts"} for q in train[: a.n_pts]]
        qrows += [{"id": q["id"], "prompt": q["prompt"], "answer": q["answer"], "split": "heldout"} for q in heldout]
        run_dir.commit_table("questions", "arithmetic", pa.Table.from_pylist(qrows, schema=QUESTION_SCHEMA))
    return {"arithmetic_rows": counts.kept, "heldout_questions": len(heldout), "pts_questions": min(a.n_pts, len(train))}


def _rewrite(cfg: SynthConfig, run_dir: RunDir) -> dict:
    """Ray Data pipeline: pending curated shards -> prompts -> actor pool -> committed shards.

    The driver groups streamed results by seed shard and commits a shard once all its rows have
    come back, so a killed job redoes only the shards that were in flight.
    """
    import ray.data

    from phi4ray.inference.actor import SamplerPredictor
    from phi4ray.inference.sampler import SamplingParams

    rc = cfg.rewrite
    if not run_dir.exists("curated"):
        raise FileNotFoundError(f"rewrite needs curated seeds in {run_dir.uri_of('curated')}; run curate first")
    template = load_template(rc.template)
    model = rc.engine.model or f"preset:{rc.engine.preset} (randomly initialised)"
    seeds = run_dir.read_table("curated", columns=["id", "text"]).to_pylist()
    seeds.sort(key=lambda r: r["id"])
    if rc.max_seeds is not None:
        seeds = seeds[: rc.max_seeds]
    per_shard = max(1, rc.engine.batch_size * rc.engine.num_actors * 4)
    groups = {f"rewrite-{i // per_shard:05d}": seeds[i : i + per_shard] for i in range(0, len(seeds), per_shard)}
    pending = {s: rows for s, rows in groups.items() if not run_dir.has_shard("synthetic", s)}
    counts = StageCounts()
    if pending:
        items = [{**make_prompt(r, template, rc.seed_chars), "_shard": s} for s, rows in pending.items() for r in rows]
        s = rc.sampling
        params = SamplingParams(n=1, temperature=s.temperature, top_p=s.top_p, max_tokens=s.max_tokens, stop=s.stop, seed=s.seed)
        ds = ray.data.from_items(items).map_batches(
            SamplerPredictor,
            fn_constructor_kwargs={"engine_cfg": rc.engine, "model_path": rc.engine.model, "params": params},
            concurrency=rc.engine.num_actors,
            batch_size=rc.engine.batch_size,
            num_cpus=rc.engine.num_cpus_per_actor,
            num_gpus=rc.engine.num_gpus_per_actor or None,
        )
        buffered: dict[str, list[dict]] = {s: [] for s in pending}
        for row in ds.iter_rows():
            shard = row["_shard"]
            buffered[shard].append(dict(row))
            if len(buffered[shard]) == len(pending[shard]):
                good, rejects = apply_steps(buffered.pop(shard), [("rewrite", lambda r: to_synthetic(r, rc, model))], STAGE)
                counts.add(commit_shard(
                    run_dir, STAGE, "synthetic", shard,
                    ShardResult(pa.Table.from_pylist(good, schema=SYNTH_SCHEMA), rejects, read=len(pending[shard])),
                ))
    for s in groups:
        if s not in pending:
            counts.add(run_dir.shard_meta("synthetic", s))
    return {"rewrite_seeds": counts.read, "rewrite_kept": counts.kept, "rewrite_rejected": counts.rejected,
            "rewrite_model": model}


def run_synth(cfg: SynthConfig, run_dir: RunDir, force: bool = False) -> dict:
    if not run_dir.begin_stage(STAGE, config_hash(cfg), outputs=["synthetic", "questions", f"rejects/{STAGE}"], force=force):
        log.warning("synth: already complete in %s; skipping", run_dir.uri)
        return run_dir.stage_entry(STAGE)
    counts = _arithmetic(cfg, run_dir)
    if cfg.rewrite.enabled:
        counts.update(_rewrite(cfg, run_dir))
    run_dir.finish_stage(STAGE, counts=counts)
    return counts
