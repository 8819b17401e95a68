"""Near-duplicate removal: datasketch MinHash signatures, LSH banding, connected components.

Exact dedup (`dedup.py`) catches copies; this catches the same page with a few words edited,
its paragraphs reordered, or a different header and footer. Two documents are near duplicates
when the Jaccard similarity of their sets of word n-grams ("shingles") is at least
`MinHashConfig.threshold`. The global steps are Ray Data shuffles; nothing holds the corpus,
its signatures, or an LSH index of it in one place:

1. **signatures** (`map_batches`): normalise the text (`dedup.normalize`), split it into words,
   take the set of word n-grams, and compute a datasketch `MinHash` (fixed `seed`, `num_perm`).
2. **band rows** (`map_batches`): the LSH banding of datasketch's `MinHashLSH`: `bands` (b)
   slices of `rows` (r) hash values each. Each document emits one row per band,
   (band_key, id), where band_key hashes the band index with the band's hash values. Two
   documents share a band_key iff they agree on a whole band, which happens with probability
   1 - (1 - J^r)^b for Jaccard J (b and r default to datasketch's `_optimal_param`).
3. **candidate pairs** (`groupby`): band rows are shuffled so that every bucket meets in one
   place. A bucket of k >= 2 ids links them: a star to the bucket's smallest id (k - 1
   edges, never k^2), or, when `verify` is on and k <= `pairwise_max_bucket`, every pair, each
   kept only if its Jaccard estimated from the two signatures is >= threshold (the star's edges
   are verified too).
4. **connected components** of the candidate edges (`connected_components`): the alternating
   large-star / small-star algorithm (Kiveris et al., "Connected Components in MapReduce and
   Beyond", SoCC 2014), each step one groupby over the edge table, until an iteration changes
   nothing; O(log^2 n) iterations. The result is a star per component around its smallest id.
   A small edge table (< `shuffle_min_rows` edges) takes a fast path instead: the edges, and
   only the edges, come to the driver for a union-find (`components_table`), with the same answer.
5. **output** (`near_duplicate_ids`): (id, survivor, cluster_size) for every document that is
   not its cluster's survivor, the smallest id (`dedup.survivor`), so the result does not
   depend on shard order or on how the corpus was split.

The shuffles group on a coarse partition number (`part`, a hash of the key modulo the number of
partitions) rather than on the key itself: Ray Data calls a `map_groups` function once per
group, and one Python call per LSH bucket (almost all of them singletons) would dominate the
run. Each call gets every row of its partition, hence every row of each key in it, and handles
its keys with vectorised pyarrow/numpy.
"""

from __future__ import annotations

import hashlib
import math
import re
import time
from contextlib import contextmanager
from functools import lru_cache
from typing import Iterable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from phi4ray.config import MinHashConfig
from phi4ray.data.dedup import normalize, survivor

NEAR_DUP_SCHEMA = pa.schema([("id", pa.string()), ("survivor", pa.string()), ("cluster_size", pa.int64())])
EDGE_SCHEMA = pa.schema([("u", pa.string()), ("v", pa.string())])
"""An undirected edge, written with v < u."""
FLAGGED_SCHEMA = EDGE_SCHEMA.append(pa.field("changed", pa.bool_()))
ROOT_SCHEMA = pa.schema([("id", pa.string()), ("root", pa.string())])
"""A node that is not its component's root, and the root (the component's smallest id)."""

SENTINEL = np.uint32(0xFFFFFFFF)
"""The value of every slot of an empty MinHash (datasketch's affine32 scheme)."""
UPDATE_CHUNK = 8192
"""Shingles per `MinHash.update_batch` call: bounds its (shingles x num_perm) scratch array."""
MAX_CC_ITERATIONS = 100
SIGNATURE_BLOCK_ROWS = 1000
"""Documents per signature task (about a second of work): a corpus that arrives as a few big
blocks (Ray Data reads small Parquet files in one task) still spreads over every CPU."""
SORT_SHUFFLE = "sort_shuffle_pull_based"
"""The shuffle these groupbys use by default. Ray Data's hash shuffle starts aggregator actors
for every groupby (about 10 s each on a 2-CPU node, measured), and connected components runs
two groupbys per iteration; the sort shuffle has no such fixed cost."""
_WORD = re.compile(r"\w+")


# -- parameters --------------------------------------------------------------------------------
@lru_cache(maxsize=64)
def _optimal(threshold: float, num_perm: int, fp_weight: float, fn_weight: float) -> tuple[int, int]:
    from datasketch.lsh import _optimal_param

    return tuple(int(x) for x in _optimal_param(threshold, num_perm, fp_weight, fn_weight))


def lsh_params(cfg: MinHashConfig) -> tuple[int, int]:
    """(bands, rows): the configured ones, or those datasketch's `MinHashLSH` would choose for
    `threshold` and `num_perm` (`_optimal_param`: the least weighted sum of the false positive
    and false negative probability mass)."""
    if cfg.bands is not None and cfg.rows is not None:
        return cfg.bands, cfg.rows
    return _optimal(cfg.threshold, cfg.num_perm, *cfg.weights)


def collision_probability(jaccard: float, bands: int, rows: int) -> float:
    """P(two documents with this Jaccard similarity share at least one band) = 1-(1-J^r)^b."""
    return 1.0 - (1.0 - jaccard**rows) ** bands


# -- shingles and signatures (pure) ------------------------------------------------------------
def words(text: str) -> list[str]:
    """The words of the normalised text (NFKC, lower case); punctuation separates words."""
    return _WORD.findall(normalize(text))


def shingles(text: str, n: int = 5) -> set[bytes]:
    """The set of word n-grams of `text`, UTF-8 encoded. A text of fewer than n words (but at
    least one) is one shingle; an empty text has none."""
    w = words(text)
    if not w:
        return set()
    if len(w) < n:
        return {" ".join(w).encode()}
    return {" ".join(w[i : i + n]).encode() for i in range(len(w) - n + 1)}


def jaccard(a: set, b: set) -> float:
    """Exact Jaccard similarity of two sets (1.0 for two empty sets)."""
    if not a and not b:
        return 1.0
    inter = len(a & b)
    return inter / (len(a) + len(b) - inter)


@lru_cache(maxsize=8)
def _template(num_perm: int, seed: int):
    from datasketch import MinHash

    return MinHash(num_perm=num_perm, seed=seed)


def minhash(shingle_set: Iterable[bytes], num_perm: int = 128, seed: int = 1):
    """A datasketch `MinHash` of the shingles. `MinHash.bulk` does the same (a copy of one
    initialised MinHash per document, then `update_batch`); this feeds long documents in
    chunks so the (shingles x num_perm) scratch array stays small."""
    m = _template(num_perm, seed).copy()
    items = list(shingle_set)
    for i in range(0, len(items), UPDATE_CHUNK):
        m.update_batch(items[i : i + UPDATE_CHUNK])
    return m


def signature_matrix(texts: Iterable[str], num_perm: int = 128, seed: int = 1, ngram: int = 5) -> np.ndarray:
    """The MinHash hash values of each text, one uint32 row of `num_perm` per text. A text
    without words gets a row of `SENTINEL` (it never joins a bucket)."""
    rows = [minhash(shingles(t, ngram), num_perm, seed).hashvalues for t in texts]
    if not rows:
        return np.empty((0, num_perm), dtype=np.uint32)
    return np.stack(rows).astype(np.uint32, copy=False)


def estimate_jaccard(sig_a: np.ndarray, sig_b: np.ndarray) -> np.ndarray:
    """Row-wise Jaccard estimates: the fraction of equal hash values (as `MinHash.jaccard`)."""
    return (np.asarray(sig_a) == np.asarray(sig_b)).mean(axis=-1)


def band_keys(sig: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """(n, bands) int64: blake2b (8 bytes) of each band's index and its `rows` hash values,
    the bucket of that band in `MinHashLSH`. Equal keys <=> equal bands (up to 64-bit collisions,
    which at worst add a candidate)."""
    sig = np.ascontiguousarray(np.asarray(sig, dtype="<u4"))
    n = sig.shape[0]
    if bands * rows > sig.shape[1]:
        raise ValueError(f"bands*rows = {bands * rows} exceeds the signature length {sig.shape[1]}")
    out = np.empty((n, bands), dtype=np.int64)
    for b in range(bands):
        prefix = b.to_bytes(4, "little")
        band = np.ascontiguousarray(sig[:, b * rows : (b + 1) * rows])
        for i in range(n):
            d = hashlib.blake2b(prefix + band[i].tobytes(), digest_size=8).digest()
            out[i, b] = int.from_bytes(d, "little", signed=True)
    return out


def partition_of(values: pa.Array | pa.ChunkedArray | np.ndarray, partitions: int) -> np.ndarray:
    """A stable partition number in [0, partitions) for each value (ints: modulo; strings:
    pandas' siphash `hash_array`, the same in every process)."""
    if isinstance(values, (pa.Array, pa.ChunkedArray)):
        if pa.types.is_integer(values.type):
            values = values.to_numpy()
        else:
            values = np.asarray(values.to_pylist(), dtype=object)
    if values.dtype.kind in "iu":
        return np.mod(values.astype(np.int64), partitions)
    import pandas as pd

    return (pd.util.hash_array(values) % np.uint64(partitions)).astype(np.int64)


def _sig_to_arrow(sig: np.ndarray) -> pa.FixedSizeListArray:
    return pa.FixedSizeListArray.from_arrays(pa.array(sig.reshape(-1), type=pa.uint32()), sig.shape[1])


def _sig_from_arrow(col: pa.Array | pa.ChunkedArray, num_perm: int) -> np.ndarray:
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    return col.flatten().to_numpy(zero_copy_only=False).astype(np.uint32, copy=False).reshape(-1, num_perm)


# -- candidate edges (pure) --------------------------------------------------------------------
def _canonical(a: pa.Array, b: pa.Array) -> pa.Table:
    """Unique undirected edges (larger id, smaller id) of string arrays a-b, self-loops dropped."""
    lt = pc.less(b, a)
    e = pa.table({"u": pc.if_else(lt, a, b), "v": pc.if_else(lt, b, a)})
    return unique_edges(e.filter(pc.not_equal(e["u"], e["v"])))


def unique_edges(edges: pa.Table) -> pa.Table:
    if edges.num_rows == 0:
        return EDGE_SCHEMA.empty_table()
    return edges.select(["u", "v"]).group_by(["u", "v"]).aggregate([]).cast(EDGE_SCHEMA)


@lru_cache(maxsize=64)
def _pairs(k: int) -> tuple[np.ndarray, np.ndarray]:
    return np.triu_indices(k, 1)


def bucket_edges(
    table: pa.Table,
    threshold: float | None = None,
    pairwise_max_bucket: int = 8,
    num_perm: int | None = None,
) -> pa.Table:
    """Candidate edges (u, v), v < u, from band rows (band_key, id[, sig]).

    Each bucket (rows sharing a band_key) of k >= 2 ids is linked as a star around its
    smallest id. With `threshold` (verification; needs the `sig` column), a bucket of at most
    `pairwise_max_bucket` ids proposes all of its pairs instead, and only the pairs whose
    estimated Jaccard is >= threshold are kept.
    """
    if table.num_rows < 2:
        return EDGE_SCHEMA.empty_table()
    t = table.take(pc.sort_indices(table, [("band_key", "ascending"), ("id", "ascending")]))
    keys = t["band_key"].to_numpy()
    starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
    sizes = np.diff(np.r_[starts, len(keys)])
    multi = sizes >= 2
    if not multi.any():
        return EDGE_SCHEMA.empty_table()
    ids = _arr(t["id"]).cast(pa.string())
    if threshold is None:
        first = np.repeat(starts, sizes)
        member = np.flatnonzero(np.repeat(multi, sizes) & (np.arange(len(keys)) != first))
        return _canonical(ids.take(member), ids.take(first[member]))
    # verification: pairwise inside small buckets, a star inside large ones
    ii, jj = [], []
    for s, k in zip(starts[multi], sizes[multi]):
        if k <= pairwise_max_bucket:
            a, b = _pairs(int(k))
            ii.append(a + s)
            jj.append(b + s)
        else:
            ii.append(np.full(k - 1, s))
            jj.append(np.arange(s + 1, s + k))
    i = np.concatenate(ii)
    j = np.concatenate(jj)
    sig = _sig_from_arrow(t["sig"], num_perm or t.schema.field("sig").type.list_size)
    keep = estimate_jaccard(sig[i], sig[j]) >= threshold
    return _canonical(ids.take(j[keep]), ids.take(i[keep]))


# -- connected components (pure) ----------------------------------------------------------------
def components_table(edges: pa.Table) -> pa.Table:
    """Union-find over an in-memory edge table: (id, root) for every node that is not the
    smallest id of its component. The driver-side fast path; same rows as
    `connected_components`, sorted by id."""
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        root = x
        while parent.get(root, root) != root:
            root = parent[root]
        while parent.get(x, x) != root:  # path compression
            parent[x], x = root, parent[x]
        return root

    for a, b in zip(edges["u"].to_pylist(), edges["v"].to_pylist()):
        ra, rb = find(a), find(b)
        if ra != rb:  # the survivor (smallest id) becomes the root: each root is its component's minimum
            keep = survivor((ra, rb))
            parent[rb if keep == ra else ra] = keep
        parent.setdefault(a, a)
        parent.setdefault(b, b)
    pairs = sorted((x, find(x)) for x in parent)
    ids = [x for x, r in pairs if x != r]
    roots = [r for x, r in pairs if x != r]
    return pa.table({"id": ids, "root": roots}, schema=ROOT_SCHEMA)


def large_star(adj: pa.Table) -> pa.Table:
    """One large-star step over an adjacency table (node, nbr) that holds every neighbour of
    each of its nodes (both directions of every edge). Each node u links its larger neighbours
    to m(u), the least of u and its neighbours. Returns edges (u, v, changed): changed marks an
    edge that was not an input edge (m(u) != u)."""
    if adj.num_rows == 0:
        return _flagged(EDGE_SCHEMA.empty_table(), [])
    adj = adj.select(["node", "nbr"]).group_by(["node", "nbr"]).aggregate([])
    agg = adj.group_by("node").aggregate([("nbr", "min")])
    mins = pa.table({"node": agg["node"], "m": pc.min_element_wise(agg["node"], agg["nbr_min"])})
    j = adj.filter(pc.greater(adj["nbr"], adj["node"])).join(mins, "node")
    out = pa.table({"u": j["nbr"], "v": j["m"], "changed": pc.not_equal(j["m"], j["node"])})
    return _dedup_flagged(out)


def small_star(adj: pa.Table) -> pa.Table:
    """One small-star step over (node, nbr) rows with nbr < node that hold every smaller
    neighbour of each of their nodes. Each node u and its smaller neighbours are linked to
    m(u), the least of them. Returns edges (u, v, changed)."""
    if adj.num_rows == 0:
        return _flagged(EDGE_SCHEMA.empty_table(), [])
    adj = adj.select(["node", "nbr"]).group_by(["node", "nbr"]).aggregate([])
    agg = adj.group_by("node").aggregate([("nbr", "min")])
    mins = pa.table({"node": agg["node"], "m": agg["nbr_min"]})
    j = adj.join(mins, "node")
    to_root = pa.table({"u": mins["node"], "v": mins["m"], "changed": pa.array(np.zeros(mins.num_rows, bool))})
    moved = j.filter(pc.not_equal(j["nbr"], j["m"]))
    relinked = pa.table({"u": moved["nbr"], "v": moved["m"], "changed": pa.array(np.ones(moved.num_rows, bool))})
    return _dedup_flagged(pa.concat_tables([to_root, relinked]))


def _flagged(edges: pa.Table, changed) -> pa.Table:
    return edges.append_column("changed", pa.array(changed, pa.bool_()))


def _dedup_flagged(t: pa.Table) -> pa.Table:
    agg = t.group_by(["u", "v"]).aggregate([("changed", "max")])
    return pa.table({"u": agg["u"], "v": agg["v"], "changed": agg["changed_max"]}, schema=FLAGGED_SCHEMA)


def _both_directions(edges: pa.Table) -> pa.Table:
    return pa.table(
        {
            "node": pa.concat_arrays([_arr(edges["u"]), _arr(edges["v"])]),
            "nbr": pa.concat_arrays([_arr(edges["v"]), _arr(edges["u"])]),
        }
    )


def _arr(col) -> pa.Array:
    return col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col


def components_by_stars(edges: pa.Table) -> tuple[pa.Table, int]:
    """`connected_components` in one process: the same large-star / small-star iteration over an
    in-memory table (for tests and for checking the distributed run). Returns (roots, rounds)."""
    e = unique_edges(edges)
    for rounds in range(1, MAX_CC_ITERATIONS + 1):
        ls = large_star(_both_directions(e))
        ss = small_star(pa.table({"node": ls["u"], "nbr": ls["v"]}))
        e = ss.select(["u", "v"])
        if not pc.any(ls["changed"]).as_py() and not pc.any(ss["changed"]).as_py():
            return _roots(e), rounds
    raise RuntimeError(f"connected components did not converge in {MAX_CC_ITERATIONS} iterations")


def _roots(star_edges: pa.Table) -> pa.Table:
    t = unique_edges(star_edges)
    return pa.table({"id": t["u"], "root": t["v"]}, schema=ROOT_SCHEMA).sort_by("id")


def dup_rows(roots: pa.Table) -> pa.Table:
    """(id, survivor, cluster_size) from (id, root) rows holding all non-root members of each
    root they name."""
    if roots.num_rows == 0:
        return NEAR_DUP_SCHEMA.empty_table()
    roots = roots.select(["id", "root"]).group_by(["id", "root"]).aggregate([])
    sizes = roots.group_by("root").aggregate([("id", "count")])
    j = roots.join(sizes, "root")
    out = pa.table(
        {"id": j["id"], "survivor": j["root"], "cluster_size": pc.add(j["id_count"], 1)}, schema=NEAR_DUP_SCHEMA
    )
    return out.sort_by("id")


def near_duplicate_ids_table(edges: pa.Table) -> pa.Table:
    """The fast path: (id, survivor, cluster_size) from an in-memory candidate edge table."""
    return dup_rows(components_table(edges))


# -- Ray Data ------------------------------------------------------------------------------------
def _signature_batch(batch: pa.Table, num_perm: int, seed: int, ngram: int) -> pa.Table:
    sig = signature_matrix((t or "" for t in batch["text"].to_pylist()), num_perm, seed, ngram)  # null: no words
    return pa.table({"id": batch["id"], "sig": _sig_to_arrow(sig)})


def signatures(ds, cfg: MinHashConfig, block_rows: int = SIGNATURE_BLOCK_ROWS):
    """(id, sig) for a Dataset with `id` and `text`: sig is a fixed-size list of `num_perm`
    uint32 MinHash values (datasketch, seed `cfg.seed`, word `cfg.ngram`-grams). The input is
    cut (streaming, no shuffle) into blocks of at most `block_rows` documents first."""
    return ds.select_columns(["id", "text"]).repartition(target_num_rows_per_block=block_rows).map_batches(
        _signature_batch,
        batch_format="pyarrow",
        fn_kwargs={"num_perm": cfg.num_perm, "seed": cfg.seed, "ngram": cfg.ngram},
    )


def _band_batch(batch: pa.Table, bands: int, rows: int, num_perm: int, partitions: int, keep_sig: bool) -> pa.Table:
    sig = _sig_from_arrow(batch["sig"], num_perm)
    live = ~(sig == SENTINEL).all(axis=1)  # documents without words join no bucket
    sig = sig[live]
    idx = np.flatnonzero(live)
    keys = band_keys(sig, bands, rows).reshape(-1)  # doc-major: doc0 band0..b-1, doc1 ...
    doc = np.repeat(idx, bands)
    cols = {
        "part": pa.array(partition_of(keys, partitions)),
        "band_key": pa.array(keys),
        "id": batch["id"].take(pa.array(doc, pa.int64())),
    }
    if keep_sig:
        cols["sig"] = batch["sig"].take(pa.array(doc, pa.int64()))
    return pa.table(cols)


def band_rows(sig_ds, cfg: MinHashConfig, partitions: int):
    """(part, band_key, id[, sig]): one row per document and band; `sig` rides along when the
    candidates are verified."""
    b, r = lsh_params(cfg)
    return sig_ds.map_batches(
        _band_batch,
        batch_format="pyarrow",
        fn_kwargs={"bands": b, "rows": r, "num_perm": cfg.num_perm, "partitions": partitions, "keep_sig": cfg.verify},
    )


def _bucket_group(group: pa.Table, threshold: float | None, pairwise_max_bucket: int, num_perm: int) -> pa.Table:
    return bucket_edges(group, threshold, pairwise_max_bucket, num_perm)


def num_partitions(rows: int, cfg: MinHashConfig) -> int:
    """Partitions for a shuffle of `rows` rows: `rows_per_partition` each, and at least one per
    CPU of the cluster so that every CPU has a group to work on."""
    import ray

    cpus = int(ray.cluster_resources().get("CPU", 1)) if ray.is_initialized() else 1
    return max(1, math.ceil(rows / cfg.rows_per_partition), cpus)


@contextmanager
def shuffle_strategy(ds, strategy: str | None):
    """Run Ray Data groupbys under `strategy` (a `ray.data.context.ShuffleStrategy` value) for
    the duration of the block, then restore the caller's setting. None changes nothing."""
    if strategy is None:
        yield
        return
    from ray.data.context import DataContext, ShuffleStrategy

    ctxs = list({id(c): c for c in (DataContext.get_current(), ds.context)}.values())
    old = [c.shuffle_strategy for c in ctxs]
    try:
        for c in ctxs:
            c.shuffle_strategy = ShuffleStrategy(strategy)
        yield
    finally:
        for c, o in zip(ctxs, old):
            c.shuffle_strategy = o


def candidate_pairs(
    ds,
    cfg: MinHashConfig,
    num_docs: int | None = None,
    partitions: int | None = None,
    shuffle: str | None = SORT_SHUFFLE,
):
    """Candidate edges (u, v), v < u, of a Dataset with `id` and `text`: signatures, band rows,
    and a groupby that brings every LSH bucket to one place. Edges may repeat (one pair can
    share several bands); `connected_components` does not mind. Lazy: nothing runs until the
    caller consumes the result. `partitions`: groups in the shuffle (None: from `num_docs`,
    else `ds.count()`, times bands over `cfg.rows_per_partition`)."""
    if partitions is None:
        n = ds.count() if num_docs is None else num_docs
        partitions = num_partitions(n * lsh_params(cfg)[0], cfg)
    parts = partitions
    rows = band_rows(signatures(ds, cfg), cfg, parts)
    with shuffle_strategy(rows, shuffle):
        return rows.groupby("part", num_partitions=parts).map_groups(
            _bucket_group,
            batch_format="pyarrow",
            fn_kwargs={
                "threshold": cfg.threshold if cfg.verify else None,
                "pairwise_max_bucket": cfg.pairwise_max_bucket,
                "num_perm": cfg.num_perm,
            },
        )


def _adj_batch(batch: pa.Table, partitions: int, both: bool) -> pa.Table:
    adj = _both_directions(batch) if both else pa.table({"node": batch["u"], "nbr": batch["v"]})
    return adj.append_column("part", pa.array(partition_of(adj["node"], partitions)))


def _large_star_group(group: pa.Table) -> pa.Table:
    return large_star(group)


def _small_star_group(group: pa.Table) -> pa.Table:
    return small_star(group)


def _star_step(ds, step, both: bool, partitions: int):
    out = (
        ds.map_batches(_adj_batch, batch_format="pyarrow", fn_kwargs={"partitions": partitions, "both": both})
        .groupby("part", num_partitions=partitions)
        .map_groups(step, batch_format="pyarrow")
        .materialize()
    )
    changed = out.sum("changed") if out.count() else 0
    return out.select_columns(["u", "v"]), int(changed or 0)


def _to_roots(t: pa.Table) -> pa.Table:
    return pa.table({"id": t["u"], "root": t["v"]}, schema=ROOT_SCHEMA)


def connected_components(
    edges_ds, partitions: int | None = None, stats: dict | None = None, shuffle: str | None = SORT_SHUFFLE
):
    """Connected components of an edge Dataset (u, v) without bringing it to one place:
    alternate large-star and small-star (each a groupby on the node) until an iteration changes
    no edge. Returns a Dataset of (id, root) for every node that is not its component's root;
    the root is the component's smallest id. `partitions`: groups per shuffle (None: one per
    CPU of the cluster)."""
    parts = partitions or num_partitions(0, MinHashConfig())
    e = edges_ds.select_columns(["u", "v"])
    with shuffle_strategy(e, shuffle):
        for rounds in range(1, MAX_CC_ITERATIONS + 1):
            e, c_large = _star_step(e, _large_star_group, True, parts)
            e, c_small = _star_step(e, _small_star_group, False, parts)
            if c_large == 0 and c_small == 0:
                if stats is not None:
                    stats["cc_rounds"] = rounds
                return e.map_batches(_to_roots, batch_format="pyarrow")
    raise RuntimeError(f"connected components did not converge in {MAX_CC_ITERATIONS} iterations")


def _root_part_batch(batch: pa.Table, partitions: int) -> pa.Table:
    return batch.append_column("part", pa.array(partition_of(batch["root"], partitions)))


def _dup_group(group: pa.Table) -> pa.Table:
    return dup_rows(group)


def _collect(ds) -> list[pa.Table]:
    import ray

    return [t for t in ray.get(ds.to_arrow_refs()) if t.num_rows]


def near_duplicate_ids(
    ds,
    cfg: MinHashConfig,
    num_docs: int | None = None,
    stats: dict | None = None,
    shuffle: str | None = SORT_SHUFFLE,
) -> pa.Table:
    """(id, survivor, cluster_size) for every near duplicate in a Dataset with `id` and `text`,
    sorted by id: each cluster of near duplicates keeps its smallest id (`survivor`), and
    cluster_size counts the survivor too. Only these rows come back to the caller.

    `num_docs`: the row count if the caller knows it (else `ds.count()`). `shuffle`: the Ray
    Data shuffle strategy for the groupbys (None: the DataContext's). `stats`, if given,
    receives docs, bands, rows, band_partitions, edges, partitions (of the edge shuffles), path
    ('none', 'driver' or 'distributed'), cc_rounds (distributed path) and seconds per phase.
    """
    n = ds.count() if num_docs is None else num_docs
    b, r = lsh_params(cfg)
    st = stats if stats is not None else {}
    band_parts = num_partitions(n * b, cfg)
    st.update(docs=n, bands=b, rows=r, band_partitions=band_parts)
    t0 = time.perf_counter()
    with shuffle_strategy(ds, shuffle):
        edges = candidate_pairs(ds, cfg, partitions=band_parts, shuffle=None).materialize()
        n_edges = edges.count()
        t1 = time.perf_counter()
        parts = num_partitions(n_edges, cfg)
        st.update(edges=n_edges, partitions=parts, seconds_candidates=round(t1 - t0, 3))
        if n_edges == 0:
            st["path"] = "none"
            out = NEAR_DUP_SCHEMA.empty_table()
        elif n_edges < cfg.shuffle_min_rows:
            st["path"] = "driver"
            out = near_duplicate_ids_table(pa.concat_tables(_collect(edges)))
        else:
            st["path"] = "distributed"
            roots = connected_components(edges, parts, st, shuffle=None)
            dups = (
                roots.map_batches(_root_part_batch, batch_format="pyarrow", fn_kwargs={"partitions": parts})
                .groupby("part", num_partitions=parts)
                .map_groups(_dup_group, batch_format="pyarrow")
            )
            tables = _collect(dups)
            out = (
                pa.concat_tables(tables).cast(NEAR_DUP_SCHEMA).sort_by("id").combine_chunks()
                if tables
                else NEAR_DUP_SCHEMA.empty_table()
            )
    st["seconds_components"] = round(time.perf_counter() - t1, 3)
    return out
