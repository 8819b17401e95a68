"""Rewrite and augment (Phi-4 §2.2): a seed passage becomes an exercise, a discussion or a
structured reasoning task, in two prompted steps.

1. `facts` (template `rewrite_facts`, check sampling): the passage's key facts and claims, one
   per `- ` line. Fewer than `min_facts` parsed lines: reject `unparseable`.
2. `write` (template `rewrite_<form>`, generate sampling): the target form written from those
   facts alone, which keeps the rewrite grounded in what step 1 pulled out of the passage.

Each seed is written in `forms_per_seed` forms, rotating through `forms` from a start that a
hash of the seed picks. Rows: `kind=rewrite`, `source=web_rewrite`, `text` (pretraining);
`checks` has the form and the facts.
"""

from __future__ import annotations

import hashlib
import re

from phi4ray.config import RewriteConfig
from phi4ray.synth.ops import LLM, Inputs, Op, Work, alive, clip, fill, register

_BULLET = re.compile(r"^\s*(?:[-*•]|\d{1,3}[.)])\s+(.+?)\s*$")


def parse_facts(text: str) -> list[str]:
    """The `- fact` (or `* fact`, `1. fact`) lines of `text`, stripped, without repeats."""
    out: list[str] = []
    for line in (text or "").splitlines():
        m = _BULLET.match(line)
        if m and m.group(1) and m.group(1) not in out:
            out.append(m.group(1))
    return out


def forms_for(seed_id: str, forms: list[str], k: int) -> list[str]:
    start = int(hashlib.sha256(seed_id.encode()).hexdigest()[:8], 16) % len(forms)
    return [forms[(start + i) % len(forms)] for i in range(min(k, len(forms)))]


@register
class RewriteOp(Op):
    name = "rewrite"
    source = "web_rewrite"
    cfg: RewriteConfig

    def templates(self) -> dict[str, str]:
        return {"facts": self.cfg.facts_template, **{f"write:{f}": f"rewrite_{f}" for f in self.cfg.forms}}

    def inputs(self, src: Inputs) -> list[dict]:
        return [
            {"id": f"{s['id']}:{form}", "seed_id": s["id"], "text": s["text"], "form": form}
            for s in src.seeds()
            for form in forms_for(s["id"], self.cfg.forms, self.cfg.forms_per_seed)
        ]

    def run(self, works: list[Work], llm: LLM) -> None:
        c = self.cfg
        outs = llm.step(works, "facts", [fill(c.facts_template, passage=self.passage(w.rec)) for w in works], c.check_sampling)
        for w, o in zip(works, outs):
            if o is None:
                continue
            facts = parse_facts(o[0].text)
            w.data["facts_output"] = clip(o[0].text)
            if len(facts) < c.min_facts:
                w.fail("facts", "unparseable", f"{len(facts)} fact lines < min_facts {c.min_facts}")
            w.data["facts"] = facts
        live = alive(works)
        prompts = [fill(f"rewrite_{w.rec['form']}", facts="\n".join(f"- {f}" for f in w.data["facts"])) for w in live]
        for w, o in zip(live, llm.step(live, "write", prompts, c.sampling)):
            if o is None:
                continue
            text = o[0].text.strip()
            if len(text) < c.min_chars:
                w.data["output"] = o[0].text
                w.fail("write", "empty_output", f"{len(text)} chars < min_chars {c.min_chars}")
                continue
            form = w.rec["form"]
            w.out = self.row(
                w, text=text, messages=None, variant=form,
                templates={"facts": c.facts_template, "write": f"rewrite_{form}"},
                checks={"form": form, "facts": w.data["facts"], "n_facts": len(w.data["facts"]),
                        "finish_reason": o[0].finish_reason},
            )
