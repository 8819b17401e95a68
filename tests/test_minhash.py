"""Near-duplicate removal (phi4ray/data/minhash.py): pure functions, then the Ray Data stage on
a corpus of real documentation paragraphs with planted near duplicates."""

import json
import os
import random
import subprocess
import sys
from collections import deque

import numpy as np
import pyarrow as pa
import pytest

from phi4ray.config import MinHashConfig
from phi4ray.data import minhash as M

from realpages import shared_pages
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# -- shingles, signatures, parameters -----------------------------------------------------------
def test_shingles_are_word_ngrams_of_normalised_text():
    assert M.shingles("Hello, WORLD!\n\thello   world", 2) == {b"hello world", b"world hello"}
    assert M.shingles("ﬁne Tuning", 5) == {b"fine tuning"}  # NFKC; shorter than n: one shingle
    assert M.shingles("  ...  ", 5) == set()
    assert len(M.shingles(" ".join(f"w{i}" for i in range(20)), 5)) == 16


def test_signatures_are_deterministic_across_processes_and_depend_on_seed():
    texts = ["the cat sat on the mat and looked at the dog " * 3, "a completely different text about numbers"]
    here = M.signature_matrix(texts, num_perm=64, seed=7, ngram=3)
    assert here.shape == (2, 64) and here.dtype == np.uint32
    code = (
        "import json,sys; from phi4ray.data import minhash as M;"
        f"s=M.signature_matrix({texts!r}, num_perm=64, seed=7, ngram=3);"
        "p=M.partition_of(__import__('pyarrow').array(['a','bb','ccc']), 97);"
        "print(json.dumps([s.tolist(), p.tolist()]))"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345", "PYTHONPATH": REPO}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=REPO, check=True)
    sig, parts = json.loads(out.stdout)
    assert np.array_equal(np.array(sig, dtype=np.uint32), here)
    assert parts == M.partition_of(pa.array(["a", "bb", "ccc"]), 97).tolist()
    other_seed = M.signature_matrix(texts, num_perm=64, seed=8, ngram=3)
    assert (other_seed != here).mean() > 0.9
    assert np.array_equal(M.signature_matrix(texts, num_perm=64, seed=7, ngram=3), here)


def test_signature_is_datasketch_minhash_and_estimates_jaccard():
    from datasketch import MinHash

    words = [f"w{i}" for i in range(400)]
    a, b = " ".join(words[:300]), " ".join(words[100:])  # exact 5-gram Jaccard 196/396
    sa, sb = M.shingles(a), M.shingles(b)
    ref = MinHash(num_perm=256, seed=3)
    ref.update_batch(list(sa))
    sig = M.signature_matrix([a, b], num_perm=256, seed=3)
    assert np.array_equal(sig[0], ref.hashvalues)
    exact = M.jaccard(sa, sb)
    assert exact == pytest.approx(196 / 396)
    assert abs(M.estimate_jaccard(sig[0], sig[1]) - exact) < 0.1
    assert (M.signature_matrix([""], 16) == M.SENTINEL).all()  # no words: an empty sketch


def test_lsh_params_match_datasketch_and_validate():
    from datasketch import MinHashLSH

    for t, n, w in [(0.8, 128, (0.5, 0.5)), (0.8, 128, (0.2, 0.8)), (0.7, 112, (0.5, 0.5)), (0.9, 64, (0.3, 0.7))]:
        lsh = MinHashLSH(threshold=t, num_perm=n, weights=w)
        assert M.lsh_params(MinHashConfig(threshold=t, num_perm=n, weights=w)) == (lsh.b, lsh.r)
    assert M.lsh_params(MinHashConfig()) == (12, 10)  # the documented default
    assert M.lsh_params(MinHashConfig(num_perm=112, bands=14, rows=8)) == (14, 8)
    with pytest.raises(ValueError, match="both bands and rows"):
        MinHashConfig(bands=4)
    with pytest.raises(ValueError, match="num_perm"):
        MinHashConfig(num_perm=64, bands=10, rows=8)
    assert M.collision_probability(0.8, 14, 8) == pytest.approx(0.924, abs=1e-3)  # datatrove's figure


def test_band_keys_equal_exactly_when_bands_equal():
    rng = np.random.default_rng(0)
    sig = rng.integers(0, 2**32 - 1, size=(3, 12), dtype=np.uint32)
    sig[1, :4] = sig[0, :4]  # docs 0 and 1 share band 0 only
    sig[2, 4:8] = sig[2, :4]  # doc 2: band 1 holds the values of its band 0
    keys = M.band_keys(sig, bands=3, rows=4)
    assert keys.shape == (3, 3) and keys.dtype == np.int64
    assert keys[0, 0] == keys[1, 0] and keys[0, 1] != keys[1, 1] and keys[0, 2] != keys[1, 2]
    assert keys[2, 0] != keys[2, 1]  # the band index is part of the key
    assert np.array_equal(M.band_keys(sig.copy(), 3, 4), keys)
    with pytest.raises(ValueError):
        M.band_keys(sig, bands=4, rows=4)


def test_bucket_edges_star_and_verified_pairs():
    ids = [f"id{i:02d}" for i in range(20)]
    big = pa.table({"band_key": [5] * 20 + [9], "id": ids[::-1] + ["lonely"]})
    e = M.bucket_edges(big)
    assert e.num_rows == 19  # a star, not 190 pairs
    assert set(e["v"].to_pylist()) == {"id00"} and set(e["u"].to_pylist()) == set(ids[1:])

    sig = np.zeros((4, 8), dtype=np.uint32)
    sig[0] = np.arange(8)
    sig[1] = np.arange(8)
    sig[1, 0] = 99  # est. J(0,1) = 7/8
    sig[2] = np.arange(8) + 100  # shares nothing with 0 or 1
    sig[3] = sig[2]
    t = pa.table({"band_key": [1, 1, 1, 1], "id": ["a", "b", "c", "d"], "sig": M._sig_to_arrow(sig)})
    got = _components(M.bucket_edges(t, threshold=0.8, pairwise_max_bucket=8))
    assert got == [("b", "a"), ("d", "c")]  # pairwise: c-d survive although neither is the smallest id
    got = _components(M.bucket_edges(t, threshold=0.8, pairwise_max_bucket=2))
    assert got == [("b", "a")]  # a star around a, verified


def _components(edges):
    return sorted(map(tuple, [tuple(r.values()) for r in edges.to_pylist()]))


def test_connected_components_pure_chains():
    edges = pa.table({"u": ["b", "c", "e", "c"], "v": ["a", "b", "d", "b"]})
    want = [("b", "a"), ("c", "a"), ("e", "d")]
    assert _components(M.components_table(edges)) == want
    roots, rounds = M.components_by_stars(edges)
    assert _components(roots) == want and rounds >= 1
    dups = M.near_duplicate_ids_table(edges)
    assert dups.schema == M.NEAR_DUP_SCHEMA
    assert dups.to_pylist() == [
        {"id": "b", "survivor": "a", "cluster_size": 3},
        {"id": "c", "survivor": "a", "cluster_size": 3},
        {"id": "e", "survivor": "d", "cluster_size": 2},
    ]


def _random_graph(seed, n_nodes=120, n_edges=150):
    rng = random.Random(seed)
    nodes = [f"{rng.randrange(10**8):08d}" for _ in range(n_nodes)]
    path = nodes[:40]  # a long path in scrambled id order: several star rounds
    edges = list(zip(path[1:], path[:-1]))
    edges += [(rng.choice(nodes), rng.choice(nodes)) for _ in range(n_edges)]
    edges = [(max(a, b), min(a, b)) for a, b in edges if a != b]
    return pa.table({"u": [a for a, _ in edges], "v": [b for _, b in edges]})


def test_star_iteration_equals_union_find_on_random_graphs():
    for seed in range(30):
        g = _random_graph(seed, n_nodes=random.Random(seed).randint(5, 80), n_edges=random.Random(seed).randint(1, 90))
        roots, _ = M.components_by_stars(g)
        assert roots.equals(M.components_table(g)), seed


# -- on a local Ray ------------------------------------------------------------------------------
def test_connected_components_distributed(ray_local):
    import ray.data

    edges = pa.table({"u": ["b", "c", "e", "c"], "v": ["a", "b", "d", "b"]})
    roots = M.connected_components(ray.data.from_arrow(edges), partitions=3)
    assert _components(pa.concat_tables(M._collect(roots))) == [("b", "a"), ("c", "a"), ("e", "d")]

    g = _random_graph(1)
    stats = {}
    roots = pa.concat_tables(M._collect(M.connected_components(ray.data.from_arrow(g), partitions=4, stats=stats)))
    assert roots.sort_by("id").equals(M.components_table(g))
    assert stats["cc_rounds"] >= 2  # the iteration ran, and stopped


def _paragraphs() -> list[list[str]]:
    from phi4ray.data.extract import extract_text

    pages = []
    for path in shared_pages("python-docs/*.html", at_least=60)[:60]:
        with open(path, encoding="utf-8", errors="replace") as f:
            text = extract_text(f.read())
        paras = [p for p in text.split("\n\n") if len(p.split()) >= 8]
        if len(paras) >= 20:
            pages.append(paras)
    return pages


def _planted_corpus():
    """300 documents of real paragraphs: 200 originals; 70 near duplicates (a few words edited,
    a paragraph moved, header/footer boilerplate changed, and second-generation copies); 30
    rewrites that keep about half of an original (low Jaccard)."""
    rng = random.Random(0)
    pages = _paragraphs()
    docs, src = [], []
    for _ in range(200):
        page = rng.choice(pages)
        docs.append([page[j] for j in sorted(rng.sample(range(len(page)), rng.randint(10, 14)))])
        src.append(None)

    def edit(paras):
        paras = [p.split(" ") for p in paras]
        for _ in range(2):
            p = rng.randrange(len(paras))
            paras[p][rng.randrange(len(paras[p]))] = rng.choice(["alpha", "omega", "gizmo", "zenith"])
        return [" ".join(p) for p in paras]

    def move(paras):
        paras = list(paras)
        i = rng.randrange(len(paras))
        p = paras.pop(i)
        paras.insert(rng.choice([j for j in range(len(paras) + 1) if j != i]), p)
        return paras

    def boilerplate(paras):
        return ["Skip to main content | Home | Docs | Search"] + paras + ["Copyright 2001-2024 Python Software Foundation. All rights reserved."]

    for i in range(60):
        docs.append([edit, move, boilerplate][i % 3](docs[i]))
        src.append(i)
    for i in range(10):
        docs.append(edit(docs[200 + i]))
        src.append(200 + i)
    for i in range(60, 90):
        page = next(p for p in pages if docs[i][0] in p)
        keep = docs[i][: len(docs[i]) // 2]
        docs.append(keep + [q for q in rng.sample(page, 8) if q not in docs[i]])
        src.append(i)
    order = list(range(len(docs)))
    rng.shuffle(order)  # ids in no relation to generation order
    ids = {k: f"doc-{rng.randrange(16**8):08x}-{k:03d}" for k in order}
    return [ids[k] for k in range(len(docs))], ["\n\n".join(d) for d in docs], src


def _exact_pairs(texts, ngram):
    sh = [M.shingles(t, ngram) for t in texts]
    out = {}
    for i in range(len(sh)):
        for j in range(i + 1, len(sh)):
            if sh[i] & sh[j]:
                out[(i, j)] = M.jaccard(sh[i], sh[j])
    return out


def _reach(n, pairs, cut):
    """Connected components of the graph of pairs with exact Jaccard >= cut (BFS)."""
    adj = {i: [] for i in range(n)}
    for (i, j), s in pairs.items():
        if s >= cut:
            adj[i].append(j)
            adj[j].append(i)
    comp = [-1] * n
    for s in range(n):
        if comp[s] < 0:
            comp[s] = s
            q = deque([s])
            while q:
                x = q.popleft()
                for y in adj[x]:
                    if comp[y] < 0:
                        comp[y] = s
                        q.append(y)
    return comp


@pytest.fixture(scope="module")
def corpus():
    ids, texts, src = _planted_corpus()
    return ids, texts, src, _exact_pairs(texts, 5)


def test_planted_corpus_spans_the_threshold(corpus):
    ids, texts, src, pairs = corpus
    assert len(set(ids)) == len(ids) == 300
    planted = [pairs.get((min(i, s), max(i, s)), 0.0) for i, s in enumerate(src) if s is not None]
    near, rewrites = planted[:70], planted[70:]
    assert min(near) >= 0.8 and sum(s >= 0.9 for s in near) >= 50, sorted(near)[:5]  # near duplicates all
    assert max(near) < 1.0  # and none is an exact copy
    assert max(rewrites) < 0.7 and min(rewrites) > 0.1  # the rewrites share text but are not
    assert sum(1 for s in pairs.values() if 0.1 < s < 0.7) >= 30


def test_near_duplicates_found_on_ray(ray_local, corpus):
    import ray.data

    ids, texts, src, pairs = corpus
    cfg = MinHashConfig(shuffle_min_rows=0, rows_per_partition=40)  # the distributed path, many groups
    ds = ray.data.from_arrow(pa.table({"id": ids, "text": texts}), override_num_blocks=6)
    stats = {}
    dups = M.near_duplicate_ids(ds, cfg, stats=stats)
    assert stats["path"] == "distributed" and stats["edges"] > 0
    assert stats["band_partitions"] > 20 and stats["partitions"] > 2
    assert dups.schema == M.NEAR_DUP_SCHEMA
    survivor_of = dict(zip(dups["id"].to_pylist(), dups["survivor"].to_pylist()))
    index = {d: i for i, d in enumerate(ids)}

    def cluster(i):
        return survivor_of.get(ids[i], ids[i])

    margin = 0.1
    hi = [(i, j) for (i, j), s in pairs.items() if s >= cfg.threshold + margin]
    assert len(hi) >= 70
    missed = [(ids[i], ids[j], pairs[(i, j)]) for i, j in hi if cluster(i) != cluster(j)]
    assert not missed  # recall on clear near duplicates

    # nothing is removed unless a chain of real near duplicates (>= threshold - margin) links it
    comp = _reach(len(ids), pairs, cfg.threshold - margin)
    for d, s in survivor_of.items():
        assert comp[index[d]] == comp[index[s]], (d, s)
    for i, s in enumerate(src):  # the low-Jaccard rewrites stay
        if s is not None and pairs.get((min(i, s), max(i, s)), 0) < cfg.threshold - margin:
            assert cluster(i) != cluster(s)

    # the survivor is the smallest id of its cluster, and cluster_size counts the members
    members = {}
    for d, s in survivor_of.items():
        members.setdefault(s, [s]).append(d)
    sizes = dict(zip(dups["id"].to_pylist(), dups["cluster_size"].to_pylist()))
    for s, ms in members.items():
        assert s == min(ms) and s not in survivor_of
        assert all(sizes[d] == len(ms) for d in ms if d != s)
    assert dups["id"].to_pylist() == sorted(survivor_of)
    assert 70 <= len(survivor_of) <= 90

    # the driver fast path (union-find over the edges) gives the same table
    fast = {}
    assert M.near_duplicate_ids(ds, cfg.model_copy(update={"shuffle_min_rows": 10**9}), stats=fast).equals(dups)
    assert fast["path"] == "driver" and fast["edges"] == stats["edges"]


def test_band_rows_one_per_document_and_band(ray_local, corpus):
    import ray.data

    ids, texts, _, _ = corpus
    cfg = MinHashConfig(verify=False)
    b, _ = M.lsh_params(cfg)
    ds = ray.data.from_arrow(pa.table({"id": ids[:50] + ["empty"], "text": texts[:50] + ["  "]}))
    rows = pa.concat_tables(M._collect(M.band_rows(M.signatures(ds, cfg), cfg, partitions=4)))
    assert rows.num_rows == 50 * b  # the empty document joins no bucket
    assert set(rows.column_names) == {"part", "band_key", "id"}  # no signature without verify
    assert set(rows["part"].to_pylist()) <= {0, 1, 2, 3}
