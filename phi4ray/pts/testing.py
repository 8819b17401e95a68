"""Models with a known p(success | prefix), for PTS tests and the benchmark.

- `ScriptedModel`: a sampler scripted in token ids. A question's planted solution is `body`
  (word tokens) then a tail (`right`, " so the answer is 17", and `<|im_end|>`); `p_fn(prefix)`
  gives the exact p(success | query + prefix) for every prefix of the body (inside the tail, p
  is the solution's outcome: the sampler can only finish it as it is), and a request for n
  completions returns exactly round(p * n) successful ones (exact when p is a multiple of 1/n),
  so the estimates PTS makes equal the planted p. `planted_p` builds such a p from a list of jumps at known positions,
  with alternatives (from `top_logprobs`) that move p the other way at the pivots.
- `ScriptedClient`: the model behind `CompletionsClient`'s interface, in process.
- `serve_scripted`: the model behind a real OpenAI-compatible HTTP server (`/v1/completions`, the
  fields PTS uses), which also records the most requests it had in flight at once.
- `bigram_checkpoint`: a real `micro` Phi3ForCausalLM whose weights make it a bigram model with
  a given next-token table (attention and MLP outputs zeroed), so its p(success) is known in
  closed form; `chain_table` builds a table with long solutions and planted decisions.

These are test doubles: they stand in for a model so that the search can be checked exactly.
"""

from __future__ import annotations

import json
import math
import threading
from dataclasses import dataclass, field
from typing import Callable, Sequence

__all__ = [
    "word_tokens",
    "ScriptedModel",
    "ScriptedClient",
    "planted_p",
    "serve_scripted",
    "bigram_checkpoint",
    "chain_table",
]

_AVOID = {"answer", "is", "was", "be", "so", "the"}


def word_tokens(n: int, skip: int = 0) -> list[int]:
    """`n` distinct token ids that each decode to a lower-case word (with its leading space),
    no digits: solution bodies whose text holds no number."""
    from phi4ray.tokenizer import decode

    out = []
    for t in range(1000, 30000):
        s = decode([t])
        if s.startswith(" ") and s[1:].isalpha() and s[1:].islower() and len(s) > 3 and s[1:] not in _AVOID:
            out.append(t)
            if len(out) == n + skip:
                break
    return out[skip:]


def _tail(text: str) -> list[int]:
    from phi4ray.tokenizer import IM_END_ID, encode

    return encode(text) + [IM_END_ID]


@dataclass
class ScriptedModel:
    """Completions of `query_ids + prefix` whose success rate is exactly `p_fn(prefix)`.

    `body` + the success tail is the solution the first root sample returns. `alternatives[i]`
    is {token id: logprob} at body position i (the solution's token included), returned as
    `top_logprobs`. `requests` counts calls; `prefixes` records every prefix asked about.
    """

    query_ids: list[int]
    body: list[int]
    p_fn: Callable[[tuple[int, ...]], float]
    alternatives: list[dict[int, float]] = field(default_factory=list)
    right: str = " so the answer is 17"
    wrong: str = " so the answer is 99"
    """The text that ends a successful / failed completion (then `<|im_end|>`)."""
    solution_succeeds: bool = True
    requests: int = 0
    prefixes: list[tuple[int, ...]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.ok_tail, self.bad_tail = _tail(self.right), _tail(self.wrong)
        self._lock = threading.Lock()

    @property
    def solution(self) -> list[int]:
        return list(self.body) + (self.ok_tail if self.solution_succeeds else self.bad_tail)

    def sample(self, prompt_ids: Sequence[int], n: int, logprobs: int | None = None) -> list[dict]:
        prompt_ids = list(prompt_ids)
        if prompt_ids[: len(self.query_ids)] != self.query_ids:
            raise ValueError("prompt does not start with the scripted query")
        prefix = tuple(prompt_ids[len(self.query_ids) :])
        with self._lock:
            self.requests += 1
            self.prefixes.append(prefix)
        k = round(self.p_fn(prefix) * n)
        outs = [list(self.ok_tail)] * k + [list(self.bad_tail)] * (n - k)
        sol, b = self.solution, len(self.body)
        if len(prefix) > b and list(prefix) == sol[: len(prefix)]:
            outs = [sol[len(prefix) :]] * n  # inside the solution's tail: it can only end as it does
        elif not prefix:  # the first sample is the planted solution (with as many successes overall)
            first = self.solution
            rest_ok = k - 1 if self.solution_succeeds else k
            rest = [list(self.ok_tail)] * rest_ok + [list(self.bad_tail)] * (n - 1 - rest_ok)
            if rest_ok < 0 or len(rest) != n - 1:
                raise ValueError(f"p(()) = {k}/{n} is inconsistent with the planted solution's outcome")
            outs = [first] + rest
        choices = []
        for i, ids in enumerate(outs):
            c = {"index": i, "token_ids": ids, "finish_reason": "stop"}
            if logprobs is not None:
                tops = []
                for j in range(len(ids)):
                    pos = len(prefix) + j
                    alts = self.alternatives[pos] if not prefix and i == 0 and pos < len(self.alternatives) else {}
                    tops.append({f"token_id:{t}": lp for t, lp in (alts or {ids[j]: 0.0}).items()})
                c["logprobs"] = {"tokens": [f"token_id:{t}" for t in ids],
                                 "token_logprobs": [0.0] * len(ids), "top_logprobs": tops}
            choices.append(c)
        return choices


class ScriptedClient:
    """`CompletionsClient`'s interface over a `ScriptedModel`, in process (no HTTP)."""

    def __init__(self, model: ScriptedModel):
        self.model = model
        self.requests = 0

    def complete(self, prompt_ids, n=1, temperature=1.0, max_tokens=16, seed=None, logprobs=None, **kw):
        from phi4ray.pts.client import CompletionsClient

        self.requests += 1
        return [CompletionsClient._parse_choice(c, logprobs is not None)
                for c in self.model.sample(prompt_ids, n, logprobs)]

    def close(self) -> None:
        pass


def planted_p(
    body: Sequence[int], p0: float, jumps: dict[int, float], alt_p: dict[int, float] | None = None,
    alt_tokens: Sequence[int] | None = None,
) -> tuple[Callable[[tuple[int, ...]], float], list[dict[int, float]]]:
    """p over prefixes of `body`: `p0` at the start, changing by `jumps[i]` when token i is
    appended. A prefix that leaves the body at position i (its token there is `alt_tokens[i]`)
    has p `alt_p.get(i, p before i)`. (Inside the solution's tail, `ScriptedModel` finishes the
    solution as it is: p is its outcome there.) Returns (p_fn, alternatives per position)."""
    body = tuple(body)
    ps = [p0]
    for i in range(len(body)):
        ps.append(round(ps[-1] + jumps.get(i, 0.0), 10))
    alt_p = alt_p or {}
    alt_tokens = list(alt_tokens or [])

    def p_fn(prefix: tuple[int, ...]) -> float:
        for i, t in enumerate(prefix[: len(body)]):
            if t != body[i]:
                return alt_p.get(i, ps[i])
        return ps[min(len(prefix), len(body))]

    alternatives = []
    for i, t in enumerate(body):
        row = {t: math.log(0.6)}
        if i < len(alt_tokens):
            row[alt_tokens[i]] = math.log(0.3)
        alternatives.append(row)
    return p_fn, alternatives


# -- an OpenAI-compatible HTTP server over scripted models -------------------------------------
def serve_scripted(models: dict[tuple[int, ...], ScriptedModel], delay_s: float = 0.0):
    """Serve `models` (keyed by query ids) at `http://127.0.0.1:PORT/v1`. Returns (url, server);
    `server.max_inflight` is the most requests it had in flight at once; `server.shutdown()` stops it."""
    import time
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    state = {"inflight": 0}
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def _reply(self, status: int, obj: dict) -> None:
            data = json.dumps(obj).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            self._reply(200, {"object": "list", "data": [{"id": "scripted", "object": "model"}]})

        def do_POST(self):
            with lock:
                state["inflight"] += 1
                server.max_inflight = max(server.max_inflight, state["inflight"])
            try:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                prompt = body["prompt"]
                model = next((m for q, m in models.items() if list(prompt[: len(q)]) == list(q)), None)
                if model is None:
                    self._reply(400, {"error": {"message": "unknown prompt", "type": "invalid_request_error",
                                                "param": "prompt", "code": None}})
                    return
                if delay_s:
                    time.sleep(delay_s)
                choices = model.sample(prompt, body.get("n", 1), body.get("logprobs"))
                self._reply(200, {"object": "text_completion", "model": body.get("model"), "choices": choices})
            finally:
                with lock:
                    state["inflight"] -= 1

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.max_inflight = 0
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{server.server_port}/v1", server


# -- a real model with a known p ------------------------------------------------------------------
def bigram_checkpoint(path, table: dict[int, dict[int, float]], margin: float = 30.0) -> str:
    """Save a `micro` model whose next-token logits are margin + log p(next | current token)
    (0 elsewhere): a bigram model over `table`, with at most 64 (the width) distinct tokens."""
    import torch

    from phi4ray.model import build_model, save_checkpoint

    model = build_model("micro", seed=0)
    tokens = sorted(set(table) | {t for row in table.values() for t in row})
    d = model.config.hidden_size
    if len(tokens) > d:
        raise ValueError(f"a bigram micro model holds at most {d} tokens, got {len(tokens)}")
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        emb, head = model.model.embed_tokens.weight, model.lm_head.weight
        emb[:, : len(tokens)] = 0.0
        head.zero_()
        for i, t in enumerate(tokens):
            emb[t].zero_()
            emb[t, i] = 1.0  # after the final RMSNorm this is sqrt(d) * e_i
            for nxt, p in table.get(t, {}).items():
                head[nxt, i] = (margin + math.log(p)) / math.sqrt(d)
    save_checkpoint(model, path)
    return str(path)


def chain_table(length: int = 12, p_right: float = 0.8) -> tuple[dict[int, dict[int, float]], dict]:
    """A bigram table for `bigram_checkpoint` with long solutions and known pivots.

    After `<|im_sep|>` the model picks path A or B (1/2 each), then walks `length` fixed word
    tokens of that path and `=` (A) or `:` (B). Path A ends in `17` with probability `p_right`
    (else `19`); path B always ends in `27`; then `<|im_end|>`: solutions of `length` + 3 tokens.
    For the answer 17, p(success | query) = p_right / 2; the decisions that matter are A over B
    (p: p_right/2 -> p_right or 0) and 17 over 19 at A's end.
    """
    from phi4ray.tokenizer import IM_END_ID, IM_SEP_ID, encode

    words = word_tokens(2 * length)
    eq, colon = encode("=")[0], encode(":")[0]  # so the answer is not glued to a word ("like17")
    a, b = words[:length] + [eq], words[length:] + [colon]
    r17, r19, r27 = (encode(s)[0] for s in ("17", "19", "27"))
    table: dict[int, dict[int, float]] = {IM_SEP_ID: {a[0]: 0.5, b[0]: 0.5}}
    for path in (a, b):
        for x, y in zip(path, path[1:]):
            table[x] = {y: 1.0}
    table[a[-1]] = {r17: p_right, r19: 1 - p_right}
    table[b[-1]] = {r27: 1.0}
    for t in (r17, r19, r27):
        table[t] = {IM_END_ID: 1.0}
    return table, {"a": a, "b": b, "17": r17, "19": r19, "27": r27, "p": p_right / 2}
