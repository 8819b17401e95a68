"""Rebuild `quality.jsonl`, the provenance-labeled set for the quality classifiers.

    python -m phi4ray.data.labeled.build_quality_set [--html /work/shared/data/html] [--site-packages DIR]

Labels come from where a text was found, never from a model and never from text written for
the purpose (see README.md). Every row is real text, cut into passages by
`quality.split_passages` (300..1200 characters) and otherwise unchanged:

- **hq** (`docs`): passages of the CPython 3.11 (PSF-2.0) and SymPy 1.11 (BSD-3-Clause)
  documentation pages, as `extract.extract_text` renders them; at most 2 per page, picked by a
  hash of their position. Index, table-of-contents and licence pages are not used here, and
  neither are release notes (`whatsnew/*`, SymPy's active-deprecations), which sit between
  the classes.
- **lq**:
  - `license_page`: the CPython docs' "History and License" page;
  - `index_page`: entries of the CPython docs' general index pages (`genindex-*`);
  - `toc_page`: the tables of contents of the CPython docs' index pages;
  - `navigation`: navigation bars, sidebars, headers and footers of a hash-picked sample of
    the pages (the parts `extract_text` drops; SymPy's site-wide navigation tree, the same on
    every page, is left out), exact duplicates removed;
  - `license_file`: licence texts shipped in installed packages' `.dist-info` folders;
  - `changelog`: the changelog section of installed packages' `METADATA`.

A row: id, group (its source page or file: the unit of the train/held-out split), label,
origin, source (path), license (of the text), text. The output depends only on the inputs.
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import json
import os
import re
import site

from selectolax.lexbor import LexborHTMLParser

from phi4ray.config import QualityConfig
from phi4ray.data.extract import extract_text
from phi4ray.data.quality import split_passages
from phi4ray.data.readers import make_id

CFG = QualityConfig(passage_min_chars=300, passage_max_chars=1200)
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "quality.jsonl")
SITE_LICENSE = {"python-docs": "PSF-2.0", "sympy-docs": "BSD-3-Clause"}

LOW_PAGES = {
    "python-docs/license.html": "license_page",
    **{f"python-docs/genindex-{x}.html": "index_page" for x in ["F", "I", "K", "Q", "Symbols", "T", "Y"]},
}
TOC_PAGES = [
    "faq__index", "howto__index", "library__index", "tutorial__index", "whatsnew__index", "library__modules",
    "library__internet", "library__markup", "library__binary", "library__frameworks",
]  # fmt: skip
AMBIGUOUS = {"python-docs/whatsnew__2.1.html", "python-docs/whatsnew__3.0.html", "sympy-docs/explanation__active-deprecations.html"}
PER_PAGE = {"docs": 2, "license_page": 10, "index_page": 3, "toc_page": 2, "navigation": 1, "license_file": 2, "changelog": 6}
NAV_PAGES = 30
# Installed packages: (distribution, SPDX licence of the package and so of its text).
CHANGELOGS = [
    ("pydantic", "MIT"), ("yarl", "Apache-2.0"), ("dateparser", "BSD-3-Clause"), ("charset_normalizer", "MIT"),
    ("wcwidth", "MIT"), ("pytest_benchmark", "BSD-2-Clause"), ("httpcore", "BSD-3-Clause"),
    ("python_dotenv", "BSD-3-Clause"), ("propcache", "Apache-2.0"), ("frozenlist", "Apache-2.0"),
    ("pytest_timeout", "MIT"), ("mmh3", "MIT"), ("jedi", "MIT"), ("parso", "MIT"), ("tensorboardx", "MIT"),
]  # fmt: skip
LICENSE_FILES = [
    ("fasttext", "licenses/LICENSE", "MIT"), ("requests", "licenses/LICENSE", "Apache-2.0"),
    ("packaging", "licenses/LICENSE.BSD", "BSD-2-Clause"), ("python_dateutil", "LICENSE", "Apache-2.0 OR BSD-3-Clause"),
    ("lxml", "licenses/LICENSE.txt", "BSD-3-Clause"), ("flask", "licenses/LICENSE.txt", "BSD-3-Clause"),
    ("httpcore", "licenses/LICENSE.md", "BSD-3-Clause"), ("babel", "licenses/LICENSE", "BSD-3-Clause"),
    ("hypothesis", "licenses/LICENSE.txt", "MPL-2.0"), ("trio", "LICENSE.MIT", "MIT"),
    ("jsonpatch", "LICENSE", "BSD-3-Clause"), ("grpcio_reflection", "licenses/LICENSE", "Apache-2.0"),
    ("lxml", "licenses/LICENSES.txt", "BSD-3-Clause"),
]  # fmt: skip
_CHANGELOG_HEADING = re.compile(r"^(#+ *)?(changelog|changes|history|release history|news|release notes)\s*$", re.I | re.M)


def _rank(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def _pick(passages: list[str], k: int, key: str) -> list[tuple[int, str]]:
    """Up to k passages, chosen by a hash of (key, position), in page order."""
    idx = sorted(sorted(range(len(passages)), key=lambda i: _rank(f"{key}\0{i}"))[:k])
    return [(i, passages[i]) for i in idx]


_BLOCK = frozenset("li p div h1 h2 h3 h4 h5 h6 ul ol dl dt dd tr table section nav header footer aside br".split())


def _lines(nodes) -> str:
    """The text of `nodes` as a reader sees it: one line per block element."""
    out: list[str] = []
    for n in nodes:
        cur: list[str] = []
        for d in n.traverse(include_text=True):
            if d.tag == "-text":
                cur.append(d.text_content or "")
            elif d.tag in _BLOCK:
                out.append(" ".join("".join(cur).split()))
                cur = []
        out.append(" ".join("".join(cur).split()))
    return "\n".join(line for line in out if line)


def _rows(group: str, label: str, origin: str, source: str, license: str, text: str) -> list[dict]:
    passages = split_passages(text, CFG)
    return [
        {"id": make_id(group, i), "group": group, "label": label, "origin": origin, "source": source, "license": license, "text": t}
        for i, t in _pick(passages, PER_PAGE[origin], group)
    ]


def _dist(sp: str, name: str) -> str:
    found = sorted(glob.glob(os.path.join(sp, f"{name}-[0-9]*.dist-info")))
    if not found:
        raise FileNotFoundError(f"{name} is not installed in {sp}")
    return found[-1]


def build(html_root: str, sp: str) -> list[dict]:
    rows: list[dict] = []
    pages = sorted(glob.glob(os.path.join(html_root, "*", "*.html")))
    nav_pages = set(sorted(pages, key=lambda p: _rank(os.path.relpath(p, html_root)))[:NAV_PAGES])
    seen_nav: set[str] = set()
    for path in pages:
        rel = os.path.relpath(path, html_root)
        site_name = rel.split(os.sep)[0]
        lic = SITE_LICENSE[site_name]
        src = f"shared/data/html/{rel}"
        html = open(path, encoding="utf-8", errors="replace").read()
        tree = LexborHTMLParser(html)
        name = os.path.basename(rel)[: -len(".html")]
        if rel in LOW_PAGES and LOW_PAGES[rel] == "index_page":
            rows += _rows(rel, "lq", "index_page", src, lic, _lines(tree.css("table.indextable")))
        elif rel in LOW_PAGES:
            rows += _rows(rel, "lq", LOW_PAGES[rel], src, lic, extract_text(html))
        elif site_name == "python-docs" and name in TOC_PAGES:
            rows += _rows(rel, "lq", "toc_page", src, lic, _lines(tree.css("h1") + tree.css("div.toctree-wrapper")))
        elif rel not in AMBIGUOUS:
            rows += _rows(rel, "hq", "docs", src, lic, extract_text(html))
        if path in nav_pages:
            sel = "div.related, div.sphinxsidebar, div.footer" if site_name == "python-docs" else "header, aside.toc-drawer, footer"
            nav = _lines(tree.css(sel))
            if nav and nav not in seen_nav:
                seen_nav.add(nav)
                rows += _rows(rel + "#navigation", "lq", "navigation", src, lic, nav)
    for name, lic in CHANGELOGS:
        d = _dist(sp, name)
        meta = open(os.path.join(d, "METADATA"), encoding="utf-8").read()
        m = _CHANGELOG_HEADING.search(meta)
        if m is None:
            raise ValueError(f"{d}/METADATA has no changelog heading")
        rel = f"{os.path.basename(d)}/METADATA"
        rows += _rows(rel, "lq", "changelog", f"site-packages/{rel}", lic, meta[m.start():])
    for name, file, lic in LICENSE_FILES:
        d = _dist(sp, name)
        rel = f"{os.path.basename(d)}/{file}"
        rows += _rows(rel, "lq", "license_file", f"site-packages/{rel}", lic, open(os.path.join(d, file), encoding="utf-8").read())
    ids = [r["id"] for r in rows]
    assert len(ids) == len(set(ids)), "duplicate ids"
    return sorted(rows, key=lambda r: (r["group"], r["id"]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--html", default="/work/shared/data/html")
    ap.add_argument("--site-packages", default=site.getsitepackages()[0])
    ap.add_argument("--out", default=OUT)
    args = ap.parse_args()
    rows = build(args.html, args.site_packages)
    with open(args.out, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n")
    from collections import Counter

    print(f"{len(rows)} rows, {os.path.getsize(args.out)} bytes -> {args.out}")
    print(dict(Counter(r["label"] for r in rows)), dict(Counter(r["origin"] for r in rows)))
    print(f"groups: {len({r['group'] for r in rows})}")


if __name__ == "__main__":
    main()
