"""Instruction reversal for code (Phi-4 §2.2): code -> instruction -> code again -> fidelity check.

Snippets: whole documents whose `source` is `code` (seeds or curated pages), and the fenced code
blocks of curated pages in `languages` (```python, ```pycon, ...). An interactive session
(`>>>` lines) becomes the program it runs (`doctest`'s parser: prompts and printed results
removed). A snippet must parse, have `min_lines` non-blank lines and at most `max_chars`.

Steps, per snippet:

1. `original` (no LLM): the snippet runs in the sandbox (`synth/sandbox.py`) the way the Python
   REPL runs it: a top-level expression statement prints the repr of a non-None value. Its
   output is the behaviour that the regenerated program must reproduce. A snippet that does not
   run (`original_failed: <status>`) or prints nothing (`no_observable_output`) cannot be
   checked, so it is rejected before any LLM call.
2. `instruction` (template `reverse_instruction`, generate sampling): the instruction that
   would produce this program.
3. `regenerate` (template `reverse_code`: the instruction as the user turn, generate sampling):
   the program again; the first ```python block of the answer, else the whole answer. It must
   parse (`unparseable`).
4. `fidelity`: the tests are derived from the original by running it: the regenerated program
   passes when it runs in the sandbox with status `passed` and prints the same output, line by
   line (trailing spaces ignored, memory addresses masked, a line that is a Python string
   literal compared by its value, since `print(s)` and the REPL's echo `'s'` say the same):
   else `tests_failed: <why>`. And it must be close to the original in form: `similarity`
   (`ast`: difflib ratio over the normalised AST, where names the code binds are renamed by
   order of first binding and a top-level `print(x)` counts as the bare expression `x`;
   `token`: difflib ratio over Python tokens without comments) at least `min_similarity`,
   else `low_fidelity: ast 0.31 < 0.50`. Both ratios are computed and kept.

Rows: `kind=reverse`, `source=code`; `messages` = [user: instruction, assistant: the original
snippet in a ```python block] (the original is the verified code; the fidelity check vouches
for the instruction); `checks` has both sandbox results (`dataclasses.asdict(SandboxResult)`),
the output match, both similarities and the regenerated code.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import doctest
import hashlib
import io
import re
import textwrap
import tokenize

from phi4ray.config import ReverseConfig
from phi4ray.synth.ops import LLM, Inputs, Op, Work, alive, clip, fill, register

_FENCE = re.compile(r"^(`{3,})([\w+.-]*)[^\n]*\n(.*?)\n\1[ \t]*$", re.M | re.S)
_CODE_BLOCK = re.compile(r"```[ \t]*(?:python3?|py)?[ \t]*\n(.*?)```", re.S | re.I)


# -- snippets ---------------------------------------------------------------------------------
def code_blocks(text: str) -> list[tuple[str, str]]:
    """(language, code) of each fenced block of `text` (language '' when the fence has none)."""
    return [(m.group(2).lower(), m.group(3)) for m in _FENCE.finditer(text or "")]


def is_session(code: str) -> bool:
    return any(line.lstrip().startswith(">>>") for line in code.splitlines())


def as_program(code: str) -> str:
    """A snippet as a program: an interactive session (`>>>`) becomes its source lines."""
    code = textwrap.dedent(code).strip("\n")
    if is_session(code):
        examples = doctest.DocTestParser().get_examples(code)
        code = "".join(e.source for e in examples)
    return code.strip("\n")


def snippet_problem(code: str, cfg: ReverseConfig) -> str | None:
    """Why `code` is no snippet (None when it is one)."""
    if len(code) > cfg.max_chars:
        return "too_long"
    if sum(1 for line in code.splitlines() if line.strip()) < cfg.min_lines:
        return "too_few_lines"
    try:
        ast.parse(code)
    except (SyntaxError, ValueError):
        return "does_not_parse"
    return None


def extract_code(completion: str) -> str:
    """The first ```python block of a completion, else the completion itself."""
    m = _CODE_BLOCK.search(completion or "")
    return (m.group(1) if m else (completion or "")).strip("\n")


# -- behaviour --------------------------------------------------------------------------------
def echo_program(code: str, session: bool = False) -> str:
    """`code` with the REPL's echo: each top-level expression statement prints the repr of a
    non-None value (and sets `_`), as `python -i` would show it. Unless `session` (the code
    was typed at `>>>` prompts), a string as the first statement is a docstring: no echo."""
    tree = ast.parse(code)
    body: list[ast.stmt] = []
    for i, node in enumerate(tree.body):
        docstring = i == 0 and not session and isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) \
            and isinstance(node.value.value, str)
        if isinstance(node, ast.Expr) and not docstring:
            assign, check = ast.parse("__echo__ = None\nif __echo__ is not None:\n    _ = __echo__\n    print(repr(__echo__))").body
            assign.value = node.value
            body += [ast.copy_location(assign, node), ast.copy_location(check, node)]
        else:
            body.append(node)
    return ast.unparse(ast.fix_missing_locations(ast.Module(body=body, type_ignores=[])))


_ADDR = re.compile(r"0x[0-9a-fA-F]{6,}")


def normalize_output(out: str) -> list[str]:
    lines = []
    for line in (out or "").splitlines():
        line = _ADDR.sub("0x?", line.rstrip())
        if line[:1] in ("'", '"') and len(line) < 2000:
            try:
                v = ast.literal_eval(line)
                if isinstance(v, str):
                    line = v
            except (ValueError, SyntaxError, MemoryError, RecursionError):
                pass
        lines.append(line)
    while lines and not lines[-1]:
        lines.pop()
    while lines and not lines[0]:
        lines.pop(0)
    return lines


def compare_outputs(expected: str, got: str) -> str | None:
    """None when the outputs match, else where they differ."""
    a, b = normalize_output(expected), normalize_output(got)
    if a == b:
        return None
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return f"output differs at line {i + 1}: expected {x[:80]!r}, got {y[:80]!r}"
    return f"output has {len(b)} lines, expected {len(a)}"


# -- similarity -------------------------------------------------------------------------------
class _Normalise(ast.NodeTransformer):
    """Rename the names the code binds (v0, v1, ... by first binding); keep every other name."""

    def __init__(self, bound: list[str]):
        self.map = {n: f"v{i}" for i, n in enumerate(bound)}

    def visit_Name(self, node):
        node.id = self.map.get(node.id, node.id)
        return node

    def visit_arg(self, node):
        node.arg = self.map.get(node.arg, node.arg)
        node.annotation = None
        return node

    def _named(self, node):
        node.name = self.map.get(node.name, node.name)
        self.generic_visit(node)
        return node

    visit_FunctionDef = visit_AsyncFunctionDef = visit_ClassDef = _named


def _bound_names(tree: ast.AST) -> list[str]:
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            n = node.id
        elif isinstance(node, ast.arg):
            n = node.arg
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            n = node.name
        else:
            continue
        if n not in names:
            names.append(n)
    return names


def _unwrap_prints(tree: ast.Module) -> ast.Module:
    for i, node in enumerate(tree.body):
        v = node.value if isinstance(node, ast.Expr) else None
        if (isinstance(v, ast.Call) and isinstance(v.func, ast.Name) and v.func.id == "print"
                and len(v.args) == 1 and not v.keywords and not isinstance(v.args[0], ast.Starred)):
            tree.body[i] = ast.Expr(value=v.args[0])
    return tree


_CONTEXTS = {"Load", "Store", "Del"}


def ast_tokens(code: str) -> list[str]:
    tree = _unwrap_prints(ast.parse(code))
    tree = _Normalise(_bound_names(tree)).visit(tree)
    words = re.findall(r"\w+", ast.dump(tree, annotate_fields=False, include_attributes=False))
    return [w for w in words if w not in _CONTEXTS]


def code_tokens(code: str) -> list[str]:
    skip = {tokenize.COMMENT, tokenize.NL, tokenize.ENCODING, tokenize.ENDMARKER}
    try:
        return [t.string for t in tokenize.generate_tokens(io.StringIO(code).readline) if t.type not in skip]
    except (tokenize.TokenError, IndentationError, SyntaxError):
        return code.split()


def similarity(a: str, b: str) -> dict[str, float]:
    """{'ast': ..., 'token': ...}: difflib ratios of the two programs (ast is 0 when one does not parse)."""
    try:
        r_ast = difflib.SequenceMatcher(None, ast_tokens(a), ast_tokens(b), autojunk=False).ratio()
    except (SyntaxError, ValueError, RecursionError):
        r_ast = 0.0
    r_tok = difflib.SequenceMatcher(None, code_tokens(a), code_tokens(b), autojunk=False).ratio()
    return {"ast": round(r_ast, 4), "token": round(r_tok, 4)}


# -- the op -------------------------------------------------------------------------------------
@register
class ReverseOp(Op):
    name = "reverse"
    source = "code"
    cfg: ReverseConfig

    def templates(self) -> dict[str, str]:
        return {"instruction": self.cfg.instruction_template, "regenerate": self.cfg.code_template}

    def check_templates(self) -> None:
        super().check_templates()
        self._sandbox_config()  # a mistyped limit fails in the driver, not once per snippet

    def _sandbox_config(self):
        from phi4ray.synth.sandbox import SandboxConfig

        return SandboxConfig(**self.cfg.sandbox)

    def inputs(self, src: Inputs) -> list[dict]:
        c = self.cfg
        langs = {x.lower() for x in c.languages}
        seen: set[str] = set()
        out: list[dict] = []
        self.stats = {"candidates": 0, "taken": 0}

        def take(doc_id: str, idx: int | str, code: str, how: str) -> None:
            self.stats["candidates"] += 1
            try:
                prog = as_program(code)
            except ValueError:  # doctest's parser: an inconsistent session
                prog = ""
            why = snippet_problem(prog, c) if prog else "does_not_parse"
            if why:
                self.stats[f"skipped/{why}"] = self.stats.get(f"skipped/{why}", 0) + 1
                return
            h = hashlib.sha256(prog.encode()).hexdigest()
            if h in seen:
                self.stats["skipped/duplicate"] = self.stats.get("skipped/duplicate", 0) + 1
                return
            seen.add(h)
            self.stats["taken"] += 1
            out.append({"id": f"{doc_id}:{idx}", "group": f"{doc_id}:{idx}", "seed_id": doc_id, "code": prog, "from": how, "session": is_session(code)})

        docs = {r["id"]: r for r in src.pages()}
        for s in src.seeds():
            if s.get("source") == "code":
                docs.setdefault(s["id"], s)
        for doc_id, d in sorted(docs.items()):
            if d.get("source") == "code":
                take(doc_id, "all", d.get("text") or "", "code_document")
                continue
            for i, (lang, code) in enumerate(code_blocks(d.get("text") or "")):
                if lang in langs:
                    take(doc_id, i, code, f"fence:{lang or 'none'}")
        return out

    def run(self, works: list[Work], llm: LLM) -> None:
        from phi4ray.synth.sandbox import run_many

        c, sb = self.cfg, self._sandbox_config()
        for w in works:
            try:
                w.data["program"] = echo_program(w.rec["code"], session=w.rec.get("session", False))
            except (SyntaxError, ValueError, RecursionError) as e:
                w.fail("original", "unparseable", f"{type(e).__name__}: {e}"[:300])
        live = alive(works)
        originals = run_many([w.data.pop("program") for w in live], config=sb)
        expected = {id(w): r.stdout for w, r in zip(live, originals)}  # whole; the row keeps a clipped copy
        for w, r in zip(live, originals):
            w.data["original_run"] = _run_dict(r)
            if r.status != "passed":
                w.fail("original", "original_failed", f"{r.status}: {r.reason}"[:300])
            elif not normalize_output(r.stdout):
                w.fail("original", "no_observable_output", "the snippet prints nothing, so there is nothing to compare")
        live = alive(works)
        prompts = [fill(c.instruction_template, code=w.rec["code"]) for w in live]
        for w, o in zip(live, llm.step(live, "instruction", prompts, c.sampling)):
            if o is not None:
                w.data["instruction"] = o[0].text.strip()
                if not w.data["instruction"]:
                    w.fail("instruction", "empty_output")
        live = alive(works)
        prompts = [fill(c.code_template, instruction=w.data["instruction"]) for w in live]
        for w, o in zip(live, llm.step(live, "regenerate", prompts, c.sampling)):
            if o is None:
                continue
            code = extract_code(o[0].text)
            w.data["regenerated_code"] = clip(code)
            try:
                ast.parse(code)
                w.data["program"] = echo_program(code)
            except (SyntaxError, ValueError, RecursionError) as e:
                w.data["similarity"] = similarity(w.rec["code"], code)
                w.fail("regenerate", "unparseable", f"the regenerated code does not parse: {type(e).__name__}: {e}"[:300])
                continue
            w.data["similarity"] = similarity(w.rec["code"], code)
        live = alive(works)
        for w, r in zip(live, run_many([w.data["program"] for w in live], config=sb)):
            w.data["regenerated_run"] = _run_dict(r)
            diff = f"{r.status}: {r.reason}"[:300] if r.status != "passed" else compare_outputs(expected[id(w)], r.stdout)
            w.data["output_match"] = diff is None
            sim = w.data["similarity"][c.similarity]
            if diff is not None:
                w.fail("fidelity", "tests_failed", diff)
            elif sim < c.min_similarity:
                w.fail("fidelity", "low_fidelity", f"{c.similarity} {sim:.2f} < {c.min_similarity:.2f}")
            else:
                self._keep(w)

    def _keep(self, w: Work) -> None:
        d, code = w.data, w.rec["code"]
        answer = f"```python\n{code}\n```"
        w.out = self.row(
            w, text=f"{d['instruction']}\n\n{answer}",
            messages=[{"role": "user", "content": d["instruction"]}, {"role": "assistant", "content": answer}],
            checks={"tests_passed": True, "output_match": True, "similarity": d["similarity"],
                    "decided_by": self.cfg.similarity, "min_similarity": self.cfg.min_similarity,
                    "original_run": d["original_run"], "regenerated_run": d["regenerated_run"],
                    "regenerated_code": d["regenerated_code"], "snippet_from": w.rec.get("from")},
        )


def _run_dict(r) -> dict:
    d = dataclasses.asdict(r)
    d["stdout"], d["stderr"] = clip(d["stdout"], 2000), clip(d["stderr"], 1000)
    return d
