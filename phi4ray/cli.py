"""The `phi4ray` command: one subcommand per stage, plus `run` for the whole recipe.

    phi4ray run                                  # the tiny recipe, end to end, on a local Ray
    phi4ray curate --input 'dumps/*.html' --run-dir runs/x curate.min_chars=500
    phi4ray train sft --recipe phi-4 --run-dir s3://bucket/runs/phi4
    phi4ray pts --endpoint http://host:8000/v1 --model phi4ray --questions q.jsonl --run-dir runs/x

Every subcommand takes --recipe NAME_OR_PATH, --run-dir DIR and key.sub=value overrides.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time

from phi4ray.config import RecipeError, load_recipe, recipe_names

EPILOG = "Overrides: any recipe field as key.sub=value, e.g. pretrain.lr=1e-3 tokenize.seq_len=256."


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--recipe", default="tiny", help=f"shipped recipe ({', '.join(recipe_names())}) or a YAML path (default: tiny)")
    p.add_argument("--run-dir", help="run directory: a path or a pyarrow.fs URI such as s3://b/p (default: ./runs/<recipe>)")
    p.add_argument("--force", action="store_true", help="redo the stage(s) even if complete, deleting their outputs first")
    p.add_argument("--debug", action="store_true", help="show full tracebacks")
    p.add_argument("overrides", nargs="*", metavar="key.sub=value", help="recipe overrides")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="phi4ray", description="The Phi-4 training recipe on Ray.", epilog=EPILOG)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("run", help="run every stage of the recipe in order and print a summary table", epilog=EPILOG)
    _common(p)
    p.add_argument("--stages", help="comma-separated subset of stages to run, in the recipe's order")

    p = sub.add_parser("curate", help="raw HTML/JSONL/Parquet into curated/ (extract, language ID, dedup)", epilog=EPILOG)
    _common(p)
    p.add_argument("--input", nargs="+", metavar="PATH", help="files, folders or globs (default: the recipe's curate.inputs)")

    for name, text in (("synth", "synthetic data into synthetic/ and questions/"),
                       ("tokenize", "curated/ and synthetic/ into packed rows under tokens/")):
        _common(sub.add_parser(name, help=text, epilog=EPILOG))

    p = sub.add_parser("train", help="one training stage with Ray Train + DeepSpeed", epilog=EPILOG)
    p.add_argument("stage", choices=["pretrain", "midtrain", "sft", "dpo"])
    _common(p)

    p = sub.add_parser("serve", help="serve a checkpoint as an OpenAI-compatible endpoint (Ctrl-C stops)", epilog=EPILOG)
    _common(p)
    p.add_argument("--checkpoint", help="training stage whose export to serve (default: serve.checkpoint), or an HF folder")

    p = sub.add_parser("pts", help="Pivotal Token Search against an OpenAI-compatible endpoint", epilog=EPILOG)
    _common(p)
    p.add_argument("--endpoint", help="base URL such as http://127.0.0.1:8000/v1 (default: serve the recipe's checkpoint)")
    p.add_argument("--model", help="model name at the endpoint (default: serve.model_name)")
    p.add_argument("--questions", help='JSONL of {"id", "prompt", "answer"} (default: questions/ of the run)')
    p.add_argument("--oracle", choices=["math", "code", "choice"], help="answer checker (default: pts.oracle)")
    p.add_argument("--judge", action="store_true",
                   help="build judge-guided DPO pairs instead (models in pts.judge.responders / pts.judge.judge; "
                        'questions {"id", "prompt": user message}); writes dpo/judged_pairs.jsonl')

    p = sub.add_parser("eval", help="evaluate training stages' checkpoints, or an endpoint, into eval/<name>.json",
                       epilog=EPILOG)
    _common(p)
    p.add_argument("--stage", action="append",
                   help="training stage to evaluate (repeatable; default: eval.stages, else every stage with a checkpoint)")
    p.add_argument("--endpoint", help="OpenAI-compatible base URL such as http://127.0.0.1:8000/v1: evaluate the "
                                      "model it serves instead of the run's checkpoints")
    p.add_argument("--model", help="model name at --endpoint (default: the endpoint's first model)")
    p.add_argument("--name", help="report name for --endpoint: eval/<name>.json (default: endpoint-<model>)")

    p = sub.add_parser("sandbox", help="run a Python file (and its tests) in the code sandbox; print the result as JSON")
    p.add_argument("file", help="Python file to run; exit status 0 only when the result is `passed`")
    p.add_argument("--tests", help="Python file run after FILE in its namespace (asserts, test_* functions)")
    p.add_argument("--timeout", type=float, help="wall-clock seconds (default 10)")
    p.add_argument("--memory-mb", type=int, help="address space per process, MB (default 256)")
    return parser


def _dispatch(args, recipe, run_dir) -> int:
    from phi4ray import pipeline

    cmd = args.command
    if cmd == "run":
        only = [s.strip() for s in args.stages.split(",")] if args.stages else None
        if only:
            unknown = set(only) - set(pipeline.STAGE_FNS)
            if unknown:
                raise ValueError(f"unknown stage(s) {', '.join(sorted(unknown))}; stages: {', '.join(pipeline.stages_of(recipe))}")
        t0 = time.time()
        rows = pipeline.run_recipe(recipe, run_dir, force=args.force, only=only)
        print(pipeline.format_table(rows))
        evaluated = (run_dir.stage_entry("eval") or {}).get("metrics") or {}
        if evaluated:  # the run ends with the eval table of every training stage
            from phi4ray.eval.run import format_table as eval_table, read_reports

            print("\n" + eval_table(read_reports(run_dir, list(evaluated))))
        print(f"\nrun directory: {run_dir.uri}  (manifest.json holds this table)  total {time.time() - t0:.0f}s")
        return 0

    pipeline.init_ray(recipe.ray)
    if cmd in ("curate", "synth", "tokenize"):
        if cmd == "curate" and args.input:
            recipe.curate.inputs = list(args.input)
        result = pipeline.STAGE_FNS[cmd](recipe, run_dir, args.force)
    elif cmd == "train":
        result = pipeline.STAGE_FNS[args.stage](recipe, run_dir, args.force)
    elif cmd == "eval":
        from phi4ray.eval.run import cli_eval

        return cli_eval(args, recipe, run_dir)
    elif cmd == "serve":
        return _serve(args, recipe, run_dir)
    elif cmd == "pts":
        result = _pts(args, recipe, run_dir)
    else:  # argparse guarantees one of the above
        raise AssertionError(cmd)
    print(json.dumps(result, indent=2, default=str))
    return 0


def _serve(args, recipe, run_dir) -> int:
    from phi4ray.serve import app as serve_app

    ckpt = args.checkpoint or recipe.serve.checkpoint
    path = ckpt if os.path.isdir(ckpt) else run_dir.local_dir(f"checkpoints/{ckpt}/hf")
    url = serve_app.start(recipe.serve, path)
    print(f"serving {path} as '{recipe.serve.model_name}' at {url} (Ctrl-C to stop)", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        serve_app.stop()
    return 0


def _pts(args, recipe, run_dir) -> dict:
    from phi4ray import pipeline
    from phi4ray.pts.search import read_questions_jsonl, run_pts

    if args.judge:
        from phi4ray.pts.judge import judge_stage

        return judge_stage(recipe, run_dir, args.force, read_questions_jsonl(args.questions) if args.questions else None)
    if args.oracle:
        recipe.pts.oracle = args.oracle
    if args.endpoint is None:
        if args.questions:
            raise ValueError("--questions needs --endpoint (without one, PTS serves the run's own checkpoint and questions)")
        return pipeline.STAGE_FNS["pts"](recipe, run_dir, args.force)
    questions = read_questions_jsonl(args.questions) if args.questions else pipeline.pts_questions(run_dir, recipe.pts.max_questions)
    return run_pts(recipe.pts, run_dir, args.endpoint, args.model or recipe.serve.model_name, questions, force=args.force)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "sandbox":  # no recipe or run directory
        from phi4ray.synth.sandbox import cli_main

        return cli_main(args)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        recipe = load_recipe(args.recipe, args.overrides)
    except RecipeError as e:
        print(f"phi4ray: {e}", file=sys.stderr)
        return 2
    from phi4ray.run import RunDir

    run_dir = RunDir(args.run_dir or os.path.join("runs", recipe.name))
    try:
        return _dispatch(args, recipe, run_dir)
    except KeyboardInterrupt:
        print("phi4ray: interrupted; run the same command again to continue where it stopped", file=sys.stderr)
        return 130
    except Exception as e:
        if args.debug:
            raise
        print(f"phi4ray {args.command}: {type(e).__name__}: {e}\n(rerun with --debug for the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
