"""HTML -> text for LLM training data, on selectolax (Lexbor).

The output is Markdown-flavoured plain text that keeps what a model should learn from:

- code blocks as fenced blocks with the page's language (Sphinx `div.highlight-<lang>`,
  `language-<lang>` / `lang-<lang>` classes, `data-lang`),
- tables as Markdown tables, headings as `#`, lists as `- ` / `1. `,
- math as LaTeX: MathJax `<script type="math/tex">`, Sphinx/MathJax `\\(..\\)` / `\\[..\\]`
  spans kept verbatim, KaTeX's `annotation encoding="application/x-tex"`, MathML `alttext`
  or its TeX annotation, and LaTeX `alt` text of math images (Sphinx imgmath, Wikipedia).
  Math we convert is written `\\(..\\)` inline and `\\[..\\]` on its own line, the same
  delimiters that MathJax pages already carry, so one document never mixes conventions.

and drops site chrome: navigation, menus, sidebars, footers, cookie banners, "show source" /
"edit this page" links, scripts and styles. Boilerplate is decided by tag (`nav`, `aside`,
`footer`, a site-level `header`), by ARIA role, by class/id names, by hidden-ness, and by link
density (a list or block that is mostly links is a menu). When the page marks its main content
(`main`, `[role=main]`, a single `article`), only that subtree is rendered.

`extract_text(html)` is the pure function; `extract(record)` is the per-record curation step.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable, Iterator

from selectolax.lexbor import LexborHTMLParser, LexborNode

from phi4ray.stage import Reject

# -- what to drop ------------------------------------------------------------------------------
DROP_TAGS = frozenset(
    """script style noscript template svg canvas iframe object embed form button input select
    textarea option datalist nav aside footer menu dialog head title meta link video audio map
    frameset frame applet""".split()
)
DROP_ROLES = frozenset("navigation banner contentinfo complementary search menu menubar dialog alertdialog".split())
_PART = (
    r"nav|navbar|navigation|menu|menubar|toc|sidebar|footer|breadcrumbs?|related|cookies?|consent|gdpr"
    r"|share|sharing|social|banner|ads|advert|advertisement|pagination|pager|skip|masthead|searchbox"
    r"|popup|modal|newsletter|subscribe|linenos?"
)
BOILERPLATE_CLASS = re.compile(
    rf"(?:^|[-_])(?:{_PART})(?:$|[-_])"
    r"|sidebar|footer|breadcrumb|headerlink|viewcode|back-to-top|this-page-menu|visually-hidden"
    r"|sr-only|screen-reader|edit-?this|edit-?page|edit-link|copybutton|theme-toggle|switcher",
    re.I,
)
ID_TAGS = frozenset("div ul ol nav aside header footer form table iframe".split())
"""Tags whose `id` is judged like a class. Elsewhere ids are content anchors that docs
generators derive from headings and API names (`section#module-http.cookies`)."""
KEEP_CLASS = re.compile(r"footnote|citation|backref", re.I)
"""Docutils renders footnotes as `aside.footnote`, and headings under a local table of contents
as `a.toc-backref`: content, not chrome."""
BOILERPLATE_LINK_TEXT = frozenset(
    [
        "show source", "view page source", "view source", "edit this page", "edit on github",
        "improve this page", "suggest edits", "report a bug", "back to top", "skip to content",
        "skip to main content", "permalink", "print this page",
    ]
)  # fmt: skip
LINK_DENSITY_TAGS = frozenset("ul ol dl table div p".split())
LINK_DENSITY = 0.75
LINK_DENSITY_MIN_LINKS = 3

# -- how to render -----------------------------------------------------------------------------
BLOCK_TAGS = frozenset(
    """address article blockquote body center dd details dir div dl dt fieldset figcaption figure
    h1 h2 h3 h4 h5 h6 header hgroup hr html li main ol p pre section summary table tbody td tfoot
    th thead tr ul caption""".split()
)
HEADINGS = {f"h{i}": i for i in range(1, 7)}
NO_LANGUAGE = frozenset({"default", "none", "text", "plain", "plaintext", "txt", "nohighlight", ""})
MAX_DEPTH = 300
"""Deeper than this, a subtree is rendered as flat text (pathological pages; no recursion error)."""

_WS = re.compile(r"[ \t\n\r\f\v\u00a0]+")
_BR = "\ue002"
_MATH = re.compile("\ue000(\\d+)\ue001")
_SENTINELS = re.compile("[\ue000-\ue002]")
_LANG_CLASS = re.compile(r"^(?:highlight-(?:source-)?|language-|lang-|sourceCode-?)([\w+#.-]+)$", re.I)
_LIST_ITEM = re.compile(r"(?:- |\d+\. )")
_DISPLAYSTYLE = re.compile(r"^\{\\displaystyle\s*(.*)\}$", re.S)


@dataclass
class Extracted:
    text: str
    title: str


def extract_text(html: str) -> str:
    """The main text of an HTML page as Markdown-flavoured text ('' when there is none)."""
    return extract_html(html).text


def extract_html(html: str) -> Extracted:
    tree = LexborHTMLParser(_SENTINELS.sub("", html))  # the renderer's private markers
    title_node = tree.css_first("title")
    title = _collapse(title_node.text(deep=True)) if title_node is not None else ""
    body = tree.body or tree.root
    if body is None:
        return Extracted("", title)
    maths = _replace_math(body)
    root = _main_root(body)
    _drop_boilerplate(body, root)
    _drop_link_dense(root)
    out = _Renderer(maths)
    out.walk(root, 0)
    out.flush()
    return Extracted("\n\n".join(out.blocks).strip(), title)


def extract(record: dict, min_chars: int = 200) -> dict | Reject:
    """Curation step: `html` -> `text` (records that already carry `text` pass through).

    Rejects `empty` (no text at all) and `too_short` (fewer than `min_chars` characters).
    """
    rec = dict(record)
    html = rec.pop("html", None)
    if html is not None:
        got = extract_html(html)
        rec["text"] = got.text
        if got.title:
            rec["meta"] = {**(rec.get("meta") or {}), "title": got.title}
    text = (rec.get("text") or "").strip()
    rec["text"] = text
    if not text:
        return Reject("empty")
    if len(text) < min_chars:
        return Reject("too_short", f"{len(text)} < {min_chars} chars")
    return rec


# -- helpers -----------------------------------------------------------------------------------
def _collapse(s: str) -> str:
    return _WS.sub(" ", s).strip()


def _classes(node: LexborNode) -> str:
    a = node.attributes
    return f"{a.get('class') or ''} {a.get('id') or ''}" if node.tag in ID_TAGS else (a.get("class") or "")


def _children(node: LexborNode) -> Iterator[LexborNode]:
    child = node.child
    while child is not None:
        nxt = child.next
        yield child
        child = nxt


def _elements(node: LexborNode) -> Iterator[LexborNode]:
    for child in _children(node):
        if child.is_element_node:
            yield child


def _ancestors(node: LexborNode) -> Iterator[LexborNode]:
    p = node.parent
    while p is not None:
        yield p
        p = p.parent


# -- math --------------------------------------------------------------------------------------
def _clean_tex(tex: str) -> str:
    tex = tex.strip()
    m = _DISPLAYSTYLE.match(tex)
    return m.group(1).strip() if m else tex


def _replace_math(body: LexborNode) -> list[tuple[str, bool, bool]]:
    """Replace every math construct by a placeholder; return [(tex, display, verbatim)]."""
    maths: list[tuple[str, bool, bool]] = []

    def put(node: LexborNode, tex: str, display: bool, verbatim: bool = False) -> None:
        maths.append((tex if verbatim else _clean_tex(tex), display, verbatim))
        node.replace_with(f"\ue000{len(maths) - 1}\ue001")

    # Rendered output of MathJax v2: the source is in the script next to it.
    for node in body.css(".MathJax_Preview, .MathJax, .MathJax_Display, .MathJax_SVG, .MathJax_CHTML"):
        node.decompose()
    for node in body.css('script[type^="math/tex"]'):
        put(node, node.text(deep=True), "mode=display" in (node.attributes.get("type") or ""))
    for node in body.css(".katex-display, .katex"):
        if node.parent is None:  # inside a .katex-display already replaced
            continue
        ann = node.css_first('annotation[encoding="application/x-tex"]')
        if ann is not None:
            put(node, ann.text(deep=True), "katex-display" in (node.attributes.get("class") or ""))
    for node in body.css("mjx-container, math"):
        if node.parent is None:
            continue
        math = node if node.tag == "math" else node.css_first("math")
        if math is None:
            continue
        display = (node.attributes.get("display") in ("true", "block")) or math.attributes.get("display") == "block"
        tex = math.attributes.get("alttext")
        if not tex:
            ann = math.css_first('annotation[encoding="application/x-tex"], annotation[encoding="TeX"]')
            tex = ann.text(deep=True) if ann is not None else _collapse(math.text(deep=True))
        put(node, tex, display)
    for node in body.css("img"):
        cls = node.attributes.get("class") or ""
        alt = node.attributes.get("alt") or ""
        in_math_div = any(
            a.tag == "div" and "math" in (a.attributes.get("class") or "").split() for a in _ancestors(node)
        )
        if alt and (re.search(r"math|latex|\btex\b", cls, re.I) or in_math_div):
            put(node, alt, in_math_div or "display" in cls)
    # Sphinx mathjax / arithmatex: the TeX with its delimiters is the element's text.
    for node in body.css("span.math, div.math"):
        if node.parent is None or node.css_first("*") is not None:
            continue
        tex = node.text(deep=True).strip()
        if tex.startswith(("\\(", "\\[", "$")):
            put(node, tex, node.tag == "div", verbatim=True)
    return maths


def _format_math(tex: str, display: bool, verbatim: bool) -> str:
    if verbatim or tex.startswith(("$", "\\(", "\\[")):
        return tex
    return f"\\[{tex}\\]" if display else f"\\({tex}\\)"


# -- boilerplate -------------------------------------------------------------------------------
def _main_root(body: LexborNode) -> LexborNode:
    """The element the page marks as its main content, else <body>."""
    cands = body.css('main, [role="main"]')
    if not cands:
        arts = body.css("article")
        cands = arts if len(arts) == 1 else []
    if not cands:
        return body
    return max(cands, key=lambda n: len(n.text(deep=True)))


def _is_hidden(node: LexborNode) -> bool:
    a = node.attributes
    if "hidden" in a or a.get("aria-hidden") == "true":
        return True
    style = (a.get("style") or "").replace(" ", "").lower()
    return "display:none" in style or "visibility:hidden" in style


def _boilerplate(node: LexborNode, root: LexborNode) -> str | None:
    """Why `node` is chrome: 'tag' (certain: tag, role, hidden, link text), 'class' (a name
    that looks like chrome), or None."""
    tag = node.tag
    cls = _classes(node)
    if tag in DROP_TAGS:
        return None if (tag == "aside" and KEEP_CLASS.search(cls)) else "tag"
    if tag == "header":  # a site header; an article's own header stays
        inside = any(a.tag in ("article", "main", "section") or a.mem_id == root.mem_id for a in _ancestors(node))
        return None if inside else "tag"
    if (node.attributes.get("role") or "").lower() in DROP_ROLES or _is_hidden(node):
        return "tag"
    if tag == "a" and _collapse(node.text(deep=True)).lower() in BOILERPLATE_LINK_TEXT:
        return "tag"
    if cls.strip() and BOILERPLATE_CLASS.search(cls) and not KEEP_CLASS.search(cls):
        return "class"
    return None


def _drop_boilerplate(body: LexborNode, root: LexborNode) -> None:
    """Decompose boilerplate subtrees; never the main root or an element that contains it."""
    protect = {root.mem_id, *(a.mem_id for a in _ancestors(root))}
    total = len(_collapse(body.text(deep=True))) if root is body else 0
    doomed: list[LexborNode] = []
    stack = list(_elements(body))
    while stack:
        node = stack.pop()
        why = None if node.mem_id in protect else _boilerplate(node, root)
        # With no marked main content, a wrapper holding most of the page is not chrome,
        # whatever its class says (`<div id="page-with-sidebar">`).
        if why == "class" and total and len(_collapse(node.text(deep=True))) > 0.6 * total:
            why = None
        if why:
            doomed.append(node)
        else:
            stack.extend(_elements(node))
    for node in doomed:
        node.decompose()


def _link_density(node: LexborNode) -> tuple[float, int]:
    text = len(_WS.sub("", node.text(deep=True)))
    links = node.css("a")
    if not text or not links:
        return 0.0, len(links)
    return sum(len(_WS.sub("", a.text(deep=True))) for a in links) / text, len(links)


def _drop_link_dense(root: LexborNode) -> None:
    """Decompose lists and blocks that are mostly links (menus, link hubs, index tables)."""
    doomed: list[LexborNode] = []
    stack = list(_elements(root))
    while stack:
        node = stack.pop()
        if node.tag in LINK_DENSITY_TAGS and node.css_first("pre") is None:
            density, n = _link_density(node)
            if n >= LINK_DENSITY_MIN_LINKS and density >= LINK_DENSITY:
                doomed.append(node)
                continue
        stack.extend(_elements(node))
    for node in doomed:
        node.decompose()


# -- rendering ---------------------------------------------------------------------------------
def _code_language(pre: LexborNode) -> str:
    nodes = [pre]
    code = pre.css_first("code")
    if code is not None:
        nodes.append(code)
    nodes.extend(list(_ancestors(pre))[:3])
    for n in nodes:
        lang = n.attributes.get("data-lang")
        if lang:
            return "" if lang.lower() in NO_LANGUAGE else lang
        for c in (n.attributes.get("class") or "").split():
            m = _LANG_CLASS.match(c)
            if m:
                lang = m.group(1)
                return "" if lang.lower() in NO_LANGUAGE else lang
    return ""


def _pre_text(pre: LexborNode, maths: list) -> str:
    parts = []
    for n in pre.traverse(include_text=True):
        if n.tag == "-text":
            parts.append(n.text_content or "")
        elif n.tag == "br":
            parts.append("\n")
    text = "".join(parts)
    text = _MATH.sub(lambda m: _format_math(*maths[int(m.group(1))]), text)
    lines = [ln.rstrip() for ln in text.split("\n")]
    while lines and not lines[0].strip():
        lines.pop(0)
    while lines and not lines[-1].strip():
        lines.pop()
    return "\n".join(lines)


def _fence(code: str, lang: str) -> str:
    ticks = "```"
    while ticks in code:
        ticks += "`"
    return f"{ticks}{lang}\n{code}\n{ticks}"


def _indent(text: str, prefix: str) -> str:
    return "\n".join(prefix + ln if ln else ln for ln in text.split("\n"))


class _Renderer:
    """Walks the DOM and emits blocks; inline content accumulates until a block boundary."""

    def __init__(self, maths: list):
        self.maths = maths
        self.blocks: list[str] = []
        self.inline: list[str] = []

    # inline buffer
    def flush(self) -> None:
        if not self.inline:
            return
        raw = "".join(self.inline)
        self.inline = []
        text = _WS.sub(" ", raw)
        text = re.sub(f" *{_BR} *", "\n", text).strip()
        if text:
            lines = [ln.strip() for ln in text.split("\n")]
            self.blocks.append("\n".join(ln for ln in lines if ln))

    def text(self, s: str) -> None:
        pos = 0
        for m in _MATH.finditer(s):
            self.inline.append(s[pos : m.start()])
            tex, display, verbatim = self.maths[int(m.group(1))]
            if display:
                self.flush()
                self.blocks.append(_format_math(tex, True, verbatim))
            else:
                self.inline.append(_format_math(tex, False, verbatim))
            pos = m.end()
        self.inline.append(s[pos:])

    def sub(self, nodes: Iterable[LexborNode], depth: int) -> list[str]:
        """Render `nodes` into their own list of blocks (for list items and table cells)."""
        saved_blocks, saved_inline = self.blocks, self.inline
        self.blocks, self.inline = [], []
        for child in nodes:
            self.walk(child, depth + 1)
        self.flush()
        out = self.blocks
        self.blocks, self.inline = saved_blocks, saved_inline
        return out

    def inline_text(self, node: LexborNode, depth: int) -> str:
        return " ".join(b.replace("\n", " ") for b in self.sub(_children(node), depth))

    def walk(self, node: LexborNode, depth: int) -> None:
        tag = node.tag
        if tag == "-text":
            self.text(node.text_content or "")
            return
        if not node.is_element_node:
            return
        if depth > MAX_DEPTH:
            self.text(" " + node.text(deep=True) + " ")
            return
        if tag in HEADINGS:
            self.flush()
            text = self.inline_text(node, depth)
            if text:
                self.blocks.append("#" * HEADINGS[tag] + " " + text)
        elif tag == "pre":
            self.flush()
            code = _pre_text(node, self.maths)
            if code:
                self.blocks.append(_fence(code, _code_language(node)))
        elif tag in ("ul", "ol"):
            self.flush()
            self.render_list(node, depth)
        elif tag == "table":
            self.flush()
            self.render_table(node, depth)
        elif tag == "br":
            self.inline.append(_BR)
        elif tag == "hr":
            self.flush()
        elif tag == "img":
            pass  # non-math images carry no text worth training on
        elif tag == "code":  # inline: a <pre> was rendered whole above
            code = _collapse(self.inline_text(node, depth))
            if code:
                ticks = "``" if "`" in code else "`"
                pad = " " if ticks == "``" else ""
                self.inline.append(f"{ticks}{pad}{code}{pad}{ticks}")
        elif tag in BLOCK_TAGS:
            self.flush()
            for child in _children(node):
                self.walk(child, depth + 1)
            self.flush()
        else:
            for child in _children(node):
                self.walk(child, depth + 1)

    def render_list(self, node: LexborNode, depth: int) -> None:
        ordered = node.tag == "ol"
        try:
            n = int(node.attributes.get("start") or 1)
        except ValueError:
            n = 1
        items = []
        for li in _elements(node):
            blocks = self.sub(_children(li) if li.tag == "li" else [li], depth)
            if not blocks:
                continue
            marker = f"{n}. " if ordered else "- "
            n += 1
            body = blocks[0]
            for b in blocks[1:]:  # a nested list hugs its item (a tight list)
                body += ("\n" if _LIST_ITEM.match(b) else "\n\n") + b
            items.append(marker + _indent(body, " " * len(marker))[len(marker) :])
        if items:
            self.blocks.append("\n".join(items))

    def render_table(self, table: LexborNode, depth: int) -> None:
        """A Markdown table, its first row as the header (GFM needs one); a table nested in
        another or with a single column is layout, rendered as ordinary blocks."""
        rows: list[list[str]] = []
        caption = table.css_first("caption")
        nested = any(t.mem_id != table.mem_id for t in table.css("table"))
        for tr in [] if nested else table.css("tr"):
            cells = []
            for cell in _elements(tr):
                if cell.tag not in ("td", "th"):
                    continue
                text = self.inline_text(cell, depth).replace("|", "\\|")
                cells.append(text)
                try:
                    span = max(1, min(int(cell.attributes.get("colspan") or 1), 50))
                except ValueError:
                    span = 1
                cells.extend([""] * (span - 1))
            if cells:
                rows.append(cells)
        ncols = max((len(c) for c in rows), default=0)
        if nested or ncols <= 1:  # a layout table: render its content as ordinary blocks
            for child in _children(table):
                self.walk(child, depth + 1)
            self.flush()
            return
        if caption is not None:
            cap = self.inline_text(caption, depth)
            if cap:
                self.blocks.append(cap)
        lines = []
        for i, cells in enumerate(rows):
            cells = cells + [""] * (ncols - len(cells))
            lines.append("| " + " | ".join(cells) + " |")
            if i == 0:
                lines.append("|" + "|".join([" --- "] * ncols) + "|")
        self.blocks.append("\n".join(lines))
