"""The jobs/ entrypoints: each is the `phi4ray` subcommand of its name, and under `ray job submit`
it joins the job's cluster, logs its progress, and ends SUCCEEDED or FAILED with the reason.

The cluster test starts a Ray head of its own (`ray start --head`, 2 CPUs and {"data": 2}) on
free ports and a temp dir, submits jobs with JobSubmissionClient, and stops exactly that
cluster's processes at the end; it never uses or sets RAY_ADDRESS in this process, so the
suite's own Ray is untouched. (tests/test_clusters.py starts a multi-node one with
clusters/local_multinode.sh.)
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

ROOT = Path(__file__).resolve().parents[1]
JOBS = ROOT / "jobs"
# entrypoint -> the phi4ray subcommand it runs
ENTRYPOINTS = {"curate": "curate", "synth": "synth", "tokenize": "tokenize", "train": "train", "pts": "pts",
               "eval": "eval", "serve": "serve", "pipeline": "run"}


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra)
    return env


@pytest.mark.parametrize("job", sorted(ENTRYPOINTS))
def test_entrypoint_is_the_cli_subcommand(job):
    """`python jobs/X.py --help` is `phi4ray X --help` (jobs/tokenize.py included, which must not
    shadow the standard library's tokenize)."""
    args = ["pretrain", "--help"] if job == "train" else ["--help"]
    r = subprocess.run([sys.executable, str(JOBS / f"{job}.py"), *args], check=False, capture_output=True, text=True, cwd=ROOT,
                       env=_env(), timeout=120)
    assert r.returncode == 0, r.stderr
    assert f"usage: phi4ray {ENTRYPOINTS[job]}" in r.stdout
    assert r.stdout.splitlines()[0].startswith(f"phi4ray job: {ENTRYPOINTS[job]} ")


def test_entrypoint_reports_a_bad_recipe():
    r = subprocess.run([sys.executable, str(JOBS / "curate.py"), "--recipe", "smoke", "curate.min_chrs=5"], check=False,
                       capture_output=True, text=True, cwd=ROOT, env=_env(), timeout=120)
    assert r.returncode == 2
    assert "unknown key 'curate.min_chrs'" in r.stderr and "phi4ray job: curate FAILED with exit code 2" in r.stderr


def _entry_module():
    spec = importlib.util.spec_from_file_location("phi4ray_jobs_entry", JOBS / "_entry.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_stop_signal_is_an_interrupt(monkeypatch, capsys):
    """`ray job stop` sends SIGTERM: the CLI sees a KeyboardInterrupt (its clean-up runs) and the
    entrypoint exits 130 saying how to continue; a failing stage exits with its own code."""
    import phi4ray.cli

    entry = _entry_module()
    old = signal.getsignal(signal.SIGTERM)
    cleaned = []

    def stopped(argv):
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)
        finally:
            cleaned.append(argv)
        return 0

    try:
        monkeypatch.setattr(phi4ray.cli, "main", stopped)
        assert entry.run("curate", ["--recipe", "smoke"]) == 130
        assert cleaned == [["curate", "--recipe", "smoke"]]
        assert "submit the same job again to continue" in capsys.readouterr().err
        monkeypatch.setattr(phi4ray.cli, "main", lambda argv: 1)
        assert entry.run("tokenize", []) == 1
        assert "phi4ray job: tokenize FAILED with exit code 1" in capsys.readouterr().err
    finally:
        signal.signal(signal.SIGTERM, old)


# -- a real cluster -------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _session_tree(sid: int) -> list[int]:
    """Processes of session `sid` and their descendants (the job's entrypoint runs in a session
    of its own, under the cluster's JobSupervisor)."""
    procs = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                stat = Path(f"/proc/{d}/stat").read_text()
            except OSError:
                continue
            fields = stat[stat.rindex(")") + 2 :].split()
            procs[int(d)] = (int(fields[1]), int(fields[3]))  # ppid, session
    mine = {p for p, (_, s) in procs.items() if s == sid}
    while more := {p for p, (pp, _) in procs.items() if pp in mine} - mine:
        mine |= more
    return sorted(mine)


def _stop_session(sid: int) -> list[int]:
    """SIGTERM, then SIGKILL, to the processes of session `sid` (never `ray stop`, which would stop
    every Ray on this machine: the suite's own and other runs'). Returns those still alive."""
    for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
        for pid in _session_tree(sid):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.time() + wait
        while _session_tree(sid) and time.time() < deadline:
            time.sleep(0.2)
    return _session_tree(sid)


@pytest.fixture
def ray_cluster():
    """A Ray head of its own (2 CPUs and {"data": 2}, as a data node), with a job server, on free
    ports and a temp dir; yields its dashboard URL, and stops exactly its processes afterwards."""
    temp_dir = tempfile.mkdtemp(prefix="p4rj", dir="/tmp")  # short: Ray's socket paths have a length limit
    dashboard = _free_port()
    ports = {flag: _free_port() for flag in ("port", "ray-client-server-port", "node-manager-port", "object-manager-port",
                                            "metrics-export-port", "dashboard-agent-listen-port",
                                            "dashboard-agent-grpc-port", "runtime-env-agent-port")}
    cmd = ["ray", "start", "--head", "--node-ip-address=127.0.0.1", "--num-cpus=2", '--resources={"data": 2}',
           "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}",
           f"--temp-dir={temp_dir}", "--disable-usage-stats", *(f"--{k}={v}" for k, v in ports.items())]
    env = _env(RAY_AUTH_MODE="disabled",  # a throwaway cluster on 127.0.0.1: no token to hand around
               RAY_agent_register_timeout_ms="120000")
    sessions = []
    try:
        for _ in range(2):  # on a loaded machine the raylet can give up waiting for its agents (15 s): once more
            start = subprocess.Popen(cmd, env=env, start_new_session=True, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True)
            sessions.append(start.pid)
            out, _ = start.communicate(timeout=240)
            if start.returncode == 0:
                break
            _stop_session(start.pid)
        assert start.returncode == 0, out[-3000:]
        yield f"http://127.0.0.1:{dashboard}"
    finally:
        left = [pid for sid in sessions for pid in _stop_session(sid)]
        assert not left, f"processes of the test cluster left running: {left}"
        shutil.rmtree(temp_dir, ignore_errors=True)


def _wait(client, job_id: str, timeout: float = 240.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        status = client.get_job_status(job_id)
        if status.is_terminal():
            return status
        time.sleep(1.0)
    client.stop_job(job_id)
    raise AssertionError(f"job {job_id} did not finish in {timeout}s; logs:\n{client.get_job_logs(job_id)[-3000:]}")


def test_curate_job(ray_cluster, tmp_path):
    from ray.job_submission import JobStatus, JobSubmissionClient

    address_before = os.environ.get("RAY_ADDRESS")
    client = JobSubmissionClient(ray_cluster)
    runtime_env = {"working_dir": str(ROOT),
                   "excludes": [".git", "runs", "benchmarks/results", "**/__pycache__", ".pytest_cache", ".ruff_cache"]}
    run_dir = tmp_path / "run"
    # a bad override: the job fails at once, saying why
    bad = client.submit_job(entrypoint=f"python jobs/curate.py --recipe smoke --run-dir {run_dir} curate.bogus=1",
                            runtime_env=runtime_env)
    # curation of the sample pages, without the LLM annotator and MinHash, to keep it short
    good = client.submit_job(
        entrypoint=f"python jobs/curate.py --recipe smoke --run-dir {run_dir} curate.quality.enabled=false curate.minhash.enabled=false",
        runtime_env=runtime_env, metadata={"stage": "curate"})

    assert _wait(client, bad) == JobStatus.FAILED
    assert "unknown key 'curate.bogus'" in client.get_job_logs(bad)
    info = client.get_job_info(bad)
    assert "exit code 2" in (info.message or "") or info.driver_exit_code == 2

    status = _wait(client, good)
    logs = client.get_job_logs(good)
    assert status == JobStatus.SUCCEEDED, logs[-3000:]
    # it joined the job's cluster, not a Ray of its own
    assert "phi4ray job: cluster: 1 node(s): CPU 2, data 2" in logs
    assert "Started a local Ray instance" not in logs
    # progress and result in the job's logs
    assert "Running Dataset" in logs
    result = json.loads(logs[logs.index("\n{") + 1 : logs.index("\n}") + 2])
    assert "phi4ray job: curate done after" in logs

    manifest = json.loads((run_dir / "manifest.json").read_text())
    entry = manifest["stages"]["curate"]
    assert entry["status"] == "complete"
    assert entry["counts"]["read"] == result["read"] and entry["counts"]["kept"] == result["kept"] > 0
    rows = pq.read_table(run_dir / "curated").num_rows
    assert rows == result["kept"]
    assert os.environ.get("RAY_ADDRESS") == address_before  # nothing leaked into this process
