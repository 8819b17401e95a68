"""SFT responses (Phi-4 §4.1): several responses per prompt, the best chosen by a judge prompt.

1. `request` (template `responses_request`, generate sampling; only with `prompts: seeds`): a
   user request about the seed passage's topic, on a `Request:` line. None: reject `unparseable`.
   With `prompts: questions` the prompts are `questions/` rows of the `splits` asked for.
2. `respond` (the request itself as the user turn, generate sampling with n = `n_responses`):
   the candidates. Empty ones are dropped; none left: reject `empty_output`.
3. `judge` (template `responses_judge`, check sampling): a 1-10 score per response and a
   `Best: k` line. No `Best:` line: reject `unparseable`; k outside 1..N: `judge_out_of_range`.

Rows: `kind=responses`, `source=sft`; `messages` = [user: request, assistant: best response],
the ChatML conversation that tokenize's SFT path reads; `checks` has the judge's output, the
chosen index, the scores, and every candidate (the material for judge-guided DPO pairs).
"""

from __future__ import annotations

import re

from phi4ray.config import ResponsesConfig
from phi4ray.synth.ops import LLM, Inputs, Op, Work, alive, clip, fill, register

_REQUEST = re.compile(r"^[ \t>#*_]*request[ \t*_]*[:：][ \t*_]*(.+)$", re.I | re.M)
_BEST = re.compile(r"best(?:\s+response)?[\s*_`]*(?:is|[:：=\-–])[\s*_`]*(?:response\s*)?#?\s*(\d+)", re.I)
_SCORE = re.compile(r"^[ \t>#*_]*response\s*#?\s*(\d+)[\s*_`]*[:：=\-–][\s*_`]*(\d+(?:\.\d+)?)(?:\s*/\s*10)?", re.I | re.M)


def parse_request(text: str) -> str | None:
    m = _REQUEST.search(text or "")
    return m.group(1).strip() if m and m.group(1).strip() else None


def parse_judgement(text: str) -> tuple[int | None, dict[int, float]]:
    """(the `Best: k` index, 1-based, or None; {k: score} from `Response k: s` lines)."""
    best = _BEST.findall(text or "")
    scores = {int(k): float(s) for k, s in _SCORE.findall(text or "")}
    return (int(best[-1]) if best else None), scores


def responses_block(responses: list[str]) -> str:
    return "\n\n".join(f"Response {i + 1}:\n{r}" for i, r in enumerate(responses))


@register
class ResponsesOp(Op):
    name = "responses"
    source = "sft"
    cfg: ResponsesConfig

    def templates(self) -> dict[str, str]:
        t = {"judge": self.cfg.judge_template}
        if self.cfg.prompts == "seeds":
            t["request"] = self.cfg.request_template
        return t

    def sampling(self) -> dict[str, dict]:
        g = self.cfg.sampling.model_dump()
        return {**super().sampling(), "request": g, "respond": {**g, "n": self.cfg.n_responses}}

    def inputs(self, src: Inputs) -> list[dict]:
        if self.cfg.prompts == "questions":
            return [{"id": q["id"], "seed_id": None, "request": q["prompt"]} for q in src.questions(self.cfg.splits)]
        return [{"id": s["id"], "seed_id": s["id"], "text": s["text"]} for s in src.seeds()]

    def run(self, works: list[Work], llm: LLM) -> None:
        c = self.cfg
        need = [w for w in works if not w.rec.get("request")]
        prompts = [fill(c.request_template, passage=self.passage(w.rec)) for w in need]
        for w, o in zip(need, llm.step(need, "request", prompts, c.sampling)):
            if o is None:
                continue
            req = parse_request(o[0].text)
            if req is None:
                w.data["output"] = clip(o[0].text)
                w.fail("request", "unparseable", "no 'Request:' line")
            else:
                w.data["request"] = req
        for w in works:
            if w.alive and w.rec.get("request"):
                w.data["request"] = w.rec["request"]
        live = alive(works)
        for w, o in zip(live, llm.step(live, "respond", [w.data["request"] for w in live], c.sampling, n=c.n_responses)):
            if o is None:
                continue
            cands = [x.text.strip() for x in o if x.text.strip()]
            w.data["candidates"] = cands
            if not cands:
                w.fail("respond", "empty_output", f"all {len(o)} responses empty")
        live = alive(works)
        prompts = [fill(c.judge_template, n=len(w.data["candidates"]), request=w.data["request"],
                        responses=responses_block(w.data["candidates"])) for w in live]
        for w, o in zip(live, llm.step(live, "judge", prompts, c.check_sampling)):
            if o is None:
                continue
            best, scores = parse_judgement(o[0].text)
            w.data["judge"] = clip(o[0].text)
            k = len(w.data["candidates"])
            if best is None:
                w.fail("judge", "unparseable", "no 'Best: <k>' line")
            elif not 1 <= best <= k:
                w.fail("judge", "judge_out_of_range", f"best {best} not in 1..{k}")
            else:
                chosen = w.data["candidates"][best - 1]
                w.out = self.row(
                    w, text=f"{w.data['request']}\n\n{chosen}",
                    messages=[{"role": "user", "content": w.data["request"]}, {"role": "assistant", "content": chosen}],
                    checks={"best": best, "scores": scores, "judge": w.data["judge"], "n": k, "candidates": [clip(x) for x in w.data["candidates"]]},
                    templates=self.templates(),
                )
