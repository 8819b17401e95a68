"""Closed-loop load on an OpenAI-compatible endpoint, through the official `openai` client.

    report = asyncio.run(run_load(url, "phi4ray", prompts, concurrency=64, max_tokens=8))
    report.errors, report.p50_s, report.p99_s, report.statuses

`concurrency` clients share one `openai.AsyncOpenAI`; each takes the next request as soon as its
last one is answered. A client retries as the openai client does (`max_retries`: 429, 5xx and
lost connections, honouring `Retry-After`). Every HTTP reply is counted by status and by request
id (an `x-phi4ray-request-id` header), so a report says how many tries each request took, and
whether any request was answered twice or never. Used by tests/test_serve_load.py and
benchmarks/serve_load.py. Needs the `openai` package (the `dev` extra).
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable

__all__ = ["Answer", "LoadReport", "run_load", "percentile"]

RID_HEADER = "x-phi4ray-request-id"


@dataclass
class Answer:
    rid: int
    latency_s: float
    """From the first try to the answer, retries and their waits included."""
    text: str | None = None
    token_ids: list[int] | None = None
    prompt_token_ids: list[int] | None = None
    error: str | None = None


@dataclass
class LoadReport:
    requests: int
    concurrency: int
    wall_s: float
    answers: dict[int, Answer]
    statuses: Counter
    """HTTP replies by status, every try included."""
    tries: Counter
    """HTTP replies per request id."""
    answered_twice: list[int] = field(default_factory=list)

    @property
    def ok(self) -> list[Answer]:
        return [a for a in self.answers.values() if a.error is None]

    @property
    def errors(self) -> int:
        return self.requests - len(self.ok)

    @property
    def retries(self) -> int:
        return sum(max(0, n - 1) for n in self.tries.values())

    @property
    def p50_s(self) -> float:
        return percentile([a.latency_s for a in self.ok], 50)

    @property
    def p99_s(self) -> float:
        return percentile([a.latency_s for a in self.ok], 99)

    @property
    def throughput(self) -> float:
        return len(self.ok) / self.wall_s if self.wall_s > 0 else 0.0

    def summary(self) -> dict[str, Any]:
        return {"requests": self.requests, "concurrency": self.concurrency, "answered": len(self.ok),
                "errors": self.errors, "retries": self.retries, "answered_twice": len(self.answered_twice),
                "statuses": {str(k): v for k, v in sorted(self.statuses.items())}, "wall_s": self.wall_s,
                "requests_per_s": self.throughput, "p50_s": self.p50_s, "p99_s": self.p99_s,
                "max_s": max((a.latency_s for a in self.ok), default=float("nan"))}


def percentile(xs: list[float], q: float) -> float:
    """The q-th percentile (linear interpolation, numpy's default); nan for no values."""
    if not xs:
        return float("nan")
    import numpy as np

    return float(np.percentile(np.asarray(xs, dtype=float), q))


async def run_load(
    base_url: str,
    model: str,
    prompts: list[str | list[int]],
    *,
    concurrency: int = 64,
    max_tokens: int = 8,
    temperature: float = 0.0,
    max_retries: int = 0,
    timeout_s: float = 120.0,
    extra_body: dict[str, Any] | None = None,
    on_answer: Callable[[Answer], None] | None = None,
) -> LoadReport:
    """Send one completion request per prompt (request id = its index), `concurrency` at a time.
    `extra_body` adds fields to every request (vLLM's extensions, e.g. `stop_token_ids`)."""
    import httpx
    import openai

    statuses: Counter = Counter()
    tries: Counter = Counter()

    async def count(response: httpx.Response) -> None:
        statuses[response.status_code] += 1
        rid = response.request.headers.get(RID_HEADER)
        if rid is not None:
            tries[int(rid)] += 1

    http = httpx.AsyncClient(
        limits=httpx.Limits(max_connections=2 * concurrency, max_keepalive_connections=concurrency),
        timeout=timeout_s, event_hooks={"response": [count]},
    )
    client = openai.AsyncOpenAI(base_url=base_url, api_key="x", max_retries=max_retries, http_client=http)
    answers: dict[int, Answer] = {}
    answered_twice: list[int] = []
    queue: asyncio.Queue[int] = asyncio.Queue()
    for rid in range(len(prompts)):
        queue.put_nowait(rid)

    async def one(rid: int) -> None:
        t0 = time.perf_counter()
        try:
            r = await client.completions.create(
                model=model, prompt=prompts[rid], max_tokens=max_tokens, temperature=temperature,
                extra_body={"return_token_ids": True, **(extra_body or {})}, extra_headers={RID_HEADER: str(rid)},
            )
            c = r.choices[0]
            extra = c.model_extra or {}
            a = Answer(rid, time.perf_counter() - t0, c.text, extra.get("token_ids"), extra.get("prompt_token_ids"))
        except openai.APIError as e:
            a = Answer(rid, time.perf_counter() - t0, error=f"{type(e).__name__}: {e}"[:300])
        if rid in answers and answers[rid].error is None:
            answered_twice.append(rid)
        answers[rid] = a
        if on_answer is not None:
            on_answer(a)

    async def worker() -> None:
        while True:
            try:
                rid = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            await one(rid)

    t0 = time.perf_counter()
    try:
        await asyncio.gather(*(worker() for _ in range(concurrency)))
    finally:
        await client.close()
        await http.aclose()
    return LoadReport(len(prompts), concurrency, time.perf_counter() - t0, answers, statuses, tries, answered_twice)


# -- fault injection (tests and benchmarks) ---------------------------------------------------
def replica_names(app_name: str | None = None, deployment: str | None = None) -> list[str]:
    """Named actors of the live replicas of `app_name`'s `deployment` (Serve names them
    `SERVE_REPLICA::<app>#<deployment>#<id>` in the `serve` namespace). Reads the GCS: no dashboard needed."""
    import ray

    from phi4ray.serve.app import APP_NAME, DEPLOYMENT_NAME

    prefix = f"SERVE_REPLICA::{app_name or APP_NAME}#{deployment or DEPLOYMENT_NAME}#"
    return sorted(a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
                  if a["namespace"] == "serve" and a["name"].startswith(prefix))


def kill_replica(name: str) -> None:
    """Kill one replica actor as a crash would (no restart by Ray: Serve must replace it)."""
    import ray

    ray.kill(ray.get_actor(name, namespace="serve"), no_restart=True)


def wait_replicas(n: int, *, app_name: str | None = None, deployment: str | None = None,
                  exclude: set[str] = frozenset(), timeout_s: float = 120.0) -> tuple[list[str], float]:
    """Wait until Serve reports `deployment` HEALTHY with `n` RUNNING replicas, none of them in
    `exclude`; return their names and the seconds waited."""
    from ray import serve

    from phi4ray.serve.app import APP_NAME, DEPLOYMENT_NAME

    app_name, deployment = app_name or APP_NAME, deployment or DEPLOYMENT_NAME
    t0 = time.perf_counter()
    last = None
    while time.perf_counter() - t0 < timeout_s:
        st = serve.status().applications.get(app_name)
        d = st.deployments.get(deployment) if st else None
        names = replica_names(app_name, deployment)
        if d is not None:
            running = d.replica_states.get("RUNNING", 0)
            last = (str(d.status), dict(d.replica_states), names)
            if str(d.status).endswith("HEALTHY") and running == n and len(names) == n and not set(names) & set(exclude):
                return names, time.perf_counter() - t0
        time.sleep(0.25)
    raise TimeoutError(f"{app_name}/{deployment} not back to {n} healthy replicas in {timeout_s:.0f}s: {last}")
