"""Scale-out scenarios on a real multi-node Ray cluster on one machine (`ray.cluster_utils.Cluster`):
a head node and two worker nodes, each its own raylet and object store. tests/test_scale_out.py runs
each scenario in a subprocess of its own (the suite's session Ray must not see this cluster):

    python tests/scale_out_driver.py curate|train|spread|all TMP_DIR

and reads the one line of stdout that starts with RESULT (JSON). Worker nodes provide the custom
resource `worker`; the stages ask for it, so their tasks and Ray Train workers run on worker nodes
only and the head keeps the driver-side work.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
import traceback

os.environ.pop("RAY_ADDRESS", None)
os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

WORKER = {"worker": 1}
OBJECT_STORE = 100 * 1024 * 1024


def _worker_args() -> dict:
    return {"num_cpus": 1, "resources": dict(WORKER), "object_store_memory": OBJECT_STORE}


def _add_worker(cluster, attempts: int = 3):
    """A worker node; retried because Ray gives a starting raylet a fixed 30 s to register, which
    a loaded machine can miss."""
    for i in range(attempts):
        try:
            return cluster.add_node(**_worker_args())
        except Exception:
            if i == attempts - 1:
                raise
            time.sleep(2)


def start_cluster(attempts: int = 3):
    import ray
    from ray.cluster_utils import Cluster

    for i in range(attempts):
        cluster = None
        try:
            cluster = Cluster(
                initialize_head=True,
                head_node_args={"num_cpus": 1, "include_dashboard": False, "object_store_memory": OBJECT_STORE,
                                # a lost node is declared dead after ~3 s instead of ~15 s
                                "_system_config": {"health_check_period_ms": 1000, "health_check_failure_threshold": 3}},
            )
            workers = [_add_worker(cluster) for _ in range(2)]
            cluster.wait_for_nodes()
            ray.init(address=cluster.address, log_to_driver=False, configure_logging=False)
            return cluster, workers
        except Exception:
            if cluster is not None:
                try:
                    cluster.shutdown()
                except Exception:
                    pass
            if i == attempts - 1:
                raise
            time.sleep(2)


def _alive_worker_node_ids() -> list[str]:
    import ray

    return sorted(n["NodeID"] for n in ray.nodes() if n["Alive"] and n["Resources"].get("worker"))


def _wait_until(pred, timeout: float, every: float = 0.1) -> bool:
    end = time.time() + timeout
    while time.time() < end:
        if pred():
            return True
        time.sleep(every)
    return False


# -- spread -----------------------------------------------------------------------------------
def probe_spread(n: int = 6) -> list[str]:
    """The node each of `n` Ray Data map tasks ran on; like the curate stage's tasks they ask for
    one CPU and the `worker` resource, so at most one runs on a worker node at a time."""
    import ray

    def where(row: dict) -> dict:
        time.sleep(1.0)  # long enough that one worker node cannot take every task alone
        return {"i": row["id"], "node": ray.get_runtime_context().get_node_id()}

    ds = ray.data.range(n, override_num_blocks=n).map(where, num_cpus=1, resources=dict(WORKER))
    return [r["node"] for r in ds.iter_rows()]


def scenario_spread(tmp: str, cluster, workers) -> dict:
    nodes = probe_spread()
    return {"task_nodes": nodes, "worker_nodes": _alive_worker_node_ids(),
            "head_node": cluster.head_node.node_id}


# -- curate -----------------------------------------------------------------------------------
def _curate_recipe():
    from phi4ray.config import load_recipe

    return load_recipe("smoke", ["curate.files_per_shard=2"])


def _curate_outputs(run_dir: str) -> dict:
    from phi4ray.run import RunDir

    rd = RunDir(run_dir)
    ids = rd.read_table("curated", columns=["id"]).column("id").to_pylist()
    extracted = rd.read_table("curate/extracted", columns=["id"]).column("id").to_pylist()
    rej = rd.read_table("rejects/curate", columns=["id", "step"]).to_pylist() if rd.exists("rejects/curate") else []
    entry = rd.stage_entry("curate")
    return {
        "ids": sorted(ids),
        "n_ids": len(ids),
        "n_unique_ids": len(set(ids)),
        "n_extracted": len(extracted),
        "n_unique_extracted": len(set(extracted)),
        "reject_ids": sorted(r["id"] for r in rej if r["step"] != "seeds"),
        "status": entry.get("status"),
        "counts": entry.get("counts"),
        "extract_shards": rd.shards("curate/extracted"),
        "curated_shards": rd.shards("curated"),
        "tmp_leftovers": [p for p in _walk(run_dir) if ".tmp" in p or "_tmp" in p],
    }


def _walk(root: str) -> list[str]:
    out = []
    for d, _, files in os.walk(root):
        out += [os.path.relpath(os.path.join(d, f), root) for f in files if f.endswith(".parquet")]
    return out


def _in_thread(fn, *args) -> tuple[threading.Thread, dict]:
    """Run the stage in a thread: `Cluster.add_node` installs signal handlers, so only the main
    thread can add the replacement node."""
    out: dict = {}

    def target():
        try:
            out["value"] = fn(*args)
        except BaseException as e:  # noqa: BLE001 - re-raised by the main thread
            out["error"] = e

    t = threading.Thread(target=target, daemon=True)
    t.start()
    return t, out


def _result(t: threading.Thread, out: dict, timeout: float = 600):
    t.join(timeout)
    if t.is_alive():
        raise TimeoutError("the stage did not finish")
    if "error" in out:
        raise out["error"]
    return out.get("value")


def _busy_workers(node) -> list[str]:
    """Process titles of the node's Ray workers that are running a task or actor (a Ray worker
    sets its title to `ray::<task>`; an idle one is `ray::IDLE`)."""
    import psutil
    from ray._private import ray_constants

    raylet = node.all_processes[ray_constants.PROCESS_TYPE_RAYLET][0].process.pid
    titles = []
    for c in psutil.Process(raylet).children(recursive=True):
        try:
            title = " ".join(c.cmdline())
        except psutil.Error:
            continue
        if title.startswith("ray::") and not title.startswith(("ray::IDLE", "ray::DashboardAgent", "ray::RuntimeEnvAgent")):
            titles.append(title.strip())
    return titles


def _lose_node(cluster, victim, info: dict, busy: list[str] | None = None) -> None:
    info["victim"] = victim.node_id
    info["victim_busy"] = busy if busy is not None else _busy_workers(victim)
    cluster.remove_node(victim, allow_graceful=False)  # SIGKILL: raylet, object store, workers
    info["replacement"] = _add_worker(cluster).node_id


def scenario_curate(tmp: str, cluster, workers) -> dict:
    from phi4ray.data.curate import run_curate
    from phi4ray.run import RunDir

    recipe = _curate_recipe()
    recipe.curate.resources = dict(WORKER)
    t0 = time.time()
    clean_dir = os.path.join(tmp, "clean")
    run_curate(recipe.curate, clean_dir)
    t_clean = time.time() - t0

    killed_dir = os.path.join(tmp, "killed")
    rd = RunDir(killed_dir)
    info: dict = {}
    t1 = time.time()
    t, out = _in_thread(run_curate, recipe.curate, killed_dir)

    def committed() -> list[str]:
        try:
            return rd.shards("curate/extracted") if rd.exists("curate/extracted") else []
        except Exception:  # the folder may be created under us
            return []

    found: list = []

    def busy_node() -> bool:
        # a worker node running a curate task now, so that work in flight is lost with it
        for w in workers:
            busy = _busy_workers(w)
            if any("Map" in b for b in busy):
                found.append((w, busy))
                return True
        return False

    if _wait_until(lambda: busy_node() or not t.is_alive(), 600, 0.02) and t.is_alive():
        info["committed_before_kill"] = committed()
        _lose_node(cluster, found[-1][0], info, busy=found[-1][1])
    _result(t, out)
    t_killed = time.time() - t1
    return {
        "clean": _curate_outputs(clean_dir),
        "killed": _curate_outputs(killed_dir),
        "kill": info,
        "seconds_clean": round(t_clean, 1),
        "seconds_killed": round(t_killed, 1),
        "alive_worker_nodes": _alive_worker_node_ids(),
    }


# -- train ------------------------------------------------------------------------------------
ROWS, WIDTH = 80, 17


def _train_run_dir(path: str):
    import numpy as np
    import pyarrow as pa

    from phi4ray.run import RunDir

    rd = RunDir(path)
    rng = np.random.default_rng(0)
    ids = rng.integers(100, 400, size=(ROWS, WIDTH)).tolist()
    rd.commit_table("tokens/pretrain", "part-00000", pa.table({
        "input_ids": pa.array(ids, pa.list_(pa.int32())),
        "loss_mask": pa.array([[1] * WIDTH] * ROWS, pa.list_(pa.int8())),
    }))
    return rd


def _train_recipe():
    from phi4ray.config import Recipe, TrainConfig

    # as in tests/test_train_failures.py: 80 rows, micro 2 x 2 workers, global 8: 10 steps an
    # epoch, 20 in all, a checkpoint every 4 steps; one worker per worker node (`worker`: 1)
    return Recipe(model={"preset": "micro"}, pretrain=TrainConfig(
        num_workers=2, cpus_per_worker=0.5, micro_batch_size=2, global_batch_size=8, lr=1e-2,
        warmup_steps=0, epochs=2, checkpoint_every=4, max_failures=2, resources=dict(WORKER),
    ))


def _train_worker_nodes() -> list[str]:
    """Node ids of the live Ray Train worker actors, from this cluster's GCS actor table (not the
    state API: it wants the dashboard and resolves its own address, which may be another Ray)."""
    import ray

    out = []
    for a in ray._private.state.actors().values():
        if a.get("State") == "ALIVE" and "RayTrainWorker" in (a.get("ActorClassName") or ""):
            out.append(a["Address"]["NodeID"])
    return sorted(out)


def scenario_train(tmp: str, cluster, workers) -> dict:
    from phi4ray.train.trainer import run_train

    rd = _train_run_dir(os.path.join(tmp, "train"))
    ckpt_root = rd.path("checkpoints/pretrain/ray")
    info: dict = {}
    t0 = time.time()
    t, out = _in_thread(run_train, "pretrain", _train_recipe(), rd)

    def checkpointed() -> bool:
        # Ray Train writes a checkpoint's folder before it registers it; once a second folder
        # exists, the first is registered and a restart must resume from it (or a later one).
        return os.path.isdir(ckpt_root) and sum(d.startswith("checkpoint_") for d in os.listdir(ckpt_root)) >= 2

    if _wait_until(lambda: checkpointed() or not t.is_alive(), 600, 0.1) and t.is_alive():
        hosts = _train_worker_nodes()
        info["train_worker_nodes_before"] = hosts
        victim = next((w for w in workers if w.node_id in hosts), workers[1])
        info["victim_hosted_a_train_worker"] = victim.node_id in hosts
        _lose_node(cluster, victim, info)
        # the rebuilt worker group, recorded once it is up again
        if _wait_until(lambda: len(_train_worker_nodes()) == 2 and victim.node_id not in _train_worker_nodes()
                       or not t.is_alive(), 300, 0.5):
            info["train_worker_nodes_after"] = _train_worker_nodes()
    entry = _result(t, out)
    return {"entry": entry, "kill": info, "seconds": round(time.time() - t0, 1),
            "alive_worker_nodes": _alive_worker_node_ids()}


SCENARIOS = {"spread": scenario_spread, "curate": scenario_curate, "train": scenario_train}


def scenario_all(tmp: str, cluster, workers) -> dict:
    """Every scenario, one after the other, on one cluster (the suite starts it once). Each loss
    is of a live worker node at that moment; its replacement is a worker node for the next."""
    out = {}
    for name, fn in SCENARIOS.items():
        t0 = time.time()
        alive_ids = set(_alive_worker_node_ids())
        live = [w for w in cluster.worker_nodes if w.node_id in alive_ids]
        out[name] = fn(os.path.join(tmp, name), cluster, live)
        out[name]["initial_worker_nodes"] = [w.node_id for w in live]
        out[name]["seconds_scenario"] = round(time.time() - t0, 1)
    return out


def main() -> int:
    scenario, tmp = sys.argv[1], sys.argv[2]
    import ray

    t0 = time.time()
    cluster = workers = None
    result: dict = {"scenario": scenario}
    try:
        cluster, workers = start_cluster()
        result["seconds_cluster_start"] = round(time.time() - t0, 1)
        result["initial_worker_nodes"] = [w.node_id for w in workers]
        result.update({**SCENARIOS, "all": scenario_all}[scenario](tmp, cluster, workers))
        result["ok"] = True
    except BaseException as e:  # noqa: BLE001 - reported to the test as JSON
        result.update(ok=False, error=f"{type(e).__name__}: {e}", traceback=traceback.format_exc())
    finally:
        try:
            ray.shutdown()
        finally:
            if cluster is not None:
                cluster.shutdown()
    result["seconds_total"] = round(time.time() - t0, 1)
    print("RESULT " + json.dumps(result, default=str), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
