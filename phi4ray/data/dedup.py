"""Exact deduplication: one copy of each normalised text survives, chosen deterministically.

The global step is built to stream:

1. per shard (in the stage's first pass): `content_hash(text)` next to each `id`;
2. once, over the whole corpus: `duplicate_ids(ds)`, a Ray Data groupby on `hash` whose
   per-group function keeps the smallest id and emits the others as (id, survivor, hash).
   Only the groups move through the shuffle; the driver never loops over the corpus.
   A small corpus skips the shuffle (whose fixed cost is seconds) for `duplicate_ids_table`,
   the same answer from one vectorised pyarrow group-by and join;
3. per shard (second pass): drop the ids listed there.

The survivor is the smallest id of its group, so the result does not depend on the order in
which shards were processed or on how the corpus was split.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from typing import Iterable

import pyarrow as pa
import pyarrow.compute as pc

HASH_CHARS = 32
DUP_SCHEMA = pa.schema([("id", pa.string()), ("survivor", pa.string()), ("hash", pa.string())])
_WS = re.compile(r"\s+")


def normalize(text: str) -> str:
    """NFKC, lower case, whitespace runs collapsed to one space, ends stripped."""
    return _WS.sub(" ", unicodedata.normalize("NFKC", text).lower()).strip()


def content_hash(text: str) -> str:
    """sha256 (128 bits, hex) of the normalised text."""
    return hashlib.sha256(normalize(text).encode("utf-8")).hexdigest()[:HASH_CHARS]


def survivor(ids: Iterable[str]) -> str:
    """The id that stays when these ids share one text: the smallest."""
    return min(ids)


def find_duplicates(rows: Iterable[tuple[str, str]]) -> dict[str, str]:
    """{duplicate id: survivor id} for (id, hash) rows (in-memory; one group or a small corpus)."""
    groups: dict[str, list[str]] = {}
    for id_, h in rows:
        groups.setdefault(h, []).append(id_)
    out = {}
    for ids in groups.values():
        if len(ids) > 1:
            keep = survivor(ids)
            out.update({i: keep for i in ids if i != keep})
    return out


def _dups_of_group(group: pa.Table) -> pa.Table:
    ids = group.column("id").to_pylist()
    if len(ids) < 2:
        return DUP_SCHEMA.empty_table()
    keep = survivor(ids)
    h = group.column("hash")[0].as_py()
    dups = sorted(i for i in ids if i != keep)
    return pa.table({"id": dups, "survivor": [keep] * len(dups), "hash": [h] * len(dups)}, schema=DUP_SCHEMA)


def duplicate_ids(ds) -> pa.Table:
    """(id, survivor, hash) for every non-surviving row of a Ray Dataset with `id` and `hash`.

    The groupby runs distributed; only the duplicate ids (usually a small fraction of the
    corpus) come back to the caller, sorted by id so the committed table is deterministic.
    """
    import ray

    out = ds.select_columns(["id", "hash"]).groupby("hash").map_groups(_dups_of_group, batch_format="pyarrow")
    tables = [t for t in ray.get(out.to_arrow_refs()) if t.num_rows]
    if not tables:
        return DUP_SCHEMA.empty_table()
    return pa.concat_tables(tables).cast(DUP_SCHEMA).sort_by("id")


def duplicate_ids_table(table: pa.Table) -> pa.Table:
    """`duplicate_ids` for an in-memory (id, hash) table: a pyarrow group-by and join, no
    Python loop over rows. Same rows, same order."""
    t = table.select(["id", "hash"])
    groups = t.group_by("hash").aggregate([("id", "min"), ("id", "count")])
    groups = groups.filter(pc.greater(groups["id_count"], 1)).select(["hash", "id_min"])
    joined = t.join(groups, keys="hash", join_type="inner")
    joined = joined.filter(pc.not_equal(joined["id"], joined["id_min"]))
    out = pa.table([joined["id"], joined["id_min"], joined["hash"]], schema=DUP_SCHEMA)
    return out.sort_by("id").combine_chunks()
