"""Tokens per second and MFU of the per-worker training loop on one GPU, called without Ray.

    python benchmarks/train_gpu.py     # --preset 1b --seq 4096 --micro 4 --accum 4 --steps 14 --zero 2 3

What runs: `phi4ray.train.loop.train_local` (the loop every stage uses under Ray Train), with
DeepSpeed ZeRO-2 and then ZeRO-3, bf16, SDPA attention (transformers' default; on an H100 it
dispatches to the flash kernel), packed rows of random token ids with the loss on every token,
and AdamW. The baseline of the same run is a plain torch loop (`torch.autocast` bf16, fused
AdamW, the same model, objective, batch and steps), so each DeepSpeed figure is also stated as
a ratio to it.

The peak that MFU divides by is the device's bf16 matmul rate measured first in the same run
(an 8192^3 product, mean of 10 after 3 warm-ups); MFU against the datasheet's dense bf16 peak
(989 TFLOP/s for H100/H200 SXM) is given too. FLOPs per token are `phi4ray.model.flops_per_token`
(6N for the matmuls plus the causal attention term), the same count the loop reports.

Each configuration runs in its own process (a fresh CUDA context and process group). Its
tokens/s is the median over the steps after `--skip` warm-up steps. Writes
`benchmarks/results/train_gpu.json`. Needs CUDA; about 5 minutes on an H100 for the defaults.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

RESULTS = os.path.join(os.path.dirname(__file__), "results", "train_gpu.json")


def measured_peak(n: int = 8192, reps: int = 10) -> float:
    import torch

    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    torch.cuda.synchronize()
    return 2 * n**3 * reps / (time.perf_counter() - t0)


def rows(n: int, seq: int, seed: int = 0) -> dict[str, list]:
    import numpy as np

    rng = np.random.default_rng(seed)
    return {"input_ids": rng.integers(100, 100_000, size=(n, seq + 1)).tolist(), "loss_mask": [[1] * (seq + 1)] * n}


def run_torch(args) -> dict:
    import torch

    from phi4ray.model import build_model
    from phi4ray.train import objectives
    from phi4ray.train.loop import _param_groups

    torch.manual_seed(0)
    module = objectives.CausalLM(build_model(args.preset, seed=0)).cuda()
    opt = torch.optim.AdamW(_param_groups(module, 0.1), lr=1e-4, betas=(0.9, 0.95), fused=True)
    data = rows(args.micro * 2, args.seq)
    batch = {k: torch.tensor(v[: args.micro], device="cuda") for k, v in data.items()}
    times, tokens = [], args.micro * args.seq * args.accum
    for _ in range(args.steps):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(args.accum):
            with torch.autocast("cuda", dtype=torch.bfloat16):
                out = module(**batch)
            (out["loss"] / args.accum).backward()
        torch.nn.utils.clip_grad_norm_(module.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    tps = [tokens / t for t in times[args.skip :]]
    return {"tokens_per_s": statistics.median(tps), "max_mem_gib": torch.cuda.max_memory_allocated() / 2**30,
            "final_loss": float(out["loss"])}


def run_deepspeed(args, zero: int) -> dict:
    import torch

    from phi4ray.config import TrainConfig
    from phi4ray.train.loop import LoopSpec, train_local

    cfg = TrainConfig(
        num_workers=1, use_gpu=True, micro_batch_size=args.micro, global_batch_size=args.micro * args.accum,
        seq_len=args.seq, lr=1e-4, warmup_steps=0, max_steps=args.steps, zero_stage=zero,
    )
    with tempfile.TemporaryDirectory() as tmp:
        spec = LoopSpec(stage=f"zero{zero}", objective="lm", train=cfg.model_dump(mode="json"), total_steps=args.steps,
                        run_dir=tmp, export_rel="", preset=args.preset, log_every=1, final_checkpoint=False)
        _, history = train_local(spec, rows(args.micro * args.accum * args.steps, args.seq), os.path.join(tmp, "ckpt"))
    tps = [h["tokens_per_s"] for h in history if "tokens_per_s" in h][args.skip :]
    return {"tokens_per_s": statistics.median(tps), "max_mem_gib": torch.cuda.max_memory_allocated() / 2**30,
            "final_loss": history[-1]["loss"]}


def child(args) -> None:
    out = run_torch(args) if args.child == "torch" else run_deepspeed(args, int(args.child[-1]))
    print("RESULT " + json.dumps(out), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="1b")
    ap.add_argument("--seq", type=int, default=4096)
    ap.add_argument("--micro", type=int, default=4)
    ap.add_argument("--accum", type=int, default=4)
    ap.add_argument("--steps", type=int, default=14)
    ap.add_argument("--skip", type=int, default=4, help="warm-up steps left out of the median")
    ap.add_argument("--zero", type=int, nargs="+", default=[2, 3])
    ap.add_argument("--no-torch", action="store_true", help="skip the plain torch baseline")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args)

    import torch

    if not torch.cuda.is_available():
        sys.exit("train_gpu.py needs CUDA")
    from phi4ray.model import count_params, flops_per_token, phi3_config

    config = phi3_config(args.preset)
    fpt = flops_per_token(config, args.seq)
    peak = measured_peak()
    name = torch.cuda.get_device_name()
    sheet = 989e12 if ("H100" in name or "H200" in name) else None
    torch.cuda.empty_cache()

    results: dict[str, dict] = {}
    for run in (([] if args.no_torch else ["torch"]) + [f"zero{z}" for z in args.zero]):
        cmd = [sys.executable, __file__, "--child", run] + [
            f"--{k}={v}" for k, v in (("preset", args.preset), ("seq", args.seq), ("micro", args.micro),
                                      ("accum", args.accum), ("steps", args.steps), ("skip", args.skip))
        ]
        t0 = time.perf_counter()
        p = subprocess.run(cmd, capture_output=True, text=True)
        line = next((ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")), None)
        if p.returncode or line is None:
            print(p.stdout[-3000:], p.stderr[-6000:], sep="\n")
            results[run] = {"error": (p.stderr.strip().splitlines() or ["no output"])[-1]}
            continue
        r = json.loads(line[len("RESULT "):])
        r["wall_s"] = time.perf_counter() - t0
        r["tflops_per_s"] = r["tokens_per_s"] * fpt / 1e12
        r["mfu_measured_peak"] = r["tokens_per_s"] * fpt / peak
        if sheet:
            r["mfu_datasheet_peak"] = r["tokens_per_s"] * fpt / sheet
        results[run] = r
    base = results.get("torch", {}).get("tokens_per_s")
    print(f"\n{name}: measured bf16 matmul peak {peak / 1e12:.0f} TFLOP/s; preset {args.preset} "
          f"({count_params(config) / 1e9:.2f}B params), {args.seq} tokens x micro {args.micro} x accum {args.accum}, "
          f"{fpt / 1e9:.2f} GFLOP/token")
    print(f"{'run':<8} {'tokens/s':>10} {'TFLOP/s':>9} {'MFU(meas)':>10} {'MFU(sheet)':>11} {'x torch':>8} {'mem GiB':>8}")
    for run, r in results.items():
        if "error" in r:
            print(f"{run:<8} error: {r['error']}")
            continue
        if base:
            r["ratio_to_torch"] = r["tokens_per_s"] / base
        print(f"{run:<8} {r['tokens_per_s']:>10.0f} {r['tflops_per_s']:>9.1f} {r['mfu_measured_peak']:>10.3f} "
              f"{r.get('mfu_datasheet_peak', float('nan')):>11.3f} {r.get('ratio_to_torch', float('nan')):>8.3f} "
              f"{r['max_mem_gib']:>8.1f}")
    os.makedirs(os.path.dirname(RESULTS), exist_ok=True)
    with open(RESULTS, "w") as f:
        json.dump({"device": name, "measured_peak_flops": peak, "flops_per_token": fpt, "args": vars(args),
                   "results": results}, f, indent=2)
    print(f"\nwrote {RESULTS}")


if __name__ == "__main__":
    main()
