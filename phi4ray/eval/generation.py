"""Generation with answer extraction: greedy answers to held-out questions, checked by an oracle.

The questions are the `heldout` split of `questions/`, which training never sees. Each is asked
in ChatML, the answer is extracted from the completion and checked by the same oracle that PTS
uses, and the report goes to `eval/<stage>.json`.
"""

from __future__ import annotations

import logging
import time

from phi4ray.config import EngineConfig, EvalConfig
from phi4ray.run import RunDir
from phi4ray.tokenizer import chat_text

log = logging.getLogger(__name__)


def prompt_for(question: str) -> str:
    return chat_text([{"role": "user", "content": question}], add_generation_prompt=True)


def load_questions(run_dir: RunDir, split: str, limit: int | None = None) -> list[dict]:
    rows = [r for r in run_dir.read_table("questions").to_pylist() if r["split"] == split]
    rows.sort(key=lambda r: r["id"])
    return rows[:limit] if limit is not None else rows


def accuracy(sampler, questions: list[dict], oracle, max_tokens: int, batch_size: int = 32) -> tuple[float, list[dict]]:
    """Greedy accuracy of `sampler` on `questions`, with the per-question records."""
    from phi4ray.inference.sampler import SamplingParams

    params = SamplingParams(n=1, temperature=0.0, max_tokens=max_tokens)
    records = []
    for i in range(0, len(questions), batch_size):
        chunk = questions[i : i + batch_size]
        outs = sampler.generate([prompt_for(q["prompt"]) for q in chunk], params)
        for q, [c] in zip(chunk, outs):
            records.append({"id": q["id"], "prompt": q["prompt"], "answer": q["answer"],
                            "completion": c.text, "correct": bool(oracle(c.text, q["answer"]))})
    return (sum(r["correct"] for r in records) / len(records) if records else 0.0), records


def run_eval(cfg: EvalConfig, run_dir: RunDir, stage: str, engine: EngineConfig, oracle_name: str = "math") -> dict:
    """Evaluate the HF export of training stage `stage`; writes `eval/<stage>.json`."""
    from phi4ray.inference.sampler import make_sampler
    from phi4ray.pts.oracles import get_oracle

    ckpt = f"checkpoints/{stage}/hf"
    if not run_dir.exists(ckpt, "config.json"):
        raise FileNotFoundError(f"no '{stage}' checkpoint at {run_dir.uri_of(ckpt)}; train that stage first")
    questions = load_questions(run_dir, "heldout", cfg.max_questions)
    if not questions:
        raise ValueError(f"{run_dir.uri_of('questions')} has no heldout questions to evaluate on")
    t0 = time.time()
    sampler = make_sampler(engine, run_dir.local_dir(ckpt))
    acc, records = accuracy(sampler, questions, get_oracle(oracle_name), cfg.max_tokens)
    report = {
        "stage": stage,
        "task": "arithmetic-heldout",
        "metric": "greedy_accuracy",
        "accuracy": round(acc, 4),
        "n": len(records),
        "seconds": round(time.time() - t0, 2),
        "examples": records[:10],
    }
    run_dir.write_json(f"eval/{stage}.json", report)
    log.warning("eval %s: accuracy %.3f on %d held-out questions", stage, acc, len(records))
    return report
