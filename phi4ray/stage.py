"""The one stage wrapper: pure per-record functions in, committed shards, rejects and counts out.

A per-record function takes a record (a dict) and returns the record, possibly changed, or a
`Reject` with its reason. It never needs to know about Ray, files or counting: `apply_steps`
chains the functions over a batch and turns exceptions into rejects, and `run_shards` maps a
per-shard function over pending shards with Ray Data, commits each shard exactly once, writes
rejects, and counts records in Ray metrics and the manifest.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import pyarrow as pa

from phi4ray.run import RunDir

log = logging.getLogger(__name__)

REJECT_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("stage", pa.string()),
        ("step", pa.string()),
        ("reason", pa.string()),
        ("record", pa.string()),
    ]
)
MAX_REJECT_RECORD_CHARS = 20_000


@dataclass(frozen=True)
class Reject:
    """A record that a step refuses, and why. `reason` is a short stable code; `detail` is free."""

    reason: str
    detail: str = ""


RecordFn = Callable[[dict], "dict | Reject"]


def reject_row(record: dict, stage: str, step: str, reject: Reject) -> dict:
    blob = json.dumps(record, default=str, ensure_ascii=False)
    if len(blob) > MAX_REJECT_RECORD_CHARS:
        blob = blob[:MAX_REJECT_RECORD_CHARS] + "...<truncated>"
    reason = f"{reject.reason}: {reject.detail}" if reject.detail else reject.reason
    return {"id": str(record.get("id", "")), "stage": stage, "step": step, "reason": reason, "record": blob}


def apply_steps(
    records: Iterable[dict], steps: list[tuple[str, RecordFn]], stage: str
) -> tuple[list[dict], list[dict]]:
    """Run each record through `steps` in order. Returns (kept records, reject rows)."""
    kept, rejects = [], []
    for rec in records:
        cur: Any = rec
        for step, fn in steps:
            try:
                out = fn(cur)
            except Exception as e:  # a bad record must never kill the job
                out = Reject("error", f"{type(e).__name__}: {e}")
            if isinstance(out, Reject):
                rejects.append(reject_row(cur, stage, step, out))
                cur = None
                break
            cur = out
        if cur is not None:
            kept.append(cur)
    return kept, rejects


@dataclass
class ShardResult:
    """What a per-shard function returns: the kept table, reject rows, and records read."""

    kept: pa.Table
    rejects: list[dict] = field(default_factory=list)
    read: int = 0
    extra: dict = field(default_factory=dict)


@dataclass
class StageCounts:
    read: int = 0
    kept: int = 0
    rejected: int = 0
    shards: int = 0
    skipped_shards: int = 0
    extra: dict = field(default_factory=dict)

    def add(self, meta: dict) -> None:
        self.read += meta.get("read", 0)
        self.kept += meta.get("kept", 0)
        self.rejected += meta.get("rejected", 0)
        for k, v in (meta.get("extra") or {}).items():
            if isinstance(v, (int, float)):
                self.extra[k] = self.extra.get(k, 0) + v

    def as_dict(self) -> dict:
        return {
            "read": self.read,
            "kept": self.kept,
            "rejected": self.rejected,
            "shards": self.shards,
            "skipped_shards": self.skipped_shards,
            **self.extra,
        }


_COUNTERS: dict[str, Any] = {}


def count(stage: str, outcome: str, n: int) -> None:
    """Add n to the `phi4ray_records` counter (dashboard) for stage/outcome. No-op outside Ray."""
    if n <= 0:
        return
    try:
        import ray
        from ray.util.metrics import Counter

        if not ray.is_initialized():
            return
        c = _COUNTERS.get("records")
        if c is None:
            c = _COUNTERS["records"] = Counter(
                "phi4ray_records",
                description="Records per stage and outcome (read, kept, rejected).",
                tag_keys=("stage", "outcome"),
            )
        c.inc(n, tags={"stage": stage, "outcome": outcome})
    except Exception as e:  # metrics must never break a stage
        log.debug("metrics unavailable: %s", e)


def commit_shard(run_dir: RunDir, stage: str, out_dir: str, shard: str, result: ShardResult) -> dict:
    """Commit rejects first, then the kept shard. The kept shard's existence marks completion."""
    meta = {
        "read": result.read,
        "kept": result.kept.num_rows,
        "rejected": len(result.rejects),
        "extra": result.extra,
    }
    if result.rejects:  # named after the output too: one stage may write several outputs
        run_dir.commit_table(f"rejects/{stage}", f"{out_dir.replace('/', '_')}-{shard}", pa.Table.from_pylist(result.rejects, schema=REJECT_SCHEMA))
    run_dir.commit_table(out_dir, shard, result.kept, meta=meta)
    count(stage, "read", meta["read"])
    count(stage, "kept", meta["kept"])
    count(stage, "rejected", meta["rejected"])
    return meta


def run_shards(
    run_dir: RunDir,
    stage: str,
    out_dir: str,
    units: list[dict],
    process: Callable[[dict], ShardResult],
    concurrency: int | None = None,
    num_cpus: float = 1.0,
    resources: dict[str, float] | None = None,
) -> StageCounts:
    """Process every unit (a dict with a unique `shard` key) whose shard is not yet committed.

    Units run as a Ray Data `map` (progress bars on the console and dashboard); each one
    commits its own shard, so a killed job loses at most the shards in flight. `resources`
    (custom Ray resources, e.g. {"data": 1}) put the tasks on the nodes that provide them.
    """
    import ray.data

    names = [u["shard"] for u in units]
    if len(set(names)) != len(names):
        raise ValueError(f"{stage}: shard names must be unique")
    counts = StageCounts()
    pending = []
    for u in units:
        if run_dir.has_shard(out_dir, u["shard"]):
            counts.add(run_dir.shard_meta(out_dir, u["shard"]))
            counts.skipped_shards += 1
        else:
            pending.append(u)
    counts.shards = len(units)
    if counts.skipped_shards:
        log.info("%s: %d of %d shards already committed; skipping them", stage, counts.skipped_shards, len(units))
    if not pending:
        return counts

    def task(unit: dict) -> dict:
        t0 = time.time()
        meta = commit_shard(run_dir, stage, out_dir, unit["shard"], process(unit))
        return {"meta": json.dumps(meta), "seconds": time.time() - t0}

    ds = ray.data.from_items(pending, override_num_blocks=len(pending)).map(
        task, concurrency=concurrency, num_cpus=num_cpus, **({"resources": resources} if resources else {})
    )
    for row in ds.iter_rows():
        counts.add(json.loads(row["meta"]))
    return counts
