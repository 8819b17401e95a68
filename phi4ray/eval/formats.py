"""Benchmark files in their public layouts, read into one item shape per task kind.

A task file is JSONL (`.jsonl`, `.jsonl.gz`), a JSON list, or Parquet (what the Hugging Face hub
serves), at a local path or any `pyarrow.fs` URI. A bare file name that is not a local file
names one of the small sets shipped in `phi4ray/eval/data/` (`mmlu.jsonl`, ...).

| kind | layout (the Hugging Face dataset's fields) | item |
| --- | --- | --- |
| mmlu | `cais/mmlu`: question, choices (list), answer (index or letter), subject | question, choices, answer (index), subject |
| arc | `allenai/ai2_arc`: question, choices {text, label}, answerKey; or the original {question: {stem, choices: [{label, text}]}, answerKey} | the same |
| gsm8k | question, answer (`... #### 42`) | question, solution, target (`42`) |
| math | problem, solution (`... \\boxed{...}`) | problem, solution, target (the last boxed) |
| humaneval | task_id, prompt, canonical_solution, test, entry_point | the same |
| mbpp | task_id, text, code, test_list, test_setup_code | text, code, tests, setup |

A record that does not fit its layout is not evaluated and never silently dropped: `load_items`
returns it with its line number and the reason, and the task's report lists it.
"""

from __future__ import annotations

import gzip
import io
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

DATA_DIR = Path(__file__).parent / "data"
KINDS = ("mmlu", "arc", "gsm8k", "math", "humaneval", "mbpp", "needle")
DEFAULT_SHOTS = {"mmlu": 5, "arc": 1, "gsm8k": 8, "math": 4, "humaneval": 0, "mbpp": 3, "needle": 0}
"""The standard few-shot counts: MMLU 5 (Hendrycks et al.), ARC 1, GSM8K 8 (Wei et al.'s chain of
thought), MATH 4 (Lewkowycz et al.), HumanEval 0, MBPP 3 (Austin et al.)."""
LETTERS = "ABCDEFGHIJ"


class BadRecord(ValueError):
    """A record that does not fit its benchmark's layout; the message says which field."""


def kind_of(name: str, kind: str | None) -> str:
    """The task kind: `kind` if given, else the task name or its prefix (`arc_challenge` -> arc)."""
    if kind:
        return kind
    for k in KINDS:
        if name == k or name.startswith((k + "_", k + "-")):
            return k
    raise ValueError(f"eval task '{name}': set `kind` (one of {', '.join(KINDS)}); the name does not say it")


def shipped_sets() -> list[str]:
    return sorted(p.name for p in DATA_DIR.iterdir() if p.suffix in (".jsonl", ".json", ".parquet"))


def resolve_path(path: str) -> str:
    """`path` itself (a URI, or a local file that exists), or the shipped set of that bare file name."""
    if "://" in path or os.path.isfile(path):
        return path
    shipped = DATA_DIR / path
    if os.sep not in path and shipped.is_file():
        return str(shipped)
    raise FileNotFoundError(f"eval data file '{path}' does not exist (shipped sets: {', '.join(shipped_sets())})")


def read_bytes(path: str) -> bytes:
    if "://" in path:
        import pyarrow.fs as pafs

        fs, p = pafs.FileSystem.from_uri(path)
        with fs.open_input_stream(p) as f:
            return f.read()
    with open(path, "rb") as f:
        return f.read()


def read_records(path: str) -> list[tuple[int, Any]]:
    """(line or row number from 1, record) for each record of a task file. A line that is not
    JSON comes back as a `BadRecord` in place of the record."""
    path = resolve_path(path)
    data = read_bytes(path)
    if path.endswith(".parquet"):
        import pyarrow.parquet as pq

        return list(enumerate(pq.read_table(io.BytesIO(data)).to_pylist(), 1))
    if path.endswith(".gz"):
        data = gzip.decompress(data)
    text = data.decode("utf-8")
    if path.endswith(".json"):
        rows = json.loads(text)
        if not isinstance(rows, list):
            raise ValueError(f"{path}: a .json task file must hold a list of records")
        return list(enumerate(rows, 1))
    out: list[tuple[int, Any]] = []
    for i, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            out.append((i, json.loads(line)))
        except ValueError as e:
            out.append((i, BadRecord(f"not JSON: {e}")))
    return out


# -- per-kind normalisation -----------------------------------------------------------------------
def _need(rec: dict, key: str, typ=str):
    if key not in rec or rec[key] is None:
        raise BadRecord(f"missing field '{key}'")
    v = rec[key]
    if typ is not None and not isinstance(v, typ):
        raise BadRecord(f"field '{key}' should be {getattr(typ, '__name__', typ)}, got {type(v).__name__}")
    return v


def _answer_index(answer: Any, labels: list[str], n: int) -> int:
    if isinstance(answer, bool):
        raise BadRecord(f"answer {answer!r} is not an index or a label")
    if isinstance(answer, int):
        idx = answer
    else:
        s = str(answer).strip()
        if s in labels:
            idx = labels.index(s)
        elif s.isdigit():
            idx = int(s)
        else:
            raise BadRecord(f"answer {answer!r} is neither an index nor one of the labels {labels}")
    if not 0 <= idx < n:
        raise BadRecord(f"answer {answer!r} is out of range for {n} choices")
    return idx


def _mmlu(rec: dict) -> dict:
    q = _need(rec, "question")
    choices = _need(rec, "choices", list)
    if len(choices) < 2 or not all(isinstance(c, str) for c in choices):
        raise BadRecord("'choices' must be a list of at least 2 strings")
    return {"question": q, "choices": choices, "labels": list(LETTERS[: len(choices)]),
            "answer": _answer_index(rec.get("answer"), list(LETTERS[: len(choices)]), len(choices)),
            "subject": str(rec.get("subject") or "")}


def _arc(rec: dict) -> dict:
    q = rec.get("question")
    if isinstance(q, dict):  # the original ARC layout: question {stem, choices [{label, text}]}
        stem = _need(q, "stem")
        ch = _need(q, "choices", list)
        texts, labels = [str(c.get("text", "")) for c in ch], [str(c.get("label", "")) for c in ch]
    else:
        stem = _need(rec, "question")
        ch = _need(rec, "choices", dict)
        texts, labels = list(ch.get("text") or []), [str(x) for x in ch.get("label") or []]
    if len(texts) < 2 or len(texts) != len(labels):
        raise BadRecord("'choices' must have as many labels as texts, at least 2")
    key = rec.get("answerKey")
    if key is None:
        raise BadRecord("missing field 'answerKey'")
    if str(key) not in labels:
        raise BadRecord(f"answerKey {key!r} is not one of the labels {labels}")
    return {"question": stem, "choices": texts, "labels": labels, "answer": labels.index(str(key)),
            "subject": ""}


def gsm8k_target(answer: str) -> str:
    """The final answer of a GSM8K solution: what follows the last `####`."""
    if "####" not in answer:
        raise BadRecord("'answer' has no '#### <final answer>' line")
    return answer.rsplit("####", 1)[1].strip()


def _gsm8k(rec: dict) -> dict:
    answer = _need(rec, "answer")
    return {"question": _need(rec, "question"), "solution": answer, "target": gsm8k_target(answer)}


def _math(rec: dict) -> dict:
    from phi4ray.pts.oracles import extract_answer

    sol = _need(rec, "solution")
    if "\\boxed" not in sol and "\\fbox" not in sol:
        raise BadRecord("'solution' has no \\boxed{} answer")
    target = rec.get("answer") if isinstance(rec.get("answer"), str) else extract_answer(sol)
    if not target:
        raise BadRecord("the \\boxed{} answer of 'solution' is empty")
    return {"problem": _need(rec, "problem"), "solution": sol, "target": target,
            "subject": str(rec.get("type") or "")}


def _humaneval(rec: dict) -> dict:
    return {k: _need(rec, k) for k in ("prompt", "canonical_solution", "test", "entry_point")}


def _mbpp(rec: dict) -> dict:
    tests = _need(rec, "test_list", list)
    if not tests or not all(isinstance(t, str) for t in tests):
        raise BadRecord("'test_list' must be a non-empty list of strings")
    text = rec.get("text") if rec.get("text") is not None else rec.get("prompt")  # sanitized MBPP: `prompt`
    if not isinstance(text, str):
        raise BadRecord("missing field 'text'")
    return {"text": text, "code": _need(rec, "code"), "tests": tests,
            "setup": str(rec.get("test_setup_code") or "")}


NORMALISERS: dict[str, Callable[[dict], dict]] = {
    "mmlu": _mmlu, "arc": _arc, "gsm8k": _gsm8k, "math": _math, "humaneval": _humaneval, "mbpp": _mbpp,
}
_ID_FIELDS = ("id", "task_id", "question_id", "idx", "uid")


def load_items(kind: str, path: str) -> tuple[list[dict], list[dict]]:
    """(items, rejected) of a task file: items in file order, each with a stable `id` (the
    record's own id field, else `<file name>:<line>`); rejected rows name their line and reason."""
    norm = NORMALISERS[kind]
    items, rejected = [], []
    name = os.path.basename(path)
    for line, rec in read_records(path):
        try:
            if isinstance(rec, BadRecord):
                raise rec
            if not isinstance(rec, dict):
                raise BadRecord(f"a record must be a JSON object, got {type(rec).__name__}")
            item = norm(rec)
        except BadRecord as e:
            rejected.append({"line": line, "reason": str(e)})
            continue
        rid = next((rec[k] for k in _ID_FIELDS if rec.get(k) is not None), None)
        items.append({"id": str(rid) if rid is not None else f"{name}:{line}", **item})
    return items, rejected
