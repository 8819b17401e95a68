"""Multi-agent prompting (Phi-4 §2.2): roles take turns on one transcript about a seed passage.

With the default roles, `solver` (template `agents_solver`, generate sampling) poses a problem
about the passage and solves it; `checker` (template `agents_checker`, check sampling) checks
the solution against the passage and ends with `Verdict: correct` or `Verdict: incorrect`; the
solver then fixes what the checker named, and so on for `turns` messages. Any roles work: role R
speaks with template `agents_R`, turns go round `roles` in order, the first role's messages are
the solutions (`Problem:` on its first turn, `Solution:` and `Final answer:` on every turn) and
the last role's messages carry the verdict. The dialogue stops at the first `correct`.

Rejects: `unparseable` (a solver message without its parts, a verdict message without a
verdict), `not_accepted` (no `correct` within `turns`). Rows: `kind=agents`,
`source=synthetic`; `messages` = the problem and the accepted solution; `checks` has the whole
transcript, the number of turns, the verdict and the final answer.
"""

from __future__ import annotations

import re

from phi4ray.config import AgentsConfig
from phi4ray.synth.ops import LLM, Inputs, Op, Work, alive, clip, fill, register

_PART = r"^[ \t>#*_]*{name}[ \t*_]*[:：][ \t*_]*"
_PROBLEM = re.compile(_PART.format(name="problem"), re.I | re.M)
_SOLUTION = re.compile(_PART.format(name="solution"), re.I | re.M)
_FINAL = re.compile(_PART.format(name="final\\s+answer"), re.I | re.M)
_VERDICT = re.compile(r"verdict[\s*_`]*[:：\-–][\s*_`]*(correct|incorrect|accepted|accept|rejected|reject|wrong|right)\b", re.I)


def parse_solver(text: str) -> dict[str, str] | str:
    """{'problem' (may be ''), 'solution', 'final_answer'} from a solver message, or why not."""
    text = text or ""
    s = _SOLUTION.search(text)
    if not s:
        return "no 'Solution:' part"
    f = _FINAL.search(text, s.end())
    if not f:
        return "no 'Final answer:' after the solution"
    p = _PROBLEM.search(text, 0, s.start())
    problem = text[p.end() : s.start()].strip() if p else ""
    solution = text[s.end() : f.start()].strip()
    final = text[f.end() :].strip().split("\n")[0].strip()
    if not solution or not final:
        return "empty solution or final answer"
    return {"problem": problem, "solution": solution, "final_answer": final}


def parse_verdict(text: str) -> bool | None:
    """True for `Verdict: correct` (the last verdict line wins), False for incorrect, None for none."""
    found = _VERDICT.findall(text or "")
    if not found:
        return None
    return found[-1].lower() in ("correct", "accepted", "accept", "right")


def render_transcript(messages: list[dict]) -> str:
    if not messages:
        return "(nothing yet)"
    return "\n\n".join(f"[{m['role']}]\n{m['content']}" for m in messages)


@register
class AgentsOp(Op):
    name = "agents"
    source = "synthetic"
    cfg: AgentsConfig

    def templates(self) -> dict[str, str]:
        return {role: f"agents_{role}" for role in self.cfg.roles}

    def inputs(self, src: Inputs) -> list[dict]:
        return [{"id": s["id"], "seed_id": s["id"], "text": s["text"]} for s in src.seeds()]

    def run(self, works: list[Work], llm: LLM) -> None:
        c = self.cfg
        roles, first, last = c.roles, c.roles[0], c.roles[-1]
        for w in works:
            w.data["transcript"] = []
        for turn in range(c.turns):
            live = alive(works)
            if not live:
                break
            role = roles[turn % len(roles)]
            sampling = c.check_sampling if role == last else c.sampling
            prompts = [fill(f"agents_{role}", passage=self.passage(w.rec), transcript=render_transcript(w.data["transcript"])) for w in live]
            step = f"turn:{turn}:{role}"
            for w, o in zip(live, llm.step(live, step, prompts, sampling)):
                if o is None:
                    continue
                text = o[0].text.strip()
                w.data["transcript"].append({"role": role, "content": clip(text)})
                if role == first:
                    parsed = parse_solver(text)
                    if isinstance(parsed, str):
                        w.fail(step, "unparseable", parsed)
                        continue
                    if not parsed["problem"]:
                        if "problem" not in w.data:
                            w.fail(step, "unparseable", "no 'Problem:' part in the first solution")
                            continue
                        parsed["problem"] = w.data["problem"]
                    w.data.update(parsed)
                elif role == last:
                    verdict = parse_verdict(text)
                    if verdict is None:
                        w.fail(step, "unparseable", "no 'Verdict: correct|incorrect' line")
                    elif verdict:
                        self._keep(w, turn + 1)
        for w in alive(works):
            w.fail("verdict", "not_accepted", f"no 'correct' verdict in {c.turns} turns")

    def _keep(self, w: Work, turns: int) -> None:
        d = w.data
        answer = f"{d['solution']}\n\nFinal answer: {d['final_answer']}"
        w.out = self.row(
            w, text=f"Problem: {d['problem']}\n\nSolution: {answer}",
            messages=[{"role": "user", "content": d["problem"]}, {"role": "assistant", "content": answer}],
            checks={"transcript": d["transcript"], "turns": turns, "verdict": "correct", "final_answer": d["final_answer"],
                    "roles": self.cfg.roles},
        )
