"""Benchmark: near-duplicate removal with MinHash LSH on Ray Data (phi4ray.data.minhash).

What it measures, on a corpus of real documentation paragraphs (../shared/data/html, through
phi4ray.data.extract) with planted near duplicates (words edited, paragraphs moved, header and
footer boilerplate changed, copies of copies) and planted low-Jaccard rewrites:

1. quality: pairwise precision and recall of the clusters against exact Jaccard (word 5-gram
   sets, all pairs by brute force, as one sparse matrix product), at the configured threshold:
   a pair is truly duplicate when an exact all-pairs dedup with the same rule (pairs with
   J >= threshold, joined into connected components) puts it in one cluster;
2. throughput in documents per second, input files to deduplicated output files, for
   - phi4ray: `near_duplicate_ids` on a local Ray (--cpus CPUs) plus the filter that writes
     the kept documents; at these sizes the candidate edges are few, so connected components
     takes the driver fast path (union-find over the edges); `phi4ray-dcc` forces the
     distributed large-star/small-star path (shuffle_min_rows=0) on the same input. The clock
     starts on a started cluster that has run one trivial dataset (a warm cluster, as a
     long-lived one is); worker processes still import the code inside the timed run, as
     datatrove's process pool and spaCy start inside its own,
   - datatrove: MinhashDedupSignature -> Buckets -> Cluster -> Filter (LocalPipelineExecutor,
     --cpus workers), same n-grams, bands and rows,
   - datasketch: one process, one in-memory MinHashLSH index (the reference baseline),
   each also stated as a ratio to the others measured in the same run;
3. peak memory (RSS, sampled every 0.2 s) of the driver and of the workers, at --docs and at
   --docs x --scale documents: phi4ray's driver does not hold the corpus, so its peak should
   not grow with it; the single-process index does. A phi4ray worker's peak is bounded by the
   rows of one shuffle group (`rows_per_partition`), not by the corpus; below that many band
   rows per CPU it still grows with the corpus;
4. CPU seconds of each method's whole process tree (less sensitive to other load than wall
   time on a shared machine).

Every method runs in its own subprocess, so memory and timing are its own.

Run (from the repository root; about 10 minutes on 2 busy cores at the defaults):

    python benchmarks/minhash_dedup.py                       # 2000 docs, then 20000 (--scale 10)
    python benchmarks/minhash_dedup.py --docs 500 --scale 4 --out /tmp/minhash.json

datatrove (and spaCy, its English word tokenizer) goes in a separate virtualenv that sees this
environment's packages, so nothing here changes:

    python -m venv --system-site-packages /tmp/dtvenv
    /tmp/dtvenv/bin/pip install datatrove spacy 'xxhash<4'

(datatrove 0.10.1 hashes str, which xxhash 4 refuses: "Strings must be encoded before hashing".)

`--datatrove-python` names its interpreter (default: /tmp/dtvenv/bin/python if present, else this
interpreter if it imports datatrove; otherwise the datatrove rows say why they are missing).
Results: a table on stdout and JSON in benchmarks/results/minhash_dedup.json (git-ignored).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HTML = os.path.join(REPO, "..", "shared", "data", "html")
SHARDS = 4


# -- memory sampling -------------------------------------------------------------------------------
RAY_SERVICES = ("ray::DashboardAgent", "ray::RuntimeEnvAgent", "ray::_")
"""Ray's own per-node processes and internal actors (`ray::_StatsActor`, ...): not workers."""


class MemorySampler:
    """Peak RSS of this process and of its descendants, and the CPU time they used, sampled on
    a thread. With `worker_prefix` ('ray::'), only processes whose title starts with it count as
    workers (Ray's task workers, named after their task or IDLE), less Ray's own services; else
    every child. `private` is RSS less shared pages (a worker maps Ray's shared-memory object
    store, and RSS counts the pages of it that the worker read)."""

    def __init__(self, interval: float = 0.2, worker_prefix: str | None = None):
        import psutil

        self.proc = psutil.Process()
        self.interval = interval
        self.prefix = worker_prefix
        self.driver_peak = self.proc.memory_info().rss
        self.driver_start = self.driver_peak
        self.worker_peak = 0
        self.worker_private_peak = 0
        self.workers_total_peak = 0
        self.cpu0 = self._own_cpu()
        self.child_cpu0: dict[int, float] = {}
        self.child_cpu: dict[int, float] = {}
        self._first = True
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _own_cpu(self) -> float:
        t = self.proc.cpu_times()
        return t.user + t.system

    def sample(self):
        self.driver_peak = max(self.driver_peak, self.proc.memory_info().rss)
        rss, private = [], []
        for c in self.proc.children(recursive=True):
            try:
                t = c.cpu_times()
                cpu = t.user + t.system
                if self._first:
                    self.child_cpu0[c.pid] = cpu
                self.child_cpu[c.pid] = cpu
                title = " ".join(c.cmdline())
                if self.prefix is None or (title.startswith(self.prefix) and not title.startswith(RAY_SERVICES)):
                    m = c.memory_info()
                    rss.append(m.rss)
                    private.append(m.rss - getattr(m, "shared", 0))
            except Exception:  # a process that ended between listing and reading
                pass
        self._first = False
        if rss:
            self.worker_peak = max(self.worker_peak, max(rss))
            self.worker_private_peak = max(self.worker_private_peak, max(private))
            self.workers_total_peak = max(self.workers_total_peak, sum(rss))

    def _run(self):
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)

    def __enter__(self):
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.sample()

    def result(self) -> dict:
        mb = 1 / 2**20
        children = sum(v - self.child_cpu0.get(pid, 0.0) for pid, v in self.child_cpu.items())
        return {
            "driver_start_mb": round(self.driver_start * mb, 1),
            "driver_peak_mb": round(self.driver_peak * mb, 1),
            "worker_peak_mb": round(self.worker_peak * mb, 1),
            "worker_private_peak_mb": round(self.worker_private_peak * mb, 1),
            "workers_total_peak_mb": round(self.workers_total_peak * mb, 1),
            "cpu_s": round(self._own_cpu() - self.cpu0 + children, 2),
        }


# -- corpus ----------------------------------------------------------------------------------------
HEADERS = [
    "Skip to main content | Home | Docs | Search",
    "Navigation: index | modules | next | previous",
    "Documentation home > Library reference > this page",
    "Menu: Getting started, Tutorials, API, Community",
]
FOOTERS = [
    "Copyright 2001-2024 Python Software Foundation. All rights reserved.",
    "Last updated on Jan 01, 2024. Found a bug? Report it on the tracker.",
    "Built with Sphinx using a theme provided by Read the Docs.",
    "This page is licensed under the terms of the BSD license; see LICENSE.",
]
FILLER = "alpha omega gizmo zenith quartz nimbus vertex ember tundra lumen".split()


def _pages() -> list[list[str]]:
    from phi4ray.data.extract import extract_text

    pages = []
    for path in sorted(glob.glob(os.path.join(HTML, "*", "*.html"))):
        with open(path, encoding="utf-8", errors="replace") as f:
            paras = [p for p in extract_text(f.read()).split("\n\n") if len(p.split()) >= 8]
        if len(paras) >= 40:
            pages.append(paras)
    if not pages:
        raise SystemExit(f"no pages under {HTML}")
    return pages


def make_corpus(n: int, seed: int = 0, pages=None) -> tuple[list[str], list[str], list[dict]]:
    """n documents: ~60% originals (8-14 paragraphs of one page, some with a header/footer),
    ~25% near duplicates of an original, ~5% near duplicates of a near duplicate, ~10% rewrites
    that keep 30-70% of an original. Returns ids (random, unrelated to order), texts, and what
    each document was planted as."""
    rng = random.Random(seed)
    pages = pages or _pages()
    docs: list[dict] = []  # {"paras", "header", "footer"}
    kinds: list[dict] = []

    def original():
        page = rng.choice(pages)
        d = {"paras": [page[j] for j in sorted(rng.sample(range(len(page)), rng.randint(8, 14)))], "page": page}
        d["header"] = rng.choice(HEADERS) if rng.random() < 0.3 else None
        d["footer"] = rng.choice(FOOTERS) if rng.random() < 0.3 else None
        return d

    def edit(d, k):
        paras = [p.split(" ") for p in d["paras"]]
        for _ in range(k):
            p = rng.randrange(len(paras))
            paras[p][rng.randrange(len(paras[p]))] = rng.choice(FILLER)
        return {**d, "paras": [" ".join(p) for p in paras]}

    def move(d, k):
        paras = list(d["paras"])
        for _ in range(k):
            i = rng.randrange(len(paras))
            p = paras.pop(i)
            paras.insert(rng.choice([j for j in range(len(paras) + 1) if j != i]), p)
        return {**d, "paras": paras}

    def boilerplate(d):
        return {**d, "header": rng.choice([h for h in HEADERS if h != d["header"]]), "footer": rng.choice([f for f in FOOTERS if f != d["footer"]])}

    def variant(d):
        kind = rng.choice(["edit", "move", "boilerplate", "edit+boilerplate"])
        if kind == "edit":
            return edit(d, rng.randint(1, 16)), kind
        if kind == "move":
            return move(d, rng.randint(1, 3)), kind
        if kind == "boilerplate":
            return boilerplate(d), kind
        return boilerplate(edit(d, rng.randint(1, 6))), kind

    n_orig = max(2, int(n * 0.6))
    for _ in range(n_orig):
        docs.append(original())
        kinds.append({"kind": "original"})
    while len(docs) < n:
        r = rng.random()
        if r < 0.625:
            i = rng.randrange(n_orig)
            d, kind = variant(docs[i])
        elif r < 0.75 and len(docs) > n_orig:
            i = rng.randrange(n_orig, len(docs))
            if kinds[i]["kind"] in ("original", "rewrite"):
                continue
            d, kind = variant(docs[i])
            kind = "second-generation " + kind
        else:
            i = rng.randrange(n_orig)
            src = docs[i]
            keep = [p for p in src["paras"] if rng.random() < rng.uniform(0.3, 0.7)] or src["paras"][:1]
            fresh = [p for p in rng.sample(src["page"], min(len(src["page"]), 12)) if p not in src["paras"]]
            d, kind = {**src, "paras": keep + fresh[: max(1, len(src["paras"]) - len(keep))]}, "rewrite"
        docs.append(d)
        kinds.append({"kind": kind, "of": i})
    texts = ["\n\n".join(([d["header"]] if d["header"] else []) + d["paras"] + ([d["footer"]] if d["footer"] else [])) for d in docs]
    order = list(range(n))
    rng.shuffle(order)
    ids = [""] * n
    for rank, k in enumerate(order):
        ids[k] = f"{rng.getrandbits(40):010x}{rank:06d}"
    return ids, texts, kinds


def write_corpus(ids, texts, folder: str) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    os.makedirs(os.path.join(folder, "parquet"), exist_ok=True)
    os.makedirs(os.path.join(folder, "jsonl"), exist_ok=True)
    for s in range(SHARDS):
        sl = slice(s, None, SHARDS)
        pq.write_table(pa.table({"id": ids[sl], "text": texts[sl]}), os.path.join(folder, "parquet", f"part-{s:05d}.parquet"))
        with open(os.path.join(folder, "jsonl", f"part-{s:05d}.jsonl"), "w") as f:
            for i, t in zip(ids[sl], texts[sl]):
                f.write(json.dumps({"id": i, "text": t}) + "\n")


# -- exact Jaccard (the ground truth) ----------------------------------------------------------------
def exact_pairs(texts, ngram: int, threshold: float, low: float = 0.05):
    """{(i, j): J} for every pair with exact Jaccard >= low: all pairs at once as the sparse
    product of the document x shingle incidence matrix with itself."""
    import numpy as np
    import scipy.sparse as sp

    from phi4ray.data.minhash import shingles

    vocab: dict[bytes, int] = {}
    rows, cols = [], []
    for d, t in enumerate(texts):
        for s in shingles(t, ngram):
            rows.append(d)
            cols.append(vocab.setdefault(s, len(vocab)))
    a = sp.csr_matrix((np.ones(len(rows), np.int32), (rows, cols)), shape=(len(texts), len(vocab)))
    size = np.asarray(a.sum(axis=1)).ravel()
    inter = sp.triu(a @ a.T, k=1).tocoo()
    jac = inter.data / (size[inter.row] + size[inter.col] - inter.data)
    keep = jac >= low
    return {(int(i), int(j)): float(s) for i, j, s in zip(inter.row[keep], inter.col[keep], jac[keep])}


def _components(n: int, pairs) -> list[int]:
    parent = list(range(n))

    def find(x):
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for i, j in pairs:
        ri, rj = find(i), find(j)
        if ri != rj:
            parent[max(ri, rj)] = min(ri, rj)
    return [find(i) for i in range(n)]


def _same_cluster_pairs(labels: list) -> set[tuple[int, int]]:
    groups: dict = {}
    for i, c in enumerate(labels):
        groups.setdefault(c, []).append(i)
    out = set()
    for g in groups.values():
        for x in range(len(g)):
            for y in range(x + 1, len(g)):
                out.add((g[x], g[y]))
    return out


def quality(ids, removed: dict[str, str] | list[str], clusters: list[list[str]], truth_pairs, threshold) -> dict:
    """Pairwise precision/recall of a method's clusters against the exact clustering."""
    n = len(ids)
    index = {d: i for i, d in enumerate(ids)}
    true_labels = _components(n, [p for p, s in truth_pairs.items() if s >= threshold])
    truth = _same_cluster_pairs(true_labels)
    label = list(range(n))
    for c, members in enumerate(clusters):
        for d in members:
            label[index[d]] = n + c
    pred = _same_cluster_pairs(label)
    tp = len(pred & truth)
    removed_ids = set(removed)
    with_partner = 0
    cluster_of = {d: k for k, members in enumerate(clusters) for d in members}
    for d in removed_ids:
        i = index[d]
        mates = [index[m] for m in clusters[cluster_of[d]] if m != d] if d in cluster_of else []
        if any(truth_pairs.get((min(i, j), max(i, j)), 0.0) >= threshold for j in mates):
            with_partner += 1
    exact_removed = n - len(set(true_labels))
    return {
        "pair_precision": round(tp / len(pred), 4) if pred else 1.0,
        "pair_recall": round(tp / len(truth), 4) if truth else 1.0,
        "true_pairs": len(truth),
        "predicted_pairs": len(pred),
        "removed": len(removed_ids),
        "removed_exact": exact_removed,
        "removed_with_true_partner": round(with_partner / len(removed_ids), 4) if removed_ids else 1.0,
    }


# -- the methods (each in its own process) ---------------------------------------------------------------
def run_phi4ray(corpus: str, work: str, cpus: int, cfg_json: str) -> dict:
    os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
    import pyarrow as pa
    import pyarrow.compute as pc
    import ray

    from phi4ray.config import MinHashConfig
    from phi4ray.data.minhash import near_duplicate_ids

    cfg = MinHashConfig.model_validate_json(cfg_json)
    ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False, configure_logging=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    ray.data.range(8, override_num_blocks=cpus).map_batches(lambda b: b).materialize()  # a warm cluster, as in production
    with MemorySampler(worker_prefix="ray::") as mem:
        t0 = time.perf_counter()
        ds = ray.data.read_parquet(os.path.join(corpus, "parquet"))
        n = ds.count()
        stats: dict = {}
        dups = near_duplicate_ids(ds, cfg, num_docs=n, stats=stats)
        t1 = time.perf_counter()
        drop = pa.array(dups["id"].to_pylist(), pa.string())

        def keep(batch: pa.Table) -> pa.Table:
            return batch.filter(pc.invert(pc.is_in(batch["id"], drop)))

        out = os.path.join(work, "phi4ray-out")
        ray.data.read_parquet(os.path.join(corpus, "parquet")).map_batches(keep, batch_format="pyarrow").write_parquet(out)
        t2 = time.perf_counter()
    import pyarrow.parquet as pq

    kept = sum(pq.read_metadata(p).num_rows for p in glob.glob(os.path.join(out, "*.parquet")))
    ray.shutdown()
    clusters: dict[str, list[str]] = {}
    for i, s in zip(dups["id"].to_pylist(), dups["survivor"].to_pylist()):
        clusters.setdefault(s, [s]).append(i)
    return {
        "docs": n,
        "kept": kept,
        "seconds": round(t2 - t0, 3),
        "phases": {"dedup_ids": round(t1 - t0, 3), "filter_write": round(t2 - t1, 3), **{k: v for k, v in stats.items() if k.startswith("seconds_")}},
        "stats": {k: v for k, v in stats.items() if not k.startswith("seconds_")},
        "removed": dups["id"].to_pylist(),
        "clusters": list(clusters.values()),
        "memory": mem.result(),
    }


def run_datasketch(corpus: str, work: str, cfg_json: str) -> dict:
    """One process, one in-memory MinHashLSH: the same shingles, MinHash and (b, r) as phi4ray,
    candidates verified by estimated Jaccard as phi4ray does, union-find, smallest id kept."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq
    from datasketch import MinHashLSH

    from phi4ray.config import MinHashConfig
    from phi4ray.data.minhash import SENTINEL, lsh_params, minhash, shingles

    cfg = MinHashConfig.model_validate_json(cfg_json)
    b, r = lsh_params(cfg)
    with MemorySampler() as mem:
        t0 = time.perf_counter()
        table = pq.read_table(os.path.join(corpus, "parquet"))
        ids = table["id"].to_pylist()
        sigs = {i: minhash(shingles(t, cfg.ngram), cfg.num_perm, cfg.seed) for i, t in zip(ids, table["text"].to_pylist())}
        live = [i for i in ids if not (sigs[i].hashvalues == SENTINEL).all()]
        lsh = MinHashLSH(num_perm=cfg.num_perm, params=(b, r))
        with lsh.insertion_session() as session:
            for i in live:
                session.insert(i, sigs[i])
        parent: dict[str, str] = {}

        def find(x: str) -> str:
            while parent.get(x, x) != x:
                x = parent[x]
            return x

        for i in live:
            for j in lsh.query(sigs[i]):
                if j <= i or (cfg.verify and sigs[i].jaccard(sigs[j]) < cfg.threshold):
                    continue
                parent.setdefault(i, i)
                parent.setdefault(j, j)
                ri, rj = find(i), find(j)
                if ri != rj:
                    parent[max(ri, rj)] = min(ri, rj)
        removed = sorted(x for x in parent if find(x) != x)
        t1 = time.perf_counter()
        drop = pa.array(removed, pa.string())
        out = os.path.join(work, "datasketch-out")
        os.makedirs(out, exist_ok=True)
        kept = 0
        for k, path in enumerate(sorted(glob.glob(os.path.join(corpus, "parquet", "*.parquet")))):
            t = pq.read_table(path)
            t = t.filter(pc.invert(pc.is_in(t["id"], drop)))
            pq.write_table(t, os.path.join(out, f"part-{k:05d}.parquet"))
            kept += t.num_rows
        t2 = time.perf_counter()
    clusters: dict[str, list[str]] = {}
    for x in parent:
        clusters.setdefault(find(x), []).append(x)
    return {
        "docs": len(ids),
        "kept": kept,
        "seconds": round(t2 - t0, 3),
        "phases": {"dedup_ids": round(t1 - t0, 3), "filter_write": round(t2 - t1, 3)},
        "stats": {"bands": b, "rows": r},
        "removed": removed,
        "clusters": [c for c in clusters.values() if len(c) > 1],
        "memory": mem.result(),
    }


def run_datatrove(corpus: str, work: str, cpus: int, cfg_json: str) -> dict:
    """datatrove's four MinHash stages with LocalPipelineExecutor, timed one by one."""
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.dedup import MinhashDedupBuckets, MinhashDedupCluster, MinhashDedupFilter, MinhashDedupSignature
    from datatrove.pipeline.dedup.minhash import MinhashConfig
    from datatrove.pipeline.readers import JsonlReader
    from datatrove.pipeline.writers import JsonlWriter

    cfg = json.loads(cfg_json)
    b, r = cfg["_bands"], cfg["_rows"]
    mh = MinhashConfig(n_grams=cfg["ngram"], num_buckets=b, hashes_per_bucket=r, seed=cfg["seed"])
    base = os.path.join(work, "datatrove")
    src = os.path.join(corpus, "jsonl")
    stages = [
        ("signature", [JsonlReader(src), MinhashDedupSignature(output_folder=f"{base}/sigs", config=mh)], SHARDS),
        ("buckets", [MinhashDedupBuckets(input_folder=f"{base}/sigs", output_folder=f"{base}/buckets", config=mh)], b),
        ("cluster", [MinhashDedupCluster(input_folder=f"{base}/buckets", output_folder=f"{base}/remove_ids", config=mh, save_cluster_id=True)], 1),
        (
            "filter",
            [
                JsonlReader(src),
                MinhashDedupFilter(
                    input_folder=f"{base}/remove_ids",
                    exclusion_writer=JsonlWriter(f"{base}/removed", compression=None),
                    load_cluster_ids=True,
                ),
                JsonlWriter(f"{base}/output", compression=None),
            ],
            SHARDS,
        ),
    ]
    phases = {}
    with MemorySampler() as mem:
        t0 = time.perf_counter()
        for name, pipeline, tasks in stages:
            t = time.perf_counter()
            LocalPipelineExecutor(pipeline=pipeline, tasks=tasks, workers=min(cpus, tasks), logging_dir=f"{base}/logs/{name}").run()
            phases[name] = round(time.perf_counter() - t, 3)
        t1 = time.perf_counter()
    removed, kept, clusters = [], 0, {}
    for path in glob.glob(f"{base}/removed/*"):
        with open(path) as f:
            for line in f:
                d = json.loads(line)
                removed.append(d["id"])
                clusters.setdefault(d["metadata"]["minhash_cluster_id"], []).append(d["id"])
    for path in glob.glob(f"{base}/output/*"):
        with open(path) as f:
            for line in f:
                d = json.loads(line)
                kept += 1
                cid = d["metadata"].get("minhash_cluster_id", -1)
                if cid != -1:
                    clusters.setdefault(cid, []).append(d["id"])
    return {
        "docs": kept + len(removed),
        "kept": kept,
        "seconds": round(t1 - t0, 3),
        "phases": phases,
        "stats": {"bands": b, "rows": r},
        "removed": removed,
        "clusters": [c for c in clusters.values() if len(c) > 1],
        "memory": mem.result(),
    }


# -- orchestration ------------------------------------------------------------------------------------------
def _default_datatrove_python() -> str | None:
    if os.path.exists("/tmp/dtvenv/bin/python"):
        return "/tmp/dtvenv/bin/python"
    try:
        import datatrove  # noqa: F401

        return sys.executable
    except ImportError:
        return None


def _spawn(python: str, method: str, corpus: str, work: str, cpus: int, cfg_json: str, timeout: int) -> dict:
    """Run one method in a fresh interpreter; returns its result dict (or {'error': ...})."""
    result = os.path.join(work, "result.json")
    cmd = [python, os.path.abspath(__file__), "--worker", method, "--corpus", corpus, "--work", work, "--cpus", str(cpus), "--cfg", cfg_json, "--result", result]
    env = {
        **os.environ,
        "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", ""),
        # Ray starts its workers at niceness 15; on a shared machine that alone would slow them
        # against the other methods' processes (niceness 0). Every method runs at 0 here.
        "RAY_worker_niceness": "0",
    }
    try:
        p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, cwd=REPO)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout}s"}
    if p.returncode != 0 or not os.path.exists(result):
        return {"error": f"exit {p.returncode}: {(p.stderr or p.stdout)[-1500:]}"}
    with open(result) as f:
        return json.load(f)


def _fmt(x, nd=1):
    return "-" if x is None else f"{x:,.{nd}f}"


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--docs", type=int, default=2000, help="documents in the quality run (default 2000)")
    ap.add_argument("--scale", type=int, default=10, help="the memory run has docs x scale documents (default 10; 1 skips it)")
    ap.add_argument("--out", default=os.path.join(REPO, "benchmarks", "results", "minhash_dedup.json"))
    ap.add_argument("--cpus", type=int, default=2, help="CPUs for Ray and for datatrove's workers (default 2)")
    ap.add_argument("--threshold", type=float, default=None, help="Jaccard threshold (default: MinHashConfig's)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--datatrove-python", default=_default_datatrove_python())
    ap.add_argument("--timeout", type=int, default=900, help="seconds per method and size")
    ap.add_argument("--keep", action="store_true", help="keep the work folder")
    # internal: run one method in this process
    ap.add_argument("--worker", choices=["phi4ray", "datasketch", "datatrove"], help=argparse.SUPPRESS)
    ap.add_argument("--corpus", help=argparse.SUPPRESS)
    ap.add_argument("--work", help=argparse.SUPPRESS)
    ap.add_argument("--cfg", help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.worker:
        fn = {"phi4ray": lambda: run_phi4ray(args.corpus, args.work, args.cpus, args.cfg),
              "datasketch": lambda: run_datasketch(args.corpus, args.work, args.cfg),
              "datatrove": lambda: run_datatrove(args.corpus, args.work, args.cpus, args.cfg)}[args.worker]
        res = fn()
        with open(args.result, "w") as f:
            json.dump(res, f)
        return res

    sys.path.insert(0, REPO)
    from phi4ray.config import MinHashConfig
    from phi4ray.data.minhash import collision_probability, lsh_params

    cfg = MinHashConfig() if args.threshold is None else MinHashConfig(threshold=args.threshold)
    b, r = lsh_params(cfg)
    cfg_json = cfg.model_dump_json()
    dt_cfg = json.dumps({**json.loads(cfg_json), "_bands": b, "_rows": r})
    work = tempfile.mkdtemp(prefix="minhash-bench-")
    sizes = [args.docs] + ([args.docs * args.scale] if args.scale > 1 else [])
    runs = {  # method -> (worker, config)
        "phi4ray": ("phi4ray", cfg_json),
        "phi4ray-dcc": ("phi4ray", cfg.model_copy(update={"shuffle_min_rows": 0}).model_dump_json()),
        "datatrove": ("datatrove", dt_cfg),
        "datasketch": ("datasketch", cfg_json),
    }
    methods = list(runs)
    report: dict = {
        "config": {**json.loads(cfg_json), "bands": b, "rows": r},
        "cpus": args.cpus,
        "load_average_start": os.getloadavg(),
        "datatrove_python": args.datatrove_python,
        "sizes": {},
    }
    print(f"MinHash near-dedup benchmark: threshold {cfg.threshold}, {cfg.num_perm} perms, b={b} r={r}, "
          f"{cfg.ngram}-gram words, verify={cfg.verify}; P(candidate | J) = "
          + ", ".join(f"{j}: {collision_probability(j, b, r):.3f}" for j in (0.6, 0.7, 0.8, 0.9)), flush=True)
    t_pages = time.perf_counter()
    pages = _pages()
    print(f"corpus source: {sum(map(len, pages))} paragraphs from {len(pages)} pages ({time.perf_counter() - t_pages:.1f}s)", flush=True)
    try:
        for n in sizes:
            ids, texts, kinds = make_corpus(n, args.seed, pages)
            corpus = os.path.join(work, f"corpus-{n}")
            write_corpus(ids, texts, corpus)
            entry: dict = {"methods": {}}
            if n == args.docs:
                t = time.perf_counter()
                truth = exact_pairs(texts, cfg.ngram, cfg.threshold)
                idx = {d: i for i, d in enumerate(ids)}
                planted = {}
                for i, k in enumerate(kinds):
                    if "of" in k:
                        j = k["of"]
                        planted.setdefault(k["kind"], []).append(truth.get((min(i, j), max(i, j)), 0.0))
                entry["truth"] = {
                    "seconds": round(time.perf_counter() - t, 2),
                    "pairs_at_threshold": sum(1 for s in truth.values() if s >= cfg.threshold),
                    "planted_jaccard": {k: {"n": len(v), "min": round(min(v), 3), "median": round(sorted(v)[len(v) // 2], 3), "max": round(max(v), 3)} for k, v in sorted(planted.items())},
                }
            for m in methods:
                if m == "datatrove" and not args.datatrove_python:
                    entry["methods"][m] = {"error": "datatrove not installed (see the top of this file)"}
                    continue
                worker, mcfg = runs[m]
                python = args.datatrove_python if m == "datatrove" else sys.executable
                mwork = os.path.join(work, f"{m}-{n}")
                os.makedirs(mwork, exist_ok=True)
                res = _spawn(python, worker, corpus, mwork, args.cpus, mcfg, args.timeout)
                if "error" not in res:
                    res["docs_per_s"] = round(n / res["seconds"], 1)
                    if n == args.docs:
                        res["quality"] = quality(ids, res["removed"], res["clusters"], truth, cfg.threshold)
                    res.pop("clusters", None)
                    res["removed_ids"] = sorted(res["removed"])
                    res["removed"] = len(res["removed"])
                entry["methods"][m] = res
                print(f"  {n} docs, {m}: " + (res.get("error") or f"{res['seconds']}s, removed {res['removed']}, memory {res['memory']}"), flush=True)
            base = entry["methods"]
            ok = [m for m in ("phi4ray", "phi4ray-dcc", "datasketch") if "removed_ids" in base.get(m, {})]
            entry["same_removed_ids"] = {m: base[m]["removed_ids"] == base[ok[0]]["removed_ids"] for m in ok}
            for m in ok:
                base[m].pop("removed_ids")
            for m, res in base.items():
                if "error" in res:
                    continue
                for other in methods:
                    if other != m and "error" not in base.get(other, {"error": 1}):
                        res[f"speed_vs_{other}"] = round(base[other]["seconds"] / res["seconds"], 2)
            report["sizes"][str(n)] = entry
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    report["load_average_end"] = os.getloadavg()
    _print(report, args, sizes, methods)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(report, f, indent=2)
    print(f"\nwrote {args.out}")
    return report


def _print(report, args, sizes, methods) -> None:
    small = report["sizes"][str(sizes[0])]
    if "truth" in small:
        t = small["truth"]
        print(f"\nGround truth ({sizes[0]} docs): exact Jaccard of every pair ({t['seconds']}s), {t['pairs_at_threshold']} pairs >= threshold.")
        print("planted: " + "; ".join(f"{k} n={v['n']} J {v['min']}-{v['max']} (median {v['median']})" for k, v in t["planted_jaccard"].items()))
    print(f"\nQuality at {sizes[0]} docs (pairs in one cluster vs exact all-pairs clustering at threshold {report['config']['threshold']}):")
    print(f"| method | pair precision | pair recall | removed | removed by exact | removed with a J>=t partner |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for m in methods:
        res = small["methods"].get(m, {})
        q = res.get("quality")
        if q:
            print(f"| {m} | {q['pair_precision']:.3f} | {q['pair_recall']:.3f} | {q['removed']} | {q['removed_exact']} | {q['removed_with_true_partner']:.3f} |")
        else:
            print(f"| {m} | {res.get('error', '-')[:60]} | | | | |")
    print(f"\nThroughput and memory ({args.cpus} CPUs; load average at start {report['load_average_start'][0]:.1f}, end {report['load_average_end'][0]:.1f}):")
    print("| docs | method | seconds | docs/s | x datatrove | x datasketch | CPU s | docs/CPU s | driver peak MB | worker peak MB (private) | workers total MB |")
    print("| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for n in sizes:
        for m in methods:
            res = report["sizes"][str(n)]["methods"].get(m, {})
            if "error" in res:
                print(f"| {n} | {m} | {res['error'][:60]} | | | | | | | | |")
                continue
            mem = res["memory"]
            print(
                f"| {n} | {m} | {res['seconds']:.1f} | {res['docs_per_s']:.0f} | {_fmt(res.get('speed_vs_datatrove'), 2) if m != 'datatrove' else '1.00'} "
                f"| {_fmt(res.get('speed_vs_datasketch'), 2) if m != 'datasketch' else '1.00'} | {mem['cpu_s']:.1f} | {n / max(mem['cpu_s'], 1e-9):.0f} "
                f"| {mem['driver_peak_mb']:.0f} | {_fmt(mem['worker_peak_mb'] or None, 0)} ({_fmt(mem['worker_private_peak_mb'] or None, 0)}) "
                f"| {_fmt(mem['workers_total_peak_mb'] or None, 0)} |"
            )
    if len(sizes) > 1:
        print(f"\nGrowth from {sizes[0]} to {sizes[1]} docs (x{sizes[1] // sizes[0]}): peak RSS ratio")
        for m in methods:
            a = report["sizes"][str(sizes[0])]["methods"].get(m, {})
            b_ = report["sizes"][str(sizes[1])]["methods"].get(m, {})
            if "memory" in a and "memory" in b_:
                d = b_["memory"]["driver_peak_mb"] / a["memory"]["driver_peak_mb"]
                w = (b_["memory"]["worker_peak_mb"] / a["memory"]["worker_peak_mb"]) if a["memory"]["worker_peak_mb"] else None
                wp = (b_["memory"]["worker_private_peak_mb"] / a["memory"]["worker_private_peak_mb"]) if a["memory"]["worker_private_peak_mb"] else None
                print(f"  {m}: driver x{d:.2f}" + (f", largest worker x{w:.2f} (private x{wp:.2f})" if w else ""))
    for n in sizes:
        same = report["sizes"][str(n)].get("same_removed_ids", {})
        print(f"  {n} docs: same removed ids as {next(iter(same), '-')}: {same}")
    for n in sizes:
        for m in methods:
            res = report["sizes"][str(n)]["methods"].get(m, {})
            if "phases" in res:
                print(f"  phases {n} {m}: {res['phases']}  {res.get('stats', {})}")


if __name__ == "__main__":
    main()
