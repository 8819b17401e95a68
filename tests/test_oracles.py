import pytest

import os

from phi4ray.pts.oracles import (
    check_many,
    choice_oracle,
    code_oracle,
    extract_answer,
    extract_choice,
    extract_code,
    get_oracle,
    math_oracle,
    normalize_answer,
)


@pytest.mark.parametrize(
    "a, b",
    [
        ("1,234", "1234"),
        ("$1,234", "1234"),
        ("\\$5", "5"),
        ("42.", "42"),
        ("  7 ", "7"),
        ("-0", "0"),
        ("0.0", "0"),
        ("+3", "3"),
        ("1/2", "0.5"),
        ("2/4", "1/2"),
        ("\\frac{1}{2}", "0.5"),
        ("\\dfrac{3}{6}", "1/2"),
        ("-\\frac{1}{3}", "\\frac{-1}{3}"),
        ("3.50", "7/2"),
        ("\\boxed{12}", "12"),
        ("\\text{ 5 }", "5"),
        ("Paris", "  paris "),
        ("x  +  1", "x + 1"),
        # LaTeX and notation
        ("\\tfrac12", "1/2"),
        ("\\dfrac34", "0.75"),
        ("$\\frac{1}{4}$", ".25"),
        ("\\frac{2}{4}", "\\frac{1}{2}"),
        ("\\frac{1.5}{3}", "0.5"),
        ("1{,}000", "1000"),
        ("1\\,000", "1000"),
        ("\\left(3\\right)", "3"),
        ("\\boxed{\\dfrac{1}{2}}", "\\boxed{0.5}"),
        # percentages: the sign goes, the number stays (50% is 50, not 0.5)
        ("50\\%", "50"),
        ("12.5%", "25/2"),
        # trailing zeros, signs, spaces
        ("7.00", "7"),
        ("0.50", "1/2"),
        ("−3", "-3"),
        ("- 3", "-3"),
        ("1 / 2", "1/2"),
        # variables and units
        ("x = 5", "5"),
        ("y=\\frac{3}{2}", "1.5"),
        ("5\\text{ cm}", "5"),
        ("30^\\circ", "30"),
        ("30^{\\circ}", "30"),
    ],
)
def test_normalize_equal(a, b):
    assert normalize_answer(a) == normalize_answer(b)


@pytest.mark.parametrize(
    "a, b",
    [("1,234", "1.234"), ("1/3", "0.333"), ("-1", "1"), ("12", "1 2"), ("10", "100"), ("paris", "london"),
     ("50%", "0.5"), ("1,23", "123"), ("\\frac{1}{2}", "\\frac{1}{3}"), ("(1, 2)", "(2, 1)"), ("2/0", "0"),
     ("0.1", "1/9"), ("1e3", "1000")],
)
def test_normalize_different(a, b):
    assert normalize_answer(a) != normalize_answer(b)


def test_normalize_canonical_forms():
    assert normalize_answer("\\frac{6}{4}") == "3/2"
    assert normalize_answer("-0.25") == "-1/4"
    assert normalize_answer("1,000,000") == "1000000"
    assert normalize_answer(None) == ""


@pytest.mark.parametrize(
    "text, answer",
    [
        ("8 10 17", "17"),  # running sums: the last number is the answer
        ("The sum is 8, then 10, so 17.", "17"),
        ("first 3 then \\boxed{\\frac{1}{2}} and 99 more", "\\frac{1}{2}"),
        ("nested \\boxed{\\frac{3}{4}}", "\\frac{3}{4}"),
        ("total: 1,234.", "1,234"),
        ("it is -0.5.", "-0.5"),
        ("no digits here", None),
        ("", None),
        ("The answer is $\\frac{1}{2}$.", "\\frac{1}{2}"),  # not the 2 inside the fraction
        ("so we get -\\dfrac{3}{4}", "-\\dfrac{3}{4}"),
        ("The answer is 17. Check: 17 + 3 = 20", "17"),  # an explicit answer beats later numbers
        ("Final answer: \\(42\\)", "42"),
        ("The answer: 1{,}234", "1,234"),
        ("it rose by 50%.", "50%"),
        ("3 of 4, that is 3/4", "3/4"),
        ("x2 and y3", None),  # digits glued to a name are not numbers
    ],
)
def test_extract_answer(text, answer):
    assert extract_answer(text) == answer


def test_math_oracle():
    assert math_oracle("8 10 17", "17")
    assert not math_oracle("8 10 16", "17")
    assert not math_oracle("8 10 17 4", "17")  # the last number counts, not any number
    assert math_oracle("so the answer is \\boxed{0.5}", "1/2")
    assert math_oracle("The total is $1,234.", "1234")
    assert not math_oracle("nothing", "17")
    assert not math_oracle("0", "")  # an empty reference never matches
    assert math_oracle("The answer is $\\dfrac{1}{2}$.", "0.5")
    assert math_oracle("...which gives 12.50%", "12.5")
    assert not math_oracle("...which gives 50%", "0.5")
    assert math_oracle("So x = 3.0", "3")
    assert get_oracle("math") is math_oracle and get_oracle("code") is code_oracle
    assert get_oracle("choice") is choice_oracle
    with pytest.raises(ValueError, match="unknown PTS oracle 'nope'"):
        get_oracle("nope")


# -- multiple choice ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "text, letter",
    [
        ("The answer is (B)", "B"),
        ("The answer is B.", "B"),
        ("B.", "B"),
        ("B", "B"),
        ("**B**", "B"),
        ("(C)", "C"),
        ("Answer: **C**", "C"),
        ("answer is: **(D)**", "D"),
        ("I think the correct option is D because it is larger.", "D"),
        ("Final answer: \\boxed{A}", "A"),
        ("$\\boxed{\\text{(E)}}$", "E"),
        ("A good first step is to add. The answer is (C).", "C"),  # the article "A" is no answer
        ("Let me think.\n\n**B**\n", "B"),
        ("B. Paris is the capital of France.", "B"),
        ("Choice: J", "J"),
        ("Between (A) and (C), I pick (C)", "C"),
        ("A. 3\nB. 4\nC. 5", None),  # a list of options chooses nothing
        ("The answer is a number", None),
        ("no letter here", None),
        ("", None),
    ],
)
def test_extract_choice(text, letter):
    assert extract_choice(text) == letter


def test_choice_oracle():
    assert choice_oracle("The answer is (B).", "B")
    assert choice_oracle("**b**".upper(), "(B)")
    assert choice_oracle("Answer: C", "c")
    assert choice_oracle("so (D)", "D. 42")
    assert not choice_oracle("The answer is (B).", "C")
    assert not choice_oracle("A. 3\nB. 4", "A")
    assert not choice_oracle("The answer is (B).", "")


# -- code ---------------------------------------------------------------------------------------
TESTS = "assert add(2, 3) == 5\ndef test_neg():\n    assert add(-1, 1) == 0\n"


@pytest.mark.parametrize(
    "text, program",
    [
        ("Here:\n```python\ndef f():\n    return 1\n```\nDone.", "def f():\n    return 1\n"),
        ("```py\nx = 1\n```\nthen\n```python\ny = 2\n```", "y = 2\n"),  # the last block
        ("```\nz = 3\n```", "z = 3\n"),
        ("```python\nw = 4\n", "w = 4\n"),  # cut off by max_tokens: the open fence runs to the end
        ("```text\nnot code\n```", ""),
        ("    return a + b\n```\nThis adds.", "    return a + b\n"),  # the prompt opened the fence
        ("x = 5", "x = 5"),
    ],
)
def test_extract_code(text, program):
    assert extract_code(text) == program


needs_sandbox = pytest.mark.skipif(not os.path.exists(os.path.join(os.path.dirname(__file__), "..", "phi4ray",
                                                                   "synth", "sandbox.py")), reason="no sandbox")


@needs_sandbox
def test_code_oracle_runs_the_tests_in_the_sandbox(monkeypatch):
    from phi4ray.pts import oracles

    monkeypatch.setitem(oracles.CODE_LIMITS, "timeout_s", 2.0)
    good = "Sure:\n```python\ndef add(a, b):\n    return a + b\n```"
    assert code_oracle(good, TESTS)
    assert not code_oracle("```python\ndef add(a, b):\n    return a - b\n```", TESTS)  # a failing assert
    assert not code_oracle("```python\ndef add(a, b):\n    return a +\n```", TESTS)  # syntax error
    assert not code_oracle("```python\ndef add(a, b):\n    if a < 0:\n        return 99\n    return a + b\n```",
                           TESTS)  # test_neg fails
    assert not code_oracle("```python\nimport time\ndef add(a, b):\n    time.sleep(60)\n```", TESTS)  # timeout
    assert not code_oracle("no code at all", "")
    # batched: distinct programs run concurrently, verdicts in order, duplicates checked once
    texts = [good, "```python\ndef add(a, b):\n    return 0\n```", good]
    assert check_many(code_oracle, texts, TESTS) == [True, False, True]
