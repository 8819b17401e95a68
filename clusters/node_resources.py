"""Print the custom resources of this machine as `ray start --resources` JSON (clusters/local.yaml).

    ray start --address=HEAD:6379 --resources="$(python clusters/node_resources.py)"

A machine of an on-premise cluster plays every role it can (clusters/README.md): `data` with
one unit per CPU, and, with NVIDIA GPUs, `synth`, `train` and `serve` with one unit per GPU. The
stages of a recipe run one after another, so a GPU machine serves whichever of them runs.
`--roles data,train` restricts the machine to those roles.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess

GPU_ROLES = ("synth", "train", "serve")


def count_gpus() -> int:
    """NVIDIA GPUs visible here (CUDA_VISIBLE_DEVICES, else `nvidia-smi -L`); 0 without them."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return len([d for d in visible.split(",") if d.strip() and d.strip() != "-1"])
    if not shutil.which("nvidia-smi"):
        return 0
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return 0
    return sum(1 for line in out.splitlines() if line.startswith("GPU "))


def node_resources(cpus: int, gpus: int, roles: list[str] | None = None) -> dict[str, int]:
    res = {"data": cpus} if cpus else {}
    if gpus:
        res.update({r: gpus for r in GPU_ROLES})
    if roles is not None:
        unknown = set(roles) - {"data", *GPU_ROLES}
        if unknown:
            raise SystemExit(f"node_resources: unknown role(s) {', '.join(sorted(unknown))}; roles: data, {', '.join(GPU_ROLES)}")
        res = {r: n for r, n in res.items() if r in roles}
    return res


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--roles", help="comma-separated subset of data,synth,train,serve (default: all this machine can play)")
    p.add_argument("--cpus", type=int, default=os.cpu_count() or 1, help="CPUs (default: all of this machine's)")
    p.add_argument("--gpus", type=int, default=None, help="GPUs (default: detected)")
    args = p.parse_args(argv)
    roles = [r.strip() for r in args.roles.split(",")] if args.roles else None
    gpus = count_gpus() if args.gpus is None else args.gpus
    print(json.dumps(node_resources(args.cpus, gpus, roles)))


if __name__ == "__main__":
    main()
