"""Curation: language ID, exact dedup, readers, and the stage on a local Ray.

The per-record functions are tested without Ray on the real sample pages shipped in
phi4ray/data/samples; the stage runs on the session's local Ray (`ray_local`), and its
exactly-once guarantee is tested by SIGKILLing a run in a subprocess and resuming it.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from phi4ray.config import CurateConfig, LangIdConfig
from phi4ray.data import dedup, langid, readers
from phi4ray.data.curate import CURATED_SCHEMA, run_curate, samples_dir
from phi4ray.run import RunDir, config_hash
from phi4ray.stage import REJECT_SCHEMA

SAMPLES = Path(samples_dir())


# -- language ID -------------------------------------------------------------------------------
SENTENCES = {
    "en": "The quick brown fox jumps over the lazy dog while the farmer watches from the porch.",
    "de": "Der schnelle braune Fuchs springt über den faulen Hund, während der Bauer zusieht.",
    "fr": "Le renard brun rapide saute par-dessus le chien paresseux pendant que le fermier regarde.",
    "ja": "素早い茶色の狐が怠け者の犬を飛び越え、農夫は玄関からそれを見ている。",
    "ru": "Быстрая коричневая лиса перепрыгивает через ленивую собаку, а фермер смотрит с крыльца.",
}


def test_identify_languages():
    preds = langid.identify(list(SENTENCES.values()) + ["", "line one\nline two in English"])
    assert [p[0] for p in preds[:5]] == list(SENTENCES)
    assert all(0.5 < p[1] <= 1.0 for p in preds[:5])
    assert preds[5] == ("und", 0.0)
    assert preds[6][0] == "en"  # newlines are fine (replaced by spaces)


def test_langid_batch_thresholds_keep_and_groups():
    recs = [{"id": k, "text": v} for k, v in SENTENCES.items()]
    kept, rejected = langid.langid_batch(recs, LangIdConfig())
    assert [r["lang"] for r in kept] == list(SENTENCES) and not rejected

    cfg = LangIdConfig(thresholds={"en": 0.999999}, keep=["en", "romance"], groups={"romance": ["fr", "es"]})
    kept, rejected = langid.langid_batch(recs, cfg)
    assert [r["id"] for r in kept] == ["fr"]
    reasons = {r["id"]: rej.reason for r, rej in rejected}
    assert reasons == {"en": "low_lang_score", "de": "lang_not_kept", "ja": "lang_not_kept", "ru": "lang_not_kept"}
    assert all("lang" in r and "lang_score" in r for r, _ in rejected)
    assert langid.lang_group("fr", cfg) == "romance" and langid.lang_group("de", cfg) == "de"

    low = LangIdConfig(default_threshold=0.9)
    _, rejected = langid.langid_batch([{"id": "x", "text": "ok ok"}], low)
    assert rejected[0][1].reason == "low_lang_score"


def test_langid_ignores_code_and_math():
    text = "This page explains how to sort a list in place.\n\n```python\nxs.sort(key=len)\nys = sorted(xs)\n```\n\\(O(n \\log n)\\)"
    assert "xs.sort" not in langid.prose(text) and "O(n" not in langid.prose(text)
    assert langid.prose("```\ncode only\n```") == "```\ncode only\n```"


# -- dedup -------------------------------------------------------------------------------------
def test_content_hash_normalisation():
    h = dedup.content_hash("Hello   World\n\tagain ")
    assert h == dedup.content_hash("hello world again")
    assert dedup.content_hash("ﬁle ＡＢＣ") == dedup.content_hash("file abc")  # NFKC
    assert h != dedup.content_hash("hello world, again")
    assert len(h) == 32


def test_survivor_is_smallest_id():
    rows = [("c", "h1"), ("a", "h1"), ("b", "h2"), ("d", "h1"), ("f", "h3"), ("e", "h3")]
    assert dedup.find_duplicates(rows) == {"c": "a", "d": "a", "f": "e"}
    table = pa.table({"id": [r[0] for r in rows], "hash": [r[1] for r in rows]})
    assert dedup.duplicate_ids_table(table).to_pylist() == [
        {"id": "c", "survivor": "a", "hash": "h1"},
        {"id": "d", "survivor": "a", "hash": "h1"},
        {"id": "f", "survivor": "e", "hash": "h3"},
    ]
    # order-independent
    assert dedup.duplicate_ids_table(table.take([5, 4, 3, 2, 1, 0])).equals(dedup.duplicate_ids_table(table))


# -- readers -----------------------------------------------------------------------------------
def test_readers_bad_files_become_rejects(tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    rng = random.Random(0)
    good = [
        {"text": " ".join(str(rng.random()) for _ in range(20)), "url": f"https://x/{i}", "id": i, "lang_hint": "en"}
        for i in range(3000)
    ]
    blob = gzip.compress("".join(json.dumps(r) + "\n" for r in good).encode())
    (d / "corrupt.jsonl.gz").write_bytes(blob[: len(blob) // 2] + b"\x00garbage" * 20)
    (d / "garbage.html").write_bytes(random.Random(0).randbytes(4096))
    (d / "garbage.jsonl").write_bytes(random.Random(1).randbytes(3000).replace(b"\n", b"") + b"\n" + b"\xff\xfe{bad\n")
    (d / "mixed.jsonl").write_bytes(
        b'{"text": "fine"}\n\n[1, 2]\n{"html": "<p>x</p>"}\n{"title": "no text"}\n{"text": 5}\nnot json\n'
    )
    (d / "broken.parquet").write_bytes(b"PAR1 not really")
    pq.write_table(pa.table({"text": ["row a", "row b"], "score": [1, 2]}), d / "ok.parquet")
    zstd = pa.CompressedOutputStream(str(d / "z.jsonl.zst"), "zstd")
    zstd.write(b'{"text": "zstd line"}\n')
    zstd.close()
    latin = '<html><head><meta charset="iso-8859-1"></head><body><p>café crème</p></body></html>'
    (d / "latin.html").write_bytes(latin.encode("latin-1"))
    (d / "notes.txt").write_text("not an input kind")

    files = readers.expand_inputs([str(d)])
    assert [f.rel for f in files] == sorted(f"in/{n}" for n in os.listdir(d) if n != "notes.txt")
    records, rejects = readers.read_records(files, source="web")
    by_file: dict[str, list[str]] = {}
    for r in rejects:
        assert set(r) == set(REJECT_SCHEMA.names) and r["stage"] == "curate" and r["step"] == "read"
        by_file.setdefault(json.loads(r["record"])["meta"]["file"], []).append(r["reason"].split(":")[0])
    assert by_file["in/garbage.html"] == ["binary"]
    assert by_file["in/corrupt.jsonl.gz"] == ["read_error"]
    assert by_file["in/broken.parquet"] == ["read_error"]
    assert set(by_file["in/garbage.jsonl"]) == {"decode_error"}
    assert by_file["in/mixed.jsonl"] == ["bad_record", "no_text", "bad_record", "bad_json"]

    texts = {r["meta"]["file"]: [] for r in records}
    for r in records:
        texts[r["meta"]["file"]].append(r.get("text") or r.get("html"))
        assert {"id", "source", "url", "meta"} <= set(r) and r["source"] == "web"
    gz = [r for r in records if r["meta"]["file"] == "in/corrupt.jsonl.gz"]
    assert 0 < len(gz) < 3000 and gz[0]["url"] == "https://x/0" and gz[0]["meta"]["orig_id"] == "0"
    assert gz[0]["meta"]["lang_hint"] == "en"
    assert texts["in/ok.parquet"] == ["row a", "row b"]
    assert texts["in/z.jsonl.zst"] == ["zstd line"]
    assert texts["in/mixed.jsonl"] == ["fine", "<p>x</p>"]
    assert "café crème" in texts["in/latin.html"][0]

    # Stable ids: the same on a second read, and whichever way the input names the file.
    again, again_rej = readers.read_records(readers.expand_inputs([str(d)]))
    assert [r["id"] for r in again] == [r["id"] for r in records]
    assert [r["id"] for r in again_rej] == [r["id"] for r in rejects]
    ids = {r["id"] for r in records} | {r["id"] for r in rejects}
    assert len(ids) == len(records) + len(rejects) and all(len(i) == 24 for i in ids)
    one = readers.expand_inputs([str(d / "ok.parquet")])
    glob = readers.expand_inputs([str(d / "o*.parquet")])
    assert one[0].rel == glob[0].rel == "in/ok.parquet"
    assert readers.read_records(one)[0][0]["id"] == next(
        r["id"] for r in records if r["meta"]["file"] == "in/ok.parquet"
    )
    assert readers.read_records(readers.expand_inputs([str(d / "notes.txt")]))[1][0]["reason"].startswith(
        "unsupported_format"
    )
    with pytest.raises(ValueError, match="matches no file"):
        readers.expand_inputs([str(d / "nothing-*.html")])


# -- the stage on local Ray --------------------------------------------------------------------
def tree_digest(root: Path) -> dict[str, tuple[float, str]]:
    return {
        str(p.relative_to(root)): (p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_run_curate_on_samples(ray_local, tmp_path):
    cfg = CurateConfig(files_per_shard=8, dedup_shuffle_min_rows=0)  # exercise the Ray Data groupby
    rd = RunDir(tmp_path / "run")
    counts = run_curate(cfg, rd)

    html_files = sorted(SAMPLES.glob("*.html"))
    assert counts["files"] == len(html_files) and counts["shards"] == 2
    assert counts["read"] == len(html_files) == counts["kept"] + counts["rejected"]
    assert counts["rejects"] == {"exact_duplicate": 1, "too_short": 1}
    assert counts["langs"] == {"en": counts["kept"]}

    curated = rd.read_table("curated")
    assert curated.schema.remove_metadata() == CURATED_SCHEMA
    assert curated.num_rows == counts["kept"] and len(set(curated["id"].to_pylist())) == curated.num_rows
    row = curated.to_pylist()[0]
    assert row["source"] == "web" and row["quality"] is None and row["lang"] == "en" and 0.5 <= row["lang_score"] <= 1
    assert json.loads(row["meta"])["file"] == row["url"]
    rejects = rd.read_table("rejects/curate").to_pylist()
    assert len(rejects) == counts["rejected"]
    dup = next(r for r in rejects if r["reason"].startswith("exact_duplicate"))
    atexit_ids = {
        readers.make_id(f"samples/{n}", 0)
        for n in ("python-docs__library__atexit.html", "mirror__python-docs__library__atexit.html")
    }
    assert (
        dup["id"] in atexit_ids and dup["reason"] == f"exact_duplicate: of {min(atexit_ids)}" and dup["step"] == "dedup"
    )
    assert min(atexit_ids) in set(curated["id"].to_pylist())
    short = next(r for r in rejects if r["reason"].startswith("too_short"))
    assert json.loads(short["record"])["url"] == "samples/python-docs__genindex-Y.html"

    entry = rd.stage_entry("curate")
    assert entry["status"] == "complete" and entry["config_hash"] == config_hash(cfg)
    assert entry["counts"] == counts and entry["metrics"]["duplicates"] == 1

    before = tree_digest(tmp_path / "run")
    assert run_curate(cfg, rd) == counts
    assert tree_digest(tmp_path / "run") == before


KILLED_RUN = """
import os, sys, ray
ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
from phi4ray.config import CurateConfig
from phi4ray.data.curate import run_curate
from phi4ray.run import RunDir
run_curate(CurateConfig.model_validate_json(sys.argv[1]), RunDir(sys.argv[2]))
print("FINISHED")
"""


def make_pages(dest: Path, n: int) -> None:
    """n pages from the samples: every third one made unique, the rest repeats (duplicates
    spread over many shards)."""
    base = sorted(p for p in SAMPLES.glob("*.html") if not p.name.startswith("mirror__"))
    dest.mkdir()
    for i in range(n):
        html = base[i % len(base)].read_text(encoding="utf-8")
        if i % 3 == 0:
            html = html.replace("<h1>", f"<p>Variant {i} of this page, generated for the restart test.</p><h1>", 1)
        (dest / f"page-{i:03d}.html").write_text(html, encoding="utf-8")


def test_exactly_once_after_sigkill(ray_local, tmp_path):
    make_pages(tmp_path / "pages", 40)
    cfg = CurateConfig(inputs=[str(tmp_path / "pages")], files_per_shard=2, min_chars=50)
    run = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-c", KILLED_RUN, cfg.model_dump_json(), str(run)],
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    committed = 0
    try:
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None:
            committed = len(list(run.glob("curate/extracted/*.parquet"))) + len(list(run.glob("curated/*.parquet")))
            if committed:
                break
            time.sleep(0.02)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        out = proc.communicate()[0].decode(errors="replace")
    assert 0 < committed < 40, f"kill came too late or never (committed={committed}):\n{out[-3000:]}"
    assert "FINISHED" not in out
    assert RunDir(run).stage_entry("curate")["status"] == "running"

    counts = run_curate(cfg, RunDir(run))  # resume in this process, on the session's Ray
    ref_counts = run_curate(cfg, RunDir(tmp_path / "ref"))  # an uninterrupted run
    assert counts == ref_counts
    assert counts["read"] == 40 == counts["kept"] + counts["rejected"]

    rd, ref = RunDir(run), RunDir(tmp_path / "ref")
    curated, rejects = rd.read_table("curated"), rd.read_table("rejects/curate")
    ids = curated["id"].to_pylist() + rejects["id"].to_pylist()
    expected = {readers.make_id(f"pages/page-{i:03d}.html", 0) for i in range(40)}
    assert sorted(ids) == sorted(expected)  # every input exactly once, across kept and rejected
    hashes = [dedup.content_hash(t) for t in curated["text"].to_pylist()]
    assert len(set(hashes)) == len(hashes)  # no duplicate text survived
    assert counts["rejects"]["exact_duplicate"] == 40 - counts["kept"] - sum(
        v for k, v in counts["rejects"].items() if k != "exact_duplicate"
    )
    assert curated.equals(ref.read_table("curated"))
    assert rejects.sort_by("id").equals(ref.read_table("rejects/curate").sort_by("id"))
