"""The whole recipe, stage by stage, on one run directory; and the summary table it prints.

Every stage is skipped when the manifest says it is complete with the same config, so running
the recipe again after a failure (or a kill) continues where it stopped.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Callable

from phi4ray.config import Recipe, RayConfig
from phi4ray.run import RunDir

log = logging.getLogger(__name__)

ORDER = ("curate", "synth", "tokenize", "pretrain", "sft", "pts", "dpo", "eval")


def init_ray(cfg: RayConfig) -> None:
    """Join the cluster in `cfg.address` or RAY_ADDRESS, else start a local one."""
    import ray

    if ray.is_initialized():
        return
    address = cfg.address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address)
    else:
        # "local": a new instance even when another one runs on this machine (plain ray.init()
        # would join the latest one started here, and then refuse num_cpus)
        ctx = ray.init(address="local", num_cpus=cfg.num_cpus)
        if ctx.dashboard_url:
            log.warning("Ray dashboard: http://%s", ctx.dashboard_url)


def _curate(recipe: Recipe, run_dir: RunDir, force: bool) -> dict:
    from phi4ray.data.curate import run_curate

    return run_curate(recipe.curate, run_dir, force=force)


def _synth(recipe: Recipe, run_dir: RunDir, force: bool) -> dict:
    from phi4ray.synth.run import run_synth

    return run_synth(recipe.synth, run_dir, force=force)


def _tokenize(recipe: Recipe, run_dir: RunDir, force: bool) -> dict:
    from phi4ray.tokens.tokenize import run_tokenize

    return run_tokenize(recipe.tokenize, run_dir, force=force)


def _train(stage: str) -> Callable[[Recipe, RunDir, bool], dict]:
    def run(recipe: Recipe, run_dir: RunDir, force: bool) -> dict:
        from phi4ray.train.trainer import run_train

        return run_train(stage, recipe, run_dir, force=force)

    return run


def pts_questions(run_dir: RunDir, limit: int | None) -> list[dict]:
    from phi4ray.eval.generation import load_questions, prompt_for

    return [{**q, "prompt": prompt_for(q["prompt"])} for q in load_questions(run_dir, "pts", limit)]


def _pts(recipe: Recipe, run_dir: RunDir, force: bool) -> dict:
    """Serve the SFT checkpoint with Ray Serve, run PTS against it, and stop serving. With
    `pts.judge.enabled`, then build the judge-guided pairs of DPO round 2 (phi4ray/pts/judge.py)."""
    from phi4ray.pts.search import pts_config_hash, run_pts
    from phi4ray.serve import app as serve_app

    questions = pts_questions(run_dir, recipe.pts.max_questions)
    entry = run_dir.stage_entry("pts")
    done = entry and entry.get("status") == "complete"
    if done and not force and entry.get("config_hash") == pts_config_hash(recipe.pts, recipe.serve.model_name, questions):
        result = entry  # no need to start Serve; a changed config still reaches run_pts, which refuses it
    else:
        ckpt = f"checkpoints/{recipe.serve.checkpoint}/hf"
        url = serve_app.start(recipe.serve, run_dir.local_dir(ckpt))
        try:
            result = run_pts(recipe.pts, run_dir, url, recipe.serve.model_name, questions, force=force)
        finally:
            serve_app.stop()
    if recipe.pts.judge.enabled:
        from phi4ray.pts.judge import judge_stage

        result = {**result, "judge_pairs": judge_stage(recipe, run_dir, force)}
    return result


def _eval(recipe: Recipe, run_dir: RunDir, force: bool) -> dict:
    """Every training stage's checkpoint (eval.stages; default: all that exist) on the held-out
    arithmetic and the benchmarks of eval.tasks (phi4ray/eval/run.py); prints the eval table."""
    from phi4ray.eval.run import check_tasks, eval_stages, format_table, read_reports, run_eval

    if not run_dir.begin_stage("eval", _eval_hash(recipe), outputs=["eval"], force=force):
        entry = run_dir.stage_entry("eval")
        print(format_table(read_reports(run_dir, list(entry.get("metrics", {})))), flush=True)
        return entry
    with run_dir.failure_recorded("eval"):
        check_tasks(recipe.eval)
        stages, missing = eval_stages(recipe.eval, run_dir)
        if missing:
            log.warning("eval: no checkpoint for %s; evaluating %s", ", ".join(missing), ", ".join(stages) or "nothing")
        reports = {s: run_eval(recipe.eval, run_dir, s, recipe.serve.engine) for s in stages}
        print(format_table(reports), flush=True)
        arith = {s: r["tasks"].get("arithmetic", {}).get("n") for s, r in reports.items()}
        return run_dir.finish_stage(
            "eval", metrics={s: r.get("accuracy") for s, r in reports.items()},
            counts={"questions": next(iter(arith.values()), 0) or 0, "tasks": len(next(iter(reports.values()))["tasks"]) if reports else 0},
            tasks={s: {t: v["metrics"][v["primary"]] for t, v in r["tasks"].items()} for s, r in reports.items()},
        )


def _eval_hash(recipe: Recipe) -> str:
    from phi4ray.eval.run import data_digest
    from phi4ray.run import config_hash

    return config_hash({"eval": recipe.eval.model_dump(mode="json"), "engine": recipe.serve.engine.model_dump(mode="json"),
                        "data": data_digest(recipe.eval)})


STAGE_FNS: dict[str, Callable[[Recipe, RunDir, bool], dict]] = {
    "curate": _curate,
    "synth": _synth,
    "tokenize": _tokenize,
    "pretrain": _train("pretrain"),
    "midtrain": _train("midtrain"),
    "sft": _train("sft"),
    "pts": _pts,
    "dpo": _train("dpo"),
    "eval": _eval,
}


def stages_of(recipe: Recipe) -> list[str]:
    order = list(ORDER)
    if recipe.midtrain is not None:
        order.insert(order.index("sft"), "midtrain")
    return order


def run_recipe(recipe: Recipe, run_dir: RunDir, force: bool = False, only: list[str] | None = None) -> list[dict]:
    """Run the recipe's stages in order (or `only` those); returns the summary rows."""
    init_ray(recipe.ray)
    run_dir.makedirs()
    run_dir.set_manifest_field("recipe", recipe.model_dump(mode="json"))
    for stage in only or stages_of(recipe):
        t0 = time.time()
        log.warning("=== %s", stage)
        STAGE_FNS[stage](recipe, run_dir, force)
        log.warning("=== %s done in %.1fs", stage, time.time() - t0)
    rows = summary_rows(run_dir)
    run_dir.set_manifest_field("summary", rows)
    return rows


# -- the summary table ------------------------------------------------------------------------
def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _row(stage: str, e: dict) -> dict:
    c, m = e.get("counts", {}), e.get("metrics", {})
    if stage == "curate":
        rows_in, rows_out = c.get("read"), c.get("kept")
        top = sorted(c.get("rejects", {}).items(), key=lambda kv: -kv[1])[:3]
        key = f"rejected {c.get('rejected')} ({', '.join(f'{k} {v}' for k, v in top) or 'none'})"
        if "seeds" in c:
            key += f", {c['seeds']['seeds']} seeds"
    elif stage == "synth":
        ops = c.get("ops", {})
        rows_in = sum(o.get("read", 0) for o in ops.values())
        rows_out = c.get("arithmetic_rows", 0) + sum(o.get("kept", 0) for o in ops.values())
        key = ", ".join([f"arithmetic {c.get('arithmetic_rows')}"] + [f"{n} {o.get('kept', 0)}/{o.get('read', 0)}" for n, o in ops.items()])
    elif stage == "tokenize":
        rows_in, rows_out = c.get("docs_read"), f"{c.get('pretrain_rows')}+{c.get('sft_rows')} sft"
        waste = m.get("pretrain_packing", {}).get("waste", 0)
        mix = ", ".join(f"{s} {_fmt(v['realised_fraction'])}" for s, v in m.get("mixture", {}).items())
        key = (f"{c.get('pretrain_tokens')} tokens ({mix}), pretrain waste {_fmt(waste)}, "
               f"sft pad waste {_fmt(m.get('sft_packing', {}).get('waste', 0))}")
    elif e.get("status") == "skipped":
        rows_in, rows_out, key = c.get("rows", 0), "-", e.get("reason", "")
    elif stage in ("pretrain", "midtrain", "sft", "dpo"):
        rows_in, rows_out = c.get("rows"), f"{c.get('steps')} steps"
        key = f"loss {_fmt(m.get('loss'))}, {_fmt(m.get('tokens_per_s'))} tok/s"
        if stage == "dpo":
            key += f", reward acc {_fmt(m.get('rewards/accuracy'))}, margin {_fmt(m.get('rewards/margins'))}"
    elif stage == "pts":
        rows_in, rows_out = c.get("questions"), f"{c.get('pairs')} pairs"
        key = f"{c.get('in_band')} questions with 0.2<=p<=0.8, {c.get('pivots')} pivots"
    elif stage == "eval":
        rows_in, rows_out = c.get("questions"), "-"
        key = ", ".join(f"{s} acc {_fmt(a)}" for s, a in m.items() if a is not None)
        if c.get("tasks"):
            key += f"{'; ' if key else ''}{c['tasks']} tasks x {len(m)} stages in eval/<stage>.json"
    else:
        rows_in, rows_out, key = "-", "-", ""
    return {"stage": stage, "rows_in": rows_in, "rows_out": rows_out, "seconds": e.get("seconds"),
            "status": e.get("status"), "key_metric": key}


def summary_rows(run_dir: RunDir) -> list[dict]:
    stages = run_dir.manifest().get("stages", {})
    order = [s for s in STAGE_FNS if s in stages]
    return [_row(s, stages[s]) for s in order]


def format_table(rows: list[dict]) -> str:
    cols = ["stage", "rows_in", "rows_out", "seconds", "status", "key_metric"]
    cells = [[_fmt(r.get(c, "")) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) if cells else len(c) for i, c in enumerate(cols)]
    line = "  ".join(c.ljust(w) for c, w in zip(cols, widths))
    sep = "  ".join("-" * w for w in widths)
    return "\n".join([line, sep] + ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in cells])
