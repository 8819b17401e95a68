"""Synthesis throughput: the Ray Data actor pool against the same engine called directly in one process.

Run (from the repository root):

    python benchmarks/synth_throughput.py [--html-dir ../shared/data/html] [--records 24]
        [--max-tokens 32] [--batch-size 4] [--preset tiny] [--repeats 2]

It prints one table and writes benchmarks/results/synth_throughput.json.

Workload: the synth stage's `qa` operation (one LLM step per record: the `qa_extract` prompt
around a seed passage, then the parser) over --records passages of about 800 characters cut from
the pages under --html-dir (through `phi4ray.data.extract.extract_text`). The engine is the
transformers `Sampler` over a freshly built --preset model on the CPU (the tiny recipe's
synthesis engine), sampling at temperature 0.8 with seed 0 and --max-tokens completion tokens.
The random model rarely stops early, so nearly every record costs --max-tokens decode steps.

Methods:

- `direct, 1 thread` (THE BASELINE): one process, `torch.set_num_threads(1)`, the op run by
  `synth.ops.run_records` over batches of --batch-size records: the code an `OpActor` runs,
  without Ray. One thread, because that is what a Ray actor with `num_cpus_per_actor: 1` gets
  (Ray sets OMP_NUM_THREADS from it).
- `direct, 2 threads`: the same with torch's two threads on the 2 cores.
- `ray pool, N actor(s)`: `synth.run.run_ops`-style Ray Data pipeline,
  `ray.data.from_items(records).map_batches(OpActor, compute=ActorPoolStrategy(size=N),
  batch_size=--batch-size, num_cpus=1)` on a local `ray.init(num_cpus=2)`, results collected
  on the driver (no commits: only the pool is measured).

Columns: `tokens` is the completion tokens generated (counted per record by the op's `LLM`);
`wall s` runs from the start of the method (model build or actor start included) to its last
result; `startup s` is the model build (direct) or the time until the pool's actors had loaded
their models, measured in the actors (Ray); `busy s` is the time spent inside the op's calls
(summed over actors; for N actors it can exceed the wall time). `tok/s` is tokens over wall
seconds and `x base` its ratio to the baseline's in the same run; `tok/s busy` is tokens over
busy seconds per actor, the engine's own speed. Each method runs --repeats times in a rotated
order and the median wall time is reported. Absolute speeds depend on the machine and its load;
the ratios are what carry over.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

BASELINE = "direct, 1 thread"
LOAD_AT_START = os.getloadavg()


def load_passages(html_dir: Path, n: int, chars: int = 800) -> list[dict]:
    from phi4ray.data.extract import extract_text

    if not html_dir.is_dir():
        html_dir = ROOT / "phi4ray" / "data" / "samples"
    out = []
    for path in sorted(html_dir.rglob("*.html")):
        text = extract_text(path.read_text(encoding="utf-8", errors="replace"))
        for i in range(0, max(0, len(text) - chars // 2), chars):
            out.append({"id": f"{path.name}:{i}", "seed_id": f"{path.name}:{i}", "text": text[i : i + chars]})
            if len(out) == n:
                return out
    if not out:
        raise SystemExit(f"no pages under {html_dir}")
    while len(out) < n:  # a small directory: repeat passages (ids stay unique)
        r = out[len(out) % max(1, len(out))]
        out.append({**r, "id": f"{r['id']}#{len(out)}"})
    return out


def op_config(args):
    from phi4ray.config import EngineConfig, QAConfig, SamplingConfig

    return QAConfig(enabled=True, seed_chars=2000, engine=EngineConfig(preset=args.preset, device="cpu", batch_size=args.batch_size),
                    sampling=SamplingConfig(temperature=0.8, max_tokens=args.max_tokens, seed=0))


def run_direct(records: list[dict], args, threads: int) -> dict:
    import torch

    from phi4ray.inference.sampler import make_sampler
    from phi4ray.synth.ops import LLM, make_op, run_records

    cfg = op_config(args)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        t0 = time.perf_counter()
        sampler = make_sampler(cfg.engine)
        llm = LLM(sampler)
        ops = {"qa": make_op("qa", cfg, "bench")}
        startup = time.perf_counter() - t0
        tokens, busy = 0, 0.0
        for i in range(0, len(records), args.batch_size):
            chunk = records[i : i + args.batch_size]
            b0 = time.perf_counter()
            tokens += sum(t for _, t in run_records(ops, ["qa"] * len(chunk), chunk, llm))
            busy += time.perf_counter() - b0
        wall = time.perf_counter() - t0
    finally:
        torch.set_num_threads(before)
    return {"tokens": tokens, "wall_s": wall, "startup_s": startup, "busy_s": busy, "actors": 1}


def run_ray(records: list[dict], args, actors: int) -> dict:
    import numpy as np
    import ray.data

    from phi4ray.synth.ops import OpActor

    class TimedOpActor(OpActor):
        """OpActor plus its start-up time and the seconds spent in each call."""

        def __init__(self, **kw):
            t0 = time.perf_counter()
            super().__init__(**kw)
            self.loaded_at = time.time()
            self.init_s = time.perf_counter() - t0

        def __call__(self, batch):
            t0 = time.perf_counter()
            out = super().__call__(batch)
            n = len(out["op"])
            out["busy_s"] = np.full(n, (time.perf_counter() - t0) / max(n, 1))
            out["loaded_at"] = np.full(n, self.loaded_at)
            return out

    cfg = op_config(args)
    items = [{"op": "qa", "shard": "bench", "rec": json.dumps(r)} for r in records]
    t0 = time.time()
    ds = ray.data.from_items(items).map_batches(
        TimedOpActor,
        fn_constructor_kwargs={"ops": {"qa": (cfg, "bench", "qa")}, "engine_cfg": cfg.engine, "model_path": None},
        compute=ray.data.ActorPoolStrategy(size=actors), batch_size=args.batch_size, num_cpus=1,
    )
    tokens, busy, loaded = 0, 0.0, []
    for row in ds.iter_rows():
        tokens += int(row["tokens"])
        busy += float(row["busy_s"])
        loaded.append(float(row["loaded_at"]))
    wall = time.time() - t0
    return {"tokens": tokens, "wall_s": wall, "startup_s": max(loaded) - t0, "busy_s": busy, "actors": actors}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--html-dir", type=Path, default=ROOT.parent / "shared" / "data" / "html")
    ap.add_argument("--records", type=int, default=24)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "synth_throughput.json")
    args = ap.parse_args()

    import ray

    os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
    records = load_passages(args.html_dir, args.records)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False,
             runtime_env={"env_vars": {"PYTHONPATH": str(ROOT)}})
    ray.data.DataContext.get_current().enable_progress_bars = False
    methods = [
        (BASELINE, lambda: run_direct(records, args, 1)),
        ("direct, 2 threads", lambda: run_direct(records, args, 2)),
        ("ray pool, 1 actor", lambda: run_ray(records, args, 1)),
        ("ray pool, 2 actors", lambda: run_ray(records, args, 2)),
    ]
    runs: dict[str, list[dict]] = {m: [] for m, _ in methods}
    for rep in range(args.repeats):
        for k in range(len(methods)):
            name, fn = methods[(k + rep) % len(methods)]
            r = fn()
            runs[name].append(r)
            print(f"  round {rep + 1}: {name}: {r['tokens']} tokens in {r['wall_s']:.1f}s", file=sys.stderr, flush=True)
    ray.shutdown()

    rows = []
    for name, _ in methods:
        rs = sorted(runs[name], key=lambda r: r["wall_s"])
        med = rs[len(rs) // 2] if len(rs) % 2 else rs[len(rs) // 2 - 1]  # a real run, not an average
        rows.append({"method": name, **{k: round(v, 3) if isinstance(v, float) else v for k, v in med.items()},
                     "wall_s_all": [round(r["wall_s"], 3) for r in runs[name]]})
    base = next(r for r in rows if r["method"] == BASELINE)
    base_rate = base["tokens"] / base["wall_s"]
    base_busy = base["tokens"] / base["busy_s"]
    lines = [f"{'method':<22} {'tokens':>7} {'wall s':>8} {'startup s':>10} {'busy s':>8} {'tok/s':>8} {'x base':>7} {'tok/s busy':>11} {'x base':>7}",
             "-" * 98]
    for r in rows:
        r["tokens_per_s"] = round(r["tokens"] / r["wall_s"], 2)
        r["x_base"] = round(r["tokens_per_s"] / base_rate, 3)
        r["busy_tokens_per_s_per_actor"] = round(r["tokens"] / r["busy_s"], 2) if r["busy_s"] else None
        r["x_base_busy"] = round(r["busy_tokens_per_s_per_actor"] / base_busy, 3) if r["busy_tokens_per_s_per_actor"] else None
        lines.append(f"{r['method']:<22} {r['tokens']:>7} {r['wall_s']:>8.2f} {r['startup_s']:>10.2f} {r['busy_s']:>8.2f} "
                     f"{r['tokens_per_s']:>8.1f} {r['x_base']:>7.2f} {r['busy_tokens_per_s_per_actor']:>11.1f} {r['x_base_busy']:>7.2f}")
    print("\n".join(lines))
    versions = {p: importlib.metadata.version(p) for p in ("torch", "transformers", "ray")}
    result = {
        "benchmark": "synth_throughput", "baseline": BASELINE,
        "workload": {"op": "qa", "records": len(records), "max_tokens": args.max_tokens, "batch_size": args.batch_size,
                     "preset": args.preset, "html_dir": str(args.html_dir)},
        "params": {"repeats": args.repeats, "ray_num_cpus": 2},
        "machine": {"python": platform.python_version(), "platform": platform.platform(), "cpus": os.cpu_count(),
                    "loadavg_at_start": LOAD_AT_START, "loadavg_at_end": os.getloadavg()},
        "versions": versions,
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
