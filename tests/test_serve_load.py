"""The Serve app under load and faults, through the official `openai` client.

One app for the module: a fresh `micro` model on 2 replicas with the default request limits
(8 ongoing per replica, 64 queued). 64 concurrent clients get every answer with no error and no
retry; a replica killed under load is replaced while the clients retry, and no request is lost.
Latencies are printed (`-s`); benchmarks/serve_load.py measures them properly.
"""

import asyncio
import socket
import threading

import pytest

from phi4ray.config import EngineConfig, ServeConfig
from phi4ray.tokenizer import encode

MODEL = "phi4ray-load"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(ray_local):
    from ray import serve

    from phi4ray.serve import app

    cfg = ServeConfig(port=free_port(), model_name=MODEL, min_replicas=2, max_replicas=2, max_model_len=128,
                      engine=EngineConfig(preset="micro", device="cpu", num_cpus_per_actor=0.5))
    url = app.start(cfg, None)
    try:
        yield url
    finally:
        app.stop()
        serve.shutdown()


def prompts(n: int) -> list[str]:
    return [f"Request {i}: the answer is" for i in range(n)]


def check_answers(report, ps: list[str]) -> None:
    """Every request answered, once, and with its own prompt (no answers crossed)."""
    assert report.errors == 0, [a.error for a in report.answers.values() if a.error][:3]
    assert sorted(report.answers) == list(range(len(ps))) and not report.answered_twice
    for rid, a in report.answers.items():
        assert a.prompt_token_ids == encode(ps[rid]) and len(a.token_ids) >= 1, rid


def test_64_clients_256_requests_no_errors(server):
    from phi4ray.serve.loadgen import run_load

    ps = prompts(256)
    report = asyncio.run(run_load(server, MODEL, ps, concurrency=64, max_tokens=4, max_retries=0))
    print("\n64 clients x 256 requests:", {k: round(v, 3) if isinstance(v, float) else v
                                           for k, v in report.summary().items()})
    check_answers(report, ps)
    assert report.statuses == {200: 256} and report.retries == 0  # no 503s, no 500s, nothing retried
    assert report.p50_s <= report.p99_s < 60


def test_killed_replica_is_replaced_and_no_request_is_lost(server):
    from phi4ray.serve.loadgen import kill_replica, replica_names, run_load, wait_replicas

    before, _ = wait_replicas(2)
    ps = prompts(96)
    answered = []
    started = threading.Event()

    def on_answer(a):
        answered.append(a.rid)
        if len(answered) == 16:
            started.set()

    out = {}
    load = threading.Thread(target=lambda: out.update(report=asyncio.run(
        run_load(server, MODEL, ps, concurrency=32, max_tokens=4, max_retries=10, on_answer=on_answer))))
    load.start()
    assert started.wait(120), "the load never got going"
    victim = before[0]
    kill_replica(victim)
    load.join(300)
    assert not load.is_alive()
    report = out["report"]
    print("\nkill under load:", {k: round(v, 3) if isinstance(v, float) else v for k, v in report.summary().items()})
    check_answers(report, ps)
    assert len(answered) == len(ps)
    assert set(report.statuses) <= {200, 500, 503}, report.statuses  # failed tries are retried, not lost
    # Serve replaced the killed replica: healthy again with 2 replicas, the victim not among them
    after, waited = wait_replicas(2, exclude={victim})
    assert victim not in after and before[1] in after
    print(f"replica {victim} replaced by {sorted(set(after) - set(before))} ({waited:.1f}s after the load ended)")
    assert replica_names() == after
