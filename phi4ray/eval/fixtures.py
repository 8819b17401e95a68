"""Small benchmark sets in the public formats, generated with checkable answers.

    python -m phi4ray.eval.fixtures phi4ray/eval/data      # rewrites the shipped sets

The tiny recipe and the tests evaluate on these offline: every task type of `phi4ray eval` on a
file in its benchmark's public layout, so the same code reads the real benchmarks. None of the
items is taken from a real dataset. Each answer is computed by the generator (arithmetic, unit
conversion, a sequence rule), and each code task's canonical solution is the reference whose
outputs the tests assert, so the sets are correct by construction (the tests also run every
canonical solution in the sandbox).

Layouts (field names as the Hugging Face datasets have them):

- mmlu.jsonl      `cais/mmlu`: question, subject, choices (4 strings), answer (index)
- arc.jsonl       `allenai/ai2_arc`: id, question, choices {text, label}, answerKey
- gsm8k.jsonl     `openai/gsm8k`: question, answer (reasoning with <<calc>> notes, then `#### N`)
- math.jsonl      `hendrycks/competition_math`: problem, level, type, solution (with \\boxed{})
- humaneval.jsonl `openai/openai_humaneval`: task_id, prompt, canonical_solution, test, entry_point
- mbpp.jsonl      `mbpp` (full): task_id, text, code, test_list, test_setup_code, challenge_test_list
"""

from __future__ import annotations

import json
import random
import sys
from fractions import Fraction
from math import gcd
from pathlib import Path

SEED = 20241216


def _shuffled_choices(rng: random.Random, right, wrong: list) -> tuple[list, int]:
    opts = [right] + [w for w in dict.fromkeys(wrong) if w != right][:3]
    rng.shuffle(opts)
    return opts, opts.index(right)


def _near(rng: random.Random, x: int) -> list[int]:
    cands = [x + d for d in (-10, -2, -1, 1, 2, 10) if x + d >= 0]
    rng.shuffle(cands)
    return cands


# -- multiple choice ------------------------------------------------------------------------------
def mmlu(n: int = 16, seed: int = SEED) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        kind = i % 4
        if kind == 0:
            a, b = rng.randint(12, 89), rng.randint(12, 89)
            q, right, subject = f"What is {a} + {b}?", a + b, "elementary_mathematics"
            wrong = _near(rng, a + b)
        elif kind == 1:
            a, b = rng.randint(3, 19), rng.randint(3, 12)
            q, right, subject = f"What is {a} multiplied by {b}?", a * b, "elementary_mathematics"
            wrong = [a * b + b, a * b - a, a + b, a * (b + 1) + 1]
        elif kind == 2:
            m = rng.randint(2, 9) + rng.choice([0, 0.5])
            q = f"How many centimetres are there in {m:g} metres?"
            right, subject = int(m * 100), "conceptual_physics"
            wrong = [int(m * 10), int(m * 1000), int(m * 100) + 10]
        else:
            h = rng.randint(2, 6)
            q, right, subject = f"How many minutes are there in {h} hours?", h * 60, "miscellaneous"
            wrong = [h * 100, h * 24, h * 60 + 30]
        choices, answer = _shuffled_choices(rng, str(right), [str(w) for w in wrong])
        rows.append({"question": q, "subject": subject, "choices": choices, "answer": answer})
    return rows


_SEQ_WORDS = {2: "two", 3: "three", 4: "four", 5: "five", 6: "six", 7: "seven", 8: "eight", 9: "nine",
              10: "ten", 11: "eleven", 12: "twelve", 14: "fourteen", 15: "fifteen", 16: "sixteen",
              18: "eighteen", 20: "twenty", 21: "twenty-one", 24: "twenty-four", 25: "twenty-five",
              27: "twenty-seven", 28: "twenty-eight", 30: "thirty", 32: "thirty-two", 35: "thirty-five",
              36: "thirty-six", 40: "forty", 45: "forty-five"}


def arc(n: int = 16, seed: int = SEED + 1) -> list[dict]:
    """ARC layout; answer texts of different lengths, so acc_norm differs from acc. Every fourth
    item has numeric labels ("1".."4"), as some ARC items do."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        kind = i % 4
        if kind == 0:
            step = rng.choice([2, 3, 4, 5])
            start = rng.choice([2, 3, 4, 5])
            seq = [start + step * k for k in range(4)]
            nxt = seq[-1] + step
            q = f"A pattern of numbers goes {', '.join(map(str, seq))}. Which number comes next?"
            right, wrong = str(nxt), [str(nxt + 1), str(nxt + step + 1), str(seq[-1])]
        elif kind == 1:
            kg = rng.randint(2, 9)
            q = f"A bag of sand has a mass of {kg} kilograms. What is its mass in grams?"
            right = f"{kg * 1000} grams"
            wrong = [f"{kg * 100} grams", f"{kg * 10} grams", f"{kg} grams of sand and some water"]
        elif kind == 2:
            word_vals = [k for k in _SEQ_WORDS if k >= 10]
            v = rng.choice(word_vals)
            q = f"Which of these is the same number as {v}?"
            right = _SEQ_WORDS[v]
            others = [w for k, w in _SEQ_WORDS.items() if k != v]
            wrong = rng.sample(others, 3)
        else:
            a, b = rng.randint(11, 40), rng.randint(11, 40)
            while a == b:
                b = rng.randint(11, 40)
            q = f"A student counts {a} oak trees and {b} pine trees in a park. Which statement is true?"
            big, small = ("oak", "pine") if a > b else ("pine", "oak")
            right = f"There are more {big} trees than {small} trees."
            wrong = [f"There are more {small} trees than {big} trees.", "There are the same number of each.",
                     f"There are {a + b + 10} trees."]
        choices, answer = _shuffled_choices(rng, right, wrong)
        labels = ["1", "2", "3", "4"] if i % 4 == 3 else ["A", "B", "C", "D"]
        rows.append({"id": f"Phi4RayARC_{i:03d}", "question": q,
                     "choices": {"text": choices, "label": labels[: len(choices)]}, "answerKey": labels[answer]})
    return rows


# -- few-shot generation --------------------------------------------------------------------------
_NAMES = ["Ana", "Ben", "Chen", "Dara", "Eli", "Fatima", "Goran", "Hana", "Ivo", "Jun", "Kemal", "Lea"]
_THINGS = [("apples", "box", "boxes"), ("pencils", "pack", "packs"), ("eggs", "carton", "cartons"),
           ("stickers", "sheet", "sheets"), ("marbles", "bag", "bags"), ("cookies", "tray", "trays")]


def gsm8k(n: int = 16, seed: int = SEED + 2) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        name = _NAMES[i % len(_NAMES)]
        thing, unit, units = _THINGS[i % len(_THINGS)]
        if i % 2 == 0:
            k, per, give = rng.randint(2, 6), rng.randint(6, 15), rng.randint(2, 9)
            total = k * per
            q = (f"{name} buys {k} {units} of {thing}. Each {unit} holds {per} {thing}. "
                 f"{name} gives {give} {thing} to a friend. How many {thing} does {name} have left?")
            a = (f"{name} buys {k} * {per} = <<{k}*{per}={total}>>{total} {thing}.\n"
                 f"After giving {give} away, {name} has {total} - {give} = <<{total}-{give}={total - give}>>{total - give} {thing}.\n"
                 f"#### {total - give}")
        else:
            price, k, paid = rng.randint(2, 9), rng.randint(2, 8), 0
            cost = price * k
            paid = (cost // 10 + 1) * 10 + rng.choice([0, 10])
            q = (f"{name} buys {k} {units} of {thing} for ${price} each and pays with ${paid}. "
                 f"How much change, in dollars, does {name} get?")
            a = (f"The {units} cost {k} * {price} = <<{k}*{price}={cost}>>{cost} dollars.\n"
                 f"The change is {paid} - {cost} = <<{paid}-{cost}={paid - cost}>>{paid - cost} dollars.\n"
                 f"#### {paid - cost}")
        rows.append({"question": q, "answer": a})
    return rows


def _tex(f: Fraction) -> str:
    if f.denominator == 1:
        return str(f.numerator)
    sign = "-" if f < 0 else ""
    return f"{sign}\\frac{{{abs(f.numerator)}}}{{{f.denominator}}}"


def math_set(n: int = 12, seed: int = SEED + 3) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        kind = i % 4
        if kind == 0:
            a, b = Fraction(rng.randint(1, 5), rng.randint(2, 7)), Fraction(rng.randint(1, 5), rng.randint(2, 9))
            s = a + b
            prob = f"Compute ${_tex(a)} + {_tex(b)}$. Express your answer as a common fraction in lowest terms."
            sol = (f"With a common denominator, ${_tex(a)} + {_tex(b)} = {_tex(s)}$, which is in lowest terms, "
                   f"so the answer is $\\boxed{{{_tex(s)}}}$.")
            typ, level = "Prealgebra", "Level 2"
        elif kind == 1:
            x, m, c = rng.randint(-9, 12), rng.randint(2, 9), rng.randint(1, 30)
            rhs = m * x + c
            prob = f"Solve for $x$: ${m}x + {c} = {rhs}$."
            sol = (f"Subtracting {c} from both sides gives ${m}x = {rhs - c}$. Dividing by {m}, "
                   f"$x = \\boxed{{{x}}}$.")
            typ, level = "Algebra", "Level 1"
        elif kind == 2:
            g = rng.randint(2, 12)
            a, b = g * rng.randint(2, 9), g * rng.randint(2, 9)
            d = gcd(a, b)
            prob = f"What is the greatest common divisor of ${a}$ and ${b}$?"
            sol = f"By the Euclidean algorithm, $\\gcd({a}, {b}) = \\boxed{{{d}}}$."
            typ, level = "Number Theory", "Level 2"
        else:
            a, m = rng.randint(100, 999), rng.randint(3, 11)
            prob = f"What is the remainder when ${a}$ is divided by ${m}$?"
            sol = f"Since ${a} = {m} \\cdot {a // m} + {a % m}$, the remainder is $\\boxed{{{a % m}}}$."
            typ, level = "Number Theory", "Level 1"
        rows.append({"problem": prob, "level": level, "type": typ, "solution": sol})
    return rows


# -- code -----------------------------------------------------------------------------------------
# (name, signature, docstring, body, reference, test inputs). `reference` computes the expected
# outputs the tests assert; `body` is the canonical solution (the same function).
_HUMANEVAL = [
    ("add_numbers", "a: int, b: int) -> int", "Return the sum of a and b.", "    return a + b\n",
     lambda a, b: a + b, [(2, 3), (-4, 9), (0, 0), (100, 250)]),
    ("is_even", "n: int) -> bool", "Return True when n is even.", "    return n % 2 == 0\n",
     lambda n: n % 2 == 0, [(4,), (7,), (0,), (-3,)]),
    ("reverse_string", "s: str) -> str", "Return s reversed.", "    return s[::-1]\n",
     lambda s: s[::-1], [("abc",), ("",), ("racecar",), ("Hello, World",)]),
    ("count_vowels", "s: str) -> int", "Count the vowels (a, e, i, o, u, either case) in s.",
     "    return sum(1 for c in s.lower() if c in 'aeiou')\n",
     lambda s: sum(1 for c in s.lower() if c in "aeiou"), [("hello",), ("AEIOU xyz",), ("",), ("rhythm",)]),
    ("largest", "xs: list) -> int", "Return the largest number in the non-empty list xs.",
     "    best = xs[0]\n    for x in xs[1:]:\n        if x > best:\n            best = x\n    return best\n",
     max, [([1, 5, 3],), ([-2, -7],), ([4],), ([0, 10, 10, 9],)]),
    ("factorial", "n: int) -> int", "Return n! for n >= 0.",
     "    out = 1\n    for k in range(2, n + 1):\n        out *= k\n    return out\n",
     lambda n: 1 if n < 2 else n * _fact(n - 1), [(0,), (1,), (5,), (10,)]),
    ("fibonacci", "n: int) -> int", "Return the n-th Fibonacci number, with fibonacci(0) == 0 and fibonacci(1) == 1.",
     "    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n    return a\n",
     lambda n: _fib(n), [(0,), (1,), (7,), (20,)]),
    ("is_palindrome", "s: str) -> bool", "Return True when s reads the same forwards and backwards.",
     "    return s == s[::-1]\n", lambda s: s == s[::-1], [("level",), ("abca",), ("",), ("noon",)]),
    ("digit_sum", "n: int) -> int", "Return the sum of the decimal digits of the non-negative integer n.",
     "    return sum(int(c) for c in str(n))\n", lambda n: sum(int(c) for c in str(n)), [(0,), (123,), (9999,), (50,)]),
    ("unique_sorted", "xs: list) -> list", "Return the distinct elements of xs in increasing order.",
     "    return sorted(set(xs))\n", lambda xs: sorted(set(xs)), [([3, 1, 3, 2],), ([],), ([5, 5, 5],), ([-1, 4, -1, 0],)]),
    ("running_sum", "xs: list) -> list", "Return the running totals of xs: element i is xs[0] + ... + xs[i].",
     "    out, total = [], 0\n    for x in xs:\n        total += x\n        out.append(total)\n    return out\n",
     lambda xs: [sum(xs[: i + 1]) for i in range(len(xs))], [([1, 2, 3],), ([],), ([5, -5, 5],), ([10],)]),
    ("celsius_to_fahrenheit", "c: float) -> float", "Convert c degrees Celsius to Fahrenheit.",
     "    return c * 9 / 5 + 32\n", lambda c: c * 9 / 5 + 32, [(0,), (100,), (-40,), (37,)]),
]

_MBPP = [
    ("Write a function to find the product of all numbers in a list.", "product_list", "xs",
     "def product_list(xs):\n    out = 1\n    for x in xs:\n        out *= x\n    return out",
     lambda xs: _prod(xs), [([1, 2, 3, 4],), ([5],), ([2, -3],)]),
    ("Write a function to count how many times a character occurs in a string.", "count_char", "s, ch",
     "def count_char(s, ch):\n    return s.count(ch)", lambda s, ch: s.count(ch), [("banana", "a"), ("hello", "z"), ("aaa", "a")]),
    ("Write a python function to find the smallest number in a list.", "smallest_num", "xs",
     "def smallest_num(xs):\n    return min(xs)", min, [([10, 20, 1, 45],), ([1, 2, 3],), ([45, 46, 50, 60],)]),
    ("Write a function to convert a list of words into one string with the words separated by single spaces.",
     "join_words", "words", "def join_words(words):\n    return ' '.join(words)",
     lambda w: " ".join(w), [(["a", "b"],), (["hello"],), (["x", "y", "z"],)]),
    ("Write a function to return the square of every number in a list.", "square_all", "xs",
     "def square_all(xs):\n    return [x * x for x in xs]", lambda xs: [x * x for x in xs], [([1, 2, 3],), ([],), ([-4],)]),
    ("Write a python function to check whether a number is a perfect square.", "is_perfect_square", "n",
     "def is_perfect_square(n):\n    if n < 0:\n        return False\n    r = int(n ** 0.5)\n    while r * r > n:\n        r -= 1\n    while (r + 1) * (r + 1) <= n:\n        r += 1\n    return r * r == n",
     lambda n: n >= 0 and round(n ** 0.5) ** 2 == n, [(16,), (14,), (1,)]),
    ("Write a function to remove all the spaces from a string.", "remove_spaces", "s",
     "def remove_spaces(s):\n    return s.replace(' ', '')", lambda s: s.replace(" ", ""), [("a b c",), ("python",), ("  x  ",)]),
    ("Write a function to find the second largest distinct number in a list.", "second_largest", "xs",
     "def second_largest(xs):\n    return sorted(set(xs))[-2]", lambda xs: sorted(set(xs))[-2],
     [([1, 2, 3, 4],), ([5, 5, 4],), ([10, -1, 7],)]),
    ("Write a function to count the words in a sentence.", "word_count", "s",
     "def word_count(s):\n    return len(s.split())", lambda s: len(s.split()), [("the cat sat",), ("",), ("one",)]),
    ("Write a function to find the sum of the even numbers in a list.", "sum_even", "xs",
     "def sum_even(xs):\n    return sum(x for x in xs if x % 2 == 0)", lambda xs: sum(x for x in xs if x % 2 == 0),
     [([1, 2, 3, 4],), ([1, 3],), ([-2, 6],)]),
    ("Write a function to check whether all the elements of a list are the same.", "all_same", "xs",
     "def all_same(xs):\n    return len(set(xs)) <= 1", lambda xs: len(set(xs)) <= 1, [([1, 1, 1],), ([1, 2],), ([],)]),
    ("Write a function to find the number of digits of a positive integer.", "num_digits", "n",
     "def num_digits(n):\n    return len(str(n))", lambda n: len(str(n)), [(7,), (12345,), (1000,)]),
]


def _fact(n: int) -> int:
    return 1 if n < 2 else n * _fact(n - 1)


def _fib(n: int) -> int:
    a, b = 0, 1
    for _ in range(n):
        a, b = b, a + b
    return a


def _prod(xs) -> int:
    out = 1
    for x in xs:
        out *= x
    return out


def _call(name: str, args: tuple) -> str:
    return f"{name}({', '.join(repr(a) for a in args)})"


def humaneval() -> list[dict]:
    rows = []
    for i, (name, sig, doc, body, ref, inputs) in enumerate(_HUMANEVAL):
        ex = inputs[0]
        prompt = (f"def {name}({sig}:\n    \"\"\"{doc}\n    >>> {_call(name, ex)}\n    {ref(*ex)!r}\n    \"\"\"\n")
        checks = "\n".join(f"    assert candidate({', '.join(repr(a) for a in args)}) == {ref(*args)!r}" for args in inputs)
        test = f"\n\nMETADATA = {{'author': 'phi4ray', 'dataset': 'test'}}\n\n\ndef check(candidate):\n{checks}\n"
        rows.append({"task_id": f"Phi4RayEval/{i}", "prompt": prompt, "canonical_solution": body,
                     "test": test, "entry_point": name})
    return rows


def mbpp() -> list[dict]:
    rows = []
    for i, (text, name, _params, code, ref, inputs) in enumerate(_MBPP):
        tests = [f"assert {_call(name, args)} == {ref(*args)!r}" for args in inputs]
        rows.append({"task_id": 9001 + i, "text": text, "code": code, "test_list": tests,
                     "test_setup_code": "", "challenge_test_list": []})
    return rows


SETS = {"mmlu": mmlu, "arc": arc, "gsm8k": gsm8k, "math": math_set, "humaneval": humaneval, "mbpp": mbpp}


def write_fixtures(out_dir: str | Path) -> list[Path]:
    """Write every set as `<name>.jsonl` under `out_dir`; returns the paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, make in SETS.items():
        p = out / f"{name}.jsonl"
        p.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in make()))
        paths.append(p)
    return paths


if __name__ == "__main__":
    for p in write_fixtures(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).parent / "data"):
        print(p)
