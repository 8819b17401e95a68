"""Scale out for real, on one machine: a Ray cluster of a head and two worker nodes
(`ray.cluster_utils.Cluster`: separate raylets and object stores), worker nodes lost mid-run with
all their processes (SIGKILL), and the real stages on it.

- curation loses a worker node while it runs a curate task and ends with exactly the
  documents of an undisturbed run: the same `curated/` ids, none twice, read == kept + rejected;
- training loses the node of one Ray Train worker after a checkpoint, gets a replacement node,
  and ends the run from that checkpoint with every step;
- work spreads: tasks that ask for the workers' resource run on both worker nodes.

The scenarios run one after the other on one cluster, in a process of their own
(tests/scale_out_driver.py `all`), apart from the suite's session Ray; it reports one JSON line.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DRIVER = Path(__file__).resolve().parent / "scale_out_driver.py"


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_ADDRESS")}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
    env.setdefault("RAY_TRAIN_V2_ENABLED", "1")
    return env


def run_scenario(name: str, tmp: Path, timeout: float = 900) -> dict:
    proc = subprocess.run(
        [sys.executable, str(DRIVER), name, str(tmp)], env=_env(), cwd=str(ROOT),
        capture_output=True, text=True, timeout=timeout,
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert lines, f"no result from the driver (rc {proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    result = json.loads(lines[-1][len("RESULT "):])
    assert result["ok"], f"{result.get('error')}\n{result.get('traceback')}\n{proc.stderr[-5000:]}"
    return result


@pytest.fixture(scope="module")
def scale_out(tmp_path_factory):
    return run_scenario("all", tmp_path_factory.mktemp("scale_out"))


@pytest.mark.slow
def test_work_spreads_over_the_worker_nodes(scale_out):
    r = scale_out["spread"]
    workers = set(r["worker_nodes"])
    assert len(workers) == 2 and r["head_node"] not in workers
    ran_on = set(r["task_nodes"])
    assert len(r["task_nodes"]) == 6
    assert ran_on == workers  # both worker nodes ran tasks, and nothing ran on the head


@pytest.mark.slow
def test_curation_survives_the_loss_of_a_worker_node_with_nothing_lost_or_duplicated(scale_out):
    r = scale_out["curate"]
    clean, killed, kill = r["clean"], r["killed"], r["kill"]
    # the node really went, mid-run: while it ran a curate task, before the last extract shard
    assert kill.get("victim") in r["initial_worker_nodes"], kill
    assert len(kill["committed_before_kill"]) < len(clean["extract_shards"]), kill
    assert any("Map" in b for b in kill["victim_busy"]), kill
    assert kill["victim"] not in r["alive_worker_nodes"] and kill["replacement"] in r["alive_worker_nodes"]

    for run in (clean, killed):
        assert run["status"] == "complete"
        assert run["n_ids"] == run["n_unique_ids"] > 0  # no document twice in curated/
        assert run["n_extracted"] == run["n_unique_extracted"]
        c = run["counts"]
        assert c["read"] == c["kept"] + c["rejected"]
        assert c["kept"] == run["n_ids"]
        assert run["tmp_leftovers"] == []
        assert not set(run["ids"]) & set(run["reject_ids"])  # kept or rejected, never both
    # the same shards and the same documents as the undisturbed run
    assert killed["extract_shards"] == clean["extract_shards"] and len(clean["extract_shards"]) >= 4
    assert killed["curated_shards"] == clean["curated_shards"]
    assert killed["ids"] == clean["ids"]
    assert killed["reject_ids"] == clean["reject_ids"]
    for k in ("read", "kept", "rejected", "rejects", "shards", "langs", "seeds"):
        assert killed["counts"][k] == clean["counts"][k], k


@pytest.mark.slow
def test_training_survives_the_loss_of_a_worker_node_by_resuming_from_its_checkpoint(scale_out):
    r = scale_out["train"]
    entry, kill = r["entry"], r["kill"]
    assert kill.get("victim_hosted_a_train_worker"), kill  # the lost node ran one of the two Ray Train workers
    assert len(kill["train_worker_nodes_before"]) == 2
    assert any("RayTrainWorker" in b for b in kill["victim_busy"]), kill
    assert kill["victim"] not in r["alive_worker_nodes"] and kill["replacement"] in r["alive_worker_nodes"]
    if "train_worker_nodes_after" in kill:  # the rebuilt group, seen while it ran
        assert kill["victim"] not in kill["train_worker_nodes_after"]
    assert entry["status"] == "complete"
    assert entry["counts"]["steps"] == 20
    assert entry["metrics"]["resumed_from_step"] in (4, 8, 12, 16)  # from a checkpoint, not from scratch
    assert entry["metrics"]["loss"] < 7.0  # it trained (from ln(100352) = 11.5)
