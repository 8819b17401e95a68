"""The OpenAI-compatible Serve app under load and under a replica crash, against the same engine in process.

Run (from the repository root; needs the `dev` extra for the `openai` client):

    python benchmarks/serve_load.py [--preset micro] [--requests 256] [--concurrency 64]
        [--max-tokens 8] [--replicas 2] [--cpus 2] [--no-kill]

It prints two tables and writes benchmarks/results/serve_load.json.

Every row runs the same kind of request: a greedy completion of `--max-tokens` tokens (stop
tokens off, so every answer has exactly that many) of the prompt `Request <i>: the answer is`,
on a fresh `--preset` model (the same weights everywhere: build_model's seed 0). The engine is
`TransformersSampler` with one torch thread, in this process (`in process`) or in each Serve
replica (half a CPU, one torch thread) on a local `ray.init(num_cpus=--cpus)`.

Table 1, Serve's cost per request, one request at a time: 64 pairs, each one call of
`generate([prompt])` in process and then the same request through Serve (HTTP POST to
`/v1/completions`, one replica). Interleaving the two keeps a drifting machine load out of
the ratio. Reported: median latency of each and their ratio.

Table 2, throughput under load. Closed-loop clients (`phi4ray.serve.loadgen`: the official
`openai` client) send `--requests` requests:

- `serve, 1 replica`: `--concurrency` clients, the default `max_ongoing_requests` 8, so most
  requests wait in Serve's router queue (which retries a waiting request with a backoff of up to
  0.5 s while the replicas are full).
- `serve, 1 replica, ongoing C`: the replica admits all C requests itself (none waits in the router).
- `serve, R replicas`: `--replicas` replicas, default limits.
- `serve, kill 1 of R`: `concurrency / 2` clients with `max_retries=10`; when 10% of the requests
  are answered one replica actor is killed (`ray.kill`, no restart). Reported: requests failed
  after retries, HTTP replies retried, and seconds until Serve reports the deployment healthy
  again with R replicas.
- `in process, batched`: `generate` on `--concurrency` prompts at a time (the engine's own
  batching; replicas do not batch across requests, so this is the headroom).

"x base" is requests/s over the baseline's: `in process` (one `generate([prompt])` after another)
on 64 requests run just before and just after each row, averaged, since the load on a shared
machine drifts. p50/p99 are per-request latencies (for clients: from the first try to the
answer). The clients run on the same cores as the replicas, so on a small machine the ratio
also pays for the load generator. "same text": answers equal to the in-process greedy answer.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import statistics
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "benchmarks" / "results" / "serve_load.json"

os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

MODEL = "phi4ray-bench"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def prompts(n: int) -> list[str]:
    return [f"Request {i}: the answer is" for i in range(n)]


class Engine:
    """The same engine as a replica's, in this process."""

    def __init__(self, args):
        import torch

        from phi4ray.config import EngineConfig
        from phi4ray.inference.sampler import SamplingParams, make_sampler

        torch.set_num_threads(1)
        self.sampler = make_sampler(EngineConfig(preset=args.preset, device="cpu"), None)
        self.params = SamplingParams(temperature=0.0, max_tokens=args.max_tokens, stop_token_ids=[])
        self.sampler.generate(["warm-up"], self.params)

    def run(self, ps: list[str], batch: int = 1) -> dict:
        from phi4ray.serve.loadgen import percentile

        lat, outs = [], []
        t0 = time.perf_counter()
        for s in range(0, len(ps), batch):
            t = time.perf_counter()
            outs.extend(self.sampler.generate(ps[s : s + batch], self.params))
            lat.extend([time.perf_counter() - t] * len(ps[s : s + batch]))
        wall = time.perf_counter() - t0
        return {"requests": len(ps), "answered": len(outs), "errors": 0, "retries": 0, "wall_s": wall,
                "requests_per_s": len(ps) / wall, "p50_s": percentile(lat, 50), "p99_s": percentile(lat, 99),
                "texts": [o[0].text for o in outs]}


def paired_overhead(url: str, engine: Engine, ps: list[str], max_tokens: int) -> dict:
    import httpx

    body = {"model": MODEL, "max_tokens": max_tokens, "temperature": 0, "stop_token_ids": []}
    local, served, same = [], [], 0
    with httpx.Client(timeout=60) as http:
        for p in ps:
            t = time.perf_counter()
            [[c]] = engine.sampler.generate([p], engine.params)
            local.append(time.perf_counter() - t)
            t = time.perf_counter()
            r = http.post(f"{url}/completions", json={**body, "prompt": p})
            served.append(time.perf_counter() - t)
            r.raise_for_status()
            same += r.json()["choices"][0]["text"] == c.text
    a, b = statistics.median(local), statistics.median(served)
    return {"pairs": len(ps), "in_process_median_s": a, "serve_median_s": b, "ratio": b / a,
            "overhead_ms": 1000 * (b - a), "same_text": same}


def through_serve(url: str, args, ps: list[str], concurrency: int, max_retries: int = 0, kill_at: int | None = None):
    from phi4ray.serve.loadgen import kill_replica, replica_names, run_load, wait_replicas

    answered = [0]
    reached = threading.Event()

    def on_answer(_a):
        answered[0] += 1
        if kill_at is not None and answered[0] >= kill_at:
            reached.set()

    out: dict = {}
    load = threading.Thread(target=lambda: out.update(report=asyncio.run(run_load(
        url, MODEL, ps, concurrency=concurrency, max_tokens=args.max_tokens, max_retries=max_retries,
        extra_body={"stop_token_ids": []}, on_answer=on_answer))))  # stop tokens off, as in process
    extra = {}
    load.start()
    if kill_at is not None:
        reached.wait(600)
        victim = replica_names()[0]
        t_kill = time.perf_counter()
        kill_replica(victim)
        wait_replicas(args.replicas, exclude={victim}, timeout_s=600)
        extra = {"killed": victim, "recovery_s": time.perf_counter() - t_kill}
    load.join()
    report = out["report"]
    row = report.summary()
    row.update(extra)
    row["texts"] = [report.answers[i].text if report.answers[i].error is None else None for i in range(len(ps))]
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="micro")
    ap.add_argument("--requests", type=int, default=256)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--max-tokens", type=int, default=8)
    ap.add_argument("--replicas", type=int, default=2)
    ap.add_argument("--cpus", type=int, default=2)
    ap.add_argument("--no-kill", action="store_true")
    args = ap.parse_args()

    import ray

    from phi4ray.config import EngineConfig, ServeConfig
    from phi4ray.serve import app

    ps = prompts(args.requests)
    ref = prompts(64)
    engine = Engine(args)
    reference_texts = engine.run(ps)["texts"]
    c = args.concurrency
    rows: dict[str, dict] = {}
    baselines: list[float] = []

    def measure(name: str, fn) -> None:
        before = engine.run(ref)["requests_per_s"]
        row = fn()
        after = engine.run(ref)["requests_per_s"]
        row["baseline_requests_per_s"] = [before, after]
        row["ratio"] = row["requests_per_s"] / ((before + after) / 2)
        row["same_text"] = sum(t == b for t, b in zip(row.pop("texts"), reference_texts))
        baselines.extend([before, after])
        rows[name] = row

    ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False, configure_logging=False)
    port = free_port()
    phases = [  # (row, replicas, max_ongoing_requests per replica, clients)
        ("serve, 1 replica", 1, 8, c),
        (f"serve, 1 replica, ongoing {c}", 1, c, c),
        (f"serve, {args.replicas} replicas", args.replicas, 8, c),
    ]
    overhead = None
    try:
        for i, (name, replicas, ongoing, clients) in enumerate(phases):
            cfg = ServeConfig(port=port, model_name=MODEL, min_replicas=replicas, max_replicas=replicas,
                              max_ongoing_requests=ongoing, max_model_len=256, max_queued_requests=4 * c,
                              engine=EngineConfig(preset=args.preset, device="cpu", num_cpus_per_actor=0.5))
            url = app.start(cfg, None)
            through_serve(url, args, ps[:16], 16)  # warm-up
            if i == 0:
                overhead = paired_overhead(url, engine, ref, args.max_tokens)
            measure(name, lambda url=url, clients=clients: through_serve(url, args, ps, clients))
            rows[name]["max_ongoing_requests"] = ongoing
        if not args.no_kill:
            measure(f"serve, kill 1 of {args.replicas}", lambda: through_serve(
                url, args, ps, max(1, c // 2), max_retries=10, kill_at=max(1, args.requests // 10)))
    finally:
        app.stop()
        ray.shutdown()
    measure("in process, batched", lambda: engine.run(ps, c))

    load = os.getloadavg()[0]
    print(f"\n{args.preset} preset, greedy completions of {args.max_tokens} tokens, {args.cpus} CPUs; "
          f"load average {load:.1f}")
    print(f"\none request at a time ({overhead['pairs']} interleaved pairs):")
    print(f"  in process {1000 * overhead['in_process_median_s']:.1f} ms, through Serve "
          f"{1000 * overhead['serve_median_s']:.1f} ms (median): x{overhead['ratio']:.2f}, "
          f"+{overhead['overhead_ms']:.1f} ms per request; same text {overhead['same_text']}/{overhead['pairs']}")
    print(f"\n{args.requests} requests, {c} clients (baseline: in process, one request at a time, "
          f"{statistics.mean(baselines):.1f} req/s on average, {min(baselines):.1f}-{max(baselines):.1f}):")
    print(f"{'run':<30} {'req/s':>8} {'x base':>7} {'p50 s':>7} {'p99 s':>7} {'errors':>6} {'retried':>7} "
          f"{'same text':>9} {'recovery s':>10}")
    for name, r in rows.items():
        rec = f"{r['recovery_s']:.1f}" if "recovery_s" in r else ""
        print(f"{name:<30} {r['requests_per_s']:>8.2f} {r['ratio']:>7.2f} {r['p50_s']:>7.3f} {r['p99_s']:>7.3f} "
              f"{r['errors']:>6} {r['retries']:>7} {r['same_text']:>9} {rec:>10}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"args": vars(args), "one_at_a_time": overhead, "results": rows,
                                   "load_average": os.getloadavg(), "python": platform.python_version()}, indent=2))
    print(f"\nwrote {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
