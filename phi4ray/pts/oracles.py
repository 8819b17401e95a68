"""Exact-answer oracles: does a completion reach the reference answer?

PTS needs a cheap, deterministic success test for every sampled completion. For math with a
single final answer that test is: pull the answer out of the completion, bring both it and the
reference into one canonical form, compare the strings.

`extract_answer` takes the last `\\boxed{...}` if the text has one, else the last number. The
running-sum arithmetic of the walking skeleton (`3+5+2+7=` -> `8 10 17`) is covered by the
second rule: the last number is the answer.

`normalize_answer` maps every spelling of one number to one string: `1,234` and `1234`;
`$5` and `5`; `0.5`, `1/2`, `2/4`, `\\frac{1}{2}`; `-0` and `0`;
`7.` and `7.0` and `7`. Non-numbers are compared after stripping, lower-casing and collapsing
white space, with `\\text{...}` unwrapped.
"""

from __future__ import annotations

import re
from fractions import Fraction
from typing import Callable

__all__ = ["extract_answer", "normalize_answer", "math_oracle", "get_oracle"]

# A number as people write it in answers: optional sign, digits with optional thousands
# commas (only when groups are exactly 3 digits), optional decimals, optional `/denominator`.
_NUMBER = re.compile(
    r"(?<![\w.])[-+−]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:\s*/\s*\d+)?|(?<![\w.])[-+−]?\.\d+"
)
_FRAC = re.compile(r"^([-+]?)\\[dt]?frac\s*\{\s*([-+]?[\d.,]+)\s*\}\s*\{\s*([-+]?[\d.,]+)\s*\}$")
_TEXT = re.compile(r"\\(?:text|textbf|mathrm|mbox)\s*\{([^{}]*)\}")


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
    """The final answer in `text`: the last `\\boxed{...}` if any, else the last number, else None."""
    if not text:
        return None
    boxed = _boxed_contents(text)
    if boxed:
        return boxed[-1].strip()
    numbers = _NUMBER.findall(text)
    return numbers[-1].strip() if numbers else None


def _to_fraction(s: str) -> Fraction | None:
    """`s` as an exact rational, or None when it is not a plain number."""
    s = s.replace("−", "-").strip()
    m = _FRAC.match(s)
    if m:
        sign, num, den = m.groups()
        a, b = _to_fraction(num), _to_fraction(den)
        if a is None or b is None or b == 0:
            return None
        return -(a / b) if sign == "-" else a / b
    if re.fullmatch(r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d*)?|[-+]?\.\d+", s):
        return Fraction(s.replace(",", ""))
    m = re.fullmatch(r"([-+]?\d+(?:\.\d+)?)\s*/\s*([-+]?\d+(?:\.\d+)?)", s)
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
    s = _TEXT.sub(r"\1", s)
    s = s.replace("\\$", "").replace("$", "").replace("\\!", "").replace("\\,", "").replace("\\ ", " ")
    s = s.strip().rstrip(".").strip()
    if s.startswith("{") and s.endswith("}"):
        s = s[1:-1].strip()
    frac = _to_fraction(s)
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


ORACLES: dict[str, Callable[[str, str], bool]] = {"math": math_oracle}


def get_oracle(name: str) -> Callable[[str, str], bool]:
    """The oracle called `name` (`math`). Others are named in PTSConfig but not built yet."""
    try:
        return ORACLES[name]
    except KeyError:
        raise NotImplementedError(
            f"PTS oracle '{name}' is not implemented yet; available: {', '.join(sorted(ORACLES))}"
        ) from None
