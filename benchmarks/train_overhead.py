"""The cost of Ray Train + DeepSpeed over a plain torch loop, on CPU.

    python benchmarks/train_overhead.py            # --preset tiny --steps 40 --micro 8 --seq 128 --threads 2

Three runs of the same model, batch, optimizer (AdamW), schedule and steps, one after another:

- `torch`: a plain loop (forward, backward, clip, step), the baseline;
- `deepspeed`: phi4ray's per-worker loop (`train_local`: DeepSpeed ZeRO-2, one process, gloo);
- `ray+deepspeed`: the same loop under Ray Train (`run_train`, one worker), rows streamed from
  the run directory by Ray Data.

Each time is the training loop's time for all steps, measured the same way in the three runs
(from the first step to the last, inside the process that trains), as seconds per step and as
a ratio to `torch`. Start-up (model build, DeepSpeed init, Ray worker group) is reported apart. The target is a
ratio of at most 1.05. Writes benchmarks/results/train_overhead.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np
import pyarrow as pa
import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from phi4ray.config import Recipe, TrainConfig  # noqa: E402
from phi4ray.model import build_model  # noqa: E402
from phi4ray.run import RunDir  # noqa: E402
from phi4ray.train import objectives  # noqa: E402
from phi4ray.train.loop import LoopSpec, _param_groups, train_local  # noqa: E402
from phi4ray.train.schedule import lr_at  # noqa: E402

RESULTS = os.path.join(os.path.dirname(__file__), "results", "train_overhead.json")


def rows(n: int, seq: int, seed: int = 0) -> dict[str, list]:
    rng = np.random.default_rng(seed)
    ids = rng.integers(100, 5000, size=(n, seq + 1)).tolist()
    return {"input_ids": ids, "loss_mask": [[1] * (seq + 1)] * n}


def plain_torch(args, data) -> dict:
    """The baseline: the same objective module, AdamW, LR schedule and clipping, no DeepSpeed."""
    t0 = time.perf_counter()
    model = build_model(args.preset, seed=0)
    module = objectives.CausalLM(model)
    opt = torch.optim.AdamW(_param_groups(module, 0.1), lr=1e-3, betas=(0.9, 0.95))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_at(s, 1.0, args.steps, 0, 0.0))
    startup = time.perf_counter() - t0
    t_loop = time.perf_counter()
    for step in range(args.steps):
        i = (step * args.micro) % (len(data["input_ids"]) - args.micro + 1)
        batch = {k: torch.tensor(v[i : i + args.micro]) for k, v in data.items()}
        out = module(**batch)
        out["loss"].backward()
        torch.nn.utils.clip_grad_norm_(module.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
    return {"startup_s": startup, "loop_s": time.perf_counter() - t_loop, "final_loss": float(out["loss"])}


def _cfg(args) -> TrainConfig:
    return TrainConfig(
        num_workers=1, cpus_per_worker=args.threads, micro_batch_size=args.micro, global_batch_size=args.micro,
        lr=1e-3, warmup_steps=0, max_steps=args.steps, zero_stage=2,
    )


def deepspeed_local(args, data, tmp: str) -> dict:
    cfg = _cfg(args)
    spec = LoopSpec(stage="bench", objective="lm", train=cfg.model_dump(mode="json"), total_steps=args.steps,
                    run_dir=os.path.join(tmp, "local"), export_rel="hf", preset=args.preset, log_every=1)
    t0 = time.perf_counter()
    last, history = train_local(spec, data, os.path.join(tmp, "local-ckpt"))
    wall = time.perf_counter() - t0
    return {"wall_s": wall, "history": history, "final_loss": last["loss"]}


def ray_train(args, data, tmp: str) -> dict:
    import ray

    from phi4ray.train.trainer import run_train

    ray.init(num_cpus=max(2, int(args.threads) + 1), include_dashboard=False, log_to_driver=False)
    rd = RunDir(os.path.join(tmp, "ray"))
    rd.commit_table("tokens/pretrain", "part-00000", pa.table({
        "input_ids": pa.array(data["input_ids"], pa.list_(pa.int32())),
        "loss_mask": pa.array(data["loss_mask"], pa.list_(pa.int8())),
    }))
    recipe = Recipe(model={"preset": args.preset}, pretrain=_cfg(args))
    t0 = time.perf_counter()
    entry = run_train("pretrain", recipe, rd)
    wall = time.perf_counter() - t0
    ray.shutdown()
    return {"wall_s": wall, "seconds_in_loop": entry["metrics"]["seconds"], "final_loss": entry["metrics"]["loss"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--micro", type=int, default=8)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-ray", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    data = rows(args.micro * args.steps, args.seq)

    base = plain_torch(args, data)
    results = {"torch": {"loop_s": base["loop_s"], "startup_s": base["startup_s"], "final_loss": base["final_loss"]}}
    with tempfile.TemporaryDirectory() as tmp:
        ds = deepspeed_local(args, data, tmp)
        loop = ds["history"][-1]["seconds"]
        results["deepspeed"] = {"loop_s": loop, "startup_s": ds["wall_s"] - loop, "final_loss": ds["final_loss"]}
        if not args.no_ray:
            rt = ray_train(args, data, tmp)
            results["ray+deepspeed"] = {
                "loop_s": rt["seconds_in_loop"], "startup_s": rt["wall_s"] - rt["seconds_in_loop"],
                "final_loss": rt["final_loss"],
            }
    base_loop = results["torch"]["loop_s"]
    print(f"\n{args.preset} preset, micro-batch {args.micro} x {args.seq + 1} tokens, {args.steps} steps "
          f"{args.threads} threads, CPU; load average {os.getloadavg()[0]:.1f}")
    print(f"{'run':<15} {'loop s':>8} {'s/step':>8} {'x torch':>8} {'start-up s':>11} {'final loss':>11}")
    for name, r in results.items():
        r["sec_per_step"] = r["loop_s"] / args.steps
        r["ratio"] = r["loop_s"] / base_loop
        print(f"{name:<15} {r['loop_s']:>8.2f} {r['sec_per_step']:>8.4f} {r['ratio']:>8.3f} {r['startup_s']:>11.1f} {r['final_loss']:>11.4f}")
    os.makedirs(os.path.dirname(RESULTS), exist_ok=True)
    with open(RESULTS, "w") as f:
        json.dump({"args": vars(args), "results": results, "load_average": os.getloadavg()}, f, indent=2)
    print(f"\nwrote {RESULTS}")


if __name__ == "__main__":
    main()
