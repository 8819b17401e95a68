"""Readers for WARC files and source-code trees (the JSONL/HTML/Parquet readers are tested in
test_curate.py). WARCs are written with warcio, a different library from the FastWARC that
reads them, so the reader is checked against an independent writer."""

from __future__ import annotations

import gzip
import io
import json
from collections import Counter
from pathlib import Path

import pytest
from warcio.statusandheaders import StatusAndHeaders
from warcio.warcwriter import WARCWriter

from phi4ray.data import readers
from phi4ray.data.extract import extract_text
from phi4ray.stage import REJECT_SCHEMA

PAGES = {
    "https://example.org/a": "<html><body><h1>Alpha</h1><p>First page, café.</p></body></html>",
    "https://example.org/b": "<html><body><h1>Beta</h1><p>Second page.</p></body></html>",
    "https://example.org/c": "<html><body><h1>Gamma</h1><p>Third page.</p></body></html>",
}
DOC_URLS = [*PAGES, "https://example.org/latin", "https://example.org/gz"]


def _chunked(data: bytes, size: int = 7) -> bytes:
    parts = [b"%x\r\n%s\r\n" % (len(data[i : i + size]), data[i : i + size]) for i in range(0, len(data), size)]
    return b"".join(parts) + b"0\r\n\r\n"


def crawl() -> tuple[bytes, dict[str, int], list[int]]:
    """An uncompressed WARC as a crawler writes it, the offset of each HTML response by URL,
    and the offset of every record."""
    raw = io.BytesIO()
    w = WARCWriter(raw, gzip=False)
    starts: list[int] = []
    offsets: dict[str, int] = {}

    def write(record, url: str | None = None):
        starts.append(raw.tell())
        if url in DOC_URLS:
            offsets[url] = raw.tell()
        w.write_record(record)

    def response(url: str, body: bytes, headers: list[tuple[str, str]], status: str = "200 OK"):
        http = StatusAndHeaders(status, headers, protocol="HTTP/1.1")
        write(w.create_warc_record(url, "response", payload=io.BytesIO(body), http_headers=http), url)

    write(w.create_warcinfo_record("crawl.warc", {"software": "phi4ray-test"}))
    for url, html in PAGES.items():
        req = StatusAndHeaders("GET / HTTP/1.1", [("Host", "example.org")], is_http_request=True)
        write(w.create_warc_record(url, "request", payload=io.BytesIO(b""), http_headers=req))
        response(url, html.encode(), [("Content-Type", "text/html; charset=utf-8")])
    response("https://example.org/logo.png", b"\x89PNG\r\n\x1a\n" + bytes(range(256)), [("Content-Type", "image/png")])
    response("https://example.org/gone", b"<html>gone</html>", [("Content-Type", "text/html")], "404 Not Found")
    latin = "<html><body><p>Crème brûlée, déjà vu.</p></body></html>".encode("latin-1")
    response("https://example.org/latin", latin, [("Content-Type", "text/html; charset=iso-8859-1")])
    encoded = _chunked(gzip.compress(b"<html><body><p>Compressed and chunked.</p></body></html>"))
    coding = [("Content-Type", "text/html"), ("Content-Encoding", "gzip"), ("Transfer-Encoding", "chunked")]
    response("https://example.org/gz", encoded, coding)
    return raw.getvalue(), offsets, starts


def gzip_per_record(data: bytes, starts: list[int]) -> tuple[bytes, dict[int, int]]:
    """One gzip member per record, as crawlers write .warc.gz; and where each record's member
    starts, by its uncompressed offset."""
    members, where, pos = [], {}, 0
    for a, b in zip(starts, [*starts[1:], len(data)]):
        where[a] = pos
        members.append(gzip.compress(data[a:b]))
        pos += len(members[-1])
    return b"".join(members), where


def warc_bytes(compress: bool) -> tuple[bytes, dict[str, int], dict[str, int]]:
    """(file bytes, uncompressed offset of each HTML response, its offset in the file)."""
    data, offsets, starts = crawl()
    if not compress:
        return data, offsets, offsets
    gz, where = gzip_per_record(data, starts)
    return gz, offsets, {url: where[o] for url, o in offsets.items()}


def read(path: Path, source: str = "web"):
    skipped: Counter = Counter()
    files = readers.expand_inputs([str(path)], source=source)
    records, rejects = readers.read_records(files, source=source, skipped=skipped)
    return files, records, rejects, skipped


@pytest.mark.parametrize("compress", [False, True])
def test_warc_html_responses_become_documents(tmp_path, compress):
    path = tmp_path / "crawl" / ("c.warc.gz" if compress else "c.warc")
    path.parent.mkdir()
    data, offsets, _ = warc_bytes(compress)
    path.write_bytes(data)
    files, records, rejects, skipped = read(path.parent)

    assert [f.rel for f in files] == [f"crawl/{path.name}"] and files[0].kind == "warc"
    assert rejects == []
    assert [r["url"] for r in records] == DOC_URLS
    rel = f"crawl/{path.name}"
    for r in records:
        assert r["id"] == readers.make_id(rel, offsets[r["url"]]) and r["meta"]["offset"] == offsets[r["url"]]
        assert r["source"] == "web" and r["meta"]["file"] == rel and r["meta"]["http_status"] == 200
        assert r["meta"]["warc_record_id"].startswith("<urn:uuid:") and r["meta"]["warc_date"]
    texts = {r["url"]: extract_text(r["html"]) for r in records}
    assert texts["https://example.org/a"] == "# Alpha\n\nFirst page, café."
    assert texts["https://example.org/c"] == "# Gamma\n\nThird page."
    assert texts["https://example.org/latin"] == "Crème brûlée, déjà vu."  # charset from the HTTP header
    assert texts["https://example.org/gz"] == "Compressed and chunked."
    # Not documents, but counted: nothing in the file goes unaccounted for.
    assert skipped == Counter({"warc/request": 3, "warc/warcinfo": 1, "warc/not_html": 1, "warc/http_404": 1})
    assert [r["id"] for r in read(path.parent)[1]] == [r["id"] for r in records]


@pytest.mark.parametrize("compress", [False, True])
def test_truncated_warc_yields_the_records_before_the_damage_and_one_reject(tmp_path, compress):
    data, _, in_file = warc_bytes(compress)
    cut = in_file["https://example.org/c"] + 60
    path = tmp_path / "in" / ("cut.warc.gz" if compress else "cut.warc")
    path.parent.mkdir()
    path.write_bytes(data[:cut])  # a download that stopped inside the third page's record

    _, records, rejects, skipped = read(path.parent)
    assert [r["url"] for r in records] == ["https://example.org/a", "https://example.org/b"]
    assert len(rejects) == 1
    rej = rejects[0]
    assert set(rej) == set(REJECT_SCHEMA.names) and rej["step"] == "read"
    assert rej["reason"].split(":")[0] == ("read_error" if compress else "truncated")
    assert "after 6 WARC records" in rej["reason"]  # warcinfo, 2 x (request, response), request
    assert json.loads(rej["record"])["meta"]["file"] == f"in/{path.name}"
    assert rej["id"] not in {r["id"] for r in records}
    assert skipped == Counter({"warc/request": 3, "warc/warcinfo": 1})


@pytest.mark.parametrize("compress", [False, True])
def test_a_warc_cut_anywhere_gives_a_prefix_of_its_documents_and_at_most_one_reject(tmp_path, compress):
    data = warc_bytes(compress)[0]
    path = tmp_path / "in" / ("cut.warc.gz" if compress else "cut.warc")
    path.parent.mkdir()
    clean_cuts = 0
    for cut in range(1, len(data), 11):
        path.write_bytes(data[:cut])
        _, records, rejects, _ = read(path.parent)
        got = [r["url"] for r in records]
        assert got == DOC_URLS[: len(got)] and len(rejects) <= 1, cut
        clean_cuts += not rejects
    # Only a cut in the CRLFs that close a record leaves whole records and no damage behind.
    assert clean_cuts <= 8


def test_corrupt_gzip_warc_is_a_read_error_after_the_good_records(tmp_path):
    data, _, in_file = warc_bytes(compress=True)
    at = in_file["https://example.org/b"] + 30
    path = tmp_path / "in" / "bad.warc.gz"
    path.parent.mkdir()
    path.write_bytes(data[:at] + b"\x00garbage" * 8 + data[at + 64 :])
    _, records, rejects, _ = read(path.parent)
    assert [r["url"] for r in records] == ["https://example.org/a"]
    assert [r["reason"].split(":")[0] for r in rejects] == ["read_error"]


# -- source-code trees -------------------------------------------------------------------------
def make_tree(root: Path) -> None:
    files = {
        "pkg/__init__.py": "from .core import run\n",
        "pkg/core.py": "def run(x: int) -> int:\n    return x + 1\n",
        "pkg/sub/__init__.py": "",
        "pkg/sub/deep.py": "\ufeffVALUE = 'naïve'\n",
        "cmd/main.go": 'package main\n\nimport "fmt"\n\nfunc main() { fmt.Println("hi") }\n',
        "src/lib.rs": "pub fn add(a: i32, b: i32) -> i32 { a + b }\n",
        "include/api.h": "int api(void);\n",
        "scripts/build.sh": "#!/bin/sh\nset -e\nmake all\n",
        "Makefile": "all:\n\tgo build ./...\n",
        "README.md": "# A project\n",
        "data/fixture.jsonl": '{"text": "not code"}\n',
        "vendor/dep/dep.go": "package dep\n",
        "web/app.min.js": "var a=1;",
        "node_modules/left-pad/index.js": "module.exports = 1;\n",
        "pkg/__pycache__/core.py": "stale\n",
        ".git/hooks/pre-commit.sh": "#!/bin/sh\n",
        "legacy.py": "# caf\xe9\n",
    }
    for rel, text in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(text.encode("latin-1") if rel == "legacy.py" else text.encode("utf-8"))
    (root / "logo.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00" + bytes(range(256)))
    (root / "blob.c").write_bytes(b"int x;\n\x00\x01\x02binary")
    (root / "big.py").write_text("x = 1\n" * (readers.MAX_CODE_BYTES // 6 + 1))


def test_code_tree(tmp_path):
    root = tmp_path / "repo"
    make_tree(root)
    files, records, rejects, skipped = read(root, source="code")

    assert [f.rel for f in files] == [
        "repo/Makefile", "repo/big.py", "repo/blob.c", "repo/cmd/main.go", "repo/include/api.h",
        "repo/legacy.py", "repo/pkg/__init__.py", "repo/pkg/core.py", "repo/pkg/sub/__init__.py",
        "repo/pkg/sub/deep.py", "repo/scripts/build.sh", "repo/src/lib.rs", "repo/vendor/dep/dep.go",
        "repo/web/app.min.js",
    ]  # fmt: skip
    by_url = {r["url"]: r for r in records}
    assert sorted(by_url) == [
        "repo/Makefile", "repo/cmd/main.go", "repo/include/api.h", "repo/pkg/__init__.py", "repo/pkg/core.py",
        "repo/pkg/sub/deep.py", "repo/scripts/build.sh", "repo/src/lib.rs",
    ]  # fmt: skip
    core = by_url["repo/pkg/core.py"]
    assert core["text"] == (root / "pkg/core.py").read_text()
    assert core["source"] == "code" and core["id"] == readers.make_id("repo/pkg/core.py", 0)
    assert core["meta"] == {"file": "repo/pkg/core.py", "lang": "python", "path": "repo/pkg/core.py"}
    assert by_url["repo/pkg/sub/deep.py"]["text"] == "VALUE = 'naïve'\n"  # BOM dropped
    langs = {u: r["meta"]["lang"] for u, r in by_url.items()}
    assert langs["repo/cmd/main.go"] == "go" and langs["repo/src/lib.rs"] == "rust"
    assert langs["repo/include/api.h"] == "c" and langs["repo/scripts/build.sh"] == "shell"
    assert langs["repo/Makefile"] == "makefile"

    reasons = {json.loads(r["record"])["meta"]["path"]: r["reason"].split(":")[0] for r in rejects}
    assert reasons == {
        "repo/big.py": "too_large",
        "repo/blob.c": "binary",
        "repo/legacy.py": "decode_error",
        "repo/pkg/sub/__init__.py": "empty_file",
        "repo/vendor/dep/dep.go": "vendored",
        "repo/web/app.min.js": "vendored",
    }
    assert all(r["step"] == "read" for r in rejects) and not skipped
    assert len({r["id"] for r in records} | {r["id"] for r in rejects}) == len(files)


def test_code_mode_is_opt_in_and_named_data_files_keep_their_kind(tmp_path):
    root = tmp_path / "repo"
    make_tree(root)
    with pytest.raises(ValueError, match="matches no file"):
        readers.expand_inputs([str(root / "pkg")])  # web mode reads no .py
    files, records, rejects, _ = read(root / "data" / "fixture.jsonl", source="code")
    assert [f.rel for f in files] == ["data/fixture.jsonl"] and [r["text"] for r in records] == ["not code"]
    assert rejects == [] and records[0]["source"] == "code"
    files = readers.expand_inputs([str(root / "pkg" / "**" / "*.py")], source="code")
    assert [f.rel for f in files] == ["pkg/__init__.py", "pkg/core.py", "pkg/sub/__init__.py", "pkg/sub/deep.py"]
