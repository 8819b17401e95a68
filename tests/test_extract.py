"""HTML -> text (phi4ray.data.extract).

Real pages: the samples shipped in phi4ray/data/samples, and pages of ../shared/data/html that
nobody here wrote (skipped when that folder is absent). Hand-written minimal pages in
tests/fixtures/html cover what those docs do not have: KaTeX, MathML without TeX, forum threads.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from selectolax.lexbor import LexborHTMLParser

from phi4ray.data import extract
from phi4ray.data.curate import samples_dir
from phi4ray.stage import Reject

SAMPLES = Path(samples_dir())
SHARED_HTML = Path(__file__).resolve().parents[2] / "shared" / "data" / "html"
FIXTURES = Path(__file__).parent / "fixtures" / "html"


def page(name: str) -> str:
    return extract.extract_text((SAMPLES / name).read_text(encoding="utf-8"))


def shared(name: str) -> str:
    path = SHARED_HTML / name
    if not path.is_file():
        pytest.skip(f"{path} is missing")
    return extract.extract_text(path.read_text(encoding="utf-8"))


def fixture(name: str) -> str:
    return extract.extract_text((FIXTURES / name).read_text(encoding="utf-8"))


# -- the shipped samples -----------------------------------------------------------------------
def test_extract_code_block_with_language():
    text = page("python-docs__library__atexit.html")
    block = textwrap.dedent(
        """\
        ```python3
        def goodbye(name, adjective):
            print('Goodbye %s, it was %s to meet you.' % (name, adjective))

        import atexit

        atexit.register(goodbye, 'Donny', 'nice')
        # or:
        atexit.register(goodbye, adjective='nice', name='Donny')
        ```"""
    )
    assert "\n\n" + block + "\n\n" in text
    graphlib = page("python-docs__library__graphlib.html")
    assert '```pycon\n>>> graph = {"D": {"B", "C"}, "C": {"A"}, "B": {"A"}}\n' in graphlib
    # Sphinx's `highlight-default` does not name a language: a bare fence.
    assert "```\n>>> from sympy.physics.sho import E_nl\n" in page("sympy-docs__modules__physics__sho.html")


def test_extract_table_as_markdown():
    text = page("python-docs__library__pwd.html")
    table = "\n".join(
        [
            "| Index | Attribute | Meaning |",
            "| --- | --- | --- |",
            "| 0 | `pw_name` | Login name |",
            "| 1 | `pw_passwd` | Optional encrypted password |",
            "| 2 | `pw_uid` | Numerical user ID |",
            "| 3 | `pw_gid` | Numerical group ID |",
            "| 4 | `pw_gecos` | User name or comment field |",
            "| 5 | `pw_dir` | User home directory |",
            "| 6 | `pw_shell` | User command interpreter |",
        ]
    )
    assert "\n\n" + table + "\n\n" in text
    assert text.startswith("# `pwd` — The password database\n\n")


def test_extract_math_as_latex():
    text = page("sympy-docs__modules__physics__units__philosophy.html")
    assert "\n\n\\[d'_i = \\prod_{j=1}^n d_j^{P_{ij}}.\\]\n\n" in text  # display (div.math)
    assert "the linear space \\(\\mathbf{Z}^n\\) as a representation" in text  # inline (img.math)
    matrices = page("sympy-docs__modules__physics__matrices.html")
    assert "Returns a Dirac gamma matrix \\(\\gamma^\\mu\\) in the standard (Dirac) representation." in matrices


@pytest.mark.parametrize("name", sorted(p.name for p in SAMPLES.glob("*.html")))
def test_extract_drops_boilerplate(name):
    text = page(name)
    for junk in (
        "Navigation",
        "Table of Contents",
        "Show Source",
        "Copyright",
        "©",
        "Previous topic",
        "Report a Bug",
        "Quick search",
        "Back to top",
        "Toggle",
        "Last updated",
        "¶",
    ):
        assert junk not in text, f"{junk!r} left in {name}"


def test_extract_math_forms_and_chrome():
    html = """<html><body>
      <div class="cookie-banner">We use cookies. Accept all</div>
      <header><a href="/">Site</a></header>
      <nav><ul><li><a href="/a">A</a></li></ul></nav>
      <main>
        <h2>Forms of math</h2>
        <p>MathJax <script type="math/tex">a^2+b^2</script> and
           <span class="math notranslate nohighlight">\\(e^{i\\pi}\\)</span>.</p>
        <script type="math/tex; mode=display">\\int_0^1 x\\,dx</script>
        <p>KaTeX <span class="katex"><span class="katex-mathml"><math><semantics><mrow><mi>x</mi></mrow>
           <annotation encoding="application/x-tex">\\frac{1}{2}</annotation></semantics></math></span>
           <span class="katex-html" aria-hidden="true">12</span></span> and MathML
           <math alttext="{\\displaystyle y_1}"><msub><mi>y</mi><mn>1</mn></msub></math>.</p>
        <ol start="3"><li>three</li><li>four <ul><li>nested</li></ul></li></ol>
        <p>See <a class="headerlink" href="#x">¶</a><a href="/edit">Edit this page</a></p>
      </main>
      <footer>© 2024 Example</footer>
    </body></html>"""
    assert extract.extract_text(html) == textwrap.dedent(
        """\
        ## Forms of math

        MathJax \\(a^2+b^2\\) and \\(e^{i\\pi}\\).

        \\[\\int_0^1 x\\,dx\\]

        KaTeX \\(\\frac{1}{2}\\) and MathML \\(y_1\\).

        3. three
        4. four
           - nested

        See"""
    )


def test_extract_step_rejects_short_and_empty():
    assert extract.extract({"id": "a", "html": "<p>hi</p>"}, min_chars=10) == Reject("too_short", "2 < 10 chars")
    assert extract.extract({"id": "a", "html": "<nav>menu</nav>"}, min_chars=0) == Reject("empty")
    rec = extract.extract({"id": "a", "html": (SAMPLES / "python-docs__library__pwd.html").read_text(), "meta": {}})
    assert "html" not in rec and rec["text"].startswith("# `pwd`")
    assert rec["meta"]["title"].startswith("pwd — The password database")
    assert extract.extract({"id": "b", "text": "  plain text  "}, min_chars=3)["text"] == "plain text"


# -- real pages of ../shared/data/html ---------------------------------------------------------
PYTHON_CHROME = (
    "Navigation", "Table of Contents", "Previous topic", "Next topic", "This Page", "Report a Bug",
    "Show Source", "Quick search", "Copyright", "Python Software Foundation.", "Please donate",
    "Last updated on", "Found a bug", "Created using", "3.11.2 Documentation", "»", "¶",
)  # fmt: skip
SYMPY_CHROME = (
    "Contents", "On this page", "Back to top", "Toggle", "Copyright", "Made with", "Furo",
    "@pradyunsg", "Next", "Previous", "SymPy 1.11.1 documentation", "Getting Started", "API Reference",
    "Search",
)  # fmt: skip


def test_real_c_code_block():
    text = shared("python-docs/extending__embedding.html")
    block = textwrap.dedent(
        """\
        ```c
        #define PY_SSIZE_T_CLEAN
        #include <Python.h>

        int
        main(int argc, char *argv[])
        {
            wchar_t *program = Py_DecodeLocale(argv[0], NULL);
            if (program == NULL) {
                fprintf(stderr, "Fatal error: cannot decode argv[0]\\n");
                exit(1);
            }
            Py_SetProgramName(program);  /* optional but recommended */
            Py_Initialize();
            PyRun_SimpleString("from time import time,ctime\\n"
                               "print('Today is', ctime(time()))\\n");
            if (Py_FinalizeEx() < 0) {
                exit(120);
            }
            PyMem_RawFree(program);
            return 0;
        }
        ```"""
    )
    assert "\n\n" + block + "\n\n" in text
    assert text.startswith("# 1. Embedding Python in Another Application\n\n")
    assert text.endswith(
        "```pycon\n>>> import sysconfig\n>>> sysconfig.get_config_var('LIBS')\n'-lpthread -ldl  -lutil'\n"
        ">>> sysconfig.get_config_var('LINKFORSHARED')\n'-Xlinker -export-dynamic'\n```"
    )
    for junk in PYTHON_CHROME:
        assert junk not in text, junk


def test_real_table_with_inline_code():
    text = shared("python-docs/library__unittest.html")
    table = "\n".join(
        [
            "| Method | Checks that | New in |",
            "| --- | --- | --- |",
            "| `assertRaises(exc, fun, *args, **kwds)` | `fun(*args, **kwds)` raises exc |  |",
            "| `assertRaisesRegex(exc, r, fun, *args, **kwds)` | `fun(*args, **kwds)` raises exc and the message matches regex r | 3.1 |",
            "| `assertWarns(warn, fun, *args, **kwds)` | `fun(*args, **kwds)` raises warn | 3.2 |",
            "| `assertWarnsRegex(warn, r, fun, *args, **kwds)` | `fun(*args, **kwds)` raises warn and the message matches regex r | 3.2 |",
            "| `assertLogs(logger, level)` | The `with` block logs on logger with minimum level | 3.4 |",
            "| `assertNoLogs(logger, level)` | The `with` block does not log on logger with minimum level | 3.10 |",
        ]
    )  # fmt: skip
    assert "\n\n" + table + "\n\n" in text
    assert "\n\n```python3\n@unittest.removeHandler\ndef test_signal_handling(self):\n    ...\n```" in text
    for junk in PYTHON_CHROME:
        assert junk not in text, junk


def test_real_display_and_inline_math():
    text = shared("sympy-docs/modules__concrete.html")
    assert text.startswith("# Concrete\n\n## Hypergeometric terms\n\n")
    assert "In simple words if we are given term \\(a(n)\\) then it is hypergeometric" in text
    assert "has the obvious meaning for \\(m < n\\), namely:" in text
    assert (
        "\n\n\\[\\sum_{m \\leq i < n} f(i) = f(m) + f(m+1) + \\ldots + f(n-2) + f(n-1)\\]\n\n"
        "with the upper limit value \\(f(n)\\) excluded." in text
    )
    # The TeX is kept as written, two spaces around \quad included.
    assert "\n\n\\[\\sum_{m \\leq i < n} f(i) = 0  \\quad \\mathrm{for} \\quad  m = n\\]\n\n" in text
    for junk in SYMPY_CHROME:
        assert junk not in text, junk
    assert not [ln for ln in text.splitlines() if ln.endswith("#")]  # Furo's heading permalinks


def test_real_table_of_linked_equations():
    """A table whose cells are links and formulas is content, not a link hub: a formula
    counts as its TeX in the link density."""
    text = shared("sympy-docs/guides__solving__index.html")
    table = "\n".join(
        [
            "| Description | Example | Solution |",
            "| --- | --- | --- |",
            "| Solve an equation algebraically | \\(x^2 = y\\) | \\(x \\in \\{-\\sqrt{y},\\sqrt{y}\\}\\) |",
            "| Solve a system of equations algebraically | \\(x^2 + y = 2, x - y = 4\\) | \\(\\{(x = -3, y = -7), (x = 2, y = 2)\\}\\) |",
            "| `Solve an equation numerically` | \\(\\cos(x) = x\\) | \\(x \\approx 0.739085133215161\\) |",
        ]
    )  # fmt: skip
    assert "Learn how to use SymPy computer algebra system to:\n\n" + table + "\n" in text
    assert (
        "| Solve (find the roots of) a polynomial algebraically | \\(x^2 - x = 0\\) | \\(x \\in \\{0, 1\\}\\) |\n"
        in text
    )
    for junk in SYMPY_CHROME:
        assert junk not in text, junk
    assert not [ln for ln in text.splitlines() if ln.endswith("#")]  # Furo's heading permalinks


# -- KaTeX and MathML --------------------------------------------------------------------------
def test_katex_keeps_tex_and_drops_the_html_rendering():
    assert fixture("katex.html") == textwrap.dedent(
        """\
        # Euler's identity

        For real \\(x\\), Euler's formula reads \\(e^{ix} = \\cos x + i\\sin x\\).

        At \\(x = \\pi\\) it gives

        \\[e^{i\\pi} + 1 = 0.\\]

        KaTeX built with `output: "mathml"` and no annotation still yields TeX: \\(|e^{i\\theta}|^2 = 1\\)."""
    )


def test_mathml_page_becomes_latex():
    assert fixture("mathml.html") == textwrap.dedent(
        """\
        # Formulas in MathML

        The quadratic formula:

        \\[x = \\frac{-b \\pm \\sqrt{b^2 - 4ac}}{2a}\\]

        A sum \\(\\sum_{k=1}^n k = \\frac{n(n + 1)}{2}\\) and the Gaussian integral \\(\\int_{-\\infty}^{\\infty} e^{-x^2}\\,\\mathrm{d}x = \\sqrt{\\pi}\\).

        A limit \\(\\lim_{n \\to \\infty} (1 + \\frac{1}{n})^n = e\\), a cube root \\(\\sqrt[3]{x + 1}\\), an index pair \\(T_{ij}^2\\), a vector \\(\\vec{v} \\cdot \\vec{w}\\) and a set \\(\\{x \\in \\mathbb{R} \\mid x \\geq 0\\}\\).

        Rotation by \\(\\theta\\):

        \\[R(\\theta) = \\begin{bmatrix} \\cos \\theta & -\\sin \\theta \\\\ \\sin \\theta & \\cos \\theta \\end{bmatrix}\\]

        Piecewise, with `mtext` and `mfenced`:

        \\[|x| = \\begin{cases} x & \\text{if }x \\geq 0 \\\\ -x & \\text{otherwise} \\end{cases}\\]

        A point \\(f(x, y) \\to \\hat{x} + \\bar{y}\\) and Greek \\(\\alpha \\neq \\Omega\\)."""
    )


@pytest.mark.parametrize(
    "mathml, latex",
    [
        ("<mi>x</mi><mo>+</mo><mn>2</mn>", "x + 2"),
        ("<msub><mi>a</mi><mrow><mi>i</mi><mi>j</mi></mrow></msub>", "a_{ij}"),
        ("<msup><mrow><mo>(</mo><mi>a</mi><mo>+</mo><mi>b</mi><mo>)</mo></mrow><mn>2</mn></msup>", "(a + b)^2"),
        ("<msup><msup><mi>x</mi><mn>2</mn></msup><mn>3</mn></msup>", "{x^2}^3"),
        ("<msubsup><mi>f</mi><mi>n</mi><mo>″</mo></msubsup>", "f_n''"),
        (
            "<mfrac><mn>1</mn><mrow><mn>1</mn><mo>+</mo><msup><mi>e</mi><mrow><mo>−</mo><mi>x</mi></mrow></msup></mrow></mfrac>",
            r"\frac{1}{1 + e^{-x}}",
        ),
        ("<mfrac linethickness='0'><mi>n</mi><mi>k</mi></mfrac>", r"\genfrac{}{}{0pt}{}{n}{k}"),
        (
            (
                "<munderover><mo>∏</mo><mrow><mi>p</mi><mo>∈</mo><mi>P</mi></mrow><mi>∞</mi></munderover>"
                "<mfrac><mn>1</mn><mrow><mn>1</mn><mo>−</mo><msup><mi>p</mi><mrow><mo>−</mo><mi>s</mi></mrow></msup></mrow></mfrac>"
            ),
            r"\prod_{p \in P}^{\infty} \frac{1}{1 - p^{-s}}",
        ),
        (
            (
                "<munder><mi>x</mi><mo>_</mo></munder><mo>,</mo><munder><mrow><mi>a</mi><mo>+</mo><mi>b</mi></mrow><mo>⏟</mo></munder>"
                "<mo>,</mo><mover><mrow><mi>A</mi><mi>B</mi></mrow><mo>→</mo></mover><mo>,</mo><mover><mi>f</mi><mo>~</mo></mover>"
                "<mo>,</mo><mover><mi>x</mi><mo>˙</mo></mover>"
            ),
            r"\underline{x}, \underbrace{a + b}, \overrightarrow{AB}, \tilde{f}, \dot{x}",
        ),
        (
            "<mover><mi>X</mi><mi>def</mi></mover><mo>≔</mo><munder><mi>Y</mi><mi>n</mi></munder>",
            r"\overset{\mathrm{def}}{X} := \underset{n}{Y}",
        ),
        (
            "<mi mathvariant='bold'>v</mi><mo>⋅</mo><mi mathvariant='script'>L</mi><mo>⊆</mo><mi mathvariant='fraktur'>g</mi>",
            r"\mathbf{v} \cdot \mathcal{L} \subseteq \mathfrak{g}",
        ),
        ("<mfenced open='{' close='}' separators=';'><mi>a</mi><mi>b</mi></mfenced>", r"\{a;b\}"),
        (
            (
                "<mfenced><mtable><mtr><mtd><mn>1</mn></mtd><mtd><mn>0</mn></mtd></mtr>"
                "<mtr><mtd><mn>0</mn></mtd><mtd><mn>1</mn></mtd></mtr></mtable></mfenced>"
            ),
            r"\begin{pmatrix} 1 & 0 \\ 0 & 1 \end{pmatrix}",
        ),
        (
            "<mtable><mtr><mtd><mi>a</mi></mtd></mtr><mtr><mtd><mi>b</mi></mtd></mtr></mtable>",
            r"\begin{matrix} a \\ b \end{matrix}",
        ),
        (
            (
                "<mi>f</mi><mo>:</mo><mi>A</mi><mo>→</mo><mi>B</mi><mo>,</mo><mspace width='1em'/><mi>x</mi><mo>↦</mo>"
                "<msup><mi>x</mi><mo>′</mo></msup>"
            ),
            r"f:A \to B, \quad x \mapsto x'",
        ),
        ("<mmultiscripts><mi>C</mi><mi>k</mi><none/><mprescripts/><mi>n</mi><none/></mmultiscripts>", "{}_nC_k"),
        ("<ms>abc</ms><mtext>for all&#xA0;</mtext><mi>n</mi>", r'\text{"abc"}\text{for all }n'),
        (
            (
                "<mo>∀</mo><mi>ε</mi><mo>&gt;</mo><mn>0</mn><mo>∃</mo><mi>δ</mi><mo>&gt;</mo><mn>0</mn><mo>:</mo>"
                "<mo>|</mo><mi>x</mi><mo>−</mo><mi>y</mi><mo>|</mo><mo>&lt;</mo><mi>δ</mi><mo>⇒</mo>"
                "<mo>|</mo><mi>f</mi><mo>(</mo><mi>x</mi><mo>)</mo><mo>−</mo><mi>f</mi><mo>(</mo><mi>y</mi><mo>)</mo><mo>|</mo>"
                "<mo>&lt;</mo><mi>ε</mi>"
            ),
            r"\forall \varepsilon > 0 \exists \delta > 0:|x - y| < \delta \Rightarrow |f(x) - f(y)| < \varepsilon",
        ),
        (
            "<semantics><mrow><mi>ℏ</mi><mi>ω</mi></mrow><annotation encoding='text/plain'>hbar omega</annotation></semantics>",
            r"\hbar \omega",
        ),
        (
            (
                "<msubsup><mo>∮</mo><mi>C</mi><mrow/></msubsup><mi mathvariant='bold'>F</mi><mo>⋅</mo><mi>d</mi>"
                "<mi mathvariant='bold'>r</mi>"
            ),
            r"\oint_C \mathbf{F} \cdot d\mathbf{r}",
        ),
        ("<mi>log</mi><mo>&#x2061;</mo><mi>x</mi><mo>≤</mo><mi>x</mi><mo>−</mo><mn>1</mn>", r"\log x \leq x - 1"),
    ],
)
def test_mathml_to_latex(mathml, latex):
    math = LexborHTMLParser(f"<p><math>{mathml}</math></p>").css_first("math")
    assert extract.mathml_to_latex(math) == latex


# -- forum threads -----------------------------------------------------------------------------
def test_stackexchange_question_answers_and_comments():
    """Authors come from the owner's signature, not the editor's; comments follow their post;
    votes, share/edit menus, tags, sidebars, the sort box and the cookie banner are dropped."""
    assert fixture("stackexchange.html") == textwrap.dedent(
        """\
        # How do I reverse a list in Python?

        **Alice** wrote:

        How do I iterate over a list in reverse in Python?

        ```py
        xs = [1, 2, 3]
        for x in ???:
            print(x)
        ```

        **Bob** wrote:

        Do you need a copy, or is an iterator enough?

        ## 3 Answers

        **Dave** wrote:

        Use the built-in `reversed()` function:

        ```py
        for x in reversed(xs):
            print(x)
        ```

        > reversed(seq): Return a reverse iterator.

        **Erin** wrote:

        Or slice it: `xs[::-1]` makes a reversed copy."""
    )


def test_discourse_posts_with_quote():
    text = fixture("discourse.html")
    assert text.startswith("# Float precision in sum()\n\n")
    assert text.endswith(
        textwrap.dedent(
            """\
            **frank** wrote:

            Why does `sum([0.1] * 10)` not give `1.0`?

            ```python
            >>> sum([0.1] * 10)
            0.9999999999999999
            ```

            **grace** wrote:

            > frank:
            >
            > Why does `sum([0.1] * 10)` not give `1.0`?

            Because 0.1 has no exact binary representation. Use `math.fsum`:

            ```python
            >>> import math
            >>> math.fsum([0.1] * 10)
            1.0
            ```"""
        )
    )
    for junk in ("Sign Up", "Log In", "Like", "Share", "Reply", "Suggested Topics", "Decimal vs float", "Powered"):
        assert junk not in text, junk


def test_phpbb_posts_profiles_and_nested_quote():
    assert fixture("phpbb.html") == textwrap.dedent(
        """\
        ## Integer overflow in C

        **heidi** wrote:

        Is signed integer overflow undefined behaviour?
        For example `INT_MAX + 1`.

        **ivan** wrote:

        > heidi wrote: ↑Tue Jan 02, 2024 10:15 am
        >
        > Is signed integer overflow undefined behaviour?

        Yes. Unsigned arithmetic wraps around; signed overflow is undefined.
        Compile with `-fsanitize=undefined` to catch it."""
    )


def test_blog_comments_outside_the_article_are_kept():
    """The article is the page's only <article>; its comments sit beside it, their authors in
    <footer class="comment-meta">: both survive, and the reply form does not."""
    assert fixture("blog_comments.html") == textwrap.dedent(
        """\
        # Why I switched to Rust

        **Jana** wrote:

        After ten years of C++, I moved my side projects to Rust. The borrow checker catches the bugs I used to find in production.

        ```rust
        fn main() {
            let v = vec![1, 2, 3];
            println!("{:?}", v);
        }
        ```

        ## 2 thoughts on “Why I switched to Rust”

        **Kim** wrote:

        What about compile times? They were my main reason to stay with C++.

        **Jana** wrote:

        Incremental builds and `cargo check` keep them tolerable."""
    )


def test_single_article_with_author_is_not_a_thread():
    html = """<body><article class="post"><h1>Notes</h1><span class="author">by Ann</span>
      <div class="entry-content"><p>Body text.</p><blockquote><p>A quoted line.</p></blockquote></div></article></body>"""
    assert extract.extract_text(html) == "# Notes\n\nby Ann\n\nBody text.\n\n> A quoted line."


def test_docutils_blockquote_is_indentation_not_a_quote():
    meta = '<head><meta name="generator" content="Docutils 0.19: https://docutils.sourceforge.io/" /></head>'
    body = "<body><main><p>Parameters:</p><blockquote><div><p>x -- the value</p></div></blockquote></main></body>"
    assert extract.extract_text(f"<html>{meta}{body}</html>") == "Parameters:\n\nx -- the value"
    assert extract.extract_text(f"<html>{body}</html>") == "Parameters:\n\n> x -- the value"
