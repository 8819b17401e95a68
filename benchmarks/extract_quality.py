"""HTML -> text: phi4ray's extractor against trafilatura and resiliparse on the real pages.

Run (from the repository root; trafilatura and resiliparse are benchmark-only dependencies):

    pip install trafilatura lxml_html_clean resiliparse
    python benchmarks/extract_quality.py [--html-dir ../shared/data/html] [--repeats 3]

It prints one table (a row per extractor and site, plus "all") and writes
benchmarks/results/extract_quality.json. An extractor whose package is missing is skipped.

Extractors and their settings:

- `phi4ray`: `phi4ray.data.extract.extract_text`.
- `trafilatura`: `extract(output_format="markdown", include_formatting=True, include_tables=True,
  include_comments=True, favor_recall=True, deduplicate=False)`, the settings that keep the most.
- `trafilatura+img`: the same with `include_images=True`, the only way trafilatura keeps the
  TeX that these pages carry in image `alt` text (as `![tex](src)`).
- `resiliparse`: `extract_plain_text(main_content=True, preserve_formatting=True, alt_texts=True,
  comments=True)`; `resiliparse-flat`: the same with `preserve_formatting=False`.
- `selectolax.text()`: the `<body>`'s raw text (`.text()`), no extraction at all. It is the
  speed baseline, and its quality row shows what the raw text holds.

Metrics. Ground truth comes from the raw HTML (parsed with selectolax), never from an extractor.
`N(s)` normalises a string on both sides of a comparison: Markdown escapes (`\\_`, `\\|`, ...) are
undone, `` ` ``, `*` and the permalink sign `¶` are removed, whitespace runs become one space.

- code: each non-empty `<pre>`'s text. Kept intact when `N(code)` is a substring of `N(output)`.
- tables: each `<table>`'s cells (`td`/`th` of its own rows, in document order), each cut into
  fragments where a block element or an image starts or ends (`<p>a</p><p>b</p>` is "a", "b";
  an image in a cell is a formula on these pages, which extractors render each their own way).
  Kept intact when every non-empty `N(fragment)` is found in `N(output)`, each one after the end
  of the previous.
- math: the TeX of each formula: `script[type^=math/tex]`, the text of a `span.math`/`div.math`
  between its `\\(..\\)`/`\\[..\\]` delimiters, the `alt` of Sphinx imgmath images (`img.math`,
  `div.math img`: the form these SymPy pages use), KaTeX's TeX annotation, MathML `alttext`.
  Kept when the TeX with whitespace collapsed is a substring of the output with whitespace collapsed.
- boilerplate: per site, the text fragments of the raw pages' chrome (`nav`, `header`, `footer`,
  `aside`, ARIA navigation/banner/contentinfo/complementary/search, and classes naming a
  sidebar, footer, nav or `related` bar) that occur in more than half of the site's pages, such
  as "Previous topic", "Show Source", "Quick search" or the copyright line. On each page, those
  present in its chrome and absent from the rest of its text are checked; "left" is the share
  found in `N(output)`, averaged over pages (0 is best).
- docs/s: pages per CPU second of this process (`time.process_time`, so that other work on a
  shared machine does not count; best of `--repeats` passes over all pages, one thread), then
  `x base`: that speed divided by the `selectolax.text()` speed of the same run, and `x traf`:
  divided by trafilatura's. Absolute speeds depend on the machine; the ratios carry over.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import logging
import platform
import re
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Callable

from selectolax.lexbor import LexborHTMLParser

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from phi4ray.data.extract import extract_text  # noqa: E402

CHROME = (
    "nav, header, footer, aside, [role=navigation], [role=banner], [role=contentinfo],"
    " [role=complementary], [role=search], [class*=sidebar], [class*=footer], [class*=nav],"
    " [class~=related]"
)
_MD_ESCAPE = re.compile(r"\\([\\`*_{}\[\]()#+\-.!|<>~])")
_WS = re.compile(r"\s+")


def norm(s: str) -> str:
    s = _MD_ESCAPE.sub(r"\1", s)
    return _WS.sub(" ", s.replace("`", "").replace("*", "").replace("¶", "")).strip()


def norm_tex(s: str) -> str:
    return _WS.sub(" ", s).strip()


# -- ground truth ------------------------------------------------------------------------------
BLOCK = frozenset(
    "address article aside blockquote br dd details div dl dt figcaption figure h1 h2 h3 h4 h5 h6 hr li"
    " ol p pre section table tbody td tfoot th thead tr ul img math".split()
)


def cell_fragments(node) -> list[str]:
    """A cell's text, cut where a block element or an image (a formula, here) starts or ends:
    extractors put something between two paragraphs of a cell, or render a formula their way."""
    out, cur = [], []

    def cut():
        text = norm("".join(cur))
        if text:
            out.append(text)
        cur.clear()

    def walk(n):
        child = n.child
        while child is not None:
            if child.tag == "-text":
                cur.append(child.text_content or "")
            elif child.is_element_node and child.tag not in ("script", "style"):
                if child.tag in BLOCK:
                    cut()
                walk(child)
                if child.tag in BLOCK:
                    cut()
            child = child.next

    walk(node)
    cut()
    return out


def _own_rows(table) -> list:
    rows = []
    for tr in table.css("tr"):
        p = tr.parent
        while p is not None and p.tag != "table":
            p = p.parent
        if p is not None and p.mem_id == table.mem_id:
            rows.append(tr)
    return rows


def _math_tex(body) -> list[str]:
    out = [n.text(deep=True) for n in body.css('script[type^="math/tex"]')]
    for n in body.css("span.math, div.math"):
        text = n.text(deep=True).strip()
        if n.css_first("*") is None and text[:2] in ("\\(", "\\[") and text[-2:] in ("\\)", "\\]"):
            out.append(text[2:-2])
    out += [n.attributes.get("alt") or "" for n in body.css("img.math, div.math img")]
    out += [n.text(deep=True) for n in body.css('.katex annotation[encoding="application/x-tex"]')]
    out += [n.attributes.get("alttext") or "" for n in body.css("math[alttext]")]
    return [t for t in (norm_tex(t) for t in out) if t]


def _chrome_fragments(tree) -> tuple[set[str], str]:
    """(text fragments of the page's chrome, the page's text without its chrome)."""
    body = tree.body
    for n in body.css("script, style, svg"):
        n.decompose()
    fragments = set()
    for n in body.css(CHROME):
        for frag in n.text(deep=True, separator="\n").split("\n"):
            frag = _WS.sub(" ", frag).strip()
            if len(frag) >= 4 and re.search(r"[A-Za-z]", frag):
                fragments.add(frag)
    for n in body.css(CHROME):
        if n.parent is not None:
            n.decompose()
    return fragments, norm(body.text(deep=True, separator=" "))


def ground_truth(html: str) -> dict:
    tree = LexborHTMLParser(html)
    body = tree.body
    code = [c for c in (norm(p.text(deep=True)) for p in body.css("pre")) if c]
    tables = []
    for t in body.css("table"):
        cells = [f for tr in _own_rows(t) for c in tr.iter() if c.tag in ("td", "th") for f in cell_fragments(c)]
        if cells:
            tables.append(cells)
    math = _math_tex(body)
    fragments, content = _chrome_fragments(tree)
    return {"code": code, "tables": tables, "math": math, "chrome": fragments, "content": content}


def boilerplate_strings(truths: list[dict]) -> list[str]:
    """Chrome fragments found on more than half of a site's pages."""
    counts = Counter(f for t in truths for f in t["chrome"])
    return sorted(f for f, n in counts.items() if n > len(truths) / 2)


# -- extractors --------------------------------------------------------------------------------
def extractors() -> tuple[dict[str, Callable[[str], str]], dict[str, str]]:
    fns: dict[str, Callable[[str], str]] = {
        "selectolax.text()": lambda h: LexborHTMLParser(h).body.text(deep=True),
        "phi4ray": extract_text,
    }
    versions = {"selectolax": importlib.metadata.version("selectolax")}
    try:
        import trafilatura

        logging.getLogger("trafilatura").setLevel(logging.CRITICAL)
        tkw = dict(
            output_format="markdown", include_formatting=True, include_tables=True, include_comments=True,
            favor_recall=True, deduplicate=False,
        )  # fmt: skip
        fns["trafilatura"] = lambda h: trafilatura.extract(h, include_images=False, **tkw) or ""
        fns["trafilatura+img"] = lambda h: trafilatura.extract(h, include_images=True, **tkw) or ""
        versions["trafilatura"] = importlib.metadata.version("trafilatura")
    except ImportError as e:
        print(f"trafilatura skipped: {e}", file=sys.stderr)
    try:
        from resiliparse.extract.html2text import extract_plain_text

        rkw = dict(main_content=True, alt_texts=True, comments=True)
        fns["resiliparse"] = lambda h: extract_plain_text(h, preserve_formatting=True, **rkw)
        fns["resiliparse-flat"] = lambda h: extract_plain_text(h, preserve_formatting=False, **rkw)
        versions["resiliparse"] = importlib.metadata.version("resiliparse")
    except ImportError as e:
        print(f"resiliparse skipped: {e}", file=sys.stderr)
    return fns, versions


# -- scoring -----------------------------------------------------------------------------------
def in_order(cells: list[str], text: str) -> bool:
    pos = 0
    for c in cells:
        i = text.find(c, pos)
        if i < 0:
            return False
        pos = i + len(c)
    return True


def score(truth: dict, output: str, chrome: list[str]) -> dict:
    out, out_tex = norm(output), norm_tex(output)
    checked = [f for f in chrome if f in truth["chrome"] and norm(f) not in truth["content"]]
    return {
        "code": (sum(c in out for c in truth["code"]), len(truth["code"])),
        "tables": (sum(in_order(t, out) for t in truth["tables"]), len(truth["tables"])),
        "math": (sum(m in out_tex for m in truth["math"]), len(truth["math"])),
        "boilerplate": (sum(norm(f) in out for f in checked), len(checked)),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--html-dir", type=Path, default=ROOT.parent / "shared" / "data" / "html")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "extract_quality.json")
    args = ap.parse_args()

    pages: dict[str, list[tuple[str, str]]] = {}
    for site in sorted(p for p in args.html_dir.iterdir() if p.is_dir()):
        files = sorted(site.glob("*.html"))
        pages[site.name] = [(f.name, f.read_text(encoding="utf-8", errors="replace")) for f in files]
    all_html = [h for site in pages.values() for _, h in site]
    truths = {site: [ground_truth(h) for _, h in ps] for site, ps in pages.items()}
    chrome = {site: boilerplate_strings(ts) for site, ts in truths.items()}

    fns, versions = extractors()
    results: dict = {}
    for name, fn in fns.items():
        outputs = {site: [fn(h) for _, h in ps] for site, ps in pages.items()}  # also a warm-up
        best = float("inf")
        for _ in range(args.repeats):
            t0 = time.process_time()
            for h in all_html:
                fn(h)
            best = min(best, time.process_time() - t0)
        per_site = {}
        totals: dict[str, list[int]] = defaultdict(lambda: [0, 0])
        bp_all = []
        for site, outs in outputs.items():
            scores = [score(t, o, chrome[site]) for t, o in zip(truths[site], outs)]
            row = {}
            for metric in ("code", "tables", "math"):
                kept, n = (sum(s[metric][i] for s in scores) for i in (0, 1))
                row[metric] = {"kept": kept, "total": n, "share": kept / n if n else None}
                totals[metric][0] += kept
                totals[metric][1] += n
            shares = [s["boilerplate"][0] / s["boilerplate"][1] for s in scores if s["boilerplate"][1]]
            bp_all += shares
            row["boilerplate_left"] = sum(shares) / len(shares) if shares else None
            row["empty_outputs"] = sum(not o.strip() for o in outs)
            per_site[site] = row
        overall = {m: {"kept": k, "total": n, "share": k / n if n else None} for m, (k, n) in totals.items()}
        overall["boilerplate_left"] = sum(bp_all) / len(bp_all) if bp_all else None
        overall["empty_outputs"] = sum(r["empty_outputs"] for r in per_site.values())
        results[name] = {
            "sites": per_site,
            "all": overall,
            "seconds": best,
            "docs_per_s": len(all_html) / best,
        }
    base = results["selectolax.text()"]["docs_per_s"]
    for r in results.values():
        r["speed_vs_baseline"] = r["docs_per_s"] / base
        if "trafilatura" in results:
            r["speed_vs_trafilatura"] = r["docs_per_s"] / results["trafilatura"]["docs_per_s"]

    def pct(x):
        return "  n/a" if x is None else f"{100 * x:5.1f}"

    header = f"{'extractor':<18} {'site':<12} {'code %':>7} {'tables %':>9} {'math %':>7} {'boilerplate left %':>19} {'docs/s':>8} {'x base':>7} {'x traf':>7}"
    print(header)
    print("-" * len(header))
    for name, r in results.items():
        for site, row in [*r["sites"].items(), ("all", r["all"])]:
            speed = ""
            if site == "all":
                traf = r.get("speed_vs_trafilatura")
                speed = f"{r['docs_per_s']:8.1f} {r['speed_vs_baseline']:7.3f} {'' if traf is None else f'{traf:7.2f}'}"
            print(
                f"{name:<18} {site:<12} {pct(row['code']['share']):>7} {pct(row['tables']['share']):>9}"
                f" {pct(row['math']['share']):>7} {pct(row['boilerplate_left']):>19} {speed}"
            )
    n = {site: {m: sum(len(t[m]) for t in ts) for m in ("code", "tables", "math")} for site, ts in truths.items()}
    print(f"\nground truth: {json.dumps(n)}; pages: { {s: len(p) for s, p in pages.items()} }")
    print(f"boilerplate strings per site: { {s: len(c) for s, c in chrome.items()} }")
    print(f"speed baseline: selectolax.text() at {base:.1f} docs/s; versions: {versions}")

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "pages": {s: len(p) for s, p in pages.items()},
                "ground_truth_counts": n,
                "boilerplate_strings": chrome,
                "versions": versions,
                "python": platform.python_version(),
                "repeats": args.repeats,
                "baseline": "selectolax.text()",
                "results": results,
            },
            indent=2,
            ensure_ascii=False,
        )
    )
    print(f"wrote {args.out.relative_to(ROOT) if args.out.is_relative_to(ROOT) else args.out}")


if __name__ == "__main__":
    main()
