"""The per-worker training loop shared by every stage: DeepSpeed ZeRO, schedule, checkpoints, export.

It runs under Ray Train (`ray_worker_loop`, one call per worker) or without Ray in one process
(`train_local`), which is what GPU benchmarks call. What differs between the two is only the
`Context`: where batches come from, where metrics and checkpoints go.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import math
import os
import socket
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import numpy as np
import torch

from phi4ray.config import DPOConfig, TrainConfig
from phi4ray.tokens.stream import DataPosition, rank_intervals, take
from phi4ray.train import objectives
from phi4ray.train.schedule import lr_at
from phi4ray.train.zero import ds_config

log = logging.getLogger(__name__)
DS_TAG = "ds"
STATE_FILE = "phi4ray_state.json"

# Peak dense bf16 FLOP/s of accelerators we know, for MFU. Unknown devices report no MFU.
PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12}


@dataclass
class LoopSpec:
    """Everything a worker needs, as plain data (it crosses process boundaries)."""

    stage: str
    objective: str  # "lm" or "dpo"
    train: dict
    total_steps: int
    run_dir: str
    export_rel: str
    preset: str = "tiny"
    model_overrides: dict = field(default_factory=dict)
    init_path: str | None = None
    beta: float = 0.1
    log_every: int = 10
    table: str = ""
    """The run-dir table of rows this stage trains on (`tokens/pretrain`, `pts/pairs`, ...)."""
    final_checkpoint: bool = True
    """Benchmarks turn off the last checkpoint; with `export_rel` empty they also skip the export."""

    @property
    def cfg(self) -> TrainConfig:
        return (DPOConfig if self.objective == "dpo" else TrainConfig).model_validate(self.train)


# -- batches ----------------------------------------------------------------------------------
def _stack(col) -> np.ndarray:
    return np.stack([np.asarray(x, dtype=np.int64) for x in col])


def lm_batch(b: dict[str, np.ndarray], device, doc_masking: bool = False) -> dict:
    out = {
        "input_ids": torch.as_tensor(_stack(b["input_ids"]), device=device),
        "loss_mask": torch.as_tensor(_stack(b["loss_mask"]), device=device),
    }
    if doc_masking:
        if "segment_ids" not in b:
            raise ValueError("doc_masking needs a `segment_ids` column in the training rows")
        out["position_ids"] = objectives.document_positions(torch.as_tensor(_stack(b["segment_ids"]), device=device))
    return out


def dpo_batch(b: dict[str, np.ndarray], device, pad_id: int) -> dict:
    """Rows [chosen_1..chosen_B, rejected_1..rejected_B], each prompt + completion, right-padded."""
    rows, masks = [], []
    for key in ("chosen_ids", "rejected_ids"):
        for prompt, comp in zip(b["prompt_ids"], b[key]):
            prompt, comp = list(prompt), list(comp)
            rows.append(prompt + comp)
            masks.append([0] * len(prompt) + [1] * len(comp))
    width = max(map(len, rows))
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    cmask = torch.zeros((len(rows), width), dtype=torch.long)
    amask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (r, m) in enumerate(zip(rows, masks)):
        ids[i, : len(r)] = torch.tensor(r)
        cmask[i, : len(m)] = torch.tensor(m)
        amask[i, : len(r)] = 1
    out = {"input_ids": ids.to(device), "completion_mask": cmask.to(device), "attention_mask": amask.to(device)}
    if "ref_chosen_logp" in b:
        out["ref_logps"] = torch.as_tensor(
            np.concatenate([b["ref_chosen_logp"], b["ref_rejected_logp"]]), dtype=torch.float32, device=device
        )
    return out


# -- contexts ---------------------------------------------------------------------------------
class Context:
    world_size: int = 1
    rank: int = 0
    total_rows: int = 0

    def batches(self, micro_batch_size: int, intervals: list[tuple[int, int]]) -> Iterable[dict]:
        """Micro-batches of the rows at these positions of the table's epoch order (tokens.stream)."""
        raise NotImplementedError

    def report(self, metrics: dict, ckpt_dir: str | None) -> None:
        raise NotImplementedError

    def latest_checkpoint(self) -> Any:
        """A context manager yielding a local checkpoint folder, or None."""
        raise NotImplementedError


class RayContext(Context):
    """Each worker streams its own rows with Ray Data (see tokens/stream.py for why not
    `get_dataset_shard`: the position must survive restarts and changes of world size)."""

    def __init__(self, run_dir: str, table: str):
        import ray.train

        from phi4ray.tokens.stream import TableRows

        ctx = ray.train.get_context()
        self.world_size, self.rank = ctx.get_world_size(), ctx.get_world_rank()
        self._rows = TableRows.of(run_dir, table)
        self.total_rows = self._rows.total

    def batches(self, micro_batch_size, intervals):
        from phi4ray.tokens.stream import rank_dataset

        ds = rank_dataset(self._rows, intervals)
        return ds.iter_batches(batch_size=micro_batch_size, batch_format="numpy", drop_last=True)

    def report(self, metrics, ckpt_dir):
        import ray.train

        ckpt = ray.train.Checkpoint.from_directory(ckpt_dir) if ckpt_dir else None
        ray.train.report(metrics, checkpoint=ckpt)

    def latest_checkpoint(self):
        import ray.train

        ckpt = ray.train.get_checkpoint()
        return ckpt.as_directory() if ckpt else None


class LocalContext(Context):
    """One process, no Ray: batches from an in-memory table, checkpoints in a local folder."""

    def __init__(self, rows: dict[str, list], ckpt_root: str, on_report: Callable[[dict], None] | None = None):
        self.rows, self.ckpt_root, self.on_report = rows, ckpt_root, on_report
        self.history: list[dict] = []
        self.total_rows = len(next(iter(rows.values())))

    def batches(self, micro_batch_size, intervals):
        from phi4ray.tokens.stream import iter_local

        return iter_local(self.rows, intervals, micro_batch_size)

    def report(self, metrics, ckpt_dir):
        self.history.append(metrics)
        if ckpt_dir:
            import shutil

            dest = os.path.join(self.ckpt_root, f"step_{metrics['step']:08d}")
            shutil.copytree(ckpt_dir, dest, dirs_exist_ok=True)
        if self.on_report:
            self.on_report(metrics)

    def latest_checkpoint(self):
        import contextlib

        if not os.path.isdir(self.ckpt_root):
            return None
        steps = sorted(d for d in os.listdir(self.ckpt_root) if d.startswith("step_"))
        return contextlib.nullcontext(os.path.join(self.ckpt_root, steps[-1])) if steps else None


# -- dashboard --------------------------------------------------------------------------------
_GAUGES: dict[str, Any] = {}
DASHBOARD_METRICS = ("loss", "lr", "grad_norm", "tokens_per_s", "tflops_per_s", "mfu", "rewards/margins", "rewards/accuracy")


def publish(stage: str, metrics: dict) -> None:
    """Set `phi4ray_train_<name>` gauges (tagged by stage) on the Ray dashboard. No-op outside Ray."""
    try:
        import ray
        from ray.util.metrics import Gauge

        if not ray.is_initialized():
            return
        for name in DASHBOARD_METRICS:
            if name in metrics:
                key = "phi4ray_train_" + name.replace("/", "_")
                g = _GAUGES.get(key) or _GAUGES.setdefault(key, Gauge(key, description=f"{name} of the training loop", tag_keys=("stage",)))
                g.set(float(metrics[name]), tags={"stage": stage})
    except Exception as e:  # metrics must never break training
        log.debug("metrics unavailable: %s", e)


# -- model set-up -----------------------------------------------------------------------------
def _load_policy(spec: LoopSpec, cfg: TrainConfig):
    from phi4ray.model import build_model, load_model, set_rope_theta

    if spec.init_path:
        path = spec.init_path
        if "://" in path:
            from phi4ray.run import RunDir

            path = RunDir(path).local_dir("")
        model = load_model(path)
        model.train()
    else:
        model = build_model(spec.preset, seed=cfg.seed, **spec.model_overrides)
    if cfg.rope_theta:
        set_rope_theta(model.config, cfg.rope_theta)
        model.model.rotary_emb = type(model.model.rotary_emb)(config=model.config)
    if cfg.seq_len and cfg.seq_len > model.config.max_position_embeddings:
        model.config.max_position_embeddings = cfg.seq_len
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model


def _param_groups(module: torch.nn.Module, weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    for p in module.parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _optimizer(module: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW; with the optimizer state offloaded to CPU, DeepSpeed's vectorised CPU Adam (built
    on first use, which takes a minute or two), as DeepSpeed requires for ZeRO-Offload."""
    groups = _param_groups(module, cfg.weight_decay)
    if cfg.offload_optimizer:
        from deepspeed.ops.adam import DeepSpeedCPUAdam

        return DeepSpeedCPUAdam(groups, lr=cfg.lr, betas=tuple(cfg.betas), adamw_mode=True)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas))


def _peak_flops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_FLOPS.items() if k in name), None)


# -- the loop ---------------------------------------------------------------------------------
def run_loop(spec: LoopSpec, ctx: Context) -> dict:
    import deepspeed

    from phi4ray.model import flops_per_token
    from phi4ray.tokenizer import EOT_ID

    cfg = spec.cfg
    use_cuda = cfg.use_gpu and torch.cuda.is_available()
    device = torch.device("cuda", torch.cuda.current_device()) if use_cuda else torch.device("cpu")
    torch.manual_seed(cfg.seed + ctx.rank)

    policy = _load_policy(spec, cfg)
    if spec.objective == "dpo":
        # Without precomputed log-probs, a frozen copy of the starting policy scores each batch.
        reference = None if cfg.precompute_ref_logps else copy.deepcopy(policy).to(device)
        module = objectives.DPO(policy, reference, spec.beta)
    else:
        module = objectives.CausalLM(policy)
    optimizer = _optimizer(module, cfg)
    sched = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_at(s, 1.0, spec.total_steps, cfg.warmup_steps, cfg.min_lr_ratio)
    )
    step, pos = 0, DataPosition()
    resumed_from = 0
    with contextlib.ExitStack() as stack:
        resume = ctx.latest_checkpoint()
        state, load_dir = None, None
        if resume is not None:
            load_dir = stack.enter_context(resume)
            with open(os.path.join(load_dir, STATE_FILE)) as f:
                state = json.load(f)
        ds = ds_config(cfg, ctx.world_size, bf16=use_cuda)
        if state is not None and _saved_world(state) != ctx.world_size:
            # ZeRO partitions optimizer state by world size; a universal checkpoint holds it per
            # parameter, so any world size can load it.
            load_dir = _universal_checkpoint(load_dir, spec, ctx, state)
            ds["checkpoint"] = {"load_universal": True}
        engine, _, _, _ = deepspeed.initialize(model=module, optimizer=optimizer, lr_scheduler=sched, config=ds)
        if state is not None:
            engine.load_checkpoint(load_dir, tag=DS_TAG)
            step, pos = state["step"], DataPosition.from_dict(state["data"])
            resumed_from = step
            if ctx.rank == 0:
                log.warning(
                    "%s: resumed at step %d (epoch %d, %d micro-batches into the epoch's plan for %d workers) on %d workers",
                    spec.stage, step, pos.epoch, pos.consumed, pos.world, ctx.world_size,
                )

    fpt = flops_per_token(policy.config, cfg.seq_len or 1024)
    peak = _peak_flops(device)
    accum = engine.gradient_accumulation_steps()
    window: dict[str, float] = {}
    t_window, tok_window, tokens_seen, t_start = time.time(), 0, 0, time.time()
    last: dict = {}

    def checkpoint(metrics: dict) -> None:
        with tempfile.TemporaryDirectory() as d:
            engine.save_checkpoint(d, tag=DS_TAG)
            if ctx.rank == 0:
                with open(os.path.join(d, STATE_FILE), "w") as f:
                    json.dump({"step": step, "epoch": pos.epoch, "data": pos.to_dict(), "world_size": ctx.world_size,
                               "zero_stage": cfg.zero_stage}, f)
            ctx.report(metrics, d)

    micro = cfg.micro_batch_size
    while step < spec.total_steps:
        pos = pos.replan(ctx.total_rows, micro, ctx.world_size)
        mine = rank_intervals(pos.covered(ctx.total_rows), ctx.world_size, micro, ctx.rank)
        seen = 0
        for raw in ctx.batches(micro, take(mine, pos.consumed * micro, None)):
            seen += 1
            batch = lm_batch(raw, device, cfg.doc_masking) if spec.objective == "lm" else dpo_batch(raw, device, EOT_ID)
            out = engine(**batch)
            engine.backward(out["loss"])
            boundary = engine.is_gradient_accumulation_boundary()
            engine.step()
            pos.consumed += 1
            tok_window += int(out["tokens"])
            tokens_seen += int(out["tokens"]) * ctx.world_size
            for k, v in out.items():
                if k != "tokens":
                    window[k] = window.get(k, 0.0) + float(v.detach() if torch.is_tensor(v) else v) / accum
            if not boundary:
                continue
            step += 1
            grad_norm = engine.get_global_grad_norm()
            if grad_norm is not None:
                window["grad_norm"] = window.get("grad_norm", 0.0) + float(grad_norm)
            logged = step % spec.log_every == 0 or step == spec.total_steps
            if logged:
                dt = max(time.time() - t_window, 1e-9)
                tokens_per_s = tok_window * ctx.world_size / dt
                n = (step - 1) % spec.log_every + 1
                last = {k: v / n for k, v in window.items()}
                last.update(step=step, epoch=pos.epoch, lr=sched.get_last_lr()[0], tokens_per_s=tokens_per_s)
                last.update(tokens=tokens_seen, seconds=time.time() - t_start, resumed_from_step=resumed_from)
                last["tflops_per_s"] = tokens_per_s * fpt / 1e12
                if peak:
                    last["mfu"] = tokens_per_s * fpt / (peak * ctx.world_size)
                if ctx.rank == 0:
                    publish(spec.stage, last)
                    log.warning(
                        "%s step %d/%d loss %.4f lr %.2e grad_norm %.3g %.0f tok/s %.2f TFLOP/s%s",
                        spec.stage, step, spec.total_steps, last["loss"], last["lr"], last.get("grad_norm", float("nan")),
                        tokens_per_s, last["tflops_per_s"], f" MFU {last['mfu']:.1%}" if "mfu" in last else "",
                    )
                window, t_window, tok_window = {}, time.time(), 0
            if (step == spec.total_steps and spec.final_checkpoint) or (cfg.checkpoint_every and step % cfg.checkpoint_every == 0):
                checkpoint(last if logged else {"step": step, "epoch": pos.epoch})
            elif logged:
                ctx.report(last, None)
            if step >= spec.total_steps:
                break
        if seen == 0:
            raise RuntimeError(
                f"{spec.stage}: worker {ctx.rank} of {ctx.world_size} got no micro-batch of {micro} rows "
                f"from {ctx.total_rows} rows; lower micro_batch_size or num_workers, or add data"
            )
        if step < spec.total_steps:
            pos = pos.next_epoch()

    if spec.export_rel:
        _export(policy, cfg, spec, ctx.rank)
    return last


def _saved_world(state: dict) -> int:
    return int(state.get("world_size") or state["data"]["world"])


def _universal_checkpoint(src: str, spec: LoopSpec, ctx: Context, state: dict) -> str:
    """The checkpoint in `src`, converted once by rank 0 into DeepSpeed's universal format and
    stored in the run directory (`checkpoints/<stage>/universal/step_N/ds`), where every rank
    reads it. Returns the local folder that holds `ds`."""
    import argparse
    import io

    import torch.distributed as dist
    from deepspeed.checkpoint.ds_to_universal import main as ds_to_universal

    from phi4ray.run import RunDir

    rd = RunDir(spec.run_dir)
    rel = f"checkpoints/{spec.stage}/universal/step_{state['step']:08d}"
    if ctx.rank == 0 and not rd.exists(rel, "DONE"):
        log.warning(
            "%s: the step-%d checkpoint was written by %d workers and this run has %d: converting it to a "
            "universal checkpoint in %s", spec.stage, state["step"], _saved_world(state), ctx.world_size, rd.uri_of(rel),
        )
        with tempfile.TemporaryDirectory() as tmp:
            out = os.path.join(tmp, DS_TAG)
            args = argparse.Namespace(
                input_folder=os.path.join(src, DS_TAG), output_folder=out, num_extract_workers=1, num_merge_workers=1,
                keep_temp_folder=False, strict=True, inject_missing_state=True,
            )
            with contextlib.redirect_stdout(io.StringIO()):  # it prints a line per step and a progress bar
                ds_to_universal(args)
            with open(os.path.join(tmp, "DONE"), "w") as f:
                f.write(str(state["step"]))
            rd.upload_dir(tmp, rel)
    if dist.is_initialized():
        dist.barrier()
    return rd.local_dir(rel)


def _export(policy, cfg: TrainConfig, spec: LoopSpec, rank: int) -> None:
    """Consolidated HF folder (weights + tokenizer) that transformers and vLLM load directly."""
    import contextlib

    import deepspeed

    from phi4ray.model import save_checkpoint
    from phi4ray.run import RunDir

    gather = (
        deepspeed.zero.GatheredParameters(list(policy.parameters()), modifier_rank=None)
        if cfg.zero_stage == 3
        else contextlib.nullcontext()
    )
    with gather:
        if rank == 0:
            with tempfile.TemporaryDirectory() as d:
                out = os.path.join(d, "hf")
                save_checkpoint(policy, out, extra={"stage": spec.stage})
                RunDir(spec.run_dir).upload_dir(out, spec.export_rel)
    import torch.distributed as dist

    if dist.is_initialized():
        dist.barrier()


def ray_worker_loop(spec_dict: dict) -> None:
    """Entry point that Ray Train runs on each worker."""
    torch.set_num_threads(max(1, int(spec_dict["train"].get("cpus_per_worker", 1))))
    spec = LoopSpec(**spec_dict)
    run_loop(spec, RayContext(spec.run_dir, spec.table))


def train_local(
    spec: LoopSpec, rows: dict[str, list], ckpt_root: str, on_report=None, context: LocalContext | None = None
) -> tuple[dict, list[dict]]:
    """Run the loop in this process, without Ray (one worker). Returns (last metrics, history).
    A run with checkpoints in `ckpt_root` resumes from the latest, data position included."""
    import torch.distributed as dist

    if not dist.is_initialized():
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
        backend = "nccl" if spec.cfg.use_gpu and torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend, rank=0, world_size=1)
    ctx = context or LocalContext(rows, ckpt_root, on_report)
    last = run_loop(spec, ctx)
    return last, ctx.history


def steps_for(rows: int, cfg: TrainConfig, world_size: int) -> int:
    """Optimizer steps for `cfg.epochs` over `rows` rows (or `cfg.max_steps` when set)."""
    if cfg.max_steps:
        return cfg.max_steps
    per_epoch = (rows // (cfg.micro_batch_size * world_size)) * cfg.micro_batch_size * world_size
    steps = math.floor(per_epoch * cfg.epochs / cfg.global_batch_size)
    if steps < 1:
        raise ValueError(
            f"{rows} rows make no full optimizer step of global_batch_size {cfg.global_batch_size}; "
            "lower the batch size or add data"
        )
    return steps
