"""Self-revision (Phi-4 §2.2): draft, critique against a rubric, revise; up to `rounds` revisions.

1. `draft` (template `revise_draft`, generate sampling): a question about the seed passage with
   a step-by-step answer.
2. `critique` (template `revise_critique`, check sampling): the rubric grades *reasoning* and
   *accuracy* (1-5 each) against the passage and lists the problems. Unparseable scores: reject
   `unparseable`. Both scores >= `min_score`: the draft is kept.
3. `revise` (template `revise_revise`, generate sampling): a new draft that fixes what the
   critique names; back to 2. After `rounds` revisions a draft still below `min_score` is a
   reject `low_score`.

Rows: `kind=revise`, `source=synthetic`, `text` = the final draft; `checks` has the final
scores, the number of revisions, and the whole history (each draft, its critique, its scores).
"""

from __future__ import annotations

import re

from phi4ray.config import ReviseConfig
from phi4ray.synth.ops import LLM, Inputs, Op, Work, alive, clip, fill, register

_SCORE = r"[^\S\n]*(?:score)?[^\S\n]*(?:\(\s*1\s*[-–]\s*5\s*\))?[\s*_`]*[:=\-–][\s*_`]*([1-5])(?:\s*(?:/|out of)\s*5)?\b"
_REASONING = re.compile(r"reasoning" + _SCORE, re.I)
_ACCURACY = re.compile(r"(?:factual\s+)?accuracy" + _SCORE, re.I)


def parse_scores(text: str) -> dict[str, int] | None:
    """{'reasoning': r, 'accuracy': a} from the last `Reasoning: 4` / `**Accuracy**: 3/5` lines; None if either is missing."""
    r = _REASONING.findall(text or "")
    a = _ACCURACY.findall(text or "")
    if not r or not a:
        return None
    return {"reasoning": int(r[-1]), "accuracy": int(a[-1])}


@register
class ReviseOp(Op):
    name = "revise"
    source = "synthetic"
    cfg: ReviseConfig

    def templates(self) -> dict[str, str]:
        c = self.cfg
        return {"draft": c.draft_template, "critique": c.critique_template, "revise": c.revise_template}

    def inputs(self, src: Inputs) -> list[dict]:
        return [{"id": s["id"], "seed_id": s["id"], "text": s["text"]} for s in src.seeds()]

    def run(self, works: list[Work], llm: LLM) -> None:
        c = self.cfg
        for w, o in zip(works, llm.step(works, "draft", [fill(c.draft_template, passage=self.passage(w.rec)) for w in works], c.sampling)):
            if o is not None:
                w.data["draft"] = o[0].text.strip()
                w.data["history"] = []
                if not w.data["draft"]:
                    w.fail("draft", "empty_output")
        for rnd in range(c.rounds + 1):
            live = alive(works)
            if not live:
                break
            prompts = [fill(c.critique_template, draft=w.data["draft"], passage=self.passage(w.rec)) for w in live]
            revise = []
            for w, o in zip(live, llm.step(live, f"critique:{rnd}", prompts, c.check_sampling)):
                if o is None:
                    continue
                scores = parse_scores(o[0].text)
                w.data["history"].append({"round": rnd, "draft": clip(w.data["draft"]), "critique": clip(o[0].text), "scores": scores})
                if scores is None:
                    w.fail(f"critique:{rnd}", "unparseable", "no 'Reasoning: <1-5>' and 'Accuracy: <1-5>' scores")
                elif min(scores.values()) >= c.min_score:
                    self._keep(w, scores, rnd)
                elif rnd == c.rounds:
                    w.fail(f"critique:{rnd}", "low_score",
                           f"reasoning {scores['reasoning']}, accuracy {scores['accuracy']} < {c.min_score} after {rnd} revisions")
                else:
                    w.data["critique"] = o[0].text
                    revise.append(w)
            if not revise:
                continue
            prompts = [fill(c.revise_template, draft=w.data["draft"], critique=w.data["critique"], passage=self.passage(w.rec)) for w in revise]
            for w, o in zip(revise, llm.step(revise, f"revise:{rnd}", prompts, c.sampling)):
                if o is not None:
                    w.data["draft"] = o[0].text.strip()
                    if not w.data["draft"]:
                        w.fail(f"revise:{rnd}", "empty_output")

    def _keep(self, w: Work, scores: dict, revisions: int) -> None:
        w.out = self.row(w, text=w.data["draft"], messages=None,
                         checks={"scores": scores, "revisions": revisions, "min_score": self.cfg.min_score,
                                 "history": w.data["history"]})
