import pytest

from phi4ray.pts.oracles import extract_answer, get_oracle, math_oracle, normalize_answer


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
    ],
)
def test_normalize_equal(a, b):
    assert normalize_answer(a) == normalize_answer(b)


@pytest.mark.parametrize(
    "a, b",
    [("1,234", "1.234"), ("1/3", "0.333"), ("-1", "1"), ("12", "1 2"), ("10", "100"), ("paris", "london")],
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
    assert get_oracle("math") is math_oracle
    with pytest.raises(NotImplementedError, match="code"):
        get_oracle("code")
