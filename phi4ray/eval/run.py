"""The eval stage: every task through one `Sampler`, on a checkpoint or an endpoint.

    report = run_eval(recipe.eval, run_dir, "sft", recipe.serve.engine)        # checkpoints/sft/hf
    report = run_endpoint_eval(recipe.eval, run_dir, "http://host:8000/v1", "phi4ray")
    print(format_table({"sft": report}))

A report (`eval/<stage>.json`, or `eval/<name>.json` for an endpoint) holds:

* `tasks`: per task its kind, data file, shots, item count, metrics (`primary` names the
  headline one), seconds, rejected records (with line and reason), and a few per-item examples.
  `arithmetic` is the held-out split of the run's `questions/` (when the run has one); the
  others are `eval.tasks`.
* `accuracy`, `n`, `task`, `metric`, `examples`: the held-out arithmetic again, at the top level,
  as the run summary reads it.
* `decontamination`: what curation removed from the training data for the evaluation sets
  (`curate.decontam.eval_sets`), read from the run's manifest, with the benchmarks each task's
  file was checked against; or a note saying there is no such report.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import time

from phi4ray.config import EngineConfig, EvalConfig
from phi4ray.eval.formats import (
    DEFAULT_SHOTS,
    kind_of,
    load_items,
    read_bytes,
    resolve_path,
)
from phi4ray.eval.shots import split_shots
from phi4ray.run import RunDir

log = logging.getLogger(__name__)

TRAIN_STAGES = ("pretrain", "midtrain", "sft", "dpo")
PRIMARY = {"arithmetic": "acc", "mmlu": "acc", "arc": "acc_norm", "gsm8k": "exact_match", "math": "exact_match",
           "humaneval": "pass@1", "mbpp": "pass@1", "needle": "acc"}
DEFAULT_MAX_TOKENS = {"gsm8k": 256, "math": 512, "humaneval": 384, "mbpp": 384, "needle": 12}
NO_CURATE = "no decontamination report: this run directory has no curate stage"
NO_EVAL_SETS = "no decontamination report: curate.decontam.eval_sets was empty"


# -- what to evaluate -----------------------------------------------------------------------------
def eval_stages(cfg: EvalConfig, run_dir: RunDir) -> tuple[list[str], list[str]]:
    """(stages with a checkpoint to evaluate, stages asked for that have none). `cfg.stages` None:
    every training stage with a checkpoint, in training order."""
    wanted = list(cfg.stages) if cfg.stages is not None else list(TRAIN_STAGES)
    have = [s for s in wanted if run_dir.exists(f"checkpoints/{s}/hf", "config.json")]
    missing = [s for s in wanted if s not in have] if cfg.stages is not None else []
    return have, missing


def check_tasks(cfg: EvalConfig) -> None:
    """Fail before any model loads when a task's kind or file is wrong."""
    for name, t in cfg.tasks.items():
        kind = kind_of(name, t.kind)
        if kind == "needle":
            if t.filler_path:
                resolve_path(t.filler_path)
            continue
        if not t.path:
            raise ValueError(f"eval task '{name}' ({kind}) has no `path`")
        resolve_path(t.path)
        if t.fewshot_path:
            resolve_path(t.fewshot_path)


def data_digest(cfg: EvalConfig) -> dict[str, str]:
    """sha256 (16 hex digits) of each task's files, for the stage's config hash: new data is a new eval."""
    out = {}
    for name, t in sorted(cfg.tasks.items()):
        for field in ("path", "fewshot_path", "filler_path"):
            p = getattr(t, field)
            if p:
                try:
                    out[f"{name}.{field}"] = hashlib.sha256(read_bytes(resolve_path(p))).hexdigest()[:16]
                except OSError:  # FileNotFoundError too: check_tasks says which file
                    out[f"{name}.{field}"] = "missing"
    return out


# -- one task ---------------------------------------------------------------------------------------
def _max_len(sampler) -> int | None:
    n = getattr(sampler, "max_model_len", None)
    return int(n) if isinstance(n, int) else None


def run_task(sampler, name: str, task: EvalConfig.Task, cfg: EvalConfig) -> dict:
    """Evaluate one task of `eval.tasks`; returns its report."""
    t0 = time.time()
    kind = kind_of(name, task.kind)
    max_tokens = task.max_tokens or DEFAULT_MAX_TOKENS.get(kind, 32)
    out: dict = {"kind": kind, "primary": PRIMARY[kind]}
    if kind == "needle":
        from phi4ray.eval.needle import run_needle

        filler = read_bytes(resolve_path(task.filler_path)).decode("utf-8") if task.filler_path else None
        metrics, records, skipped = run_needle(
            sampler, task.lengths, task.depths, task.samples, max_tokens, seed=task.seed, filler_text=filler,
            batch_size=cfg.batch_size, max_len=_max_len(sampler))
        out.update(n=len(records), metrics=metrics, skipped=skipped, lengths=list(task.lengths),
                   depths=list(task.depths), samples=task.samples)
    else:
        path = resolve_path(task.path)
        items, rejected = load_items(kind, path)
        shots = DEFAULT_SHOTS[kind] if task.shots is None else task.shots
        few = load_items(kind, resolve_path(task.fewshot_path))[0] if task.fewshot_path else None
        pool, todo = split_shots(items, shots, few)
        if task.limit is not None:
            todo = todo[: task.limit]
        if not todo:
            log.warning("eval %s: no items left to evaluate in %s after %d shots", name, path, shots)
        max_len = _max_len(sampler)
        if kind in ("mmlu", "arc"):
            from phi4ray.eval.multiple_choice import run_mc

            # one token fewer than the context: an endpoint generates one token after the echoed prompt
            metrics, records = run_mc(sampler, kind, todo, pool, shots, batch_size=cfg.batch_size,
                                      max_len=max_len - 1 if max_len else None)
        elif kind in ("gsm8k", "math"):
            from phi4ray.eval.generation import run_fewshot

            metrics, records = run_fewshot(sampler, kind, todo, pool, shots, max_tokens, cfg.batch_size)
        else:
            from phi4ray.eval.code_exec import run_code_task

            metrics, records = run_code_task(sampler, kind, todo, pool, shots, max_tokens, cfg.batch_size,
                                             cfg.code_timeout_s)
        out.update(path=path, shots=shots, fewshot_path=task.fewshot_path, n=len(records), metrics=metrics,
                   rejected=len(rejected), rejects=rejected[:20])
    out.update(seconds=round(time.time() - t0, 2), examples=records[: cfg.examples])
    log.warning("eval %s: %s %s on %d", name, PRIMARY[kind], _fmt(out["metrics"][PRIMARY[kind]]), out["n"])
    return out


def run_arithmetic(sampler, cfg: EvalConfig, run_dir: RunDir) -> dict | None:
    """The held-out arithmetic task, or None when the run has no held-out questions."""
    from phi4ray.eval.generation import accuracy, load_questions
    from phi4ray.pts.oracles import get_oracle

    if not run_dir.exists("questions"):
        return None
    questions = load_questions(run_dir, "heldout", cfg.max_questions)
    if not questions:
        return None
    t0 = time.time()
    acc, records = accuracy(sampler, questions, get_oracle("math"), cfg.max_tokens, cfg.batch_size)
    return {"kind": "arithmetic", "primary": "acc", "path": run_dir.uri_of("questions"), "shots": 0,
            "n": len(records), "metrics": {"acc": acc}, "seconds": round(time.time() - t0, 2),
            "examples": records[: max(cfg.examples, 10)]}


# -- decontamination --------------------------------------------------------------------------------
def _same_file(a: str, b: str) -> bool:
    try:
        return os.path.realpath(resolve_path(a)) == os.path.realpath(resolve_path(b))
    except FileNotFoundError:
        return a == b


def decontamination(run_dir: RunDir, cfg: EvalConfig) -> dict:
    """Curation's decontamination report from the run's manifest, and which of its evaluation sets
    each task's file is."""
    manifest = run_dir.manifest()
    curate = manifest.get("stages", {}).get("curate")
    eval_sets = (((manifest.get("recipe") or {}).get("curate") or {}).get("decontam") or {}).get("eval_sets") or {}
    checked = {}
    for name, t in cfg.tasks.items():
        if t.path:
            checked[name] = sorted(b for b, p in eval_sets.items() if _same_file(t.path, p))
    if not curate:
        return {"note": NO_CURATE, "eval_sets": eval_sets, "tasks_checked": checked}
    report = (curate.get("counts") or {}).get("decontamination")
    if not report:
        return {"note": NO_EVAL_SETS, "eval_sets": eval_sets, "tasks_checked": checked}
    return {"eval_sets": eval_sets, "documents_removed": report.get("documents", 0),
            "benchmarks": report.get("benchmarks", {}), "index": report.get("index", {}), "tasks_checked": checked}


# -- a whole report -------------------------------------------------------------------------------
def evaluate(sampler, cfg: EvalConfig, run_dir: RunDir, label: str, model: str) -> dict:
    """Every task on `sampler`; writes `eval/<label>.json` and returns the report."""
    t0 = time.time()
    tasks: dict[str, dict] = {}
    arith = run_arithmetic(sampler, cfg, run_dir)
    if arith is not None:
        tasks["arithmetic"] = arith
    for name, task in cfg.tasks.items():
        tasks[name] = run_task(sampler, name, task, cfg)
    if not tasks:
        raise ValueError(f"nothing to evaluate: {run_dir.uri_of('questions')} has no held-out questions and eval.tasks is empty")
    report = {"stage": label, "model": model, "tasks": tasks, "decontamination": decontamination(run_dir, cfg),
              "seconds": round(time.time() - t0, 2)}
    if arith is not None:  # the run summary's key metric, where it always was
        report.update(task="arithmetic-heldout", metric="greedy_accuracy", accuracy=round(arith["metrics"]["acc"], 4),
                      n=arith["n"], examples=arith["examples"])
    run_dir.write_json(f"eval/{label}.json", report)
    return report


def run_eval(cfg: EvalConfig, run_dir: RunDir, stage: str, engine: EngineConfig, oracle_name: str = "math") -> dict:
    """Evaluate the HF export of training stage `stage`; writes `eval/<stage>.json`."""
    from phi4ray.inference.sampler import make_sampler

    ckpt = f"checkpoints/{stage}/hf"
    if not run_dir.exists(ckpt, "config.json"):
        raise FileNotFoundError(f"no '{stage}' checkpoint at {run_dir.uri_of(ckpt)}; train that stage first")
    check_tasks(cfg)
    sampler = make_sampler(engine, run_dir.local_dir(ckpt))
    return evaluate(sampler, cfg, run_dir, stage, run_dir.uri_of(ckpt))


def endpoint_report_name(model: str) -> str:
    return "endpoint-" + re.sub(r"[^A-Za-z0-9._-]+", "_", model)


def run_endpoint_eval(cfg: EvalConfig, run_dir: RunDir, base_url: str, model: str | None = None,
                      name: str | None = None) -> dict:
    """Evaluate the model an OpenAI-compatible endpoint serves; writes `eval/<name>.json`
    (default name: `endpoint-<model>`)."""
    from phi4ray.eval.endpoint import EndpointSampler

    check_tasks(cfg)
    sampler = EndpointSampler(base_url, model, batch_size=min(cfg.batch_size, 16))
    try:
        return evaluate(sampler, cfg, run_dir, name or endpoint_report_name(sampler.model),
                        f"{sampler.base_url}#{sampler.model}")
    finally:
        sampler.close()


# -- the table ------------------------------------------------------------------------------------
def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "-" if v is None else str(v)


def table_rows(reports: dict[str, dict]) -> list[list[str]]:
    """[task, metric, n, value per report] rows: every scalar metric, and needle's per (length, depth) cells."""
    names: list[str] = []
    for r in reports.values():
        names += [t for t in r["tasks"] if t not in names]
    rows = []
    for t in names:
        first = next(r["tasks"][t] for r in reports.values() if t in r["tasks"])
        keys: list[tuple[str, tuple]] = [(k, (k,)) for k, v in first["metrics"].items() if not isinstance(v, dict)]
        if first["kind"] == "needle":
            cells = first["metrics"].get("by_length_depth", {})
            keys += [(f"acc L={L} d={d}", ("by_length_depth", L, d)) for L, ds in cells.items() for d in ds]
        for label, path in keys:
            vals = []
            for r in reports.values():
                v = r["tasks"].get(t, {}).get("metrics")
                for p in path:
                    v = v.get(p) if isinstance(v, dict) else None
                vals.append(_fmt(v))
            rows.append([t, label, str(first["n"]), *vals])
    return rows


def decontam_line(report: dict) -> str:
    d = report.get("decontamination") or {}
    if "note" in d:
        return d["note"]
    per = ", ".join(f"{b} {v.get('documents', 0)}" for b, v in d.get("benchmarks", {}).items()) or "none matched"
    sets = ", ".join(sorted(d.get("eval_sets", {}))) or "-"
    checked = ", ".join(f"{t}: {'/'.join(b)}" for t, b in d.get("tasks_checked", {}).items() if b)
    return (f"decontamination: {d.get('documents_removed', 0)} training documents removed ({per}) against "
            f"{sets}" + (f"; task files among them: {checked}" if checked else "; no task file is among them"))


def format_table(reports: dict[str, dict]) -> str:
    """One table: a row per (task, metric), a column per evaluated stage or endpoint; then the
    decontamination line."""
    if not reports:
        return "eval: nothing evaluated"
    cols = ["task", "metric", "n", *reports]
    cells = table_rows(reports)
    widths = [max(len(c), *(len(row[i]) for row in cells)) if cells else len(c) for i, c in enumerate(cols)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(cols, widths)), "  ".join("-" * w for w in widths)]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in cells]
    lines.append(decontam_line(next(iter(reports.values()))))
    return "\n".join(lines)


def read_reports(run_dir: RunDir, labels: list[str]) -> dict[str, dict]:
    return {s: r for s in labels if (r := run_dir.read_json(f"eval/{s}.json")) is not None}


# -- the command line ------------------------------------------------------------------------------
def cli_eval(args, recipe, run_dir: RunDir) -> int:
    """`phi4ray eval [--stage S ...] [--endpoint URL [--model NAME] [--name NAME]]`: print the table."""
    from phi4ray import pipeline

    if args.stage:
        recipe.eval.stages = args.stage
    if args.endpoint:
        report = run_endpoint_eval(recipe.eval, run_dir, args.endpoint, args.model, args.name)
        print(format_table({report["stage"]: report}))
        print(f"\nreport: {run_dir.uri_of('eval', report['stage'] + '.json')}")
        return 0
    entry = pipeline.STAGE_FNS["eval"](recipe, run_dir, args.force)
    stages = list((entry or {}).get("metrics", {}))
    print(f"\nreports: {', '.join(run_dir.uri_of('eval', s + '.json') for s in stages) or 'none'}")
    return 0
