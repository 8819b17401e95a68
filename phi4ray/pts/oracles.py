"""Success oracles for PTS: does a completion solve the question?

PTS needs a cheap, deterministic success test for every sampled completion. Each oracle is a
function `(completion, answer) -> bool`; `get_oracle(name)` returns it and `check_many` runs one
over a batch (threads for the code oracle, whose checks are processes).

**math** (`math_oracle`): pull the final answer out of the completion, bring it and the reference
into one canonical form, compare the strings. `extract_answer` takes, in order: the last
`\\boxed{...}` (or `\\fbox`); else the number after the last "answer is" / "answer:"; else the
last number in the text, where a number may be written `1,234`, `-0.5`, `3/4`, `\\frac{1}{2}`,
`\\dfrac34` or `50%`. `normalize_answer` maps every spelling of one number to one string, its
reduced fraction: `1,234` and `1{,}234` and `1234`; `$5`, `\\$5` and `5`; `0.5`, `.5`, `1/2`,
`2/4`, `\\frac{1}{2}`, `\\dfrac{1}{2}`, `\\tfrac12`; `-0` and `0`; `7.`, `7.0` and `7.00`. A
percent sign (`50%`, `50\\%`) and a degree sign are dropped: `50%` equals `50`, not `0.5`. So are
`x =` in front and one `\\text{...}` unit after a number (`5\\text{ cm}` is `5`). Decimals are
exact: `0.333` is not `1/3`. Non-numbers are compared after stripping, lower-casing and
collapsing white space, with `\\text{...}`, `\\left`/`\\right` and `$` delimiters removed.

**code** (`code_oracle`): the question's `answer` holds test code (asserts, or `test_*`
functions); a `tests` field may hold it instead when `answer` is absent. The program is the last
fenced Python block of the completion (```` ```python ````, ```` ```py ```` or a bare fence; a
fence left open by a truncated completion runs to the end); when the prompt opened the fence, the
text before the completion's closing fence; with no fence, the whole completion. It passes when
`phi4ray.synth.sandbox.run_code(program, tests)` says `passed`: the program ran and every test
passed, within the sandbox's time and memory limits. Results are cached per (program, tests), so
the identical samples of a small model cost one run.

**choice** (`choice_oracle`): the question's `answer` is a letter, A to J (`B`, `(B)`, `b` or
`B. Paris`). `extract_choice` reads the chosen letter, in order: the last explicit statement
("The answer is (B)", "Answer: **B**", "the correct option is B", "Choice: B"); else
`\\boxed{B}`; else the last line that is only the letter with markup (`B`, `**B**`, `(B)`,
`B.`); else lines that start with a letter and `.`, `)` or `:` ("B. 42") when they all name the
same letter; else the last `(B)`. Letters are upper case (so the article "a" never counts).
"""

from __future__ import annotations

import functools
import os
import re
from concurrent.futures import ThreadPoolExecutor
from fractions import Fraction
from typing import Callable, Sequence

__all__ = [
    "extract_answer",
    "normalize_answer",
    "math_oracle",
    "extract_code",
    "code_oracle",
    "extract_choice",
    "choice_oracle",
    "get_oracle",
    "check_many",
    "ORACLES",
]

# -- math -------------------------------------------------------------------------------------
# A number as people write it in answers: digits with optional thousands commas (only when
# groups are exactly 3 digits), optional decimals; or a leading-dot decimal.
_DIGITS = r"(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|\.\d+"
_BRACED = r"(?:\{[^{}]*\}|\d)"  # \frac's argument: {...} or one digit (\frac12)
_LATEX_FRAC = rf"\\[dt]?frac\s*{_BRACED}\s*{_BRACED}"
# One answer-like number: sign, then a LaTeX fraction or digits with an optional `/ digits`, then
# an optional percent sign. Not preceded by a letter, digit, dot or backslash.
_NUMBER = re.compile(
    rf"(?<![\w.\\])[-+−]?\s?(?:{_LATEX_FRAC}|(?:{_DIGITS})(?:\s*/\s*(?:{_DIGITS}))?)(?:\s*\\?%)?"
)
_ANSWER_IS = re.compile(r"(?i:answer)\s*(?:(?i:is|was|will be|would be)\b|[:：=])[\s:*_$\\(]*")
_FRAC = re.compile(rf"^([-+]?)\\[dt]?frac\s*({_BRACED})\s*({_BRACED})$")
_TEXT = re.compile(r"\\(?:text|textbf|textrm|mathrm|mbox)\s*\{([^{}]*)\}")
_UNIT_AFTER_NUMBER = re.compile(
    rf"^([-+]?(?:{_LATEX_FRAC}|(?:{_DIGITS})(?:\s*/\s*(?:{_DIGITS}))?))\s*\\(?:text|textrm|mathrm|mbox)\s*\{{[^{{}}]*\}}$"
)
_LEADING_VAR = re.compile(r"^[A-Za-z]\w*\s*=\s*(?=\S)")


def _boxed_contents(text: str) -> list[str]:
    """Contents of every `\\boxed{...}` (and `\\fbox{...}`) in `text`, braces balanced."""
    out = []
    for m in re.finditer(r"\\(?:boxed|fbox)\s*\{", text):
        depth, i = 1, m.end()
        while i < len(text) and depth:
            if text[i] == "{":
                depth += 1
            elif text[i] == "}":
                depth -= 1
            i += 1
        if depth == 0:
            out.append(text[m.end() : i - 1])
    return out


def extract_answer(text: str | None) -> str | None:
    """The final answer in `text`: the last `\\boxed{...}`; else the number right after the last
    "answer is"/"answer:"; else the last number (LaTeX fractions and percentages included);
    else None."""
    if not text:
        return None
    boxed = _boxed_contents(text)
    if boxed:
        return boxed[-1].strip()
    text = _latex_thousands(text)
    for m in reversed(list(_ANSWER_IS.finditer(text))):
        n = _NUMBER.match(text, m.end())
        if n:
            return n.group(0).strip()
    numbers = _NUMBER.findall(text)
    return numbers[-1].strip() if numbers else None


def _latex_thousands(s: str) -> str:
    """`1{,}234` and `1\\,234` (LaTeX thousands separators) -> `1,234`."""
    return re.sub(r"(?<=\d)(?:\{,\}|\\,)(?=\d{3})", ",", s)


def _unbrace(s: str) -> str:
    s = s.strip()
    return s[1:-1].strip() if s.startswith("{") and s.endswith("}") else s


def _to_fraction(s: str) -> Fraction | None:
    """`s` as an exact rational, or None when it is not a plain number."""
    s = s.replace("−", "-").strip()
    s = re.sub(r"\s*/\s*", "/", re.sub(r"^([-+])\s+", r"\1", s))  # "- 3", "1 / 2"
    m = _FRAC.match(s)
    if m:
        sign, num, den = m.groups()
        a, b = _to_fraction(_unbrace(num)), _to_fraction(_unbrace(den))
        if a is None or b is None or b == 0:
            return None
        return -(a / b) if sign == "-" else a / b
    if re.fullmatch(r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d*)?|[-+]?\.\d+", s):
        return Fraction(s.replace(",", ""))
    m = re.fullmatch(r"([-+]?(?:\d+(?:\.\d+)?|\.\d+))/([-+]?(?:\d+(?:\.\d+)?|\.\d+))", s)
    if m:
        den = Fraction(m.group(2))
        return Fraction(m.group(1)) / den if den != 0 else None
    return None


def normalize_answer(s: str | None) -> str:
    """A canonical string for an answer, so that equal answers compare equal as strings.

    Numbers become their reduced fraction (`"1/2"`, `"-3"`, `"1234"`); everything else is
    stripped, lower-cased and has its white space collapsed.
    """
    if s is None:
        return ""
    s = str(s).strip()
    boxed = _boxed_contents(s)
    if boxed:
        s = boxed[-1].strip()
    s = _latex_thousands(s).replace("\\left", "").replace("\\right", "").replace("\\displaystyle", "")
    m = _UNIT_AFTER_NUMBER.match(s.replace("\\$", "").replace("$", "").strip())
    if m:
        s = m.group(1)
    s = _TEXT.sub(r"\1", s)
    s = s.replace("\\$", "").replace("$", "").replace("\\!", "").replace("\\,", "").replace("\\ ", " ")
    s = re.sub(r"\^\s*\{?\s*\\circ\s*\}?|°", "", s)  # degrees
    s = re.sub(r"\s*(?:\\%|%|\\percent)\s*$", "", s.strip())  # 50% -> 50
    s = s.strip().rstrip(".").strip()
    s = _unbrace(s)
    s = _LEADING_VAR.sub("", s)  # x = 5 -> 5
    frac = _to_fraction(s)
    if frac is None and s.startswith("(") and s.endswith(")"):
        frac = _to_fraction(s[1:-1])  # (3) -> 3; (1, 2) stays a pair
    if frac is not None:
        if frac == 0:
            return "0"  # -0, 0.0, +0
        return str(frac)  # Fraction's str: "p" or "p/q", reduced, sign on the numerator
    return re.sub(r"\s+", " ", s).lower()


def math_oracle(completion: str, answer: str) -> bool:
    """True when the final answer in `completion` equals `answer` after normalisation."""
    got = extract_answer(completion)
    if got is None:
        return False
    want = normalize_answer(answer)
    return want != "" and normalize_answer(got) == want


# -- code -------------------------------------------------------------------------------------
_FENCE = re.compile(r"```[ \t]*([\w+.-]*)[^\n]*\n(.*?)(?:```|\Z)", re.S)
_PY_LANGS = {"", "python", "python3", "py", "py3", "pycon", "ipython"}
CODE_LIMITS = {"timeout_s": 10.0, "memory_mb": 512}
"""Sandbox limits per check (`run_code` keywords); change with `set_code_limits`."""


def extract_code(text: str | None) -> str:
    """The program in a completion: the last fenced Python block (an unclosed fence runs to the
    end); when the prompt opened the fence (an odd number of fences, the first a bare one after
    text), the text before it; with no fence, the whole text."""
    if not text:
        return ""
    fences = list(re.finditer(r"^[ \t]*```[ \t]*(\S*)", text, re.M))
    if len(fences) % 2 == 1 and not fences[0].group(1) and text[: fences[0].start()].strip():
        return text[: fences[0].start()]  # the prompt opened the fence; the completion closes it
    blocks = [(lang.lower(), body) for lang, body in _FENCE.findall(text)]
    py = [body for lang, body in blocks if lang in _PY_LANGS]
    if py:
        return py[-1]
    if blocks:  # fenced, but no Python block (```text, ```output): nothing to run
        return ""
    return text


@functools.lru_cache(maxsize=4096)
def _run_tests(program: str, tests: str, limits: tuple) -> bool:
    from phi4ray.synth.sandbox import run_code

    return run_code(program, tests, **dict(limits)).status == "passed"


def set_code_limits(**limits) -> None:
    """Override the sandbox limits (`timeout_s`, `memory_mb`, ...) the code oracle passes to `run_code`."""
    CODE_LIMITS.update(limits)


def code_oracle(completion: str, answer: str) -> bool:
    """True when the completion's program passes the test code in `answer` in the sandbox."""
    program = extract_code(completion)
    if not program.strip() or not str(answer).strip():
        return False
    return _run_tests(program, str(answer), tuple(sorted(CODE_LIMITS.items())))


# -- multiple choice --------------------------------------------------------------------------
_L = "A-J"
_SEP = r"[\s:：=*_`$\\(\[{]{0,8}"
_EXPLICIT = re.compile(
    rf"(?i:answer|option|choice)(?:\s+(?i:is|would\s+be|will\s+be|should\s+be))?{_SEP}"
    rf"(?:(?i:option|choice|letter)\s*)?{_SEP}(?:\\text\{{)?\(?([{_L}])\)?(?![\w])"
)
_BOXED_LETTER = re.compile(rf"\\boxed\s*\{{\s*(?:\\text(?:bf)?\s*\{{)?\s*\(?([{_L}])\)?\s*\}}")
_ONLY_LETTER_LINE = re.compile(rf"^[\s>*_`#(\[]*\(?([{_L}])\)?[\s*_`.)\]:]*$", re.M)
_LETTER_LINE = re.compile(rf"^[\s>*_`#]*\(?([{_L}])[.):][*_`]*(?:\s|$)", re.M)
_PAREN_LETTER = re.compile(rf"\(([{_L}])\)")


def extract_choice(text: str | None) -> str | None:
    """The letter (A-J) a completion chooses, or None when it names none unambiguously."""
    if not text:
        return None
    m = _EXPLICIT.findall(text)
    if m:
        return m[-1]
    m = _BOXED_LETTER.findall(text)
    if m:
        return m[-1]
    m = _ONLY_LETTER_LINE.findall(text)
    if m:
        return m[-1]
    m = _LETTER_LINE.findall(text)
    if m:
        return m[0] if len(set(m)) == 1 else None
    m = _PAREN_LETTER.findall(text)
    return m[-1] if m else None


def _reference_letter(answer: str) -> str | None:
    s = str(answer).strip()
    m = re.fullmatch(r"[\s(\[*]*([A-Ja-j])[\s)\].:*]*", s)
    if m:
        return m.group(1).upper()
    m = re.match(rf"^\(?([{_L}])[.):]\s", s)  # "B. Paris"
    return m.group(1) if m else extract_choice(s)


def choice_oracle(completion: str, answer: str) -> bool:
    """True when the letter the completion chooses is the reference letter."""
    want = _reference_letter(answer)
    return want is not None and extract_choice(completion) == want


# -- registry ---------------------------------------------------------------------------------
ORACLES: dict[str, Callable[[str, str], bool]] = {"math": math_oracle, "code": code_oracle, "choice": choice_oracle}


def get_oracle(name: str) -> Callable[[str, str], bool]:
    """The oracle called `name`: `math`, `code` or `choice`."""
    try:
        return ORACLES[name]
    except KeyError:
        raise ValueError(f"unknown PTS oracle '{name}'; available: {', '.join(sorted(ORACLES))}") from None


def check_many(oracle: Callable[[str, str], bool], completions: Sequence[str], answer: str) -> list[bool]:
    """`oracle` over many completions of one question. The code oracle runs its distinct
    programs concurrently (each check is a sandboxed process); the others run inline."""
    if oracle is not code_oracle or len(completions) < 2:
        return [bool(oracle(c, answer)) for c in completions]
    distinct = list(dict.fromkeys(completions))
    workers = min(len(distinct), max(1, len(os.sched_getaffinity(0))))
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="code-oracle") as pool:
        verdicts = dict(zip(distinct, pool.map(lambda c: bool(oracle(c, answer)), distinct)))
    return [verdicts[c] for c in completions]
