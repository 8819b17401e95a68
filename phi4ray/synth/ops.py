"""The framework every synthesis operation runs on (Phi-4 §2.2).

An operation (`Op`) is a named chain of LLM steps over input records (seed passages, code
snippets, questions). Its steps run *batched*: each step is one `sampler.generate` over every
record of the batch still alive, so a Ray Data batch of 4 seeds through a 3-step chain costs 3
engine calls, not 12. A record that fails a step leaves the chain there with a `Reject` (its
step, a stable reason code, a detail); the others go on.

    op.run(works, llm)          # works: one `Work` per input record
    w.out                       # a `synthetic/` row, or None with w.reject = (step, Reject)

`LLM` is the op side of the `Sampler`: a prompt that leaves no room for `max_tokens` in the
model's context is a `prompt_too_long` reject before any engine call; an engine error for the
whole batch is retried record by record, and the records that still fail become
`generation_failed: <error>` rejects. Nothing a single record does can kill the batch.

Prompts are template files in `synth/templates/` (a user turn; `{field}` placeholders filled in
one pass, so a passage that contains `{facts}` stays as it is), rendered as a user turn in the
engine model's chat format (`sampler.chat_ids`: phi4ray's ChatML for our checkpoints, the
teacher's own template for a teacher model; a passage cannot inject special tokens). Every output row records its
provenance: the op, each step's template id (`name@sha`, the file's content hash), the model,
each step's sampling parameters and the sampling seed.

`OpActor` is the Ray Data callable class: it loads one sampler and runs the ops of its pool on
the rows of each batch (rows carry their op's name, so ops with equal engine sections share a
pool). The stage driver (`synth/run.py`) owns inputs, shards, commits and counts.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import re
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, ClassVar

import numpy as np

from phi4ray.config import EngineConfig, SamplingConfig, SynthOpConfig
from phi4ray.stage import Reject

log = logging.getLogger(__name__)

__all__ = ["Work", "LLM", "Op", "OpActor", "Inputs", "fill", "template_id", "load_template", "row_id", "OPS", "register"]

MAX_CHECK_CHARS = 4000
"""Characters of one model output kept in a row's `checks` or a reject record (they can be long)."""


# -- templates --------------------------------------------------------------------------------
def _template_dir():
    return resources.files("phi4ray.synth") / "templates"


@functools.lru_cache(maxsize=None)
def load_template(name: str) -> str:
    path = _template_dir() / f"{name}.txt"
    if not path.is_file():
        names = sorted(p.name[:-4] for p in _template_dir().iterdir() if p.name.endswith(".txt"))
        raise ValueError(f"unknown synth template '{name}'; shipped templates: {', '.join(names)}")
    return path.read_text()


def template_id(name: str) -> str:
    """`name@<8 hex of the file's sha256>`: provenance pins the exact prompt text."""
    return f"{name}@{hashlib.sha256(load_template(name).encode()).hexdigest()[:8]}"


_FIELD = re.compile(r"\{(\w+)\}")


def fill(name: str, **fields: Any) -> str:
    """Template `name` with its `{field}`s replaced in one pass (inserted text is not re-scanned).
    A marker line inside a field's text is defused, so only the template can set a prefill."""
    user, prefill = split_prefill(load_template(name))

    def value(m: re.Match) -> str:
        if m.group(1) not in fields:
            return m.group(0)
        return str(fields[m.group(1)]).replace(_MARK_LINE, "<<< assistant >>>")

    text = _FIELD.sub(value, user).strip()
    prefill = prefill.rstrip("\n")
    return text + PREFILL_MARK + prefill if prefill else text


_MARK_LINE = "<<<assistant>>>"
PREFILL_MARK = f"\n{_MARK_LINE}\n"
"""In a template, the line `<<<assistant>>>` ends the user turn; the text after it is the start of
the assistant's answer (a prefill, such as `Question:`). The model continues from there, which
keeps even small models in the requested format, and the completion text an op parses begins
with the prefill."""


def split_prefill(prompt: str) -> tuple[str, str]:
    """(user turn, prefill) of a filled template. The last marker counts: templates put it after
    their fields, so a passage that contains the marker cannot move it."""
    user, mark, prefill = prompt.rpartition(PREFILL_MARK)
    return (user, prefill) if mark else (prompt, "")


def chat_prompt(content: str) -> list[int]:
    """`content` as a ChatML user turn plus the assistant generation prompt, as token ids."""
    from phi4ray.tokenizer import render_chat

    return render_chat([{"role": "user", "content": content}], add_generation_prompt=True)[0]


def clip(text: str | None, n: int = MAX_CHECK_CHARS) -> str:
    text = text or ""
    return text if len(text) <= n else text[:n] + "...<truncated>"


def row_id(op: str, *parts: Any) -> str:
    return f"{op}-" + hashlib.sha256("\0".join(map(str, (op, *parts))).encode()).hexdigest()[:16]


def rank(op: str, key: str) -> str:
    """A record's place in `op`'s seeded sample (`max_seeds`): different ops take different seeds."""
    return hashlib.sha256(f"{op}\0{key}".encode()).hexdigest()


# -- one record in flight ------------------------------------------------------------------------
@dataclass
class Work:
    """One input record going through an op's chain."""

    rec: dict
    data: dict = field(default_factory=dict)
    """What the steps produced so far; it goes into the reject record when the chain stops."""
    out: dict | None = None
    reject: tuple[str, Reject] | None = None
    tokens: int = 0
    """Completion tokens generated for this record (all steps, all samples)."""

    @property
    def alive(self) -> bool:
        return self.reject is None and self.out is None

    def fail(self, step: str, reason: str, detail: str = "") -> None:
        if self.reject is None:
            self.reject = (step, Reject(reason, detail))


def alive(works: list[Work]) -> list[Work]:
    return [w for w in works if w.alive]


class LLM:
    """Batched generation for ops: one engine call per step, per-record failures as rejects."""

    def __init__(self, sampler, max_model_len: int | None = None):
        self.sampler = sampler
        self.max_model_len = max_model_len or getattr(sampler, "max_model_len", None)
        self.calls = 0

    def step(self, works: list[Work], step: str, prompts: list[str | list[int]], sampling: SamplingConfig,
             n: int | None = None) -> list[list | None]:
        """Generate for each work's prompt (str: a user turn; list[int]: ids as they are).

        Returns, aligned with `works`, the list of `Completion`s of each, or None for a work that
        failed here (and now carries its reject)."""
        from phi4ray.inference.sampler import SamplingParams

        params = SamplingParams.from_config(sampling, n=n or sampling.n)
        prefills = [split_prefill(p)[1] if isinstance(p, str) else "" for p in prompts]
        ids = [self.prompt_ids(p) if isinstance(p, str) else list(p) for p in prompts]
        out: list[list | None] = [None] * len(works)
        todo = []
        for i, (w, t) in enumerate(zip(works, ids)):
            if self.max_model_len and len(t) + params.max_tokens > self.max_model_len:
                w.fail(step, "prompt_too_long",
                       f"{len(t)} prompt tokens + max_tokens {params.max_tokens} > context {self.max_model_len}")
            else:
                todo.append(i)
        for i, res in zip(todo, self._generate([ids[i] for i in todo], params)):
            if isinstance(res, Exception):
                works[i].fail(step, "generation_failed", f"{type(res).__name__}: {res}")
            else:
                out[i] = [dataclasses.replace(c, text=prefills[i] + c.text) for c in res] if prefills[i] else res
                works[i].tokens += sum(len(c.token_ids) for c in res)
        return out

    def prompt_ids(self, prompt: str) -> list[int]:
        """A filled template as token ids: its user turn in the engine model's chat format, then the
        start of the assistant's answer if the template gives one."""
        user, prefill = split_prefill(prompt)
        render = getattr(self.sampler, "chat_ids", None)
        ids = render([{"role": "user", "content": user}]) if render else chat_prompt(user)
        if prefill:
            encode = getattr(self.sampler, "encode_text", None)
            if encode is None:
                from phi4ray.tokenizer import encode
            ids = ids + encode(prefill)
        return ids

    def _generate(self, prompts: list[list[int]], params) -> list:
        if not prompts:
            return []
        self.calls += 1
        try:
            res = self.sampler.generate(prompts, params)
            if len(res) != len(prompts):
                raise RuntimeError(f"engine returned {len(res)} results for {len(prompts)} prompts")
            return res
        except Exception as e:
            if len(prompts) == 1:
                return [e]
            log.warning("synth: a batch of %d prompts failed (%s: %s); retrying one by one", len(prompts), type(e).__name__, e)
        out: list = []
        for p in prompts:
            self.calls += 1
            try:
                out.extend(self.sampler.generate([p], params)[:1])
            except Exception as e1:  # this record alone fails: it becomes a reject
                out.append(e1)
        return out


# -- inputs (driver side) ---------------------------------------------------------------------
class Inputs:
    """What ops read from the run directory, loaded once and shared by the ops of a run.

    Seeds are `seeds/` (passages chosen by the passage classifier); a run without `seeds/`
    falls back to whole `curated/` pages, and `seed_table` says which one was used."""

    def __init__(self, run_dir):
        self.run_dir = run_dir
        self._cache: dict[str, Any] = {}
        self.seed_table: str | None = None

    def seeds(self) -> list[dict]:
        if "seeds" not in self._cache:
            rd = self.run_dir
            if rd.exists("seeds") and rd.shards("seeds"):
                t = rd.read_table("seeds")
                self.seed_table = "seeds"
            elif rd.exists("curated") and rd.shards("curated"):
                log.warning("synth: no seeds/ in %s (curate ran without quality); using whole curated/ pages as seeds", rd.uri)
                t = rd.read_table("curated")
                self.seed_table = "curated"
            else:
                raise FileNotFoundError(f"synth ops need seeds in {rd.uri_of('seeds')} or {rd.uri_of('curated')}; run curate first")
            rows = []
            for r in t.to_pylist():
                if isinstance(r.get("text"), str) and r["text"].strip():
                    rows.append({"id": r["id"], "doc_id": r.get("doc_id") or r["id"], "text": r["text"],
                                 "source": r.get("source") or "", "quality": r.get("quality")})
            self._cache["seeds"] = rows
        return self._cache["seeds"]

    def pages(self) -> list[dict]:
        if "pages" not in self._cache:
            rd = self.run_dir
            rows = rd.read_table("curated", columns=["id", "text", "source"]).to_pylist() if rd.exists("curated") and rd.shards("curated") else []
            self._cache["pages"] = rows
        return self._cache["pages"]

    def questions(self, splits: list[str]) -> list[dict]:
        rd = self.run_dir
        if not (rd.exists("questions") and rd.shards("questions")):
            return []
        rows = rd.read_table("questions").to_pylist()
        return [r for r in rows if r.get("split") in set(splits)]

    def synthetic(self, prefix: str) -> list[dict]:
        """Committed `synthetic/` rows of the shards named `<prefix>-...` (an op's output)."""
        import pyarrow.parquet as pq

        rd = self.run_dir
        shards = [s for s in rd.shards("synthetic") if s.startswith(prefix + "-")] if rd.exists("synthetic") else []
        rows: list[dict] = []
        for s in shards:
            rows += pq.read_table(rd.shard_path("synthetic", s), filesystem=rd.fs).to_pylist()
        return rows


# -- ops ----------------------------------------------------------------------------------------
class Op:
    """One synthesis operation. Subclasses set `name`, `kind`, `source` and implement
    `inputs` (driver: the records to process, each with a unique `id`), `templates` (step ->
    template name) and `run` (actor: the batched chain; it sets `w.out` or `w.fail(...)`)."""

    name: ClassVar[str]
    source: ClassVar[str]
    """The Phi-4 mixture source of the op's rows (tokenize pools `text` by it)."""

    def __init__(self, cfg: SynthOpConfig, model: str, shard_prefix: str | None = None):
        self.cfg = cfg
        self.model = model
        self.shard_prefix = shard_prefix or self.name

    # driver side
    def inputs(self, src: Inputs) -> list[dict]:
        raise NotImplementedError

    def templates(self) -> dict[str, str]:
        raise NotImplementedError

    def check_templates(self) -> None:
        for name in self.templates().values():
            load_template(name)

    # actor side
    def run(self, works: list[Work], llm: LLM) -> None:
        raise NotImplementedError

    def sampling(self) -> dict[str, dict]:
        """Each step's sampling parameters, for provenance."""
        return {"generate": self.cfg.sampling.model_dump(), "check": self.cfg.check_sampling.model_dump()}

    def provenance(self, templates: dict[str, str] | None = None, **extra: Any) -> str:
        t = templates if templates is not None else self.templates()
        return json.dumps({
            "op": self.name,
            "templates": {step: template_id(name) for step, name in t.items()},
            "model": self.model,
            "engine": self.cfg.engine.engine,
            "sampling": self.sampling(),
            "seed": self.cfg.sampling.seed,
            **extra,
        }, sort_keys=True)

    def row(self, w: Work, *, text: str | None, messages: list[dict] | None, checks: dict, variant: str = "",
            templates: dict[str, str] | None = None, seed_id: str | None = None) -> dict:
        """A `synthetic/` row (SYNTH_SCHEMA) for `w`."""
        sid = seed_id if seed_id is not None else w.rec.get("seed_id", w.rec.get("id"))
        return {
            "id": row_id(self.name, w.rec["id"], variant, self.model, self.cfg.sampling.seed),
            "kind": self.name,
            "source": self.source,
            "seed_id": sid,
            "text": text,
            "messages": json.dumps(messages, ensure_ascii=False) if messages is not None else None,
            "provenance": self.provenance(templates, input_id=w.rec["id"]),
            "checks": json.dumps(checks, ensure_ascii=False, default=str),
        }

    def passage(self, rec: dict) -> str:
        return (rec.get("text") or "")[: self.cfg.seed_chars].strip()


OPS: dict[str, type[Op]] = {}


def register(cls: type[Op]) -> type[Op]:
    OPS[cls.name] = cls
    return cls


def make_op(name: str, cfg: SynthOpConfig, model: str, shard_prefix: str | None = None) -> Op:
    _load_ops()
    return OPS[name](cfg, model, shard_prefix)


def _load_ops() -> None:
    """Import the op modules (each registers its class)."""
    from phi4ray.synth import agents, plurality, qa, responses, reverse, revise, rewrite  # noqa: F401


# -- the Ray Data actor --------------------------------------------------------------------------
class OpActor:
    """Ray Data callable class: one sampler, the ops of its pool, batches of `{op, shard, rec}` rows.

    Output columns: `op`, `shard`, `result` (JSON: `{"row": ...}` or `{"step", "reason",
    "detail", "record"}`) and `tokens` (completion tokens generated for the row)."""

    def __init__(self, ops: dict[str, tuple[SynthOpConfig, str, str]], engine_cfg: EngineConfig | dict,
                 model_path: str | None = None, sampler=None):
        from phi4ray.inference.sampler import make_sampler

        if isinstance(engine_cfg, dict):
            engine_cfg = EngineConfig.model_validate(engine_cfg)
        self.sampler = sampler if sampler is not None else make_sampler(engine_cfg, model_path)
        self.llm = LLM(self.sampler, engine_cfg.max_model_len)
        self.ops = {name: make_op(name, cfg, model, prefix) for name, (cfg, model, prefix) in ops.items()}

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        names = [str(x) for x in batch["op"]]
        recs = [json.loads(x) for x in batch["rec"]]
        results = run_records(self.ops, names, recs, self.llm)
        return {
            "op": np.array(names, dtype=object),
            "shard": np.array([str(x) for x in batch["shard"]], dtype=object),
            "result": np.array([json.dumps(r[0], ensure_ascii=False, default=str) for r in results], dtype=object),
            "tokens": np.array([r[1] for r in results], dtype=np.int64),
        }


def run_records(ops: dict[str, Op], names: list[str], recs: list[dict], llm: LLM) -> list[tuple[dict, int]]:
    """Run each record through its op (records of one op together). Returns (result, tokens) per record."""
    works = [Work(r) for r in recs]
    for name in dict.fromkeys(names):
        group = [w for w, n in zip(works, names) if n == name]
        try:
            ops[name].run(group, llm)
        except Exception as e:  # an op bug must not lose the batch: every open record is a reject
            log.exception("synth: op %s failed on a batch", name)
            for w in group:
                if w.alive:
                    w.fail("op", "op_error", f"{type(e).__name__}: {e}")
        for w in group:
            if w.alive:  # an op that forgot a record: say so rather than drop it
                w.fail("op", "op_error", "the op produced neither a row nor a reject")
    prov = {name: json.loads(ops[name].provenance()) for name in set(names)}
    return [(_result(w, prov[n]), w.tokens) for w, n in zip(works, names)]


def _result(w: Work, provenance: dict) -> dict:
    if w.out is not None:
        return {"row": w.out}
    step, rej = w.reject
    return {"step": step, "reason": rej.reason, "detail": rej.detail,
            "record": {"provenance": {**provenance, "input_id": w.rec.get("id")}, **w.rec, **w.data}}
