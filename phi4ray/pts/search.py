"""Pivotal Token Search (Phi-4 report, section 4.3 and Algorithm 1).

A pivotal token is one whose choice moves the probability that the model goes on to solve the
problem, p(success | query + prefix), by at least `p_gap`. PTS finds them in sampled solutions
and turns each into a one-token DPO pair: (query + prefix, accepted token, rejected token).

Per question:

1. p(success | query) is estimated from K = `cfg.samples` completions (one request, n=K) checked
   by the oracle. Only questions with `p_min <= p <= p_max` are searched: the others are
   either always solved or never, and have no decisive tokens to learn from.
2. Solutions are the first `solutions_per_question` of those K samples (sampled with top
   logprobs, so the alternatives at every position come for free).
3. `subdivide` splits a solution in halves, recursively, until each segment changes p by
   less than `p_gap` or is one token; one-token segments that change p by `p_gap` or more are
   pivotal. Every p it needs goes through the per-prefix cache, so each prefix costs one request.
4. At a pivotal position, p is estimated after the pivotal token and after up to
   `cfg.candidates` alternatives (the endpoint's top logprobs there). The accepted token has
   the highest p, the rejected the lowest (ties: the likelier token); the pair is emitted if
   p_accepted - p_rejected >= p_gap.

Costs are counted per question: `estimates` (prefixes whose p was sampled: one request each,
n=K) and `oracle_calls` (completions checked). `scan_pivots` is the token-by-token baseline
(p at every prefix), kept for tests and the benchmark; docs/pts.md compares the two.

Everything is in token-id space: the query is encoded once, prefixes are id lists sent as
`prompt: list[int]`, and completions come back as ids, so no text is ever re-tokenised. The
endpoint is reached only through `CompletionsClient` (OpenAI `/v1/completions`), so it can be
our Serve app or any vLLM server. Sampling seeds are derived from (cfg.seed, question, prefix),
so a re-run asks the same questions with the same seeds.

`run_pts` runs the search over questions as Ray tasks (at most `cfg.concurrency` in flight),
commits the pairs in shards of `SHARD_QUESTIONS` questions (a re-run skips committed shards),
and writes `pts/pivots.jsonl`, `pts/questions.jsonl`, `pts/pairs/` (Parquet, the table DPO trains
on) and `pts/pairs.jsonl` (the same pairs in the TRL layout of `phi4ray/tokens/dpo.py`, with ids).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import zlib
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import pyarrow as pa

from phi4ray.config import PTSConfig
from phi4ray.pts.client import CompletionsClient
from phi4ray.pts.oracles import check_many, get_oracle
from phi4ray.run import RunDir, config_hash

log = logging.getLogger(__name__)

__all__ = [
    "PAIRS_SCHEMA",
    "Segment",
    "subdivide",
    "pivotal_segments",
    "scan_pivots",
    "read_questions_jsonl",
    "QuestionSearch",
    "search_question",
    "run_pts",
    "pts_config_hash",
    "p_distribution",
]

SHARD_QUESTIONS = 64

PAIRS_SCHEMA = pa.schema(
    [
        ("question_id", pa.string()),
        ("prompt", pa.string()),
        ("chosen", pa.string()),
        ("rejected", pa.string()),
        ("prompt_ids", pa.list_(pa.int64())),
        ("chosen_ids", pa.list_(pa.int64())),
        ("rejected_ids", pa.list_(pa.int64())),
        ("p_before", pa.float64()),
        ("p_after", pa.float64()),
        ("p_chosen", pa.float64()),
        ("p_rejected", pa.float64()),
    ]
)


# -- the algorithm ----------------------------------------------------------------------------
@dataclass
class Segment:
    """`tokens` = solution[start : start + len(tokens)]; p before and after appending them."""

    start: int
    tokens: list[int]
    p_before: float
    p_after: float

    @property
    def delta(self) -> float:
        return self.p_after - self.p_before


def subdivide(
    prefix: Sequence[int],
    tokens: Sequence[int],
    p: Callable[[tuple[int, ...]], float],
    p_gap: float,
    start: int = 0,
) -> list[Segment]:
    """Algorithm 1's Subdivide: split `tokens` (following `prefix`) into segments, in order.

    A segment is kept whole when it is one token or changes p by less than `p_gap`; otherwise
    it is split in halves, the right half following prefix + left half. `p` maps a prefix
    (a tuple of ids) to p(success); callers cache it, since the same prefixes recur.
    """
    prefix, tokens = tuple(prefix), tuple(tokens)
    p_before, p_after = p(prefix), p(prefix + tokens)
    if len(tokens) <= 1 or abs(p_after - p_before) < p_gap:
        return [Segment(start, list(tokens), p_before, p_after)]
    mid = len(tokens) // 2
    left = subdivide(prefix, tokens[:mid], p, p_gap, start)
    right = subdivide(prefix + tokens[:mid], tokens[mid:], p, p_gap, start + mid)
    return left + right


def pivotal_segments(segments: list[Segment], p_gap: float) -> list[Segment]:
    """The one-token segments whose change in p is at least `p_gap`: the pivotal tokens."""
    return [s for s in segments if len(s.tokens) == 1 and abs(s.delta) >= p_gap]


def scan_pivots(
    prefix: Sequence[int], tokens: Sequence[int], p: Callable[[tuple[int, ...]], float], p_gap: float
) -> list[Segment]:
    """The token-by-token baseline: p after every prefix of `tokens`, pivotal where it moves by
    `p_gap` or more. Exact (no blind spot for cancelling changes) but len(tokens) + 1 estimates."""
    prefix, tokens = tuple(prefix), tuple(tokens)
    ps = [p(prefix + tokens[:i]) for i in range(len(tokens) + 1)]
    return [Segment(i, [tokens[i]], ps[i], ps[i + 1]) for i in range(len(tokens)) if abs(ps[i + 1] - ps[i]) >= p_gap]


# -- one question against an endpoint ---------------------------------------------------------
@dataclass
class QuestionSearch:
    """PTS for one question. `p(prefix)` is cached; `client.requests` counts what it cost."""

    cfg: PTSConfig
    client: CompletionsClient
    question_id: str
    query_ids: list[int]
    answer: str
    oracle: Callable[[str, str], bool]
    stop_ids: frozenset[int]
    cache: dict[tuple[int, ...], float] = field(default_factory=dict)
    root_samples: list[dict] = field(default_factory=list)
    estimates: int = 0
    """Prefixes whose p was sampled (one request of n=K each)."""
    oracle_calls: int = 0
    """Completions checked by the oracle."""

    # -- p(success | query + prefix) --------------------------------------------------------
    def seed_for(self, prefix: tuple[int, ...]) -> int:
        h = zlib.crc32(json.dumps([self.cfg.seed, self.question_id, list(prefix)]).encode())
        return h & 0x7FFFFFFF

    def text_of(self, ids: Sequence[int]) -> str:
        from phi4ray.tokenizer import decode

        ids = list(ids)
        while ids and ids[-1] in self.stop_ids:
            ids.pop()
        return decode(ids)

    def success(self, ids: Sequence[int]) -> bool:
        self.oracle_calls += 1
        return bool(self.oracle(self.text_of(ids), self.answer))

    def successes(self, completions: list[Sequence[int]]) -> list[bool]:
        self.oracle_calls += len(completions)
        return check_many(self.oracle, [self.text_of(c) for c in completions], self.answer)

    def p(self, prefix: tuple[int, ...]) -> float:
        prefix = tuple(prefix)
        if prefix in self.cache:
            return self.cache[prefix]
        budget = self.cfg.max_tokens - len(prefix)
        if (prefix and prefix[-1] in self.stop_ids) or budget <= 0:
            value = float(self.success(prefix))  # the solution is over: no sampling can change it
        else:
            logprobs = self.cfg.candidates if not prefix else None
            samples = self.client.complete(
                self.query_ids + list(prefix), n=self.cfg.samples, temperature=self.cfg.temperature,
                max_tokens=budget, seed=self.seed_for(prefix), logprobs=logprobs,
            )
            if not prefix:
                self.root_samples = samples
            self.estimates += 1
            value = sum(self.successes([list(prefix) + s["token_ids"] for s in samples])) / len(samples)
        self.cache[prefix] = value
        return value

    # -- the search -------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        """Search this question; returns its summary, pivots and pairs (plain JSON-able dicts)."""
        from phi4ray.tokenizer import decode

        cfg = self.cfg
        p0 = self.p(())
        summary: dict[str, Any] = {"id": self.question_id, "p": p0, "searched": False, "n_pivots": 0, "n_pairs": 0}
        pivots: list[dict] = []
        if not cfg.p_min <= p0 <= cfg.p_max:
            return {"question": self._costs(summary), "pivots": pivots, "pairs": []}
        summary["searched"] = True
        query_text = decode(self.query_ids)
        seen: set[tuple[int, ...]] = set()  # pivotal prefixes already judged
        for si, sol in enumerate(self.root_samples[: cfg.solutions_per_question]):
            ids = list(sol["token_ids"])
            if not ids:
                continue
            segments = subdivide((), ids, self.p, cfg.p_gap)
            for seg in pivotal_segments(segments, cfg.p_gap):
                prefix = tuple(ids[: seg.start])
                if prefix in seen:  # another solution already judged the candidates after this prefix
                    continue
                seen.add(prefix)
                pivots.append(self._judge(si, prefix, seg.tokens[0], seg, sol, query_text))
        pairs = [self._pair(pv) for pv in pivots if pv["emitted"]]
        summary["n_pivots"], summary["n_pairs"] = len(pivots), len(pairs)
        return {"question": self._costs(summary), "pivots": pivots, "pairs": pairs}

    def _costs(self, summary: dict) -> dict:
        summary["estimates"], summary["oracle_calls"] = self.estimates, self.oracle_calls
        return summary

    def _alternatives(self, prefix: tuple[int, ...], sol: dict) -> dict[int, float]:
        """{token id: logprob} of the likeliest next tokens after `prefix` (top `candidates`)."""
        tops = sol.get("top_logprobs") or []
        pos = len(prefix)
        if pos < len(tops) and tops[pos]:
            return tops[pos]
        [one] = self.client.complete(self.query_ids + list(prefix), n=1, temperature=self.cfg.temperature,
                                     max_tokens=1, seed=self.seed_for(prefix), logprobs=self.cfg.candidates)
        return (one.get("top_logprobs") or [{}])[0]

    def _judge(self, si: int, prefix: tuple[int, ...], tok: int, seg: Segment, sol: dict, query_text: str) -> dict:
        from phi4ray.tokenizer import decode

        alts = self._alternatives(prefix, sol)
        ranked = [t for t, _ in sorted(alts.items(), key=lambda kv: -kv[1]) if t != tok][: self.cfg.candidates]
        cands = []
        for t in [tok, *ranked]:
            lp = alts.get(t)
            cands.append({"token_id": t, "token": decode([t]), "logprob": lp, "p": self.p(prefix + (t,))})
        likelihood = lambda c: c["logprob"] if c["logprob"] is not None else -math.inf  # noqa: E731
        acc = max(cands, key=lambda c: (c["p"], likelihood(c)))
        rej = min(cands, key=lambda c: (c["p"], -likelihood(c)))
        emitted = acc["token_id"] != rej["token_id"] and acc["p"] - rej["p"] >= self.cfg.p_gap
        return {
            "question_id": self.question_id,
            "solution": si,
            "query": query_text,
            "query_ids": self.query_ids,
            "prefix_ids": list(prefix),
            "pivot_context": decode(list(prefix)),
            "pivot_token": decode([tok]),
            "pivot_token_id": tok,
            "position": seg.start,
            "prob_before": seg.p_before,
            "prob_after": seg.p_after,
            "prob_delta": seg.delta,
            "is_positive": seg.delta > 0,
            "accepted_token": acc["token"],
            "accepted_token_id": acc["token_id"],
            "p_accepted": acc["p"],
            "rejected_token": rej["token"],
            "rejected_token_id": rej["token_id"],
            "p_rejected": rej["p"],
            "candidates": cands,
            "emitted": emitted,
        }

    @staticmethod
    def _pair(pv: dict) -> dict:
        return {
            "id": f"{pv['question_id']}/s{pv['solution']}/t{pv['position']}",
            "question_id": pv["question_id"],
            "prompt": pv["query"] + pv["pivot_context"],
            "chosen": pv["accepted_token"],
            "rejected": pv["rejected_token"],
            "prompt_ids": list(pv["query_ids"]) + list(pv["prefix_ids"]),
            "chosen_ids": [pv["accepted_token_id"]],
            "rejected_ids": [pv["rejected_token_id"]],
            "p_before": pv["prob_before"],
            "p_after": pv["prob_after"],
            "p_chosen": pv["p_accepted"],
            "p_rejected": pv["p_rejected"],
        }


def question_answer(question: dict, oracle: str) -> Any:
    """The reference a question is checked against: `answer`; for the code oracle, test code in
    `answer` or, when `answer` is absent, in `tests`."""
    if oracle == "code" and question.get("answer") is None:
        return question.get("tests")
    return question.get("answer")


def search_question(cfg: PTSConfig, endpoint: str, model: str, question: dict,
                    client: Any = None) -> dict[str, Any]:
    """PTS on one `{"id", "prompt", "answer"}` question against `endpoint`. Never raises:
    an error is returned in the summary (`error`) so one bad question cannot stop a run.
    `client` replaces the endpoint's `CompletionsClient` (a scripted sampler in tests)."""
    from phi4ray.inference.sampler import default_stop_token_ids
    from phi4ray.tokenizer import encode

    stop_ids = default_stop_token_ids()
    qid = str(question.get("id", ""))
    own = client is None
    if own:
        client = CompletionsClient(endpoint, model, stop_token_ids=stop_ids)
    qs = None
    try:
        qs = QuestionSearch(
            cfg=cfg, client=client, question_id=qid,
            query_ids=encode(question["prompt"], allow_special=True),
            answer=str(question_answer(question, cfg.oracle)), oracle=get_oracle(cfg.oracle),
            stop_ids=frozenset(stop_ids),
        )
        out = qs.run()
    except Exception as e:  # the endpoint failed for good, or a bug: record it, go on
        log.warning("PTS question %s failed: %r", qid, e)
        out = {"question": {"id": qid, "p": None, "searched": False, "n_pivots": 0, "n_pairs": 0,
                            "error": f"{type(e).__name__}: {e}"}, "pivots": [], "pairs": []}
        if qs is not None:
            qs._costs(out["question"])
    finally:
        if own:
            client.close()
    out["requests"] = client.requests
    out["question"]["requests"] = client.requests
    return out


# -- the stage ----------------------------------------------------------------------------------
def p_distribution(ps: list[float], bins: int = 10) -> dict[str, Any]:
    """Deciles and a `bins`-bin histogram over [0, 1] of question success probabilities."""
    ps = sorted(p for p in ps if p is not None)
    counts = [0] * bins
    for p in ps:
        counts[min(bins - 1, int(p * bins))] += 1
    deciles = []
    if ps:
        for q in range(11):
            x = q / 10 * (len(ps) - 1)
            lo, hi = int(math.floor(x)), int(math.ceil(x))
            deciles.append(ps[lo] + (ps[hi] - ps[lo]) * (x - lo))
    return {"deciles": deciles, "histogram": {"edges": [i / bins for i in range(bins + 1)], "counts": counts},
            "mean": sum(ps) / len(ps) if ps else None}


INVALID = "_invalid"
"""Key of the placeholder records `read_questions_jsonl` yields for unreadable lines."""


def read_questions_jsonl(path: str) -> list[dict]:
    """The questions of a JSONL file, one per non-blank line. A line that is not a JSON object
    becomes `{"id": "line:N", "_invalid": why}`, which `run_pts` turns into a reject: a bad line
    never stops a run. Missing fields are left for `run_pts` to reject with their reason."""
    out: list[dict] = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                q = json.loads(line)
            except json.JSONDecodeError as e:
                out.append({"id": f"line:{n}", INVALID: f"line {n}: not JSON: {e}", "line": line[:500]})
                continue
            if not isinstance(q, dict):
                out.append({"id": f"line:{n}", INVALID: f"line {n}: not a JSON object: {type(q).__name__}",
                            "line": line[:500]})
                continue
            out.append(q)
    return out


def _validate_question(q: Any, oracle: str = "math") -> str | None:
    if not isinstance(q, dict):
        return f"a question must be a dict, got {type(q).__name__}"
    if q.get(INVALID):
        return str(q[INVALID])
    answer = question_answer(q, oracle)
    for k, v in (("id", q.get("id")), ("prompt", q.get("prompt")), ("answer", answer)):
        if v is None:
            return f"missing '{k}'" + (" (or 'tests')" if k == "answer" and oracle == "code" else "")
    if not isinstance(q["prompt"], str) or not q["prompt"]:
        return "'prompt' must be a non-empty string"
    if isinstance(answer, (dict, list)):
        return f"'answer' must be a string or a number, got {type(answer).__name__}"
    if str(answer).strip() == "":
        return "'answer' is empty"
    return None


def pts_config_hash(cfg: PTSConfig, model: str, questions: list[dict]) -> str:
    """The stage's config hash: its settings, the model name and the exact questions searched."""
    if cfg.max_questions is not None:
        questions = questions[: cfg.max_questions]
    digest = hashlib.sha256(
        json.dumps([[str(q.get("id")), q.get("prompt"), str(question_answer(q, cfg.oracle))]
                    if isinstance(q, dict) else repr(q) for q in questions]).encode()
    ).hexdigest()[:16]
    pts = cfg.model_dump(mode="json", exclude={"judge"})  # judge pairs are their own stage
    return config_hash({"pts": pts, "model": model, "questions": digest})


def run_pts(
    cfg: PTSConfig, run_dir: RunDir, endpoint: str, model: str, questions: list[dict], force: bool = False
) -> dict[str, Any]:
    """Pivotal Token Search over `questions` against an OpenAI-compatible `endpoint` (`.../v1`).

    Writes `pts/pairs/` (Parquet, `PAIRS_SCHEMA`), `pts/pivots.jsonl`, `pts/questions.jsonl`, and
    malformed or failed questions to `rejects/pts/`. Returns the counts and the distribution of
    p(success | question), which also go into the manifest.
    """
    import ray

    from phi4ray.stage import REJECT_SCHEMA, Reject, count, reject_row

    get_oracle(cfg.oracle)  # fail now, not in every task
    if cfg.max_questions is not None:
        questions = questions[: cfg.max_questions]
    h = pts_config_hash(cfg, model, questions)
    if not run_dir.begin_stage("pts", h, outputs=["pts", "rejects/pts"], force=force):
        log.info("pts: already complete in %s", run_dir.uri)
        return dict(run_dir.stage_entry("pts").get("counts", {}))

    shards = [questions[i : i + SHARD_QUESTIONS] for i in range(0, len(questions), SHARD_QUESTIONS)]
    names = [f"{i:05d}" for i in range(len(shards))]
    pending = [i for i, name in enumerate(names) if not run_dir.has_shard("pts/pairs", name)]
    if len(pending) < len(shards):
        log.info("pts: %d of %d shards already committed; skipping them", len(shards) - len(pending), len(shards))

    remote = ray.remote(num_cpus=0, max_retries=2)(search_question)  # IO-bound: the endpoint computes
    results: dict[int, dict[int, dict]] = {i: {} for i in pending}
    rejects: dict[int, list[dict]] = {i: [] for i in pending}
    todo: list[tuple[int, int]] = []
    for si in pending:
        for qi, q in enumerate(shards[si]):
            why = _validate_question(q, cfg.oracle)
            if why:
                record = q if isinstance(q, dict) else {"record": repr(q)}
                rejects[si].append(reject_row(record, "pts", "validate", Reject("invalid_question", why)))
                results[si][qi] = None  # type: ignore[assignment]
            else:
                todo.append((si, qi))

    def commit_if_done(si: int) -> None:
        if len(results[si]) < len(shards[si]):
            return
        done = [results[si][qi] for qi in sorted(results[si]) if results[si][qi] is not None]
        for qi in sorted(results[si]):
            r = results[si][qi]
            if r is not None and r["question"].get("error"):
                rejects[si].append(reject_row(shards[si][qi], "pts", "search", Reject("error", r["question"]["error"])))
        if done and all(r["question"].get("error") for r in done):
            raise RuntimeError(f"pts: every question of shard {names[si]} failed, e.g. {done[0]['question']['error']}; "
                               f"is the endpoint {endpoint} up and serving '{model}'?")
        run_dir.write_jsonl(f"pts/parts/questions-{names[si]}.jsonl", [r["question"] for r in done])
        run_dir.write_jsonl(f"pts/parts/pivots-{names[si]}.jsonl",
                            [_public_pivot(p) for r in done for p in r["pivots"]])
        run_dir.write_jsonl(f"pts/parts/pairs-{names[si]}.jsonl", [p for r in done for p in r["pairs"]])
        if rejects[si]:
            run_dir.commit_table("rejects/pts", names[si], pa.Table.from_pylist(rejects[si], schema=REJECT_SCHEMA))
        pairs = [p for r in done for p in r["pairs"]]
        meta = {"questions": len(done), "pairs": len(pairs), "requests": sum(r["requests"] for r in done),
                "rejected": len(rejects[si]),
                "estimates": sum(r["question"].get("estimates", 0) for r in done),
                "oracle_calls": sum(r["question"].get("oracle_calls", 0) for r in done)}
        run_dir.commit_table("pts/pairs", names[si], pa.Table.from_pylist(pairs, schema=PAIRS_SCHEMA), meta=meta)
        count("pts", "read", len(shards[si]))
        count("pts", "kept", len(done) - sum(bool(r["question"].get("error")) for r in done))
        count("pts", "rejected", len(rejects[si]))

    for si in pending:
        commit_if_done(si)  # shards whose every question was malformed
    inflight: dict[Any, tuple[int, int]] = {}
    it = iter(todo)
    try:
        while True:
            while len(inflight) < cfg.concurrency:
                nxt = next(it, None)
                if nxt is None:
                    break
                si, qi = nxt
                inflight[remote.remote(cfg, endpoint, model, shards[si][qi])] = nxt
            if not inflight:
                break
            ready, _ = ray.wait(list(inflight), num_returns=1)
            for ref in ready:
                si, qi = inflight.pop(ref)
                results[si][qi] = ray.get(ref)
                commit_if_done(si)
    except BaseException as e:
        for ref in inflight:
            ray.cancel(ref)
        run_dir.fail_stage("pts", f"{type(e).__name__}: {e}")
        raise

    # Assemble the per-shard parts into the stage's JSONL files.
    q_rows: list[dict] = []
    pv_rows: list[dict] = []
    pair_rows: list[dict] = []
    for name in names:
        q_rows += run_dir.read_jsonl(f"pts/parts/questions-{name}.jsonl")
        pv_rows += run_dir.read_jsonl(f"pts/parts/pivots-{name}.jsonl")
        if run_dir.exists(f"pts/parts/pairs-{name}.jsonl"):  # absent in shards written before pairs.jsonl
            pair_rows += run_dir.read_jsonl(f"pts/parts/pairs-{name}.jsonl")
    run_dir.write_jsonl("pts/questions.jsonl", q_rows)
    run_dir.write_jsonl("pts/pivots.jsonl", pv_rows)
    run_dir.write_jsonl("pts/pairs.jsonl", [_trl_pair(p) for p in pair_rows])
    metas = [run_dir.shard_meta("pts/pairs", n) for n in names]
    ok = [r for r in q_rows if not r.get("error")]
    dist = p_distribution([r["p"] for r in ok])
    counts = {
        "questions": len(questions),
        "rejected": sum(m.get("rejected", 0) for m in metas),
        "in_band": sum(cfg.p_min <= r["p"] <= cfg.p_max for r in ok),
        "searched": sum(bool(r["searched"]) for r in ok),
        "pivots": len(pv_rows),
        "pairs": sum(m.get("pairs", 0) for m in metas),
        "requests": sum(m.get("requests", 0) for m in metas),
        "estimates": sum(m.get("estimates", 0) for m in metas),
        "oracle_calls": sum(m.get("oracle_calls", 0) for m in metas),
        "p_deciles": dist["deciles"],
        "p_histogram": dist["histogram"],
        "p_mean": dist["mean"],
    }
    run_dir.finish_stage("pts", counts=counts)
    return counts


TRL_PAIR_KEYS = ("id", "prompt", "chosen", "rejected", "prompt_ids", "chosen_ids", "rejected_ids")


def _trl_pair(pair: dict) -> dict:
    """A pairs.jsonl row: `DPO_SCHEMA`'s columns (TRL's standard layout: the prompt is the query
    plus the solution prefix as text; chosen and rejected are one token each, with their ids), and
    the provenance (question id, p before/after the pivot, p after chosen/rejected)."""
    return {**{k: pair[k] for k in TRL_PAIR_KEYS}, **{k: v for k, v in pair.items() if k not in TRL_PAIR_KEYS}}


def _public_pivot(pv: dict) -> dict:
    """A pivots.jsonl row: the pivot record without the bulky query ids."""
    return {k: v for k, v in pv.items() if k != "query_ids"}
