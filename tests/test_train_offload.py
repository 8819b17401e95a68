"""ZeRO-Offload: optimizer state (ZeRO-2) and also parameters (ZeRO-3, with gradient
checkpointing) in CPU memory, with DeepSpeed's CPU Adam (built on first use), learn a fixed batch
like the in-memory stages do."""

import json
import subprocess
import sys

import pytest

PROGRAM = """
import json, os, sys, tempfile
from phi4ray.config import TrainConfig
from phi4ray.train.loop import LoopSpec, train_local
stage, params = int(sys.argv[1]), sys.argv[2] == "1"
cfg = TrainConfig(num_workers=1, cpus_per_worker=1, micro_batch_size=4, global_batch_size=4, lr=3e-2,
                  warmup_steps=0, max_steps=12, zero_stage=stage, offload_optimizer=True, offload_params=params,
                  gradient_checkpointing=params)
row = [100, 200, 300, 400, 500, 600, 700, 800, 900]
with tempfile.TemporaryDirectory() as t:
    spec = LoopSpec(stage="offload", objective="lm", train=cfg.model_dump(mode="json"), total_steps=12, run_dir=t,
                    export_rel="hf", preset="micro", log_every=4)
    _, history = train_local(spec, {"input_ids": [row] * 8, "loss_mask": [[1] * 9] * 8}, os.path.join(t, "ckpt"))
    print("RESULT " + json.dumps([h["loss"] for h in history if "loss" in h]))
"""


@pytest.mark.slow
@pytest.mark.parametrize("stage,params", [(2, False), (3, True)], ids=["zero2-offload-optimizer", "zero3-offload-all"])
def test_offloaded_zero_learns_a_fixed_batch(stage, params):
    # its own process: train_local sets up a process group that must not outlive the run
    p = subprocess.run([sys.executable, "-c", PROGRAM, str(stage), "1" if params else "0"],
                       capture_output=True, text=True, timeout=900)
    line = next((ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")), None)
    assert p.returncode == 0 and line, p.stderr[-3000:]
    losses = json.loads(line[len("RESULT "):])
    assert losses[0] > 5 and losses[-1] < 2.0, losses  # from ln(100352) = 11.5 towards 0
