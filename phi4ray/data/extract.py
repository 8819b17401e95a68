"""HTML -> text for LLM training data, on selectolax (Lexbor).

The output is Markdown-flavoured plain text that keeps what a model should learn from:

- code blocks as fenced blocks with the page's language (Sphinx `div.highlight-<lang>`,
  `language-<lang>` / `lang-<lang>` classes, `data-lang`, `data-language`, `lang` of `pre`/`code`),
- tables as Markdown tables, headings as `#`, lists as `- ` / `1. `, quotations as `> ` lines,
- math as LaTeX: MathJax `<script type="math/tex">`, Sphinx/MathJax `\\(..\\)` / `\\[..\\]`
  spans kept verbatim, KaTeX's `annotation encoding="application/x-tex"` (its `.katex-html`
  rendering dropped), MathML `alttext` or its TeX annotation, MathML without either converted
  to LaTeX (`mathml_to_latex`), and LaTeX `alt` text of math images (Sphinx imgmath, Wikipedia).
  Math we convert is written `\\(..\\)` inline and `\\[..\\]` on its own line, the same
  delimiters that MathJax pages already carry, so one document never mixes conventions,
- forum threads (StackExchange, Discourse, phpBB, XenForo, vBulletin, WordPress comments, any
  markup with `post`/`comment`/`answer`... containers and an author) as one block per post:
  a line `**<author>** wrote:`, then the post's body, quotes of other posts as `> ` lines;
  replies follow their post in page order. Answers and comments are content, never chrome.

and drops site chrome: navigation, menus, sidebars, footers, cookie banners, "show source" /
"edit this page" / "reply" links, scripts, styles and forms. Boilerplate is decided by tag (`nav`,
`aside`, `footer`, a `header` outside an article or section), by ARIA role, by class/id names,
by hidden-ness, by text length (with no marked main content, a wrapper holding most of the
page's text is not chrome whatever its class), and by link density (a list or block that is
mostly links is a menu). When the page marks its main content (`main`, `[role=main]`, a single
`article`), only that subtree is rendered, widened on a thread to take in every post and the
thread's title.

`extract_text(html)` is the pure function; `extract(record)` is the per-record curation step.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Iterable, Iterator

from selectolax.lexbor import LexborHTMLParser, LexborNode

from phi4ray.stage import Reject

# -- what to drop ------------------------------------------------------------------------------
DROP_TAGS = frozenset(
    """script style noscript template svg canvas iframe object embed form button input select
    textarea option datalist label nav aside footer menu dialog head title meta link video audio
    map frameset frame applet""".split()
)
DROP_ROLES = frozenset("navigation banner contentinfo complementary search menu menubar dialog alertdialog".split())
_PART = (
    r"nav|navbar|navigation|menu|menubar|toc|sidebar|footer|breadcrumbs?|related|cookies?|consent|gdpr"
    r"|share|sharing|social|banner|ads|advert|advertisement|pagination|pager|skip|masthead|searchbox"
    r"|popup|modal|newsletter|subscribe|linenos?|suggested|recommended|respond"
)
BOILERPLATE_CLASS = re.compile(
    rf"(?:^|[-_\s])(?:{_PART})(?:$|[-_\s])"
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
        "skip to main content", "permalink", "print this page", "reply", "post reply",
        "reply with quote", "quote", "share", "report", "like", "follow", "add a comment",
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
    # Lexbor's CSS engine costs about a millisecond per selector on a docs page: selectors
    # whose marker is absent from the source are not run.
    low = html.lower()
    maths = _replace_math(body, low)
    docutils = any(
        (m.attributes.get("content") or "").startswith("Docutils") for m in tree.css('meta[name="generator"]')
    )
    quotes = _quote_levels(body, docutils, low)
    maybe_thread = "data-post-id" in low or "itemtype=" in low or _POST_CLASS_MARKER.search(low)
    posts = _find_posts(body, quotes) if maybe_thread else {}
    root = _main_root(body)
    keep: set[int] = set()
    if posts:  # comments, answers and the thread's title often sit outside the marked main content
        post_nodes = [n for n in body.css(POST_SELECTOR) if n.mem_id in posts]
        title = body.css_first("h1")
        root = _common_ancestor([root, *post_nodes, *([title] if title is not None else [])])
        keep = {i for n in post_nodes for i in (n.mem_id, *(a.mem_id for a in _ancestors(n)))}
    _drop_boilerplate(body, root, keep, docutils)
    _drop_link_dense(root, posts, keep, maths)
    out = _Renderer(maths, posts, quotes)
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


def _classes(node: LexborNode, attrs: dict | None = None) -> str:
    a = node.attributes if attrs is None else attrs
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


def _replace_math(body: LexborNode, low: str) -> list[tuple[str, bool, bool]]:
    """Replace every math construct by a placeholder; return [(tex, display, verbatim)].
    `low`: the page's source in lower case, to skip the searches for forms it does not use."""
    maths: list[tuple[str, bool, bool]] = []

    def put(node: LexborNode, tex: str, display: bool, verbatim: bool = False) -> None:
        maths.append((tex if verbatim else _clean_tex(tex), display, verbatim))
        node.replace_with(f"\ue000{len(maths) - 1}\ue001")

    if "math" not in low:
        return maths
    if "mathjax_" in low:  # rendered output of MathJax v2: the source is in the script next to it
        for node in body.css(".MathJax_Preview, .MathJax, .MathJax_Display, .MathJax_SVG, .MathJax_CHTML"):
            node.decompose()
    if "math/tex" in low:
        for node in body.css('script[type^="math/tex"]'):
            put(node, node.text(deep=True), "mode=display" in (node.attributes.get("type") or ""))
    # KaTeX: the TeX annotation of its MathML copy, else that MathML converted; the visual
    # `.katex-html` copy goes with the node.
    for node in body.css(".katex-display, .katex") if "katex" in low else ():
        if node.parent is None:  # inside a .katex-display already replaced
            continue
        display = "katex-display" in (node.attributes.get("class") or "")
        ann = node.css_first('annotation[encoding="application/x-tex"]')
        math = node.css_first("math")
        if ann is not None:
            put(node, ann.text(deep=True), display)
        elif math is not None:
            put(node, mathml_to_latex(math), display)
    for node in body.css("mjx-container, math") if "<math" in low or "<mjx-container" in low else ():
        if node.parent is None:
            continue
        math = node if node.tag == "math" else node.css_first("math")
        if math is None:
            continue
        display = (node.attributes.get("display") in ("true", "block")) or math.attributes.get("display") == "block"
        tex = math.attributes.get("alttext")
        if not tex:
            ann = math.css_first('annotation[encoding="application/x-tex"], annotation[encoding="TeX"]')
            tex = ann.text(deep=True) if ann is not None else mathml_to_latex(math)
        put(node, tex, display)
    for node in body.css("img[alt]"):
        attrs = node.attributes
        cls = attrs.get("class") or ""
        alt = attrs.get("alt") or ""
        if not alt:
            continue
        in_math_div = any(
            a.tag == "div" and "math" in (a.attributes.get("class") or "").split() for a in _ancestors(node)
        )
        if re.search(r"math|latex|\btex\b", cls, re.I) or in_math_div:
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


# -- MathML -> LaTeX ---------------------------------------------------------------------------
# Presentation MathML without a TeX annotation or `alttext` (MathJax 3 assistive MathML, KaTeX
# output stripped of its annotation, hand-written MathML) is converted to LaTeX, so that every
# formula in the corpus is written one way.
TEX_SYMBOLS = {
    "α": r"\alpha", "β": r"\beta", "γ": r"\gamma", "δ": r"\delta", "ϵ": r"\epsilon",
    "ε": r"\varepsilon", "ζ": r"\zeta", "η": r"\eta", "θ": r"\theta", "ϑ": r"\vartheta",
    "ι": r"\iota", "κ": r"\kappa", "λ": r"\lambda", "μ": r"\mu", "ν": r"\nu", "ξ": r"\xi",
    "π": r"\pi", "ϖ": r"\varpi", "ρ": r"\rho", "ϱ": r"\varrho", "σ": r"\sigma", "ς": r"\varsigma",
    "τ": r"\tau", "υ": r"\upsilon", "ϕ": r"\phi", "φ": r"\varphi", "χ": r"\chi", "ψ": r"\psi",
    "ω": r"\omega", "Γ": r"\Gamma", "Δ": r"\Delta", "Θ": r"\Theta", "Λ": r"\Lambda", "Ξ": r"\Xi",
    "Π": r"\Pi", "Σ": r"\Sigma", "Υ": r"\Upsilon", "Φ": r"\Phi", "Ψ": r"\Psi", "Ω": r"\Omega",
    "∑": r"\sum", "∏": r"\prod", "∐": r"\coprod", "∫": r"\int", "∬": r"\iint", "∭": r"\iiint",
    "∮": r"\oint", "⋃": r"\bigcup", "⋂": r"\bigcap", "⨁": r"\bigoplus", "⨂": r"\bigotimes",
    "→": r"\to", "←": r"\leftarrow", "↔": r"\leftrightarrow", "⇒": r"\Rightarrow",
    "⇐": r"\Leftarrow", "⇔": r"\Leftrightarrow", "↦": r"\mapsto", "⟶": r"\longrightarrow",
    "⟹": r"\implies", "⟺": r"\iff", "↑": r"\uparrow", "↓": r"\downarrow",
    "≤": r"\leq", "≥": r"\geq", "≠": r"\neq", "≈": r"\approx", "≡": r"\equiv", "∼": r"\sim",
    "≃": r"\simeq", "≅": r"\cong", "∝": r"\propto", "≪": r"\ll", "≫": r"\gg", "≔": ":=",
    "×": r"\times", "·": r"\cdot", "⋅": r"\cdot", "÷": r"\div", "±": r"\pm", "∓": r"\mp",
    "∘": r"\circ", "⊗": r"\otimes", "⊕": r"\oplus", "∗": "*", "−": "-", "∖": r"\setminus",
    "∈": r"\in", "∉": r"\notin", "∋": r"\ni", "⊂": r"\subset", "⊃": r"\supset",
    "⊆": r"\subseteq", "⊇": r"\supseteq", "∪": r"\cup", "∩": r"\cap", "∅": r"\emptyset",
    "∀": r"\forall", "∃": r"\exists", "¬": r"\neg", "∧": r"\wedge", "∨": r"\vee",
    "⊢": r"\vdash", "⊨": r"\models", "⊥": r"\perp", "∥": r"\parallel", "∣": r"\mid",
    "∂": r"\partial", "∇": r"\nabla", "∞": r"\infty", "ℏ": r"\hbar", "ℓ": r"\ell", "ℵ": r"\aleph",
    "…": r"\ldots", "⋯": r"\cdots", "⋮": r"\vdots", "⋱": r"\ddots", "⟨": r"\langle",
    "⟩": r"\rangle", "‖": r"\|", "⌊": r"\lfloor", "⌋": r"\rfloor", "⌈": r"\lceil", "⌉": r"\rceil",
    "′": "'", "″": "''", "‴": "'''", "°": r"^\circ",
    "ℝ": r"\mathbb{R}", "ℕ": r"\mathbb{N}", "ℤ": r"\mathbb{Z}", "ℚ": r"\mathbb{Q}", "ℂ": r"\mathbb{C}",
    "{": r"\{", "}": r"\}", "%": r"\%", "#": r"\#", "&": r"\&", "$": r"\$", "\\": r"\backslash",
    # invisible function application, times, separator and plus
    "\u2061": "", "\u2062": "", "\u2063": "", "\u2064": "",
}  # fmt: skip
TEX_FUNCTIONS = frozenset(
    """sin cos tan cot sec csc arcsin arccos arctan sinh cosh tanh coth log ln lg exp lim liminf
    limsup max min sup inf det dim ker deg gcd arg hom Pr""".split()
)
LARGE_OPS = frozenset(r"\sum \prod \coprod \int \iint \iiint \oint \bigcup \bigcap \bigoplus \bigotimes".split())
LIMIT_OPS = LARGE_OPS | {rf"\{f}" for f in "lim liminf limsup max min sup inf det gcd Pr".split()}
SPACED_OPS = frozenset(
    r"""= < > + - := \pm \mp \times \cdot \div \to \leq \geq \neq \approx \equiv \sim \simeq \cong
    \propto \ll \gg \in \notin \ni \subset \supset \subseteq \supseteq \cup \cap \setminus \circ
    \otimes \oplus \wedge \vee \mid \Rightarrow \Leftarrow \Leftrightarrow \implies \iff \mapsto
    \leftarrow \leftrightarrow \longrightarrow \vdash \models \perp \parallel""".split()
)
QUANTIFIERS = frozenset(r"\forall \exists \neg".split())
MATH_VARIANTS = {
    "bold": r"\mathbf", "normal": r"\mathrm", "double-struck": r"\mathbb", "fraktur": r"\mathfrak",
    "script": r"\mathcal", "sans-serif": r"\mathsf", "monospace": r"\mathtt", "bold-italic": r"\boldsymbol",
}  # fmt: skip
OVER_ACCENTS = {
    "^": r"\hat", "ˆ": r"\hat", "\u0302": r"\hat", "~": r"\tilde", "˜": r"\tilde", "\u0303": r"\tilde",
    "¯": r"\overline", "‾": r"\overline", "_": r"\overline", "\u0304": r"\overline", "―": r"\overline",
    "→": r"\vec", "⃗": r"\vec", "˙": r"\dot", "\u0307": r"\dot", "¨": r"\ddot", "\u0308": r"\ddot",
    "ˇ": r"\check", "˘": r"\breve", "⏞": r"\overbrace", "︷": r"\overbrace",
}  # fmt: skip
UNDER_ACCENTS = {"_": r"\underline", "¯": r"\underline", "‾": r"\underline", "\u0332": r"\underline",
                 "⏟": r"\underbrace", "︸": r"\underbrace"}  # fmt: skip
FENCED_MATRICES = {("(", ")"): "pmatrix", ("[", "]"): "bmatrix", ("|", "|"): "vmatrix",
                   (r"\|", r"\|"): "Vmatrix", (r"\{", r"\}"): "Bmatrix", (r"\{", ""): "cases"}  # fmt: skip
_SCRIPTED = frozenset("msup msub msubsup munder mover munderover mfrac mmultiscripts".split())
_ROW_TAGS = frozenset("math mrow mstyle mpadded merror menclose mtd".split())
_TEX_TEXT_ESCAPES = str.maketrans({c: "\\" + c for c in "&%$#_{}"})
_CMD_END = re.compile(r"\\[A-Za-z]+$")
_TIGHT_OPS = re.compile(r" ([=<>+-]) ")


def mathml_to_latex(node: LexborNode) -> str:
    """LaTeX for a presentation-MathML element (usually `<math>`); its plain text when the
    markup nests too deep to convert."""
    try:
        return _WS.sub(" ", _ml(node)).strip()
    except RecursionError:
        return _collapse(node.text(deep=True))


def _ml_kids(node: LexborNode) -> list[LexborNode]:
    return [c for c in _elements(node) if c.tag not in ("annotation", "annotation-xml", "none", "mprescripts")]


def _ml_symbols(text: str) -> str:
    return "".join(TEX_SYMBOLS.get(c, c) for c in text)


def _ml_join(parts: Iterable[str]) -> str:
    out = ""
    for p in parts:
        if p and out and _CMD_END.search(out) and (p[0].isalpha() or p[0] == "\\"):
            out += " "
        out += p
    return out


def _ml_arg(tex: str) -> str:
    """A script or argument: tight around symbol operators (`_{i=1}`), braced unless one character."""
    tex = _TIGHT_OPS.sub(r"\1", tex.strip())
    return tex if len(tex) == 1 else f"{{{tex}}}"


def _ml_base(node: LexborNode) -> str:
    """A script's base, braced where a bare one would bind differently (`{x^2}^3`, `{ab}^2`)."""
    tex = _ml(node).strip()
    kids = _ml_kids(node) if node.tag in _ROW_TAGS else []
    fenced = len(kids) > 1 and kids[0].tag == "mo" and kids[-1].tag == "mo"
    if node.tag in _SCRIPTED or (len(kids) > 1 and not fenced):
        return f"{{{tex}}}"
    return tex


def _ml_op(node: LexborNode) -> str:
    text = _collapse(node.text(deep=True))
    return "\\" + text if text in TEX_FUNCTIONS else _ml_symbols(text)


def _ml_row(kids: list[LexborNode]) -> str:
    # A matrix between fences is one environment: ( mtable ) -> pmatrix, { mtable -> cases.
    if kids and any(k.tag == "mtable" for k in kids) and len(kids) <= 3:
        ops = [_ml_op(k) if k.tag == "mo" else None for k in kids]
        if len(kids) == 3 and kids[1].tag == "mtable" and (ops[0], ops[2]) in FENCED_MATRICES:
            return _ml_table(kids[1], FENCED_MATRICES[ops[0], ops[2]])
        if len(kids) == 2 and kids[1].tag == "mtable" and (ops[0], "") in FENCED_MATRICES:
            return _ml_table(kids[1], FENCED_MATRICES[ops[0], ""])
    parts = []
    prev = None
    for k in kids:
        tex = _ml(k)
        if k.tag == "mo":
            prefix = prev is None or (prev.tag == "mo" and _ml_op(prev) not in (")", "]", r"\}", "|", r"\rangle"))
            if tex in SPACED_OPS and not prefix and k.attributes.get("form") != "prefix":
                tex = f" {tex} "
            elif tex in QUANTIFIERS:
                tex = f"{'' if prefix else ' '}{tex} "
            elif tex == ",":
                tex = ", "
        elif tex and re.split(r"[_^]", tex, maxsplit=1)[0] in LIMIT_OPS:
            tex += " "
        parts.append(tex)
        prev = k
    return _ml_join(parts)


def _ml_table(node: LexborNode, env: str = "matrix") -> str:
    rows = []
    for tr in _elements(node):
        if tr.tag not in ("mtr", "mlabeledtr"):
            continue
        cells = [c for c in _elements(tr) if c.tag == "mtd"]
        if tr.tag == "mlabeledtr":
            cells = cells[1:]
        rows.append(" & ".join(_ml(c).strip() for c in cells))
    return rf"\begin{{{env}}} " + r" \\ ".join(rows) + rf" \end{{{env}}}"


def _ml_space(node: LexborNode) -> str:
    width = (node.attributes.get("width") or "").strip()
    named = {"thinmathspace": r"\,", "mediummathspace": r"\:", "thickmathspace": r"\;"}
    if width in named:
        return named[width]
    m = re.fullmatch(r"([\d.]+)em", width)
    if not m:
        return " " if width else ""
    em = float(m.group(1))
    return r"\," if em < 0.2 else r"\:" if em < 0.25 else r"\;" if em < 0.5 else r"\quad" if em < 1.5 else r"\qquad"


def _ml_scripts(pairs: list[LexborNode]) -> str:
    """`_{sub}^{sup}` for mmultiscripts' (sub, sup) pairs; `<none/>` leaves a slot empty."""
    out = ""
    for sub, sup in zip(pairs[::2], pairs[1::2]):
        sub_tex, sup_tex = (_ml(n).strip() if n.tag != "none" else "" for n in (sub, sup))
        out += (f"_{_ml_arg(sub_tex)}" if sub_tex else "") + (f"^{_ml_arg(sup_tex)}" if sup_tex else "")
    return out


def _ml(node: LexborNode) -> str:
    tag = node.tag
    kids = _ml_kids(node)
    if tag == "mi":
        text = _collapse(node.text(deep=True))
        variant = node.attributes.get("mathvariant")
        if len(text) == 1:
            tex = _ml_symbols(text)
            return f"{MATH_VARIANTS[variant]}{{{tex}}}" if variant in MATH_VARIANTS and tex == text else tex
        if text in TEX_FUNCTIONS:
            return "\\" + text
        cmd = r"\mathit" if variant == "italic" else MATH_VARIANTS.get(variant or "normal", r"\mathrm")
        return f"{cmd}{{{_ml_symbols(text)}}}" if text else ""
    if tag == "mn":
        return _ml_symbols(_collapse(node.text(deep=True)))
    if tag == "mo":
        return _ml_op(node)
    if tag in ("mtext", "ms"):
        text = node.text(deep=True).translate(_TEX_TEXT_ESCAPES)
        if not text.strip():
            return " "
        return rf'\text{{"{text}"}}' if tag == "ms" else rf"\text{{{text}}}"
    if tag == "mspace":
        return _ml_space(node)
    if tag in ("semantics", "maction"):  # the presentation child; the rest are annotations/alternatives
        return _ml(kids[0]) if kids else ""
    if tag == "mphantom":
        return rf"\phantom{{{_ml_row(kids)}}}"
    if tag == "mfenced":
        a = {"open": "(", "close": ")", "separators": ",", **{k: v or "" for k, v in node.attributes.items()}}
        open_, close = _ml_symbols(a["open"].strip()), _ml_symbols(a["close"].strip())
        seps = [s for s in a["separators"] if not s.isspace()]
        if len(kids) == 1 and kids[0].tag == "mtable" and (open_, close) in FENCED_MATRICES:
            return _ml_table(kids[0], FENCED_MATRICES[open_, close])
        body = ""
        for i, k in enumerate(kids):
            if i:
                sep = seps[min(i - 1, len(seps) - 1)] if seps else ""
                body += sep + (" " if sep == "," else "")
            body += _ml(k).strip()
        return f"{open_}{body}{close}"
    if tag == "mtable":
        return _ml_table(node)
    if tag == "msqrt":
        return rf"\sqrt{{{_ml_row(kids).strip()}}}"
    if tag == "mroot" and len(kids) == 2:
        return rf"\sqrt[{_ml(kids[1]).strip()}]{{{_ml(kids[0]).strip()}}}"
    if tag == "mfrac" and len(kids) == 2:
        num, den = _ml(kids[0]).strip(), _ml(kids[1]).strip()
        if (node.attributes.get("linethickness") or "").strip() in ("0", "0px", "0pt", "0em"):
            return rf"\genfrac{{}}{{}}{{0pt}}{{}}{{{num}}}{{{den}}}"
        if node.attributes.get("bevelled") == "true":
            return f"{_ml_arg(num)}/{_ml_arg(den)}"
        return rf"\frac{{{num}}}{{{den}}}"
    if tag in ("msup", "msub", "msubsup") and len(kids) == (3 if tag == "msubsup" else 2):
        base = _ml_base(kids[0])
        sub = _ml(kids[1]).strip() if tag != "msup" else ""
        sup = _ml(kids[-1]).strip() if tag != "msub" else ""
        if sup and not sup.strip("'"):  # primes: x'
            return base + (f"_{_ml_arg(sub)}" if sub else "") + sup
        return base + (f"_{_ml_arg(sub)}" if sub else "") + (f"^{_ml_arg(sup)}" if sup else "")
    if tag in ("mover", "munder") and len(kids) == 2:
        base, script = _ml(kids[0]).strip(), _collapse(kids[1].text(deep=True))
        accents = OVER_ACCENTS if tag == "mover" else UNDER_ACCENTS
        if kids[1].tag == "mo" and script in accents:
            cmd = accents[script]
            if cmd == r"\overline" and node.attributes.get("accent") == "true" and len(base) == 1:
                cmd = r"\bar"
            if cmd == r"\vec" and len(base) > 1:
                cmd = r"\overrightarrow"
            return f"{cmd}{{{base}}}"
        sub = _ml(kids[1]).strip()
        if base in LIMIT_OPS or base.startswith((r"\overbrace", r"\underbrace")):
            return f"{base}{'^' if tag == 'mover' else '_'}{_ml_arg(sub)}"
        return rf"\{'overset' if tag == 'mover' else 'underset'}{{{sub}}}{{{base}}}"
    if tag == "munderover" and len(kids) == 3:
        base = _ml(kids[0]).strip()
        under, over = _ml_arg(_ml(kids[1])), _ml_arg(_ml(kids[2]))
        if base in LIMIT_OPS:
            return f"{base}_{under}^{over}"
        return rf"\overset{{{over.strip('{}')}}}{{\underset{{{under.strip('{}')}}}{{{base}}}}}"
    if tag == "mmultiscripts" and kids:
        children = list(_elements(node))
        split = next((i for i, c in enumerate(children) if c.tag == "mprescripts"), len(children))
        pre = _ml_scripts(children[split + 1 :])
        return (f"{{}}{pre}" if pre else "") + _ml_base(children[0]) + _ml_scripts(children[1:split])
    return _ml_row(kids)


# -- forum threads -----------------------------------------------------------------------------
POST_SELECTOR = (
    ".post, .message, .comment, .reply, .answer, .question, .topic-post, .postbit, .postcontainer,"
    " [data-post-id], [itemtype*='schema.org/Comment'], [itemtype*='schema.org/Answer'],"
    " [itemtype*='schema.org/Question'], [itemtype*='DiscussionForumPosting']"
)
"""Elements that may be one post of a thread. A candidate is a post when an author can be read
from it (outside its nested posts, quotes and body); a page is a thread when it has two posts."""
POST_BODY_SELECTORS = (
    ".s-prose", ".post-text", ".js-post-body", ".cooked", ".comment-copy", ".comment-content",
    ".message-body", ".bbWrapper", ".postcontent", ".post-content", ".post-body", ".post_body",
    ".entry-content", ".comment-text", "[itemprop=text]", "[itemprop=articleBody]",
    "[itemprop=commentText]", ".content",
)  # fmt: skip
AUTHOR_SELECTORS = (
    ".post-signature.owner .user-details", "[itemprop=author] [itemprop=name]", ".username",
    ".user-details", ".comment-user", ".message-name", ".fn", ".comment-author", "[itemprop=author]",
    ".author", ".post-author", ".poster", ".user-name",
)  # fmt: skip
"""In priority order. Of several `.user-details` the last is the author's (StackExchange puts the
last editor's signature first); of the others the first. A match's first link is the name."""
MAX_AUTHOR_CHARS = 80
QUOTE_CLASS = re.compile(r"(?:^|[-_])quote(?:content|box)?(?:$|[-_])", re.I)
_QUOTE_CLASS_MARKER = re.compile(r"""class=["']?[^"'>]*?quote""")  # run on the lower-cased source
_POST_CLASS_MARKER = re.compile(  # run on the lower-cased source
    r"""class=["']?[^"'>]*?\b(?:post|message|comment|reply|answer|question|topic-post|postbit|postcontainer)\b"""
)


@dataclass
class _Post:
    author: str
    body: int | None  # mem_id of the post's body element, when the markup names one
    skip: set[int]  # mem_ids of the author elements, not rendered with the post
    title: int | None = None  # mem_id of its own h1/h2 outside the body (a blog post's title)


def _is_quote(node: LexborNode, docutils: bool) -> bool:
    """A quotation. Docutils writes indented blocks as class-less `<blockquote>`s: not quotes."""
    cls = node.attributes.get("class") or ""
    if node.tag == "blockquote":
        return bool(cls) or not docutils
    return any(QUOTE_CLASS.search(c) for c in cls.split())


def _quote_levels(body: LexborNode, docutils: bool, low: str) -> set[int]:
    """The quotes that open a `> ` level: every quote except one that is the direct child of a
    quote container (Discourse `aside.quote > blockquote`, vBulletin `.bbcode_quote > .quote_container`)."""
    selectors = [
        *([("blockquote[class]" if docutils else "blockquote")] if "<blockquote" in low else []),
        *(["[class*=quote i]"] if _QUOTE_CLASS_MARKER.search(low) else []),
    ]
    levels: set[int] = set()
    for node in body.css(", ".join(selectors)) if selectors else ():
        if not _is_quote(node, docutils):
            continue
        parent = node.parent
        if parent is not None and parent.tag != "blockquote" and _is_quote(parent, docutils):
            continue
        levels.add(node.mem_id)
    return levels


def _own(node: LexborNode, post: LexborNode, fence: set[int]) -> bool:
    """Whether `node` belongs to `post` itself: no element between them is in `fence`."""
    for a in _ancestors(node):
        if a.mem_id == post.mem_id:
            return True
        if a.mem_id in fence:
            return False
    return False


def _author_text(node: LexborNode) -> str:
    link = node.css_first("a") if node.tag != "a" else None
    text = _collapse((link if link is not None and link.text(deep=True).strip() else node).text(deep=True))
    text = re.sub(r"^by\s+", "", text, flags=re.I).rstrip(":").strip()
    return text if 0 < len(text) <= MAX_AUTHOR_CHARS else ""


def _find_posts(body: LexborNode, quotes: set[int]) -> dict[int, _Post]:
    """The posts of a forum thread, by mem_id ({} when the page is not a thread). Run before
    boilerplate removal: authors often sit in a post's `<footer>` or a `.user-info` sidebar."""
    cands = sorted(body.css(POST_SELECTOR), key=lambda n: -sum(1 for _ in _ancestors(n)))
    posts: dict[int, _Post] = {}
    for cand in cands:  # innermost first, so that a candidate knows its nested posts
        fence = set(posts) | quotes
        bodies = (
            n for sel in POST_BODY_SELECTORS for n in cand.css(sel) if n.mem_id not in fence and _own(n, cand, fence)
        )
        post_body = next(bodies, None)
        if post_body is not None:
            fence.add(post_body.mem_id)
        for sel in AUTHOR_SELECTORS:
            found = [n for n in cand.css(sel) if n.mem_id not in fence and _own(n, cand, fence)]
            if sel == ".user-details":
                found.reverse()
            hit = next(((n, a) for n in found if (a := _author_text(n))), None)
            if hit is not None:
                title = next((h for h in cand.css("h1, h2") if _own(h, cand, fence)), None)
                posts[cand.mem_id] = _Post(
                    hit[1],
                    post_body.mem_id if post_body is not None else None,
                    {hit[0].mem_id},
                    title.mem_id if title is not None and post_body is not None else None,
                )
                break
    return posts if len(posts) >= 2 else {}


def _common_ancestor(nodes: list[LexborNode]) -> LexborNode:
    chains = [[n, *_ancestors(n)][::-1] for n in nodes]
    common = chains[0][0]
    for level in zip(*chains):
        if len({n.mem_id for n in level}) > 1:
            break
        common = level[0]
    return common


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


def _is_hidden(a: dict) -> bool:
    if "hidden" in a or a.get("aria-hidden") == "true":
        return True
    style = (a.get("style") or "").replace(" ", "").lower()
    return "display:none" in style or "visibility:hidden" in style


def _boilerplate(node: LexborNode, root: LexborNode, docutils: bool) -> str | None:
    """Why `node` is chrome: 'tag' (certain: tag, role, hidden, link text), 'class' (a name
    that looks like chrome), or None."""
    tag = node.tag
    attrs = node.attributes
    cls = _classes(node, attrs)
    if tag in DROP_TAGS:
        return None if (tag == "aside" and (KEEP_CLASS.search(cls) or _is_quote(node, docutils))) else "tag"
    if tag == "header":  # a site header; an article's own header stays
        inside = any(a.tag in ("article", "main", "section") or a.mem_id == root.mem_id for a in _ancestors(node))
        return None if inside else "tag"
    if (attrs.get("role") or "").lower() in DROP_ROLES or _is_hidden(attrs):
        return "tag"
    if tag == "a" and _collapse(node.text(deep=True)).lower() in BOILERPLATE_LINK_TEXT:
        return "tag"
    return "class" if cls and _chrome_class(cls) else None


@lru_cache(maxsize=1 << 16)  # pages repeat their class names; the regexes are the cost
def _chrome_class(cls: str) -> bool:
    return bool(BOILERPLATE_CLASS.search(cls) and not KEEP_CLASS.search(cls))


def _drop_boilerplate(body: LexborNode, root: LexborNode, keep: set[int], docutils: bool) -> None:
    """Decompose boilerplate subtrees; never the main root or an element that contains it, and
    not for its class names a post of a thread or an element that contains one (`keep`)."""
    protect = {root.mem_id, *(a.mem_id for a in _ancestors(root))}
    total = len(_collapse(body.text(deep=True))) if root.mem_id == body.mem_id else 0
    doomed: list[LexborNode] = []
    stack = list(_elements(body))
    while stack:
        node = stack.pop()
        why = None if node.mem_id in protect else _boilerplate(node, root, docutils)
        if why == "class" and node.mem_id in keep:
            why = None
        # With no marked main content, a wrapper holding most of the page is not chrome,
        # whatever its class says (`<div id="page-with-sidebar">`).
        if why == "class" and total and len(_collapse(node.text(deep=True))) > 0.6 * total:
            why = None
        if why:
            doomed.append(node)
        elif node.tag != "pre":  # a code block holds no chrome, and a third of a docs page's elements
            stack.extend(_elements(node))
    for node in doomed:
        node.decompose()


def _drop_link_dense(root: LexborNode, posts: dict[int, _Post], keep: set[int], maths: list) -> None:
    """Decompose lists and blocks that are mostly links (menus, link hubs, index tables); never
    a post of a thread, anything in one, or an element that contains one (`keep`): a short reply
    is often mostly its author's and its date's links. A formula counts as its TeX (a table of
    linked problems and their equations is not a menu).

    One pass over the links adds each link's text length to its block ancestors; only blocks
    with enough links have their own text measured, outermost first."""
    links: dict[int, list] = {}  # mem_id -> [node, depth, links, link chars]
    for a in root.css("a"):
        chars = len(_WS.sub("", a.text(deep=True)))
        chain = []
        for anc in _ancestors(a):
            if anc.mem_id == root.mem_id:
                break
            chain.append(anc)
        for depth, anc in enumerate(reversed(chain)):
            if anc.tag in LINK_DENSITY_TAGS:
                entry = links.setdefault(anc.mem_id, [anc, depth, 0, 0])
                entry[2] += 1
                entry[3] += chars
    doomed: dict[int, LexborNode] = {}
    for node, _, n, chars in sorted(links.values(), key=lambda e: e[1]):
        if n < LINK_DENSITY_MIN_LINKS or node.mem_id in keep:
            continue
        if any(a.mem_id in doomed or a.mem_id in posts or a.tag == "pre" for a in _ancestors(node)):
            continue
        text = _MATH.sub(lambda m: maths[int(m.group(1))][0], node.text(deep=True))
        text = len(_WS.sub("", text))
        if text and chars / text >= LINK_DENSITY and node.css_first("pre") is None:
            doomed[node.mem_id] = node
    for node in doomed.values():  # outermost only, so no node is freed twice
        node.decompose()


# -- rendering ---------------------------------------------------------------------------------
def _code_language(pre: LexborNode) -> str:
    nodes = [pre]
    code = pre.css_first("code")
    if code is not None:
        nodes.append(code)
    nodes.extend(list(_ancestors(pre))[:3])
    for n in nodes:
        attrs = n.attributes
        lang = attrs.get("data-lang") or attrs.get("data-language")
        if not lang and n.tag in ("pre", "code"):  # GitHub's `<pre lang="python">`
            lang = attrs.get("lang")
        if lang:
            return "" if lang.lower() in NO_LANGUAGE else lang
        for c in (attrs.get("class") or "").split():
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

    def __init__(self, maths: list, posts: dict[int, _Post] | None = None, quotes: set[int] | None = None):
        self.maths = maths
        self.posts = posts or {}
        self.quotes = quotes or set()
        self.skip = {i for p in self.posts.values() for i in p.skip}
        self.in_quote = 0
        self.blocks: list[str] = []
        self.inline: list[str] = []

    # inline buffer
    def flush(self) -> None:
        if not self.inline:
            return
        text = _WS.sub(" ", "".join(self.inline)).strip()
        self.inline = []
        if _BR in text:
            lines = [ln.strip() for ln in text.split(_BR)]
            text = "\n".join(ln for ln in lines if ln)
        if text:
            self.blocks.append(text)

    def text(self, s: str) -> None:
        if "\ue000" not in s:
            self.inline.append(s)
            return
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
        if node.mem_id in self.skip:
            return
        if node.mem_id in self.posts:
            self.flush()
            self.render_post(node, depth)
        elif node.mem_id in self.quotes:
            self.flush()
            self.render_quote(node, depth)
        elif tag in HEADINGS:
            self.flush()
            text = self.inline_text(node, depth)
            if text:
                self.blocks.append("#" * HEADINGS[tag] + " " + text)
        elif tag == "pre":
            self.flush()
            code = _pre_text(node, self.maths)
            if code:
                self.blocks.append(_fence(code, _code_language(node)))
        elif tag in ("ul", "ol") and not any(li.mem_id in self.posts for li in _elements(node)):
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
        elif tag in BLOCK_TAGS or (tag == "cite" and self.in_quote):  # a quote's "bob wrote:" is a line
            self.flush()
            for child in _children(node):
                self.walk(child, depth + 1)
            self.flush()
        else:
            for child in _children(node):
                self.walk(child, depth + 1)

    def render_post(self, post: LexborNode, depth: int) -> None:
        """`**author** wrote:`, then the post's body; then the replies nested in it but outside
        its body (StackExchange comments), each rendered as a post of its own."""
        info = self.posts[post.mem_id]
        body = None
        if info.body is not None:
            body = next((n for n in post.traverse() if n.mem_id == info.body), None)
        if body is None:
            blocks = self.sub(_children(post), depth)
            replies = []
        else:
            if info.title is not None:
                title = next((n for n in post.traverse() if n.mem_id == info.title), None)
                if title is not None:
                    self.walk(title, depth + 1)
            blocks = self.sub([body], depth)
            fence = {*self.posts, info.body}
            replies = [n for n in post.css(POST_SELECTOR) if n.mem_id in self.posts and _own(n, post, fence)]
        if blocks:
            self.blocks.append(f"**{info.author}** wrote:")
            self.blocks.extend(blocks)
        for reply in replies:
            self.walk(reply, depth + 1)

    def render_quote(self, node: LexborNode, depth: int) -> None:
        self.in_quote += 1
        blocks = self.sub(_children(node), depth)
        self.in_quote -= 1
        if blocks:
            self.blocks.append(
                "\n>\n".join("\n".join(f"> {ln}" if ln else ">" for ln in b.split("\n")) for b in blocks)
            )

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
