"""The curation stage: raw files -> `curated/` (id, text, source, url, lang, lang_score, quality, meta)
and `seeds/` (passages for synthesis).

    readers -> per-record steps -> exact + near dedup -> quality -> committed shards -> seeds

1. **extract** (`curate/extracted/extract-NNNNN`): input files are grouped `files_per_shard` at a
   time into units with stable names. Each unit reads its files, runs `curate_steps(cfg)`
   (extract, corruption filters, language ID, decontamination, hash) and commits one shard of
   (curated columns + `hash`).
2. **dedup ids**, each committed once: `curate/dup_ids/` (exact: a groupby on `hash`) and
   `curate/near_dup_ids/` (MinHash LSH, `minhash.near_duplicate_ids`), every non-surviving id
   with its cluster's survivor (the smallest id).
3. **quality models** (`curate/quality/`, when `quality.enabled`): an LLM grades a sample of
   pages and passages through the Sampler; fastText page and passage classifiers are trained
   on the grades (or on the shipped labeled set when the grades are too few to learn from).
4. **filter** (`curated/part-NNNNN`): each extracted shard minus its duplicates
   (`exact_duplicate` / `near_duplicate: of <survivor id>`) and, with quality on, minus pages
   under the page threshold (`low_quality`); the rest carry their quality score.
5. **seeds** (`seeds/part-NNNNN`, with quality on): kept pages split into passages, those over
   the passage threshold kept as synthesis seeds.

Every shard is committed atomically by `stage.run_shards`, so a killed run resumes where it
stopped and produces the same bytes. Shards of different phases have different names, so
their reject shards sit side by side in `rejects/curate/`.
The unit plan is saved in `curate/plan.json`; a re-run over changed inputs is an error (use
`force`), never a silent mix of old and new shards.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from dataclasses import dataclass
from functools import partial
from importlib import resources
from typing import Callable

import pyarrow as pa
import pyarrow.parquet as pq

from phi4ray.config import CurateConfig
from phi4ray.data.decontam import DecontamIndex, contamination_counts, contamination_report
from phi4ray.data.dedup import DUP_SCHEMA, content_hash, duplicate_ids, duplicate_ids_table
from phi4ray.data.extract import extract
from phi4ray.data.filters import filter_steps
from phi4ray.data.langid import lang_group, langid_batch, load_model
from phi4ray.data.readers import InputFile, expand_inputs, read_records
from phi4ray.run import RunDir, RunDirError, config_hash
from phi4ray.stage import Reject, ShardResult, apply_steps, reject_row, run_shards

log = logging.getLogger(__name__)

STAGE = "curate"
EXTRACTED = "curate/extracted"
DUP_IDS = "curate/dup_ids"
DUP_SHARD = "part-00000"
NEAR_DUP_IDS = "curate/near_dup_ids"
PLAN = "curate/plan.json"
CURATED = "curated"
QUALITY = "curate/quality"
SEEDS = "seeds"
OUTPUTS = ["curate", CURATED, SEEDS, f"rejects/{STAGE}"]

CURATED_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("text", pa.string()),
        ("source", pa.string()),
        ("url", pa.string()),
        ("lang", pa.string()),
        ("lang_score", pa.float32()),
        ("quality", pa.float32()),
        ("meta", pa.string()),
    ]
)
EXTRACTED_SCHEMA = CURATED_SCHEMA.remove(CURATED_SCHEMA.get_field_index("quality")).append(
    pa.field("hash", pa.string())
)


# -- steps -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Step:
    """A named curation step: per record (`fn(record) -> record | Reject`) or per batch
    (`fn(records) -> (kept, [(record, Reject)])`, for model-backed steps that want batches)."""

    name: str
    fn: Callable
    batch: bool = False


def add_hash(record: dict) -> dict:
    return {**record, "hash": content_hash(record["text"])}


def curate_steps(cfg: CurateConfig, decontam: DecontamIndex | None = None) -> list[Step]:
    """The per-document pipeline of phase 1, in order: extract, corruption filters, language ID
    (not for code), decontamination (when eval sets are configured), content hash."""
    steps = [Step("extract", partial(extract, min_chars=cfg.min_chars))]
    steps += [Step(name, fn) for name, fn in filter_steps(cfg.filters)]
    if cfg.source != "code":
        steps.append(Step("langid", partial(langid_batch, cfg=cfg.langid), batch=True))
    if decontam is not None:
        steps.append(Step("decontam", decontam.check))
    steps.append(Step("hash", add_hash))
    return steps


def apply_batch_step(records: list[dict], step: Step, stage: str = STAGE) -> tuple[list[dict], list[dict]]:
    """Run a batch step; if the batch raises, retry record by record so one bad record is the
    only one rejected (reason `error`)."""
    try:
        kept, rejected = step.fn(records)
        return kept, [reject_row(r, stage, step.name, rej) for r, rej in rejected]
    except Exception as e:
        log.warning("%s: batch step %s failed (%s); retrying record by record", stage, step.name, e)
    kept, rejects = [], []
    for rec in records:
        try:
            k, rj = step.fn([rec])
            kept += k
            rejects += [reject_row(r, stage, step.name, rej) for r, rej in rj]
        except Exception as e:
            rejects.append(reject_row(rec, stage, step.name, Reject("error", f"{type(e).__name__}: {e}")))
    return kept, rejects


def run_steps(records: list[dict], steps: list[Step], stage: str = STAGE) -> tuple[list[dict], list[dict]]:
    """Records through `steps` in order: consecutive per-record steps via `stage.apply_steps`,
    batch steps via `apply_batch_step`. Returns (kept, reject rows)."""
    kept, rejects = records, []
    i = 0
    while i < len(steps) and kept:
        if steps[i].batch:
            kept, rj = apply_batch_step(kept, steps[i], stage)
            i += 1
        else:
            j = i
            while j < len(steps) and not steps[j].batch:
                j += 1
            kept, rj = apply_steps(kept, [(s.name, s.fn) for s in steps[i:j]], stage)
            i = j
        rejects += rj
    return kept, rejects


def reason_counts(rejects: list[dict]) -> dict[str, int]:
    """{'reject/<reason code>': n}; the code is the reason before its ': detail'."""
    c = Counter("reject/" + r["reason"].split(":", 1)[0] for r in rejects)
    return dict(sorted(c.items()))


# -- phase 1: read, extract, langid, hash -------------------------------------------------------
def samples_dir() -> str:
    """The sample pages shipped in the package (the default input)."""
    return str(resources.files("phi4ray.data") / "samples")


def plan_units(files: list[InputFile], files_per_shard: int) -> list[dict]:
    units = []
    for i in range(0, len(files), files_per_shard):
        group = files[i : i + files_per_shard]
        units.append(
            {"shard": f"extract-{i // files_per_shard:05d}", "files": json.dumps([f.to_dict() for f in group])}
        )
    return units


def _meta_json(meta) -> str:
    return json.dumps(meta or {}, sort_keys=True, ensure_ascii=False, default=str)


def extract_unit(unit: dict, cfg: CurateConfig, decontam: DecontamIndex | None = None) -> ShardResult:
    """Phase 1 for one unit of files."""
    files = [InputFile(**d) for d in json.loads(unit["files"])]
    skipped: Counter = Counter()
    records, rejects = read_records(files, cfg.source, STAGE, skipped=skipped)
    read = len(records) + len(rejects)
    kept, rj = run_steps(records, curate_steps(cfg, decontam), STAGE)
    rejects += rj
    rows = [
        {
            "id": r["id"],
            "text": r["text"],
            "source": cfg.source,
            "url": r.get("url") or "",
            "lang": r.get("lang") or (r.get("meta") or {}).get("lang", ""),
            "lang_score": r.get("lang_score", 1.0),
            "meta": _meta_json(r.get("meta")),
            "hash": r["hash"],
        }
        for r in kept
    ]
    table = pa.Table.from_pylist(rows, schema=EXTRACTED_SCHEMA)
    extra = {**reason_counts(rejects), **contamination_counts(rejects)}
    extra.update({f"skipped/{k}": v for k, v in sorted(skipped.items())})
    return ShardResult(table, rejects, read, extra=extra)


# -- phase 2: drop duplicates ----------------------------------------------------------------------
def _survivors(run_dir: RunDir, table: str, ids: list[str]) -> dict[str, str]:
    """{duplicate id: survivor id} for those of `ids` listed in a dup-ids table."""
    if not ids:
        return {}
    t = pq.read_table(
        run_dir.shard_path(table, DUP_SHARD), filesystem=run_dir.fs, columns=["id", "survivor"],
        filters=[("id", "in", ids)],
    )
    return dict(zip(t.column("id").to_pylist(), t.column("survivor").to_pylist()))


def filter_unit(unit: dict, run_dir: RunDir, quality: Callable | None = None) -> ShardResult:
    """Phase 3 for one extracted shard: drop the ids listed in `curate/dup_ids`, then (when the
    quality classifier is on) score each page and reject those below the page threshold."""
    src = pq.read_table(run_dir.shard_path(EXTRACTED, unit["src"]), filesystem=run_dir.fs)
    ids = src.column("id").to_pylist()
    dups = _survivors(run_dir, DUP_IDS, ids) if unit["dedup"] else {}
    near = _survivors(run_dir, NEAR_DUP_IDS, ids) if unit.get("near") else {}
    kept, rejects = [], []
    for row in src.to_pylist():
        if row["id"] in dups:
            rejects.append(reject_row(row, STAGE, "dedup", Reject("exact_duplicate", f"of {dups[row['id']]}")))
            continue
        if row["id"] in near:
            rejects.append(reject_row(row, STAGE, "near_dedup", Reject("near_duplicate", f"of {near[row['id']]}")))
            continue
        row.pop("hash")
        kept.append({**row, "quality": None})
    if quality is not None and kept:
        kept, rj = apply_batch_step(kept, Step("quality", quality, batch=True))
        rejects += rj
    table = pa.Table.from_pylist([{k: r.get(k) for k in CURATED_SCHEMA.names} for r in kept], schema=CURATED_SCHEMA)
    extra = reason_counts(rejects)
    extra.update({f"lang/{k}": v for k, v in sorted(Counter(r["lang"] for r in kept).items())})
    return ShardResult(table, rejects, len(ids), extra=extra)


# -- phase 4: seed passages ----------------------------------------------------------------------
def seed_unit(unit: dict, run_dir: RunDir, select: Callable) -> ShardResult:
    """Stage two of seed selection for one curated shard: its pages' passages above the passage
    threshold become `seeds/` rows. A rejected passage is not a lost document: its page stays
    in `curated/`; the reject says why it is no seed."""
    from phi4ray.data.quality import SEED_SCHEMA

    pages = pq.read_table(run_dir.shard_path(CURATED, unit["shard"]), filesystem=run_dir.fs).to_pylist()
    seeds, rejected = select(pages)
    rejects = [reject_row(r, STAGE, "seeds", rej) for r, rej in rejected]
    table = pa.Table.from_pylist([{k: r.get(k) for k in SEED_SCHEMA.names} for r in seeds], schema=SEED_SCHEMA)
    return ShardResult(table, rejects, len(pages), extra=reason_counts(rejects))


# -- the stage ---------------------------------------------------------------------------------
def _check_plan(run_dir: RunDir, units: list[dict], cfg: CurateConfig) -> None:
    plan = {"files_per_shard": cfg.files_per_shard, "units": units}
    old = run_dir.read_json(PLAN)
    if old is None:
        run_dir.write_json(PLAN, plan)
    elif old != json.loads(json.dumps(plan)):
        raise RunDirError(
            f"the curate inputs changed since this run directory was started ({run_dir.uri_of(PLAN)}); "
            "use a new run directory, or force=True to delete the curate outputs and redo them"
        )


def _collect(prefix: str, *extras: dict) -> dict[str, int]:
    out: Counter = Counter()
    for e in extras:
        out.update({k[len(prefix) :]: int(v) for k, v in e.items() if k.startswith(prefix)})
    return dict(sorted(out.items()))


def _decontam_report(run_dir: RunDir) -> dict:
    """Documents removed per benchmark, with the n-grams that matched (from `rejects/curate`)."""
    if not run_dir.exists(f"rejects/{STAGE}"):
        return contamination_report([])
    import pyarrow.compute as pc

    t = run_dir.read_table(f"rejects/{STAGE}", columns=["step", "reason"])
    t = t.filter(pc.equal(t.column("step"), "decontam"))
    return contamination_report(t.to_pylist())


def run_curate(cfg: CurateConfig, run_dir: RunDir, force: bool = False) -> dict:
    """Curate `cfg.inputs` (default: the shipped samples) into `curated/`. Exactly-once and
    restartable. Returns counts: read, kept, rejected, rejects per reason, docs per language."""
    run_dir = run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)
    chash = config_hash(cfg)
    if not run_dir.begin_stage(STAGE, chash, outputs=OUTPUTS, force=force):
        entry = run_dir.stage_entry(STAGE)
        log.info("curate: already complete in %s (config %s); skipping", run_dir.uri, chash)
        return entry["counts"]
    with run_dir.failure_recorded(STAGE):
        return _run(cfg, run_dir)


def _run(cfg: CurateConfig, run_dir: RunDir) -> dict:
    t0 = time.time()
    inputs = cfg.inputs or [samples_dir()]
    files = expand_inputs(inputs, source=cfg.source)
    load_model(cfg.langid.model_path)  # a missing model fails here, not as one reject per document
    decontam = DecontamIndex.build(cfg.decontam) if cfg.decontam.eval_sets else None
    units = plan_units(files, cfg.files_per_shard)
    _check_plan(run_dir, units, cfg)
    log.info("curate: %d files in %d shards from %s -> %s", len(files), len(units), ", ".join(inputs), run_dir.uri)

    c1 = run_shards(
        run_dir, STAGE, EXTRACTED, units, partial(extract_unit, cfg=cfg, decontam=decontam), concurrency=cfg.concurrency,
        resources=cfg.resources,
    )
    t1 = time.time()
    log.info("curate: extract: read %d, kept %d, rejected %d (%.1fs)", c1.read, c1.kept, c1.rejected, t1 - t0)

    n_dups = 0
    if cfg.exact_dedup:
        if run_dir.has_shard(DUP_IDS, DUP_SHARD):
            n_dups = run_dir.shard_meta(DUP_IDS, DUP_SHARD).get("duplicates", 0)
        else:
            if not c1.kept:
                dups = DUP_SCHEMA.empty_table()
            elif c1.kept >= cfg.dedup_shuffle_min_rows:
                dups = duplicate_ids(run_dir.read_dataset(EXTRACTED).select_columns(["id", "hash"]))
            else:
                dups = duplicate_ids_table(run_dir.read_table(EXTRACTED, columns=["id", "hash"]))
            n_dups = dups.num_rows
            run_dir.commit_table(DUP_IDS, DUP_SHARD, dups, meta={"duplicates": n_dups})
    n_near, near_stats = 0, {}
    if cfg.minhash.enabled:
        from phi4ray.data.minhash import near_duplicate_ids

        if run_dir.has_shard(NEAR_DUP_IDS, DUP_SHARD):
            near_stats = run_dir.shard_meta(NEAR_DUP_IDS, DUP_SHARD).get("stats", {})
        else:
            if c1.kept:
                near = near_duplicate_ids(
                    run_dir.read_dataset(EXTRACTED).select_columns(["id", "text"]), cfg.minhash,
                    num_docs=c1.kept, stats=near_stats,
                )
            else:
                from phi4ray.data.minhash import NEAR_DUP_SCHEMA

                near = NEAR_DUP_SCHEMA.empty_table()
            near_stats["near_duplicates"] = near.num_rows
            run_dir.commit_table(NEAR_DUP_IDS, DUP_SHARD, near, meta={"stats": near_stats})
        n_near = near_stats.get("near_duplicates", 0)
    t2 = time.time()
    log.info("curate: dedup: %d exact and %d near duplicates (%.1fs)", n_dups, n_near, t2 - t1)

    quality_report, page_step = None, None
    if cfg.quality.enabled:
        from phi4ray.data import quality

        quality_report = quality.train_from_dataset(
            run_dir.read_dataset(EXTRACTED).select_columns(["id", "text", "lang"]),
            cfg.quality, run_dir.uri_of(QUALITY), cfg.langid,
        )
        page_step = quality.quality_step(cfg.quality, run_dir.uri_of(QUALITY), cfg.langid)
    t_q = time.time()

    units2 = [
        {"shard": "part-" + u["shard"].split("-", 1)[1], "src": u["shard"], "dedup": cfg.exact_dedup,
         "near": cfg.minhash.enabled}
        for u in units
    ]
    c2 = run_shards(
        run_dir, STAGE, CURATED, units2, partial(filter_unit, run_dir=run_dir, quality=page_step),
        concurrency=cfg.concurrency, resources=cfg.resources,
    )
    t3 = time.time()
    seeds = None
    if cfg.quality.enabled:
        from phi4ray.data import quality

        seed_fn = quality.seed_step(cfg.quality, run_dir.uri_of(QUALITY), cfg.langid)
        seeds = run_shards(
            run_dir, STAGE, SEEDS, [{"shard": u["shard"]} for u in units2],
            partial(seed_unit, run_dir=run_dir, select=seed_fn), concurrency=cfg.concurrency,
            resources=cfg.resources,
        )

    langs = _collect("lang/", c2.extra)
    counts = {
        "read": c1.read,
        "kept": c2.kept,
        "rejected": c1.rejected + c2.rejected,
        "rejects": _collect("reject/", c1.extra, c2.extra),
        "langs": langs,
        "files": len(files),
        "shards": len(units),
    }
    if quality_report is not None:
        counts["quality"] = {k: v for k, v in quality_report.items() if k != "config_hash"}
    if seeds is not None:
        counts["seeds"] = {"pages": seeds.read, "seeds": seeds.kept, "rejected": seeds.rejected,
                           "rejects": _collect("reject/", seeds.extra)}
    skipped = _collect("skipped/", c1.extra)
    if skipped:
        counts["skipped"] = skipped
    if decontam is not None:
        counts["decontamination"] = {"index": decontam.summary(), **_decontam_report(run_dir)}
    if cfg.langid.groups:
        groups: Counter = Counter()
        for lang, n in langs.items():
            groups[lang_group(lang, cfg.langid)] += n
        counts["lang_groups"] = dict(sorted(groups.items()))
    if counts["read"] != counts["kept"] + counts["rejected"]:
        raise RuntimeError(f"curate: records lost or duplicated: read != kept + rejected in {counts}")
    metrics = {
        "seconds_extract": round(t1 - t0, 3),
        "seconds_dedup": round(t2 - t1, 3),
        "seconds_quality_training": round(t_q - t2, 3),
        "seconds_filter": round(t3 - t_q, 3),
        "docs_per_s": round(c1.read / max(t3 - t0, 1e-9), 2),
        "skipped_shards": c1.skipped_shards + c2.skipped_shards,
        "duplicates": n_dups,
        "near_duplicates": n_near,
        "minhash": near_stats,
    }
    run_dir.finish_stage(STAGE, counts=counts, metrics=metrics)
    log.info(
        "curate: done: read %d, kept %d, rejected %d %s; languages %s (%.1fs)",
        counts["read"],
        counts["kept"],
        counts["rejected"],
        counts["rejects"],
        langs,
        t3 - t0,
    )
    return counts
