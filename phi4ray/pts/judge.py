"""Judge-guided DPO pairs (Phi-4 report §4.2, the second DPO round).

Each question is answered by several models (`cfg.responders`, `cfg.sampling.n` answers each);
a judge model (`cfg.judge`) labels pairs of answers from different models with the prompt in
`phi4ray/pts/prompts/<cfg.template>.txt`; the labelled pairs are written in TRL's
conversational layout, ready for `tokenize.dpo_pairs` and `dpo.pairs=full`:

    {"id": "q7/0", "prompt": [{"role": "user", "content": ...}],
     "chosen": [{"role": "assistant", "content": ...}], "rejected": [{"role": "assistant", ...}],
     "question_id": "q7", "chosen_model": "sft", "rejected_model": "http://h:8000/v1#big",
     "judge": "...", "template": "judge_pair", "template_sha": "...", "verdicts": ["...", "..."],
     "orders": ["chosen=A", "chosen=B"]}

Models are strings (see `parse_model_spec`): an OpenAI-compatible endpoint (reached through its
chat completions API, so any vLLM or SGLang server works, with its own chat template), a training
stage of the run, an HF folder, or a random preset for plumbing tests. Local models run as Ray
tasks with `cfg.engine`'s CPUs, GPUs and custom resources, one task per model and shard of
questions (a worker process keeps its loaded model for the next batch); endpoints are called from
the driver with `cfg.concurrency` requests in flight per model. All responders run side by side,
then the judge.

Labelling: the judge's last `Verdict: A|B|tie` line (or MT-bench's `[[A]]`, `[[B]]`, `[[C]]`) is
its verdict. With `both_orders` each pair is judged twice with A and B swapped, and kept only
when both verdicts name the same response. No verdict in a reply: the pair is a reject
(`unparseable_verdict`, in `rejects/judge_pairs/`). A tie, or verdicts that disagree between the
orders (position bias), drops the pair with a count. Per run: `candidates = kept + ties +
inconsistent + rejected`; questions read = questions used + questions rejected.

Outputs: `dpo/judged_pairs.jsonl`, per-shard parts under `dpo/judged/` (responses, pairs and
counts, so a rerun skips finished shards), rejects in `rejects/judge_pairs/`, and the manifest
entry `judge_pairs` with the counts.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import re
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pyarrow as pa

from phi4ray.config import EngineConfig, JudgePairsConfig, SamplingConfig
from phi4ray.run import RunDir, config_hash

log = logging.getLogger(__name__)

__all__ = [
    "ModelSpec",
    "parse_model_spec",
    "load_template",
    "fill_template",
    "parse_verdict",
    "label_pair",
    "candidate_pairs",
    "ChatWorker",
    "run_judge_pairs",
    "judge_stage",
    "STAGE",
]

STAGE = "judge_pairs"
PROMPTS = Path(__file__).parent / "prompts"
MAX_VERDICT_CHARS = 2000


# -- models -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class ModelSpec:
    """A model named by a spec string. `kind`: endpoint, checkpoint or preset."""

    spec: str
    kind: str
    endpoint: str | None = None
    model: str | None = None
    path: str | None = None
    preset: str | None = None
    seed: int = 0
    run_dir: str | None = None
    """For a training stage: the run directory whose `path` (relative) holds the checkpoint; it
    is fetched where the model runs, so a remote run directory works on every node."""

    @property
    def name(self) -> str:
        return self.spec


def parse_model_spec(spec: str, run_dir: RunDir | None = None) -> ModelSpec:
    """`http(s)://host:port/v1#model` (an endpoint; without `#model`, its first model), a
    training stage of `run_dir` (`sft` -> `checkpoints/sft/hf`), an HF folder, or
    `preset:NAME@SEED` (a randomly initialised preset, for plumbing tests)."""
    s = str(spec).strip()
    if not s:
        raise ValueError("empty model spec")
    if s.startswith(("http://", "https://")):
        base, _, model = s.partition("#")
        return ModelSpec(s, "endpoint", endpoint=base.rstrip("/"), model=model or None)
    if s.startswith("preset:"):
        from phi4ray.model import PRESETS  # imports torch: only for presets

        preset, _, seed = s[len("preset:") :].partition("@")
        if preset not in PRESETS:
            raise ValueError(f"model spec '{s}': unknown preset '{preset}'; presets: {', '.join(PRESETS)}")
        try:
            return ModelSpec(s, "preset", preset=preset, seed=int(seed or 0))
        except ValueError:
            raise ValueError(f"model spec '{s}': the seed after '@' must be an integer") from None
    if os.path.isdir(s):
        return ModelSpec(s, "checkpoint", path=os.path.abspath(s))
    if run_dir is not None and re.fullmatch(r"[\w.-]+", s):
        rel = f"checkpoints/{s}/hf"
        if run_dir.exists(rel, "config.json"):
            return ModelSpec(s, "checkpoint", path=rel, run_dir=run_dir.uri)
        raise ValueError(f"model spec '{s}': no checkpoint at {run_dir.path(rel)} (train that stage first)")
    raise ValueError(f"model spec '{s}' is not an http(s) endpoint, a training stage, a folder or preset:NAME@SEED")


class ChatWorker:
    """One model answering chat conversations: `chat(conversations, sampling, seeds)` returns,
    per conversation, its `sampling.n` reply texts, or an error string."""

    def __init__(self, spec: ModelSpec, engine: EngineConfig | dict, concurrency: int = 4):
        self.spec = spec
        self.concurrency = concurrency
        self.client = self.sampler = None
        if spec.kind == "endpoint":
            from phi4ray.pts.client import CompletionsClient

            self.client = CompletionsClient(spec.endpoint, spec.model or "")
            if not spec.model:
                models = self.client.models()
                if not models:
                    raise RuntimeError(f"{spec.endpoint} serves no model")
                self.client.model = models[0]
            return
        engine = EngineConfig.model_validate(engine) if isinstance(engine, dict) else engine
        if spec.kind == "preset":
            from phi4ray.inference.hf_engine import TransformersSampler
            from phi4ray.model import build_model

            self.sampler = TransformersSampler(
                build_model(spec.preset, seed=spec.seed), device=engine.device,
                max_batch_rows=engine.max_batch_rows, max_model_len=engine.max_model_len)
        else:
            from phi4ray.inference.sampler import make_sampler

            path = RunDir(spec.run_dir).local_dir(spec.path) if spec.run_dir else spec.path
            self.sampler = make_sampler(engine, path)

    def model_name(self) -> str:
        return self.client.model if self.client is not None else self.spec.name

    def chat(self, conversations: list[list[dict]], sampling: SamplingConfig | dict, seeds: list[int]) -> list:
        sampling = SamplingConfig.model_validate(sampling) if isinstance(sampling, dict) else sampling
        if self.client is not None:
            def one(i: int):
                try:
                    return self.client.chat(conversations[i], n=sampling.n, temperature=sampling.temperature,
                                            max_tokens=sampling.max_tokens, seed=seeds[i], top_p=sampling.top_p)
                except Exception as e:  # one failed request is one missing answer
                    return f"{type(e).__name__}: {e}"

            with ThreadPoolExecutor(max_workers=max(1, min(self.concurrency, len(conversations)))) as pool:
                return list(pool.map(one, range(len(conversations))))
        return self._local(conversations, sampling, seeds)

    def _local(self, conversations: list[list[dict]], sampling: SamplingConfig, seeds: list[int]) -> list:
        from phi4ray.inference.sampler import SamplingParams
        from phi4ray.tokenizer import render_chat

        def params(seed: int) -> SamplingParams:
            return SamplingParams(n=sampling.n, temperature=sampling.temperature, top_p=sampling.top_p,
                                  max_tokens=sampling.max_tokens, stop=list(sampling.stop), seed=seed)

        out: list = [None] * len(conversations)
        prompts: list[list[int]] = []
        for i, conv in enumerate(conversations):
            try:
                prompts.append(render_chat(conv, add_generation_prompt=True)[0])
            except Exception as e:
                out[i] = f"{type(e).__name__}: {e}"
                prompts.append([])
        todo = [i for i in range(len(conversations)) if out[i] is None]
        try:  # one batched call; each prompt's samples depend only on it and the seed
            comps = self.sampler.generate([prompts[i] for i in todo], params(seeds[0] if seeds else 0))
            for i, cs in zip(todo, comps):
                out[i] = [c.text for c in cs]
        except Exception:  # e.g. one prompt too long: find which, one by one
            for i in todo:
                try:
                    out[i] = [c.text for c in self.sampler.generate([prompts[i]], params(seeds[i]))[0]]
                except Exception as e:
                    out[i] = f"{type(e).__name__}: {e}"
        return out


# -- the judge prompt and its verdicts ----------------------------------------------------------
def load_template(name: str) -> str:
    """The judge prompt `name` (`phi4ray/pts/prompts/<name>.txt`), or the file at path `name`."""
    path = Path(name) if (os.sep in name or name.endswith(".txt")) else PROMPTS / f"{name}.txt"
    if not path.is_file():
        shipped = sorted(p.stem for p in PROMPTS.glob("*.txt"))
        raise ValueError(f"judge template '{name}' not found ({path}); shipped: {', '.join(shipped)}")
    text = path.read_text(encoding="utf-8")
    missing = [f for f in ("{question}", "{response_a}", "{response_b}") if f not in text]
    if missing:
        raise ValueError(f"judge template {path} lacks {', '.join(missing)}")
    return text


def fill_template(template: str, **fields: str) -> str:
    """Replace `{name}` for the given names only (answers may hold braces of their own)."""
    pattern = re.compile("|".join(re.escape("{" + k + "}") for k in fields))
    return pattern.sub(lambda m: str(fields[m.group(0)[1:-1]]), template)


_VERDICT = re.compile(
    r"(?i:verdict|decision|better\s+response|winner)[\s*_`]*[:：=\-–]?[\s*_`\[(\"']*"
    r"(?:(?i:response)\s+)?(?:(?i:a)\s+(?=(?i:tie)))?(A|B|(?i:tie|draw|equal))(?![\w])"
)
_BRACKETS = re.compile(r"\[\[\s*(A|B|C)\s*\]\]")


def parse_verdict(text: str | None) -> str | None:
    """The judge's verdict: `A`, `B` or `tie` (the last one it states), or None."""
    if not text:
        return None
    found = [(m.start(), m.group(1)) for m in _VERDICT.finditer(text)]
    found += [(m.start(), {"C": "tie"}.get(m.group(1), m.group(1))) for m in _BRACKETS.finditer(text)]
    if not found:
        return None
    v = max(found)[1]
    return v if v in ("A", "B") else "tie"


def label_pair(verdicts: list[str | None], swapped: list[bool]) -> str:
    """Combine the verdicts on one pair (x, y), judged with x as A (`swapped` False) or as B.

    Returns `x`, `y` (the preferred response), `tie`, `inconsistent` (the orders disagree) or
    `unparseable` (some reply had no verdict)."""
    picks = []
    for v, sw in zip(verdicts, swapped):
        if v is None:
            return "unparseable"
        picks.append("tie" if v == "tie" else ("x" if (v == "A") != sw else "y"))
    if "tie" in picks:
        return "tie"
    return picks[0] if len(set(picks)) == 1 else "inconsistent"


# -- candidates ---------------------------------------------------------------------------------
def _seed(*parts: Any) -> int:
    return zlib.crc32(json.dumps(parts, default=str).encode()) & 0x7FFFFFFF


def candidate_pairs(
    responses: list[tuple[int, str]], max_pairs: int | None, seed: int
) -> tuple[list[tuple[int, int]], int]:
    """Index pairs (i, j) of `responses` ([(model index, text)]) to judge: answers of different
    models (of the same model when there is only one), non-identical. Returns (pairs, identical)."""
    models = {m for m, _ in responses}
    pairs, identical = [], 0
    for i in range(len(responses)):
        for j in range(i + 1, len(responses)):
            (mi, ti), (mj, tj) = responses[i], responses[j]
            if mi == mj and len(models) > 1:
                continue
            if ti.strip() == tj.strip():
                identical += 1
                continue
            pairs.append((i, j))
    if max_pairs is not None and len(pairs) > max_pairs:
        pairs = sorted(random.Random(seed).sample(pairs, max_pairs))
    return pairs, identical


def _conversation(q: dict) -> list[dict]:
    if q.get("messages") is not None:
        return [{"role": m["role"], "content": m["content"]} for m in q["messages"]]
    return [{"role": "user", "content": q["prompt"]}]


def _question_text(conv: list[dict]) -> str:
    if len(conv) == 1:
        return conv[0]["content"]
    return "\n\n".join(f"[{m['role']}]\n{m['content']}" for m in conv)


def _validate(q: Any) -> str | None:
    from phi4ray.pts.search import INVALID

    if not isinstance(q, dict):
        return f"a question must be a dict, got {type(q).__name__}"
    if q.get(INVALID):
        return str(q[INVALID])
    if q.get("id") is None:
        return "missing 'id'"
    msgs = q.get("messages")
    if msgs is not None:
        if (not isinstance(msgs, list) or not msgs
                or not all(isinstance(m, dict) and isinstance(m.get("content"), str) and m.get("role") in
                           ("system", "user", "assistant") for m in msgs)):
            return "'messages' must be a non-empty list of {role, content}"
        if msgs[-1]["role"] != "user":
            return "the last message must be the user's"
        return None
    if not isinstance(q.get("prompt"), str) or not q["prompt"].strip():
        return "missing 'prompt' (a non-empty string: the user's message) or 'messages'"
    if "<|im_start|>" in q["prompt"]:
        return "'prompt' holds ChatML markup; give the user's message (or 'messages'): the chat API adds the template"
    return None


# -- the stage --------------------------------------------------------------------------------------
def _hash(cfg: JudgePairsConfig, template: str, questions: list[dict]) -> str:
    digest = hashlib.sha256(json.dumps(questions, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return config_hash({"judge_pairs": cfg.model_dump(mode="json", exclude={"enabled"}),
                        "template": hashlib.sha256(template.encode()).hexdigest()[:16], "questions": digest})


def _task_options(engine: EngineConfig) -> dict:
    opts: dict[str, Any] = {"num_cpus": engine.num_cpus_per_actor, "max_retries": 1}
    if engine.num_gpus_per_actor:
        opts["num_gpus"] = engine.num_gpus_per_actor
    if engine.resources:
        opts["resources"] = dict(engine.resources)
    return opts


_LOADED: dict[str, Any] = {}


def _local_chat(spec: ModelSpec, engine: dict, convs: list[list[dict]], sampling: dict, seeds: list[int]) -> list:
    """A Ray task: `ChatWorker.chat` on a local model. The worker process keeps the last model it
    loaded, so the batches of one model that land on one worker load it once."""
    key = json.dumps([spec.spec, spec.path, engine], sort_keys=True, default=str)
    if key not in _LOADED:
        _LOADED.clear()  # one model per worker process
        _LOADED[key] = ChatWorker(spec, engine)
    return _LOADED[key].chat(convs, sampling, seeds)


def _run_workers(jobs: list[tuple[ModelSpec, list[tuple[Any, list[list[dict]], list[int]]]]],
                 cfg: JudgePairsConfig, sampling: SamplingConfig) -> tuple[dict[tuple[int, Any], list], list[str]]:
    """Every model's batches of conversations, all models side by side. `jobs`: per model,
    (key, conversations, seeds) batches. Returns ({(model index, key): replies}, served names).

    Local models run as Ray tasks with `cfg.engine`'s CPUs, GPUs and custom resources (Ray
    places them; a worker keeps its model between batches). Endpoints are reached from this
    process, `cfg.concurrency` requests in flight per model: the endpoint does the compute."""
    import ray

    out: dict[tuple[int, Any], list] = {}
    names = [spec.name for spec, _ in jobs]
    refs = {}
    for mi, (spec, batches) in enumerate(jobs):
        if spec.kind != "endpoint":
            task = ray.remote(_local_chat).options(**_task_options(cfg.engine))
            for key, convs, seeds in batches:
                refs[task.remote(spec, cfg.engine.model_dump(), convs, sampling.model_dump(), seeds)] = (mi, key)

    def endpoint_jobs(mi: int) -> None:
        spec, batches = jobs[mi]
        worker = ChatWorker(spec, cfg.engine, cfg.concurrency)
        names[mi] = f"{spec.endpoint}#{worker.model_name()}"
        for key, convs, seeds in batches:
            out[(mi, key)] = worker.chat(convs, sampling, seeds)

    remote = [mi for mi, (spec, _) in enumerate(jobs) if spec.kind == "endpoint"]
    with ThreadPoolExecutor(max_workers=max(1, len(remote))) as pool:
        futures = [pool.submit(endpoint_jobs, mi) for mi in remote]
        try:
            pending = list(refs)
            while pending:
                ready, pending = ray.wait(pending, num_returns=1)
                for ref in ready:
                    out[refs[ref]] = ray.get(ref)
        except BaseException:
            for ref in refs:
                ray.cancel(ref)
            raise
        for f in futures:
            f.result()
    return out, names


def run_judge_pairs(
    cfg: JudgePairsConfig,
    run_dir: RunDir,
    questions: list[dict],
    force: bool = False,
    judge_fn: Callable[[str], str] | None = None,
) -> dict[str, Any]:
    """Build judge-labelled DPO pairs for `questions` (`{"id", "prompt"}` with the user's message,
    or `{"id", "messages"}`). `judge_fn` (judge prompt -> reply text) replaces `cfg.judge`, e.g.
    a scripted judge in tests. Returns the counts, which also go into the manifest."""
    import ray

    from phi4ray.stage import REJECT_SCHEMA, Reject, count, reject_row

    if not cfg.responders:
        raise ValueError("pts.judge.responders is empty: name the models that answer (endpoints, stages, folders)")
    if cfg.judge is None and judge_fn is None:
        raise ValueError("pts.judge.judge is not set: name the judge model")
    if cfg.max_questions is not None:
        questions = questions[: cfg.max_questions]
    template = load_template(cfg.template)
    responders = [parse_model_spec(s, run_dir) for s in cfg.responders]
    judge_spec = parse_model_spec(cfg.judge, run_dir) if judge_fn is None else None
    h = _hash(cfg, template, questions)
    if judge_fn is not None:
        h = config_hash({"base": h, "judge_fn": getattr(judge_fn, "__qualname__", repr(judge_fn))})
    outputs = ["dpo/judged", "dpo/judged_pairs.jsonl", f"rejects/{STAGE}"]
    if not run_dir.begin_stage(STAGE, h, outputs=outputs, force=force):
        log.info("%s: already complete in %s", STAGE, run_dir.uri)
        return dict(run_dir.stage_entry(STAGE).get("counts", {}))

    with run_dir.failure_recorded(STAGE):
        if not ray.is_initialized():
            ray.init(address=os.environ.get("RAY_ADDRESS") or "local")
        shards = [questions[i : i + cfg.shard_questions] for i in range(0, len(questions), cfg.shard_questions)]
        names = [f"{i:05d}" for i in range(len(shards))]
        pending = [i for i, n in enumerate(names) if not run_dir.exists(f"dpo/judged/meta-{n}.json")]

        # 1. validate; 2. answers from every responder (cached per shard for reruns)
        valid: dict[int, list[dict]] = {}
        rejects: dict[int, list[dict]] = {i: [] for i in pending}
        for si in pending:
            valid[si] = []
            for q in shards[si]:
                why = _validate(q)
                if why:
                    rec = q if isinstance(q, dict) else {"record": repr(q)}
                    rejects[si].append(reject_row(rec, STAGE, "validate", Reject("invalid_question", why)))
                else:
                    valid[si].append(q)
        need = [si for si in pending if valid[si] and not run_dir.exists(f"dpo/judged/responses-{names[si]}.jsonl")]
        jobs = []
        for m, spec in enumerate(responders):
            batches = []
            for si in need:
                convs = [_conversation(q) for q in valid[si]]
                batches.append((si, convs, [_seed(cfg.seed, spec.name, str(q["id"])) for q in valid[si]]))
            jobs.append((spec, batches))
        answers, _ = _run_workers(jobs, cfg, cfg.sampling) if need else ({}, [])
        for si in need:
            rows = [{"question_id": str(q["id"]), "replies": [answers[(m, si)][k] for m in range(len(responders))]}
                    for k, q in enumerate(valid[si])]
            run_dir.write_jsonl(f"dpo/judged/responses-{names[si]}.jsonl", rows)

        # 3. candidate pairs and judge prompts
        cands: dict[int, list[dict]] = {}
        prompts: dict[int, list[str]] = {}
        stats = {si: dict(questions=len(shards[si]), questions_rejected=len(rejects[si]), responses=0,
                          response_errors=0, empty_responses=0, identical=0, candidates=0, kept=0, ties=0,
                          inconsistent=0, rejected=0) for si in pending}
        for si in pending:
            cands[si], prompts[si] = [], []
            if not valid[si]:
                continue
            rows = run_dir.read_jsonl(f"dpo/judged/responses-{names[si]}.jsonl")
            for q, row in zip(valid[si], rows):
                conv = _conversation(q)
                resp: list[tuple[int, str]] = []
                for m, replies in enumerate(row["replies"]):
                    if isinstance(replies, str):  # the model failed on this question
                        stats[si]["response_errors"] += 1
                        rejects[si].append(reject_row({"id": str(q["id"]), "model": responders[m].name}, STAGE,
                                                      "respond", Reject("response_error", replies[:500])))
                        continue
                    for text in replies:
                        stats[si]["responses"] += 1
                        if text.strip():
                            resp.append((m, text))
                        else:
                            stats[si]["empty_responses"] += 1
                pairs, identical = candidate_pairs(resp, cfg.max_pairs_per_question,
                                                   _seed(cfg.seed, "pairs", q["id"]))
                stats[si]["identical"] += identical
                for k, (i, j) in enumerate(pairs):
                    pid = f"{q['id']}/{k}"
                    x, y = resp[i], resp[j]
                    first_swapped = random.Random(_seed(cfg.seed, "order", pid)).random() < 0.5
                    orders = [first_swapped, not first_swapped] if cfg.both_orders else [first_swapped]
                    c = {"id": pid, "question_id": str(q["id"]), "conversation": conv, "x": x, "y": y,
                         "swapped": orders, "prompt_index": len(prompts[si])}
                    for sw in orders:
                        a, b = (y, x) if sw else (x, y)
                        prompts[si].append(fill_template(template, question=_question_text(conv),
                                                         response_a=a[1], response_b=b[1]))
                    cands[si].append(c)

        # 4. the judge
        verdict_texts: dict[int, list] = {}
        judge_name = "judge_fn" if judge_fn is not None else judge_spec.name
        if judge_fn is not None:
            for si in pending:
                verdict_texts[si] = []
                for p in prompts[si]:
                    try:
                        verdict_texts[si].append(str(judge_fn(p)))
                    except Exception as e:
                        verdict_texts[si].append(RuntimeError(f"{type(e).__name__}: {e}"))
        else:
            judge_sampling = cfg.judge_sampling.model_copy(update={"n": 1})
            batches = [(si, [[{"role": "user", "content": p}] for p in prompts[si]],
                        [_seed(cfg.seed, "judge", si, k) for k in range(len(prompts[si]))])
                       for si in pending if prompts[si]]
            got, jnames = _run_workers([(judge_spec, batches)], cfg, judge_sampling) if batches else ({}, [])
            judge_name = jnames[0] if jnames else judge_spec.name
            for si in pending:
                replies = got.get((0, si), [])
                verdict_texts[si] = [r[0] if isinstance(r, list) else RuntimeError(str(r)) for r in replies]

        # 5. label, commit per shard
        template_sha = hashlib.sha256(template.encode()).hexdigest()[:16]
        for si in pending:
            kept_rows = []
            for c in cands[si]:
                st = stats[si]
                st["candidates"] += 1
                texts = verdict_texts[si][c["prompt_index"] : c["prompt_index"] + len(c["swapped"])]
                errors = [t for t in texts if isinstance(t, Exception)]
                models = [responders[c["x"][0]].name, responders[c["y"][0]].name]
                if errors:
                    st["rejected"] += 1
                    rejects[si].append(reject_row({"id": c["id"], "question_id": c["question_id"], "models": models},
                                                  STAGE, "judge", Reject("judge_error", str(errors[0])[:500])))
                    continue
                outcome = label_pair([parse_verdict(t) for t in texts], c["swapped"])
                if outcome == "unparseable":
                    st["rejected"] += 1
                    bad = next(t for t in texts if parse_verdict(t) is None)
                    rejects[si].append(reject_row(
                        {"id": c["id"], "question_id": c["question_id"], "models": models, "verdicts": texts},
                        STAGE, "label", Reject("unparseable_verdict", f"no 'Verdict: A|B|tie' in ...{bad[-200:]!r}")))
                    continue
                if outcome in ("tie", "inconsistent"):
                    st["ties" if outcome == "tie" else "inconsistent"] += 1
                    continue
                win, lose = (c["x"], c["y"]) if outcome == "x" else (c["y"], c["x"])
                kept_rows.append({
                    "id": c["id"],
                    "question_id": c["question_id"],
                    "prompt": c["conversation"],
                    "chosen": [{"role": "assistant", "content": win[1]}],
                    "rejected": [{"role": "assistant", "content": lose[1]}],
                    "chosen_model": responders[win[0]].name,
                    "rejected_model": responders[lose[0]].name,
                    "judge": judge_name,
                    "template": cfg.template,
                    "template_sha": template_sha,
                    "verdicts": [t[-MAX_VERDICT_CHARS:] for t in texts],
                    # the letter the chosen answer had in each judged order
                    "orders": [f"chosen={'AB'[sw != (outcome == 'y')]}" for sw in c["swapped"]],
                })
                st["kept"] += 1
            run_dir.write_jsonl(f"dpo/judged/pairs-{names[si]}.jsonl", kept_rows)
            if rejects[si]:
                run_dir.commit_table(f"rejects/{STAGE}", names[si],
                                     pa.Table.from_pylist(rejects[si], schema=REJECT_SCHEMA))
            run_dir.write_json(f"dpo/judged/meta-{names[si]}.json", stats[si])  # last: the shard is done
            count(STAGE, "read", stats[si]["candidates"])
            count(STAGE, "kept", stats[si]["kept"])
            count(STAGE, "rejected", stats[si]["rejected"])

        rows: list[dict] = []
        totals: dict[str, int] = {}
        for n in names:
            rows += run_dir.read_jsonl(f"dpo/judged/pairs-{n}.jsonl")
            for k, v in run_dir.read_json(f"dpo/judged/meta-{n}.json", {}).items():
                totals[k] = totals.get(k, 0) + v
        run_dir.write_jsonl("dpo/judged_pairs.jsonl", rows)
        counts = {**totals, "pairs": len(rows), "responders": [s.name for s in responders], "judge": judge_name,
                  "path": run_dir.uri_of("dpo/judged_pairs.jsonl")}
        run_dir.finish_stage(STAGE, counts=counts)
        return counts


def judge_stage(recipe, run_dir: RunDir, force: bool = False, questions: list[dict] | None = None) -> dict:
    """The pipeline's entry: judge pairs over `questions` (default: the run's `pts` questions,
    their prompt as the user's message), with `recipe.pts.judge`."""
    if questions is None:
        from phi4ray.eval.generation import load_questions

        questions = [{"id": q["id"], "prompt": q["prompt"]} for q in load_questions(run_dir, "pts", None)]
    return run_judge_pairs(recipe.pts.judge, run_dir, questions, force=force)

