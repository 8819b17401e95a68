"""`run_curate` end to end on the 200 real pages of ../shared/data/html plus a planted corpus:
near duplicates (edited words, a swapped header, reordered paragraphs), a page that quotes a
benchmark question, and quality scoring with seed selection."""

import json
import re
from pathlib import Path

import pyarrow.compute as pc
import pytest

from phi4ray.config import CurateConfig
from phi4ray.data.curate import run_curate
from phi4ray.data.readers import expand_inputs
from phi4ray.run import RunDir

SHARED_HTML = Path(__file__).resolve().parents[2] / "shared" / "data" / "html"
NEAR_COPIES = {  # page -> how its planted copy differs
    "python-docs/library__unittest.html": "words",
    "python-docs/tutorial__datastructures.html": "header",
    "sympy-docs/modules__concrete.html": "reorder",
}
QUESTION = "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. How many clips did Natalia sell altogether in April and May?"


def _near_copy(html: str, how: str) -> str:
    if how == "words":  # a handful of edited words
        for a, b in (("test", "check"), ("method", "function"), ("class", "type")):
            html = html.replace(f" {a} ", f" {b} ", 2)
        return html
    if how == "header":  # a mirror's banner line under the title, in the content itself
        return html.replace("</h1>", "</h1><p>This page is mirrored for offline reading; see the original site for updates.</p>", 1)
    paras = re.findall(r"<p>.*?</p>", html, flags=re.S)  # two paragraphs swap places
    a, b = paras[1], paras[2]
    return html.replace(a, "\0").replace(b, a).replace("\0", b)


@pytest.mark.skipif(not SHARED_HTML.is_dir(), reason=f"{SHARED_HTML} is missing")
def test_curate_shared_pages_with_planted_duplicates_and_benchmark_text(ray_local, tmp_path):
    planted = tmp_path / "planted"
    planted.mkdir()
    for i, (name, how) in enumerate(NEAR_COPIES.items()):
        (planted / f"copy{i}.html").write_text(_near_copy((SHARED_HTML / name).read_text(encoding="utf-8"), how))
    body = (
        "<p>These practice problems come from a weekend study sheet for the fourth grade. Each one is "
        "followed by a worked answer, so that students can check their reasoning step by step before "
        "the Monday quiz, and parents can see which kinds of questions the class is practising.</p>"
    )
    (planted / "leak.html").write_text(
        f"<html><body><h1>Word problems</h1>{body}<p>Problem 3. {QUESTION}</p>"
        "<p>Answer: she sold 48 / 2 = 24 clips in May, so 72 in all.</p></body></html>"
    )
    evals = tmp_path / "gsm8k.jsonl"
    evals.write_text("\n".join(json.dumps({"id": f"g{i}", "question": q, "answer": a}) for i, (q, a) in enumerate([
        (QUESTION, "72"),
        ("Weng earns 12 an hour for babysitting. Yesterday she did 50 minutes of babysitting. How much did she earn?", "10"),
    ])) + "\n")

    cfg = CurateConfig(
        inputs=[str(SHARED_HTML / "python-docs"), str(SHARED_HTML / "sympy-docs"), str(planted)],
        files_per_shard=40,
        decontam={"eval_sets": {"gsm8k": str(evals)}},
        quality={"enabled": True, "engine": {"preset": "micro"}, "max_annotate_docs": 4, "max_annotate_passages": 4},
    )
    run_dir = RunDir(tmp_path / "run")
    counts = run_curate(cfg, run_dir)
    assert counts["read"] == counts["kept"] + counts["rejected"] == 204

    ids = {f.rel: None for f in expand_inputs(cfg.inputs)}
    assert len(ids) == 204
    curated = run_dir.read_table("curated")
    by_url = {u: t for u, t in zip(curated.column("url").to_pylist(), curated.column("text").to_pylist())}
    rejects = run_dir.read_table("rejects/curate").to_pylist()
    reasons = {}
    for r in rejects:  # a reject's `record` is JSON cut at 20000 chars: look at its url only
        url = re.search(r'"url": "([^"]*)"', r["record"])
        reasons.setdefault(r["reason"].split(":")[0], []).append(url.group(1) if url else None)

    # every planted near copy, or its original, is gone: exactly one of each pair survives
    near = reasons.get("near_duplicate", [])
    assert len(near) == 3 and not reasons.get("exact_duplicate"), reasons
    texts = curated.column("text").to_pylist()
    for i, name in enumerate(NEAR_COPIES):
        kept = [t for t in texts if t.startswith(_first_line(by_url, name, i, run_dir))]
        assert len(kept) == 1, name

    # the page that quotes a benchmark question is removed, and the report names the benchmark
    leaked = [r for r in rejects if r["reason"].startswith("contaminated")]
    assert len(leaked) == 1 and "gsm8k" in leaked[0]["reason"] and reasons["contaminated"] == ["planted/leak.html"]
    report = counts["decontamination"]
    assert report["documents"] == 1 and report["benchmarks"]["gsm8k"]["documents"] == 1

    # code, math and tables intact; site chrome gone
    all_text = "\n".join(texts)
    assert "```c\n#define PY_SSIZE_T_CLEAN\n#include <Python.h>\n" in all_text
    assert "\\[\\sum_{m \\leq i < n} f(i) = f(m) + f(m+1) + \\ldots + f(n-2) + f(n-1)\\]" in all_text
    assert "| `assertLogs(logger, level)` | The `with` block logs on logger with minimum level | 3.4 |" in all_text
    for chrome in ("Show Source", "Previous topic", "Quick search"):
        assert chrome not in all_text, chrome

    # quality: every kept page carries its score, over the threshold; seeds come from kept pages
    q = curated.column("quality")
    assert q.null_count == 0 and pc.min(q).as_py() >= cfg.quality.page_threshold
    assert counts["quality"]["targets"]["page"]["source"] in ("annotations", "labeled_set")
    seeds = run_dir.read_table("seeds")
    assert seeds.num_rows == counts["seeds"]["seeds"] > 0
    assert set(seeds.column("doc_id").to_pylist()) <= set(curated.column("id").to_pylist())
    assert pc.min(seeds.column("quality")).as_py() >= cfg.quality.passage_threshold


def _first_line(by_url: dict, name: str, i: int, run_dir: RunDir) -> str:
    """The title line of a page or its planted copy, whichever was kept."""
    for url, text in by_url.items():
        if url.endswith(name.split("/")[-1]) or url.endswith(f"copy{i}.html"):
            return text.split("\n", 1)[0]
    raise AssertionError(f"neither {name} nor copy{i}.html is in curated/")
