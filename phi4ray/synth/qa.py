"""QA extraction (Phi-4 §2.2): a deduction chain in organic text becomes a question with an answer.

One step, `extract` (template `qa_extract`, generate sampling): the model writes

    Question: ...
    Reasoning: ...
    Answer: ...

`parse_qa` reads it (labels in any case, optionally bold, in that order; the reasoning may be
empty). No question or no answer: reject `unparseable`; an answer longer than
`max_answer_chars`: reject `answer_too_long` (the plurality filter votes on short answers).

Rows: `kind=qa`, `source=synthetic`, `text` = the three parts (pretraining), no `messages`:
an extracted answer is unverified, so a question reaches SFT only through the plurality filter
(`plurality.include_qa`), which votes on it and replaces the answer with the majority's.
`checks` has the question, the reasoning and the answer.
"""

from __future__ import annotations

import re

from phi4ray.config import QAConfig
from phi4ray.synth.ops import LLM, Inputs, Op, Work, clip, fill, register

_LABEL = r"^[ \t>#*_]*{name}[ \t*_]*[:：][ \t*_]*"
_Q = re.compile(_LABEL.format(name="question"), re.I | re.M)
_R = re.compile(_LABEL.format(name="(?:reasoning|solution|explanation)"), re.I | re.M)
_A = re.compile(_LABEL.format(name="(?:the\\s+)?(?:final\\s+)?answer"), re.I | re.M)


def parse_qa(text: str) -> dict[str, str] | str:
    """{'question', 'reasoning', 'answer'} from the first Question/Reasoning/Answer block, or why not."""
    text = text or ""
    q = _Q.search(text)
    if not q:
        return "no 'Question:' line"
    a = _A.search(text, q.end())
    if not a:
        return "no 'Answer:' after the question"
    r = _R.search(text, q.end(), a.start())
    question = text[q.end() : (r.start() if r else a.start())].strip()
    reasoning = text[r.end() : a.start()].strip() if r else ""
    rest = text[a.end() :]
    nxt = _Q.search(rest)  # a second block starts: the answer ends there
    answer = (rest[: nxt.start()] if nxt else rest).strip().split("\n\n")[0].strip()
    if not question:
        return "empty question"
    if not answer:
        return "empty answer"
    return {"question": question, "reasoning": reasoning, "answer": answer}


@register
class QAOp(Op):
    name = "qa"
    source = "synthetic"
    cfg: QAConfig

    def templates(self) -> dict[str, str]:
        return {"extract": self.cfg.template}

    def inputs(self, src: Inputs) -> list[dict]:
        return [{"id": s["id"], "seed_id": s["id"], "text": s["text"]} for s in src.seeds()]

    def run(self, works: list[Work], llm: LLM) -> None:
        c = self.cfg
        prompts = [fill(c.template, passage=self.passage(w.rec)) for w in works]
        for w, o in zip(works, llm.step(works, "extract", prompts, c.sampling)):
            if o is None:
                continue
            w.data["output"] = clip(o[0].text)
            qa = parse_qa(o[0].text)
            if isinstance(qa, str):
                w.fail("extract", "unparseable", qa)
            elif len(qa["answer"]) > c.max_answer_chars:
                w.fail("extract", "answer_too_long", f"{len(qa['answer'])} chars > max_answer_chars {c.max_answer_chars}")
            else:
                text = f"Question: {qa['question']}\nReasoning: {qa['reasoning']}\nAnswer: {qa['answer']}"
                w.out = self.row(w, text=text, messages=None, checks=qa)
