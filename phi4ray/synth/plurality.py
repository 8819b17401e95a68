"""Plurality filter for questions (Phi-4 §2.2): N independent answers and a majority vote.

Questions come from `questions/` (the `splits` asked for; their answers are programmatic, so
trusted) and, with `include_qa`, from the `qa` op's rows (their answers are a model's, so
unreliable). One step, `answer` (template `plurality_question` for the first,
`plurality_qa` for the second; generate sampling with n = `n_answers`): N samples per question.

Each sample's vote is `normalize_answer(extract_answer(sample))`, the PTS math oracle's own
extraction and normaliser (`pts/oracles.py`): the last `\\boxed{}` or else the last number,
then one canonical string per value (`1/2` = `0.5` = `\\frac{1}{2}`). A sample with no
extractable answer abstains, and abstentions count against the majority. Then (`vote`):

- all N answers equal: reject `unanimous` (too easy to teach anything);
- the top answer has at most `majority` x N votes: reject `no_majority` (too hard or ambiguous);
- a trusted question whose majority differs from its answer: reject `majority_disagrees`;
- else keep. For a `qa` question the majority answer replaces the extracted one.

Rows: `kind=plurality`, `source=synthetic`; `messages` = the prompt and the first sample that
reached the majority answer (an SFT example); `checks` has the votes, the majority, its share,
the abstentions, the original answer and whether it agreed.

`run_plurality` in `synth/run.py` runs this op alone with any checkpoint (a path, or a training
stage name such as `sft`), so it can filter questions with the trained model after SFT.
"""

from __future__ import annotations

from collections import Counter

from phi4ray.config import PluralityConfig
from phi4ray.synth.ops import LLM, Inputs, Op, Work, clip, fill, register


def answer_key(completion: str) -> str | None:
    """A sample's vote: its final answer in canonical form, or None (abstains)."""
    from phi4ray.pts.oracles import extract_answer, normalize_answer

    a = extract_answer(completion)
    if a is None:
        return None
    key = normalize_answer(a)
    return key or None


def vote(keys: list[str | None], majority: float) -> tuple[str, str | None, Counter]:
    """(`keep` | `unanimous` | `no_majority`, the top answer, the vote counts) over N votes."""
    n = len(keys)
    counts = Counter(k for k in keys if k is not None)
    if not counts:
        return "no_majority", None, counts
    top, c = counts.most_common(1)[0]
    if c == n:
        return "unanimous", top, counts
    if c <= majority * n or list(counts.values()).count(c) > 1:
        return "no_majority", top, counts
    return "keep", top, counts


@register
class PluralityOp(Op):
    name = "plurality"
    source = "synthetic"
    cfg: PluralityConfig

    def templates(self) -> dict[str, str]:
        return {"answer:questions": self.cfg.question_template, "answer:qa": self.cfg.qa_template}

    def inputs(self, src: Inputs) -> list[dict]:
        import json

        rows = [
            {"id": q["id"], "question": q["prompt"], "answer": q["answer"], "origin": "questions", "split": q["split"], "seed_id": None}
            for q in src.questions(self.cfg.splits)
        ]
        if self.cfg.include_qa:
            for r in src.synthetic("qa"):
                qa = json.loads(r["checks"] or "{}")
                if qa.get("question") and qa.get("answer"):
                    rows.append({"id": r["id"], "question": qa["question"], "answer": qa["answer"], "origin": "qa",
                                 "seed_id": r["seed_id"]})
        return rows

    def sampling(self) -> dict[str, dict]:
        return {**super().sampling(), "generate": {**self.cfg.sampling.model_dump(), "n": self.cfg.n_answers}}

    def _template(self, rec: dict) -> str:
        return self.cfg.question_template if rec["origin"] == "questions" else self.cfg.qa_template

    def run(self, works: list[Work], llm: LLM) -> None:
        c = self.cfg
        prompts = [fill(self._template(w.rec), question=w.rec["question"]) for w in works]
        for w, p, o in zip(works, prompts, llm.step(works, "answer", prompts, c.sampling, n=c.n_answers)):
            if o is None:
                continue
            texts = [x.text for x in o]
            keys = [answer_key(t) for t in texts]
            decision, top, counts = vote(keys, c.majority)
            original = answer_key_of_reference(w.rec["answer"])
            checks = {
                "votes": dict(counts.most_common()), "n": len(keys), "abstained": keys.count(None),
                "majority": top, "majority_share": round(counts[top] / len(keys), 4) if top else 0.0,
                "original_answer": w.rec["answer"], "original_agrees": top is not None and top == original,
                "origin": w.rec["origin"],
            }
            w.data.update(checks=checks, samples=[clip(t, 500) for t in texts])
            if decision != "keep":
                w.fail("vote", decision, f"votes {checks['votes']}, {checks['abstained']} abstained of {len(keys)}")
                continue
            if w.rec["origin"] == "questions" and not checks["original_agrees"]:
                w.fail("vote", "majority_disagrees", f"majority {top!r} vs answer {original!r}")
                continue
            best = next(t for t, k in zip(texts, keys) if k == top)
            checks["answer"] = w.rec["answer"] if w.rec["origin"] == "questions" else _surface(best)
            checks["answer_source"] = "original" if w.rec["origin"] == "questions" else "majority"
            w.out = self.row(
                w, text=f"{p}\n{best.strip()}", messages=[{"role": "user", "content": p}, {"role": "assistant", "content": best.strip()}],
                checks=checks, templates={"answer": self._template(w.rec)}, seed_id=w.rec.get("seed_id"),
            )


def answer_key_of_reference(answer: str) -> str | None:
    """A reference answer in the same canonical form as the votes."""
    from phi4ray.pts.oracles import normalize_answer

    key = normalize_answer(answer)
    return key or None


def _surface(completion: str) -> str:
    from phi4ray.pts.oracles import extract_answer

    return (extract_answer(completion) or "").strip()
