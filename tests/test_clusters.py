"""The cluster configs in clusters/: valid for the tools that read them, and able to place every
stage of every shipped recipe.

- Ray autoscaler YAMLs: Ray's own JSON schema (ray/autoscaler/ray-schema.json) and Ray's own
  `prepare_config` + `validate_config`, the checks `ray up` runs before launching anything.
- KubeRay manifests: KubeRay's CRD schema for ray.io/v1 (v1.7.0, trimmed, in
  tests/fixtures/kuberay/), with unknown fields rejected as `kubectl apply` with strict field
  validation rejects them.
- Every custom resource a recipe asks for (clusters/README.md) is provided by a worker type of
  every cluster config, in units enough for one task.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml
from pydantic import BaseModel

from phi4ray.config import load_recipe, recipe_names

ROOT = Path(__file__).resolve().parents[1]
CLUSTERS = ROOT / "clusters"
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "kuberay"
AUTOSCALER = {"aws": CLUSTERS / "aws.yaml", "gcp": CLUSTERS / "gcp.yaml", "local": CLUSTERS / "local.yaml"}
ROLES = {"data", "synth", "train", "serve"}

# CPUs and NVIDIA GPUs of the AWS instance types used (the AWS provider detects them from the
# EC2 API at `ray up`; these are AWS's published numbers).
AWS_INSTANCES = {
    "m7i.8xlarge": (32, 0),
    "m7i.16xlarge": (64, 0),
    "g6e.12xlarge": (48, 4),
    "p5.48xlarge": (192, 8),
}


def _yaml(path: Path):
    return yaml.safe_load(path.read_text())


def _ray_schema() -> dict:
    import ray.autoscaler

    return json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())


# -- Ray autoscaler YAMLs -------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(AUTOSCALER))
def test_autoscaler_config_is_valid_for_ray(name):
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = _yaml(AUTOSCALER[name])
    jsonschema.validate(config, _ray_schema())  # the file as written
    validate_config(prepare_config(copy.deepcopy(config)))  # as `ray up` sees it, defaults merged


def test_rays_schema_rejects_what_it_should():
    """The validation above is not vacuous: Ray's schema rejects a misspelt node-type field and
    a fractional node resource, which Ray would reject at `ray up`."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = _yaml(AUTOSCALER["aws"])
    bad = copy.deepcopy(config)
    bad["available_node_types"]["cpu_data"]["max_worker"] = 3
    with pytest.raises(jsonschema.ValidationError, match="max_worker"):
        jsonschema.validate(bad, _ray_schema())
    bad = copy.deepcopy(config)
    bad["available_node_types"]["gpu_train"]["resources"]["train"] = 0.5
    with pytest.raises(jsonschema.ValidationError):
        validate_config(prepare_config(bad))
    bad = copy.deepcopy(config)
    bad["head_node_type"] = "nope"
    with pytest.raises(ValueError, match="head_node_type"):
        validate_config(prepare_config(bad))


@pytest.mark.parametrize("name", ["aws", "gcp"])
def test_cloud_node_types(name):
    """A head that takes no work, a CPU type providing `data` per CPU, and a GPU type per GPU
    role providing its resource per GPU; everything scales from zero within the cluster's cap."""
    config = _yaml(AUTOSCALER[name])
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    assert head["resources"].get("CPU") == 0
    assert not ROLES & set(head["resources"])
    by_role = {}
    for tname, t in types.items():
        if tname == config["head_node_type"]:
            continue
        roles = ROLES & set(t["resources"])
        assert len(roles) == 1, f"{tname}: one role per worker type, got {roles}"
        (role,) = roles
        by_role[role] = tname
        assert 0 == t["min_workers"] <= t["max_workers"] <= config["max_workers"], tname
        if name == "aws":
            cpus, gpus = AWS_INSTANCES[t["node_config"]["InstanceType"]]
        else:  # GCP has no detection: the node type states CPUs and GPUs itself
            cpus, gpus = t["resources"]["CPU"], t["resources"].get("GPU", 0)
        units = t["resources"][role]
        assert units == (cpus if role == "data" else gpus), f"{tname}: one unit of {role} per {'CPU' if role == 'data' else 'GPU'}"
        assert (gpus > 0) == (role != "data"), tname
    assert set(by_role) == ROLES


@pytest.mark.parametrize("name", ["aws", "gcp"])
def test_cloud_setup_installs_phi4ray(name):
    """The checkout goes to every node, and each node installs it: CPU torch on CPU nodes and the
    head, the `gpu` extra on GPU nodes (a node type's own worker_setup_commands replace the global)."""
    from ray.autoscaler._private.util import prepare_config

    config = prepare_config(_yaml(AUTOSCALER[name]))
    assert config["file_mounts"] == {"~/phi4ray": "."}
    assert {"runs", "benchmarks/results", "**/.git"} <= set(config["rsync_exclude"])
    head = " ; ".join(config["head_setup_commands"])
    assert "download.pytorch.org/whl/cpu" in head and "pip install -q -e ~/phi4ray" in head and "[gpu]" not in head
    for tname, t in config["available_node_types"].items():
        if tname == config["head_node_type"]:
            continue
        cmds = " ; ".join(t.get("worker_setup_commands", config["worker_setup_commands"]))
        if "data" in t["resources"]:
            assert "whl/cpu" in cmds and "[gpu]" not in cmds, tname
        else:
            assert 'phi4ray[gpu]"' in cmds and "whl/cpu" not in cmds, tname


# -- local clusters -------------------------------------------------------------------------
def _node_resources_module():
    spec = importlib.util.spec_from_file_location("node_resources", CLUSTERS / "node_resources.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_node_resources():
    nr = _node_resources_module()
    assert nr.node_resources(16, 0) == {"data": 16}
    assert nr.node_resources(96, 8) == {"data": 96, "synth": 8, "train": 8, "serve": 8}
    assert nr.node_resources(96, 8, ["train"]) == {"train": 8}
    with pytest.raises(SystemExit, match="unknown role"):
        nr.node_resources(4, 0, ["trian"])
    out = subprocess.run([sys.executable, str(CLUSTERS / "node_resources.py"), "--cpus", "4", "--gpus", "2", "--roles", "data,serve"],
                         capture_output=True, text=True, check=True).stdout
    assert json.loads(out) == {"data": 4, "serve": 2}


def test_local_yaml_starts_ray_with_node_resources():
    config = _yaml(AUTOSCALER["local"])
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        start = [c for c in config[key] if "ray start" in c]
        assert len(start) == 1 and '--resources="$(python ~/phi4ray/clusters/node_resources.py)"' in start[0], key
    assert config["file_mounts"] == {"~/phi4ray": "."}


def _multinode_default_workers() -> list[tuple[str, int]]:
    text = (CLUSTERS / "local_multinode.sh").read_text()
    (spec,) = re.findall(r'^WORKERS=\$\{PHI4RAY_WORKERS:-"([^"]*)"\}', text, re.MULTILINE)
    return [(s.split(":")[0], int(s.split(":")[1])) for s in spec.split()]


def test_local_multinode_script():
    script = CLUSTERS / "local_multinode.sh"
    assert os.access(script, os.X_OK)
    subprocess.run(["bash", "-n", str(script)], check=True)
    assert {role for role, _ in _multinode_default_workers()} == ROLES
    r = subprocess.run(["bash", str(script)], check=False, capture_output=True, text=True)
    assert r.returncode == 2 and "usage:" in r.stderr


# -- KubeRay manifests ----------------------------------------------------------------------
def _strict(node):
    """A CRD's structural schema as JSON Schema that rejects unknown fields (as `kubectl apply
    --validate=strict` does): objects with `properties` and no `x-kubernetes-preserve-unknown-fields`
    get `additionalProperties: false`."""
    if isinstance(node, list):
        return [_strict(x) for x in node]
    if not isinstance(node, dict):
        return node
    out = {k: (_strict(v) if k not in ("enum", "required", "default", "example") else v) for k, v in node.items()}
    if "properties" in node and "additionalProperties" not in node and not node.get("x-kubernetes-preserve-unknown-fields"):
        out["additionalProperties"] = False
    return out


def _crd_validator(kind: str) -> jsonschema.Draft7Validator:
    name = {"RayCluster": "ray.io_rayclusters.v1.schema.json", "RayJob": "ray.io_rayjobs.v1.schema.json"}[kind]
    doc = json.loads((FIXTURES / name).read_text())
    assert doc["kind"] == kind
    return jsonschema.Draft7Validator(_strict(doc["openAPIV3Schema"]))


KUBERAY = {"RayCluster": CLUSTERS / "kuberay" / "raycluster.yaml", "RayJob": CLUSTERS / "kuberay" / "rayjob.yaml"}


def _cluster_spec(kind: str) -> dict:
    doc = _yaml(KUBERAY[kind])
    return doc["spec"] if kind == "RayCluster" else doc["spec"]["rayClusterSpec"]


@pytest.mark.parametrize("kind", sorted(KUBERAY))
def test_kuberay_manifest_matches_crd(kind):
    doc = _yaml(KUBERAY[kind])
    assert doc["apiVersion"] == "ray.io/v1" and doc["kind"] == kind
    errors = [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in _crd_validator(kind).iter_errors(doc)]
    assert not errors, "\n".join(errors)


def test_crd_schema_rejects_what_kubernetes_would():
    v = _crd_validator("RayCluster")
    doc = _yaml(KUBERAY["RayCluster"])
    for mutate, why in [
        (lambda d: d["spec"]["workerGroupSpecs"][0].update(minReplica=1), "misspelt group field"),
        (lambda d: d["spec"]["headGroupSpec"]["rayStartParams"].update({"num-cpus": 0}), "rayStartParams values are strings"),
        (lambda d: d["spec"]["workerGroupSpecs"][1]["template"]["spec"]["containers"][0].update(resource={}), "misspelt container field"),
        (lambda d: d["spec"]["workerGroupSpecs"][2].pop("maxReplicas"), "a required field"),
        (lambda d: d["spec"]["autoscalerOptions"].update(version="v3"), "an enum"),
    ]:
        bad = copy.deepcopy(doc)
        mutate(bad)
        assert list(v.iter_errors(bad)), why


def test_rayjob_runs_the_pipeline_on_the_raycluster_shape():
    job = _yaml(KUBERAY["RayJob"])["spec"]
    assert job["rayClusterSpec"] == _cluster_spec("RayCluster")
    argv = shlex.split(job["entrypoint"])
    assert argv[:2] == ["python", "jobs/pipeline.py"] and "--run-dir" in argv and "--recipe" in argv
    assert yaml.safe_load(job["runtimeEnvYAML"])["working_dir"] == "/home/ray/phi4ray"
    assert job["shutdownAfterJobFinishes"] is True


def _kuberay_groups() -> dict[str, dict]:
    """groupName -> {resources (from rayStartParams), cpus, gpus (container limits)}."""
    out = {}
    for g in _cluster_spec("RayCluster")["workerGroupSpecs"]:
        raw = g["rayStartParams"].get("resources", '"{}"')
        res = json.loads(json.loads(raw))  # KubeRay's form: a quoted JSON string, '"{\"data\": 16}"'
        (c,) = g["template"]["spec"]["containers"]
        lim = c["resources"]["limits"]
        out[g["groupName"]] = {"resources": res, "cpus": int(lim["cpu"]), "gpus": int(lim.get("nvidia.com/gpu", 0)), "min": g["minReplicas"]}
    return out


def test_kuberay_groups():
    spec = _cluster_spec("RayCluster")
    assert spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    groups = _kuberay_groups()
    roles = {}
    for name, g in groups.items():
        (role,) = ROLES & set(g["resources"])
        roles[role] = name
        assert g["resources"][role] == (g["cpus"] if role == "data" else g["gpus"]), name
        assert (g["gpus"] > 0) == (role != "data") and g["min"] == 0, name
    assert set(roles) == ROLES


# -- recipes against clusters ---------------------------------------------------------------
def recipe_resources(model: BaseModel, path: str = "") -> dict[str, dict[str, float]]:
    """Every `resources` field of a recipe, by its dotted path (walked on the models: the field
    is left out of model_dump)."""
    out = {}
    for name in type(model).model_fields:
        value = getattr(model, name)
        where = f"{path}.{name}" if path else name
        if name == "resources" and isinstance(value, dict):
            if value:
                out[where] = value
        elif isinstance(value, BaseModel):
            out.update(recipe_resources(value, where))
    return out


def provided() -> dict[str, dict[str, float]]:
    """Cluster -> the most of each custom resource one of its worker nodes provides."""
    out: dict[str, dict[str, float]] = {}

    def add(cluster, res):
        d = out.setdefault(cluster, {})
        for k, v in res.items():
            if k not in ("CPU", "GPU", "memory"):
                d[k] = max(d.get(k, 0), v)

    for name in ("aws", "gcp"):
        config = _yaml(AUTOSCALER[name])
        for tname, t in config["available_node_types"].items():
            if tname != config["head_node_type"] and t.get("max_workers", 0) > 0:
                add(name, t["resources"])
    nr = _node_resources_module()
    add("local", nr.node_resources(8, 0))  # a CPU machine
    add("local", nr.node_resources(8, 8))  # a GPU machine
    for role, cpus in _multinode_default_workers():
        add("local_multinode", {role: cpus})
    for g in _kuberay_groups().values():
        add("kuberay", g["resources"])
    return out


def test_recipes_name_the_roles():
    phi4 = recipe_resources(load_recipe("phi-4"))
    assert {k for res in phi4.values() for k in res} == ROLES
    for stage, role in [("curate", "data"), ("tokenize", "data"), ("pretrain", "train"), ("midtrain", "train"),
                        ("sft", "train"), ("dpo", "train"), ("serve.engine", "serve"), ("synth.rewrite.engine", "synth")]:
        assert phi4[f"{stage}.resources"] == {role: 1.0}, stage
    for name in ("tiny", "smoke"):  # a laptop's Ray has no custom resources: these ask for none
        assert recipe_resources(load_recipe(name)) == {}


@pytest.mark.parametrize("recipe", recipe_names())
def test_every_recipe_resource_is_provided_by_every_cluster(recipe):
    asked = recipe_resources(load_recipe(recipe))
    clusters = provided()
    assert set(clusters) == {"aws", "gcp", "local", "local_multinode", "kuberay"}
    for cluster, has in clusters.items():
        for where, res in asked.items():
            for k, amount in res.items():
                assert has.get(k, 0) >= amount, f"{recipe}: {where} asks for {k}: {amount}; no node of {cluster} provides it"


@pytest.mark.slow  # two Ray nodes start one after the other: about a minute on 2 cores
@pytest.mark.skipif(os.environ.get("PHI4RAY_SCALE_OUT") != "1",
                    reason="starts real Ray nodes, whose start times out on a loaded 2-core machine; PHI4RAY_SCALE_OUT=1 runs it")
def test_local_multinode_cluster_has_the_roles_resources(tmp_path):
    """clusters/local_multinode.sh starts a head without CPUs and a worker with its role's
    resource, both in one Ray cluster, and `stop` ends exactly their processes."""
    import socket
    import tempfile

    def free_port():
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]

    temp_dir = tempfile.mkdtemp(prefix="p4rm", dir="/tmp")  # short: Ray's socket paths have a length limit
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(PHI4RAY_WORKERS="data:1", PHI4RAY_PORT=str(port), PHI4RAY_DASHBOARD_PORT=str(free_port()),
               PHI4RAY_TEMP_DIR=temp_dir, PYTHON=sys.executable, RAY_AUTH_MODE="disabled",
               PATH=os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", ""))
    script = str(CLUSTERS / "local_multinode.sh")
    try:
        r = subprocess.run([script, "start"], check=False, env=env, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stdout + r.stderr
        status = subprocess.run(["ray", "status", f"--address=127.0.0.1:{port}"], check=False, env=env, capture_output=True, text=True, timeout=120)
        assert status.returncode == 0, status.stderr
        active = status.stdout.split("Active:")[1].split("Pending:")[0]
        assert active.count("node_") == 2, status.stdout
        assert re.search(r"0\.0/1\.0 CPU", status.stdout) and re.search(r"0\.0/1\.0 data", status.stdout), status.stdout
        sessions = (Path(temp_dir) / "phi4ray-sessions").read_text().split()
        assert len(sessions) >= 2  # the head and the worker (a node that needed a second try has two)
    finally:
        r = subprocess.run([script, "stop"], check=False, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and not (Path(temp_dir) / "phi4ray-sessions").exists()
    left = subprocess.run(["pgrep", "-f", temp_dir], check=False, capture_output=True, text=True).stdout.split()
    assert not left, f"processes of the test cluster left running: {left}"
    shutil.rmtree(temp_dir, ignore_errors=True)


def test_stage_resources_reach_the_ray_calls_that_place_work():
    """The recipe's custom resources are what the engine actors and the mixture maps ask Ray for."""
    from phi4ray.config import EngineConfig
    from phi4ray.inference.actor import map_batches_kwargs
    from phi4ray.inference.sampler import SamplingParams
    from phi4ray.tokens.tokenize import _placed

    kw = map_batches_kwargs(EngineConfig(resources={"synth": 1}), None, SamplingParams())
    assert kw["resources"] == {"synth": 1}
    assert "resources" not in map_batches_kwargs(EngineConfig(), None, SamplingParams())
    assert _placed({"data": 1}) == {"resources": {"data": 1}} and _placed({}) == {}
