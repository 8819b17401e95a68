"""Corruption filters: every real documentation page passes, planted corruption is rejected
with the statistic that caught it."""

from __future__ import annotations

import base64
import random

import ftfy.badness
import pytest
from pydantic import ValidationError

from phi4ray.config import FilterConfig
from phi4ray.data import filters
from phi4ray.data.extract import extract_text
from phi4ray.stage import Reject, apply_steps

from realpages import shared_pages

FRENCH = (
    "L'été dernier, nous sommes allés à la plage près de Nîmes. Les enfants ont mangé des crêpes "
    "et des glaces à la pistache ; c'était délicieux. Où est passé le temps ? Déjà la rentrée, "
    "hélas, et les cahiers à acheter pour l'école primaire du quartier. Grand-mère a préparé "
    "une tarte aux pêches, et le voisin, un ancien pêcheur très bavard, nous a raconté ses "
    "aventures en mer du Nord. Même le chat, d'habitude si farouche, s'est installé près de la "
    "cheminée pour écouter."
)
CLEAN_MULTILINGUAL = [
    FRENCH,
    "Größere Änderungen an der Straße wurden über das Wochenende durchgeführt; die Bürger waren froh.",
    "Съешь же ещё этих мягких французских булок, да выпей чаю. Москва — столица России.",
    "Η γρήγορη καφέ αλεπού πηδάει πάνω από τον τεμπέλη σκύλο. Καλημέρα σε όλους!",
    "我们今天去公园散步，天气很好。明天可能会下雨，所以记得带伞。",
    "今日はとても良い天気ですね。明日は雨が降るかもしれません。",
    "El niño comió piñata y jalapeños — ¡qué día! ¿Dónde está mi corazón?",
    "Naïve café owners' résumés: “smart quotes”, an en–dash, an em—dash, 5 €, 10 £, ½ cup, 30°C, µs.",
]


@pytest.fixture(scope="module")
def real_pages() -> list[tuple[str, str]]:
    paths = shared_pages()
    return [(p.name, extract_text(p.read_text(encoding="utf-8"))) for p in paths]


def doc(text: str, source: str = "web") -> dict:
    return {"id": "x", "text": text, "source": source}


NO_ZLIB = FilterConfig(min_compression_ratio=None)
"""Repetitive spam is also too compressible; without that check the repetition statistic
that catches it shows."""


def first_reject(text: str, cfg: FilterConfig | None = None, source: str = "web") -> tuple[str, Reject] | None:
    for step, fn in filters.filter_steps(cfg or FilterConfig()):
        out = fn(doc(text, source))
        if isinstance(out, Reject):
            return step, out
        assert out["text"] == text  # filters judge; they never change the text
    return None


# -- real pages --------------------------------------------------------------------------------
def test_every_real_page_passes_every_filter(real_pages):
    steps = filters.filter_steps(FilterConfig())
    assert [s for s, _ in steps] == ["characters", "mojibake", "compression", "repetition"]
    kept, rejects = apply_steps([doc(t) | {"id": name} for name, t in real_pages], steps, "curate")
    assert [(r["id"], r["step"], r["reason"]) for r in rejects] == []
    assert len(kept) == len(real_pages)


def test_gopher_values_would_reject_real_api_references(real_pages):
    """Why our line/paragraph/5..10-gram defaults are not Gopher's (see FilterConfig)."""
    gopher = FilterConfig(
        dup_line_frac=0.30, dup_para_frac=0.30, dup_line_char_frac=0.20, dup_para_char_frac=0.20,
        dup_ngram_char_frac={5: 0.15, 6: 0.14, 7: 0.13, 8: 0.12, 9: 0.11, 10: 0.10},
    )  # fmt: skip
    rejected = {name for name, t in real_pages if isinstance(filters.repetition_filter(doc(t), gopher), Reject)}
    assert "c-api__number.html" in rejected and len(rejected) > len(real_pages) // 4


# -- planted corruption ------------------------------------------------------------------------
def test_repeated_lines():
    lines = [f"Sentence number {i} says something new about topic {i * 7}." for i in range(12)]
    text = "\n".join(lines + ["Subscribe to our newsletter for the latest deals and offers."] * 48)
    assert first_reject(text) is not None
    step, rej = first_reject(text, NO_ZLIB)
    assert step == "repetition" and rej.reason == "dup_line_frac"
    value, limit = rej.detail.split(" > ")
    assert float(value) == pytest.approx(47 / 60, abs=1e-3) and float(limit) == 0.70


def test_repeated_paragraphs():
    paras = [f"Paragraph {i}: the committee discussed item {i} and agreed to revisit it." for i in range(10)]
    block = "Terms and conditions apply.\nSee our store for details.\nOffer valid while stocks last."
    text = "\n\n".join(paras + [block] * 30)
    assert first_reject(text) is not None
    cfg = FilterConfig(min_compression_ratio=None, dup_line_frac=None)
    assert first_reject(text, cfg)[1].reason == "dup_para_frac"
    cfg = FilterConfig(min_compression_ratio=None, dup_line_frac=None, dup_para_frac=None)
    assert first_reject(text, cfg)[1].reason == "dup_line_char_frac"


def test_keyword_spam():
    rng = random.Random(0)
    tails = "online pills price sale discount shop store deal order best fast free".split()
    text = " ".join(f"cheap viagra {rng.choice(tails)}" for _ in range(200))
    step, rej = first_reject(text)
    assert (step, rej.reason) == ("repetition", "top_2gram_char_frac")
    assert float(rej.detail.split(" > ")[0]) > 0.5


def test_page_pasted_twice_is_caught_by_duplicate_ngrams(real_pages):
    page = dict(real_pages)["library__atexit.html"]
    assert first_reject(page) is None
    step, rej = first_reject(page + "\n\n" + page)
    assert (step, rej.reason, rej.detail) == ("repetition", "dup_5gram_char_frac", "1.000 > 0.950")


def test_sentence_repeated_is_too_compressible():
    step, rej = first_reject("I like pie. " * 300)
    assert (step, rej.reason) == ("compression", "compression_ratio_low")
    assert float(rej.detail.split(" < ")[0]) < 0.02


def test_random_bytes_read_as_text():
    text = random.Random(0).randbytes(5000).decode("latin-1")
    step, rej = first_reject(text)
    assert (step, rej.reason) == ("characters", "control_frac")
    assert float(rej.detail.split(" > ")[0]) > 0.2


def test_base64_blob_is_too_incompressible():
    blob = base64.b64encode(random.Random(1).randbytes(4000)).decode()
    step, rej = first_reject(blob)
    assert (step, rej.reason) == ("compression", "compression_ratio_high")
    assert first_reject(blob, FilterConfig(max_compression_ratio=None)) is None


def test_control_characters():
    words = FRENCH.split()
    text = " ".join(w + ("\x1b[0m\x08" if i % 5 == 0 else "") for i, w in enumerate(words * 4))
    assert first_reject(text)[1].reason == "control_frac"
    spaced = "".join(w + "\t\n\x0b\x0c\r"[i % 5] for i, w in enumerate(FRENCH.split(" ")))
    assert first_reject(spaced) is None


def test_mojibake():
    for wrong in ("cp1252", "latin-1"):
        step, rej = first_reject(FRENCH.encode("utf-8").decode(wrong, "replace"))
        assert (step, rej.reason) == ("mojibake", "mojibake_per_kchar")
    assert first_reject(FRENCH) is None


def test_one_quoted_mojibake_example_is_not_corruption(real_pages):
    page = dict(real_pages)["library__codecs.html"]
    text = page + "\n\nA classic example of mojibake is “cafÃ©” for “café”."
    assert filters.mojibake_count(text) == 1 and first_reject(text) is None


def test_replacement_characters():
    step, rej = first_reject(FRENCH.encode().decode("ascii", "replace"))
    assert (step, rej.reason) == ("characters", "replacement_frac")


def test_lone_surrogate_is_invalid_utf8():
    text = FRENCH + " \ud800 " + CLEAN_MULTILINGUAL[1]
    step, rej = first_reject(text)
    assert (step, rej.reason) == ("characters", "invalid_utf8") and "\\ud800" in rej.detail
    assert first_reject(text, FilterConfig(reject_invalid_utf8=False)) is None


def test_clean_multilingual_text_is_not_mojibake():
    for text in CLEAN_MULTILINGUAL:
        assert filters.mojibake_count(text) == 0, text
        assert first_reject(text) is None


def test_mojibake_count_equals_ftfy_badness_on_mixed_text(real_pages):
    rng = random.Random(0)
    for _, page in real_pages[:40]:
        bad = page.encode("utf-8").decode("cp1252", "replace").split("\n")
        mixed = "\n".join(b if rng.random() < 0.5 else g for g, b in zip(page.split("\n"), bad))
        assert filters.mojibake_count(mixed) == ftfy.badness.badness(mixed)


# -- code --------------------------------------------------------------------------------------
CODE = "\n".join(
    ["switch (op) {"]
    + [f"case {i}:\n    result = apply(op, {i});\n    break;" for i in range(60)]
    + ["default:\n    break;", "}"]
)


def test_code_is_not_judged_by_prose_repetition():
    assert first_reject(CODE, source="web")[1].reason.startswith(("dup_", "top_"))
    assert first_reject(CODE, source="code") is None


def test_code_is_still_judged_for_corruption():
    blob = base64.b64encode(random.Random(2).randbytes(3000)).decode()
    assert first_reject(f'KEY = "{blob}"\n', source="code")[1].reason == "compression_ratio_high"
    assert first_reject(CODE + "\x00\x01\x02\x03" * 50, source="code")[1].reason == "control_frac"


def test_fenced_code_and_math_are_left_out_of_prose_statistics(real_pages):
    page = dict(real_pages)["library__atexit.html"]
    code = "```python\n" + "\n".join(["x = x + 1"] * 80) + "\n```"
    math = " ".join([r"\(x^2 + y^2 = z^2\)"] * 80)
    text = page + "\n\n" + code + "\n\n" + math
    assert first_reject(text, NO_ZLIB) is None
    assert filters.repetition_stats(text, FilterConfig()) == filters.repetition_stats(page, FilterConfig())
    assert first_reject(page + "\n\n" + "\n".join(["x = x + 1"] * 80), NO_ZLIB)[1].reason == "dup_line_frac"


def test_a_record_without_text_is_a_reject_not_an_error():
    for _, fn in filters.filter_steps(FilterConfig()):
        assert fn({"id": "x", "text": None}) == Reject("no_text", "'text' is NoneType, not a string")


# -- config ------------------------------------------------------------------------------------
def test_each_filter_can_be_turned_off():
    assert filters.filter_steps(FilterConfig(enabled=False)) == []
    off = FilterConfig(
        reject_invalid_utf8=False, max_control_frac=None, max_replacement_frac=None, max_mojibake_per_kchar=None,
        min_compression_ratio=None, max_compression_ratio=None, dup_line_frac=None, dup_para_frac=None,
        dup_line_char_frac=None, dup_para_char_frac=None, top_ngram_char_frac={}, dup_ngram_char_frac={},
    )  # fmt: skip
    assert filters.filter_steps(off) == []
    only_rep = FilterConfig(top_ngram_char_frac={2: 0.2}, dup_ngram_char_frac={})
    assert list(filters.repetition_limits(only_rep)) == [
        "dup_line_frac", "dup_para_frac", "dup_line_char_frac", "dup_para_char_frac", "top_2gram_char_frac",
    ]  # fmt: skip


def test_config_validates_ngram_thresholds():
    with pytest.raises(ValidationError, match="dup_ngram_char_frac"):
        FilterConfig(dup_ngram_char_frac={5: 1.5})
    with pytest.raises(ValidationError):
        FilterConfig(max_control_fraction=0.1)  # a typo is an error
