"""The synth stage: curated seeds, code and question sets into `synthetic/`, plus `questions/`.

Generators and operations, each its own config section under `synth:`:

- `arithmetic` (no LLM): programmatically verified running-sum problems (text for pretraining,
  ChatML for SFT) and the question sets that PTS and evaluation use (`questions/`).
- LLM operations (Phi-4 §2.2), in this order: `rewrite`, `revise`, `agents`, `qa`,
  `responses`, `reverse`, then `plurality` (it votes on the `qa` op's questions too). Each has
  `enabled`, its own `engine` and `sampling`, `max_seeds`, and its templates; docs/synth.md
  describes each one, its checks and its reject reasons.

How the operations run: each op lists its input records on the driver (`seeds/`, falling back to
whole `curated/` pages; code blocks; `questions/`) and takes a seeded sample of `max_seeds`. The
records go to shards of `batch_size x num_actors x 4`; a shard already committed is skipped. Ops
whose `engine` sections are equal share one Ray Data pipeline: `map_batches(OpActor,
compute=ActorPoolStrategy(size=num_actors))`, so the model loads once per actor for all of them.
The driver groups the streamed results by shard and commits a shard (kept rows to `synthetic/`,
rejects to `rejects/synth/`) once all its records are back, so a killed job redoes only the
shards in flight. Per op, read == kept + rejected, and the manifest has each op's counts, its
reject reasons and the tokens it generated.

`run_plurality` runs the plurality filter alone with any checkpoint (a path or a trained stage
such as `sft`), to filter questions with the trained model after SFT.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from collections import defaultdict

import pyarrow as pa

from phi4ray.config import EngineConfig, PluralityConfig, SynthConfig, SynthOpConfig
from phi4ray.run import RunDir, config_hash
from phi4ray.stage import Reject, ShardResult, StageCounts, commit_shard, reject_row, run_shards
from phi4ray.synth import arithmetic
from phi4ray.synth.ops import Inputs, Op, OpActor, make_op, rank

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
OPS_ORDER = ("rewrite", "revise", "agents", "qa", "responses", "reverse", "plurality")


def op_phases(cfg: SynthConfig) -> list[dict[str, SynthOpConfig]]:
    """The enabled ops in phases: a phase's ops run together (those with equal engines share an
    actor pool). `plurality` waits for a phase of its own only when it votes on the `qa` op's
    questions; otherwise it joins the others and costs no extra model load."""
    enabled = {name: getattr(cfg, name) for name in OPS_ORDER if getattr(cfg, name).enabled}
    later = {}
    if "plurality" in enabled and "qa" in enabled and cfg.plurality.include_qa:
        later["plurality"] = enabled.pop("plurality")
    return [p for p in (enabled, later) if p]


# -- arithmetic -----------------------------------------------------------------------------------
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


# -- models -----------------------------------------------------------------------------------------
def resolve_model(engine: EngineConfig, run_dir: RunDir) -> tuple[str | None, str, str]:
    """(local checkpoint folder or None, the name provenance records, a short tag for shard names).

    `engine.model` is an HF folder or `.gguf` file, a bundled model's name (`inference/models.py`),
    the name of a training stage of this run (`sft` -> `<run_dir>/checkpoints/sft/hf`), or None:
    a freshly initialised `engine.preset`."""
    m = engine.model
    if m is None:
        return None, f"preset:{engine.preset} (randomly initialised)", f"preset-{engine.preset}"
    if re.fullmatch(r"[\w.-]+", m) and run_dir.exists(f"checkpoints/{m}/hf", "config.json"):
        return run_dir.local_dir(f"checkpoints/{m}/hf"), run_dir.uri_of(f"checkpoints/{m}/hf"), m
    from phi4ray.inference.models import BUNDLED, resolve_bundled

    if m in BUNDLED:
        return resolve_bundled(m), m, m
    if os.path.isdir(m) or (os.path.isfile(m) and m.endswith(".gguf")) or "://" in m:
        import hashlib

        tag = re.sub(r"[^\w.-]+", "_", os.path.basename(m.rstrip("/")))[:40] or "model"
        return m, m, f"{tag}-{hashlib.sha256(m.encode()).hexdigest()[:6]}"
    raise FileNotFoundError(
        f"engine.model {m!r} is neither a checkpoint folder, a .gguf file, a bundled model nor a trained stage of {run_dir.uri} "
        f"(no {run_dir.uri_of(f'checkpoints/{m}/hf')}); train that stage first or pass a path"
    )


def _engine_key(engine: EngineConfig, path: str | None) -> str:
    return json.dumps([engine.model_dump(mode="json"), engine.resources, path], sort_keys=True)


# -- operations ---------------------------------------------------------------------------------
def _sample(op: Op, records: list[dict], max_seeds: int | None) -> list[dict]:
    """A seeded sample of `max_seeds` groups (a group: one seed's records), in a stable order."""
    groups: dict[str, list[dict]] = defaultdict(list)
    for r in records:
        groups[str(r.get("group") or r.get("seed_id") or r["id"])].append(r)
    keys = sorted(groups, key=lambda k: rank(op.name, k))
    if max_seeds is not None:
        keys = keys[:max_seeds]
    return [r for k in keys for r in groups[k]]


def _commit(run_dir: RunDir, op_name: str, shard: str, results: list[tuple[dict, dict, int]]) -> dict:
    """Commit one op shard: results are (input record, result, tokens) for every record of it."""
    rows, rejects, tokens = [], [], 0
    reasons: dict[str, int] = defaultdict(int)
    for rec, res, t in results:
        tokens += t
        if "row" in res:
            rows.append(res["row"])
        else:
            rejects.append(reject_row(res.get("record") or rec, STAGE, f"{op_name}/{res['step']}", Reject(res["reason"], res["detail"])))
            reasons[f"reject.{res['reason']}"] += 1
    table = pa.Table.from_pylist(rows, schema=SYNTH_SCHEMA)
    return commit_shard(run_dir, STAGE, "synthetic", shard,
                        ShardResult(table, rejects, read=len(results), extra={"gen_tokens": tokens, **reasons}))


def run_ops(ops: dict[str, SynthOpConfig], run_dir: RunDir, src: Inputs | None = None,
            prefixes: dict[str, str] | None = None) -> tuple[dict[str, dict], list[dict]]:
    """Run the LLM operations `ops` (name -> config; all are run, `enabled` is the caller's business).

    Returns ({op: counts}, [per actor pool: ops, actors, seconds, tokens, tokens/s])."""
    import ray.data

    src = src or Inputs(run_dir)
    prefixes = prefixes or {}
    counts: dict[str, StageCounts] = {}
    extra_of: dict[str, dict] = {}
    groups: dict[str, dict] = {}
    for name, cfg in ops.items():
        path, model_name, tag = resolve_model(cfg.engine, run_dir)
        prefix = prefixes.get(name) or (f"{name}-{tag}" if name == "plurality" else name)
        op = make_op(name, cfg, model_name, prefix)
        op.check_templates()
        records = _sample(op, op.inputs(src), cfg.max_seeds)
        extra_of[name] = {"model": model_name, **({"inputs": op.stats} if getattr(op, "stats", None) else {})}
        per_shard = max(1, cfg.engine.batch_size * cfg.engine.num_actors * 4)
        shards = {f"{prefix}-{i // per_shard:05d}": records[i : i + per_shard] for i in range(0, len(records), per_shard)}
        c = counts[name] = StageCounts(shards=len(shards))
        g = groups.setdefault(_engine_key(cfg.engine, path), {"engine": cfg.engine, "path": path, "ops": {}, "shards": {}})
        g["ops"][name] = (cfg, model_name, prefix)
        for s, recs in shards.items():
            if run_dir.has_shard("synthetic", s):
                c.add(run_dir.shard_meta("synthetic", s))
                c.skipped_shards += 1
            else:
                g["shards"][s] = (name, recs)
        if not records:
            log.warning("synth %s: no input records", name)

    pools = []
    for g in groups.values():
        if not g["shards"]:
            continue
        e: EngineConfig = g["engine"]
        busy = sorted({name for name, _ in g["shards"].values()})
        items = [{"op": name, "shard": s, "rec": json.dumps(r, ensure_ascii=False, default=str)}
                 for s, (name, recs) in g["shards"].items() for r in recs]
        t0 = time.time()
        kw = {"num_gpus": e.num_gpus_per_actor} if e.num_gpus_per_actor else {}
        if e.resources:
            kw["resources"] = e.resources
        ds = ray.data.from_items(items).map_batches(
            OpActor,
            fn_constructor_kwargs={"ops": {n: g["ops"][n] for n in busy}, "engine_cfg": e, "model_path": g["path"]},
            compute=ray.data.ActorPoolStrategy(size=e.num_actors),
            batch_size=e.batch_size,
            num_cpus=e.num_cpus_per_actor,
            **kw,
        )
        buffered: dict[str, list] = {s: [] for s in g["shards"]}
        tokens = 0
        for row in ds.iter_rows():
            s = row["shard"]
            name, recs = g["shards"][s]
            buffered[s].append((json.loads(row["result"]), int(row["tokens"])))
            tokens += int(row["tokens"])
            if len(buffered[s]) == len(recs):
                done = buffered.pop(s)
                counts[name].add(_commit(run_dir, name, s, [(rec, res, t) for rec, (res, t) in zip(recs, done)]))
        secs = time.time() - t0
        pools.append({"ops": busy, "actors": e.num_actors, "records": len(items), "seconds": round(secs, 2),
                      "gen_tokens": tokens, "tokens_per_s": round(tokens / secs, 1) if secs > 0 else None})
        log.warning("synth: pool %s: %d records, %d tokens in %.1fs", "+".join(busy), len(items), tokens, secs)
    out = {}
    for name, c in counts.items():
        d = c.as_dict()
        rej = {k[len("reject."):]: v for k, v in d.items() if k.startswith("reject.")}
        out[name] = {"read": d["read"], "kept": d["kept"], "rejected": d["rejected"], "rejects": rej,
                     "gen_tokens": d.get("gen_tokens", 0), "shards": d["shards"], "skipped_shards": d["skipped_shards"],
                     **extra_of[name]}
    return out, pools


def run_synth(cfg: SynthConfig, run_dir: RunDir, force: bool = False) -> dict:
    if not run_dir.begin_stage(STAGE, config_hash(cfg), outputs=["synthetic", "questions", f"rejects/{STAGE}"], force=force):
        log.warning("synth: already complete in %s; skipping", run_dir.uri)
        return run_dir.stage_entry(STAGE)
    with run_dir.failure_recorded(STAGE):
        counts = _arithmetic(cfg, run_dir)
        metrics: dict = {}
        src = Inputs(run_dir)
        ops_counts: dict[str, dict] = {}
        pools: list[dict] = []
        for phase in op_phases(cfg):
            c, p = run_ops(phase, run_dir, src)
            ops_counts.update(c)
            pools += p
        if ops_counts:
            counts["ops"] = ops_counts
            counts["seed_table"] = src.seed_table
            metrics["pools"] = pools
        if "rewrite" in ops_counts:  # the names the summary table has always read
            r = ops_counts["rewrite"]
            counts.update(rewrite_seeds=r["read"], rewrite_kept=r["kept"], rewrite_rejected=r["rejected"], rewrite_model=r["model"])
        run_dir.finish_stage(STAGE, counts=counts, **({"metrics": metrics} if metrics else {}))
    return counts


def run_plurality(cfg: SynthConfig | PluralityConfig, run_dir: RunDir, model_path: str | None = None,
                  force: bool = False) -> dict:
    """The plurality filter alone, answering with `model_path` (a checkpoint folder, or a training
    stage of this run such as `sft`; None: `plurality.engine.model`). For use after training.

    Writes `synthetic/plurality-<model tag>-NNNNN` shards and the manifest entry
    `plurality:<model tag>`; exactly-once like the stage (a rerun skips committed shards)."""
    pc = cfg.plurality if isinstance(cfg, SynthConfig) else cfg
    engine = pc.engine.model_copy(update={"model": model_path}) if model_path else pc.engine
    pc = pc.model_copy(update={"engine": engine, "enabled": True})
    _, model_name, tag = resolve_model(engine, run_dir)
    stage = f"plurality:{tag}"
    prefix = f"plurality-{tag}"
    if force:
        for s in run_dir.shards("synthetic") if run_dir.exists("synthetic") else []:
            if s.startswith(prefix + "-"):
                run_dir.delete(f"synthetic/{s}.parquet")
        for s in run_dir.shards(f"rejects/{STAGE}") if run_dir.exists(f"rejects/{STAGE}") else []:
            if s.startswith(f"synthetic-{prefix}-"):
                run_dir.delete(f"rejects/{STAGE}/{s}.parquet")
    if not run_dir.begin_stage(stage, config_hash({"plurality": pc, "model": model_name}), outputs=[], force=force):
        log.warning("%s: already complete in %s; skipping", stage, run_dir.uri)
        return run_dir.stage_entry(stage)
    with run_dir.failure_recorded(stage):
        c, pools = run_ops({"plurality": pc}, run_dir, prefixes={"plurality": prefix})
        counts = c["plurality"]
        run_dir.finish_stage(stage, counts=counts, metrics={"pools": pools})
    return counts
