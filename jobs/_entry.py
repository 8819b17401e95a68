"""What every `jobs/` entrypoint shares: run one `phi4ray` subcommand as a Ray job.

An entrypoint is `python jobs/<stage>.py ARGS`, with the arguments of `phi4ray <stage> ARGS`; it
calls the same `phi4ray.cli.main`, which joins the cluster in RAY_ADDRESS (the Ray job sets it
to its own cluster), so nothing here knows about stages. What it adds for a job:

- every line of output is flushed as it is written, so `ray job logs -f` follows the stage;
- a first and a last line that say what ran and how it ended, and, in a Ray job, a line with
  the cluster's nodes and resources (custom ones included: the placement the stages will see);
- `ray job stop` (SIGTERM) is a Ctrl-C: the CLI's own clean-up runs (Serve is shut down, a
  stage leaves only committed shards), and the job ends STOPPED;
- the exit code is the CLI's (0 done, 1 the stage failed, 2 a bad recipe or override), so the
  dashboard shows the job SUCCEEDED or FAILED.
"""

from __future__ import annotations

import os
import signal
import sys
import time

_HERE = os.path.dirname(os.path.abspath(__file__))

# `python jobs/tokenize.py` puts jobs/ first on sys.path, where this folder's tokenize.py (and
# eval.py, ...) would shadow modules of the same name: take it off before importing anything.
if sys.path and os.path.abspath(sys.path[0] or os.curdir) == _HERE:
    del sys.path[0]

# Under `ray job submit --working-dir .` Ray puts the uploaded checkout on PYTHONPATH; on a node
# where phi4ray is installed, the installed package is used. A checkout run directly, with
# neither, is found from here.
try:
    import phi4ray  # noqa: F401
except ImportError:
    sys.path.insert(0, os.path.dirname(_HERE))


def _interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def _cluster_line() -> str:
    """`2 node(s): CPU 4, GPU 1, data 2, ...`: what the job's cluster offers, custom resources included."""
    import ray

    from phi4ray.config import RayConfig
    from phi4ray.pipeline import init_ray

    init_ray(RayConfig())  # RAY_ADDRESS: the job's own cluster; the CLI then finds Ray initialised
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    skip = ("memory", "object_store_memory")
    res = {k: v for k, v in sorted(ray.cluster_resources().items()) if k not in skip and not k.startswith(("node:", "accelerator_type:"))}
    return f"{len(nodes)} node(s): " + ", ".join(f"{k} {v:g}" for k, v in res.items())


def run(command: str, argv: list[str] | None = None) -> int:
    """Run `phi4ray COMMAND ARGV` (ARGV: this process's arguments); returns the exit code."""
    for stream in (sys.stdout, sys.stderr):
        stream.reconfigure(line_buffering=True)
    signal.signal(signal.SIGTERM, _interrupt)
    argv = list(sys.argv[1:] if argv is None else argv)
    where = os.environ.get("RAY_ADDRESS") or "a new local Ray (RAY_ADDRESS is not set)"
    print(f"phi4ray job: {command} {' '.join(argv)}".rstrip() + f"  [cluster: {where}]", flush=True)
    t0 = time.time()
    try:
        if os.environ.get("RAY_ADDRESS") and not {"-h", "--help"} & set(argv):
            print(f"phi4ray job: cluster: {_cluster_line()}", flush=True)
        from phi4ray.cli import main

        code = main([command, *argv])
    except SystemExit as e:  # argparse: --help (0) or a usage error (2), already printed
        code = e.code if isinstance(e.code, int) else 2
    except KeyboardInterrupt:
        code = 130
    except Exception as e:  # noqa: BLE001  (outside the CLI's own handling, e.g. an import that fails on this node)
        print(f"phi4ray job: {command} failed: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
        return 1
    if code == 0:
        status = "done"
    elif code == 130:  # Ctrl-C or `ray job stop`
        status = "stopped; submit the same job again to continue"
    else:
        status = f"FAILED with exit code {code} (the reason is printed above)"
    print(f"phi4ray job: {command} {status} after {time.time() - t0:.1f}s", file=sys.stdout if code == 0 else sys.stderr, flush=True)
    return code
