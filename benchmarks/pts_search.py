"""Pivotal Token Search: our search against the reference PTS, in estimates and in wall time.

    python benchmarks/pts_search.py     # --questions 8 --samples 16 --chain 20 --concurrency 4 [--no-live]

**The reference** is codelion/pts, the open PTS implementation by the optillm author. It is not
on PyPI: `pip install pts` installs an unrelated project (PTS 1.4.8, "PIL Text Scaler"). So the
reference here is a faithful *sequential re-implementation* of its token searcher
(`pts/searchers/token.py` and `pts/searchers/base.py`, commit 0a17190), labelled
`reference (re-impl.)` below. What it keeps from the original:

- one process, one question at a time, a local Hugging Face model (`AutoModelForCausalLM`,
  `AutoTokenizer`) and `model.generate` with `num_return_sequences` in batches of `batch_size`
  (its default 5) until `num_samples` completions;
- text prefixes: every prefix is decoded to text and re-tokenised for the next estimate, and
  the probability cache is keyed by (query, prefix text, num_samples); p(query) is estimated with
  prefix "" and again by Subdivide with the formatted prompt as prefix (two cache keys);
- the solution is a fresh `generate` (not one of the samples); solutions of < 5 tokens skipped;
- Subdivide: one-token segments return at once, others estimate p before and after and split in
  halves; the emission loop estimates p before/after each one-token segment (cached);
- the rejected token of a *positive* pivot: a forward pass for the top `num_candidates` next
  tokens of the context, estimated one by one until one drops p by the threshold.

The same settings go to both: the model, the questions, K samples per estimate, temperature 1,
top-p 1 (no top-k), the gap, the max new tokens, one solution per question.

**Part 1, the algorithm** (scripted sampler, `phi4ray.pts.testing`): p(success | prefix) is
planted exactly (monotone pivots of +0.25, gap 0.2, so Algorithm 1 has no blind spot; drift
below the gap), and every estimate costs K = 20 oracle calls. Per planting: estimates (requests) to localise the pivots
with our Subdivide, with the reference's logic, and with a token-by-token scan; all must find
the planted pivots. Ratios are against the scan.

**Part 2, live** (wall time per question): a real `micro` Phi3ForCausalLM whose weights make it
a bigram model over a chain with two planted decisions (`chain_table`: p(query) = 0.4, solutions
of `--chain` + 3 tokens), so PTS has something to find. Ours: `run_pts` against our Ray Serve
app (OpenAI API, one CPU replica), with concurrency 1 and `--concurrency`. Reference: the
re-implementation above on the same checkpoint, in this process, torch with 1 thread (as the
replica has). Serve start-up and model loading are reported apart; the ratios are per question,
against the reference, measured in the same run. Writes `benchmarks/results/pts_search.json`.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from collections import OrderedDict

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from phi4ray.config import EngineConfig, PTSConfig, ServeConfig  # noqa: E402
from phi4ray.pts.oracles import math_oracle  # noqa: E402
from phi4ray.pts.search import QuestionSearch, pivotal_segments, run_pts, scan_pivots, subdivide  # noqa: E402
from phi4ray.pts.testing import (  # noqa: E402
    ScriptedClient,
    ScriptedModel,
    bigram_checkpoint,
    chain_table,
    planted_p,
    word_tokens,
)
from phi4ray.run import RunDir  # noqa: E402
from phi4ray.tokenizer import EOT_ID, IM_END_ID, decode, encode  # noqa: E402

RESULTS = os.path.join(os.path.dirname(__file__), "results", "pts_search.json")


# -- the reference, re-implemented ----------------------------------------------------------------
class ReferencePTS:
    """codelion/pts TokenPTSSearcher's search, sequential, over a backend that samples from text.

    `backend.generate(prompt_text, n, max_new_tokens) -> list[str]` (completions, special tokens
    skipped), `backend.solution(prompt_text) -> list[int]` (one sampled sequence after the prompt),
    `backend.top_tokens(context_text, k) -> list[int]`, and `encode`/`decode` (the model's
    tokenizer). Counts `estimates` (cache misses) and `oracle_calls`."""

    def __init__(self, backend, oracle, answer: str, prob_threshold: float, num_samples: int, max_new_tokens: int,
                 num_candidates: int = 10):
        self.b, self.oracle, self.answer = backend, oracle, answer
        self.prob_threshold, self.num_samples, self.max_new_tokens = prob_threshold, num_samples, max_new_tokens
        self.num_candidates = num_candidates
        self.cache: OrderedDict = OrderedDict()
        self.estimates = self.oracle_calls = 0

    def estimate(self, query: str, prefix: str = "") -> float:
        key = (query, prefix, self.num_samples, None, None)
        if key in self.cache:
            return self.cache[key]
        prompt = prefix if prefix else query  # build_conditioning_text: a token prefix replaces the prompt
        completions = self.b.generate(prompt, self.num_samples, self.max_new_tokens)
        self.estimates += 1
        self.oracle_calls += len(completions)
        prob = sum(bool(self.oracle(prompt + c, self.answer)) for c in completions) / self.num_samples
        self.cache[key] = prob
        return prob

    def subdivide(self, query: str, sequence: list[int], prefix: list[int]) -> list[list[int]]:
        if len(sequence) <= 1:
            return [sequence]
        before = self.estimate(query, self.b.decode(prefix))
        after = self.estimate(query, self.b.decode(prefix + sequence))
        if abs(after - before) < self.prob_threshold:
            return [sequence]
        mid = len(sequence) // 2
        return (self.subdivide(query, sequence[:mid], prefix)
                + self.subdivide(query, sequence[mid:], prefix + sequence[:mid]))

    def search(self, query: str, min_prob: float = 0.2, max_prob: float = 0.8, sequence: list[int] | None = None,
               rejected: bool = True):
        """(p(query), events, pairs): events are dicts with position, token id, prob_before/after.
        `rejected`: also find the rejected tokens of positive pivots (the DPO export's step)."""
        init = self.estimate(query)
        if not min_prob <= init <= max_prob:
            return init, [], []
        prompt_ids = self.b.encode(query)
        if sequence is None:
            sequence = self.b.solution(query)
        if len(sequence) < 5:
            return init, [], []
        events, prefix = [], list(prompt_ids)
        for seg in self.subdivide(query, sequence, prefix):
            if len(seg) == 1:
                before = self.estimate(query, self.b.decode(prefix))
                after = self.estimate(query, self.b.decode(prefix + seg))
                if abs(after - before) >= self.prob_threshold:
                    events.append({"position": len(prefix) - len(prompt_ids), "token_id": seg[0],
                                   "context": self.b.decode(prefix), "prob_before": before, "prob_after": after})
            prefix = prefix + seg
        pairs = []
        for ev in events if rejected else []:  # find_rejected_token: positive pivots only
            if ev["prob_after"] <= ev["prob_before"]:
                continue
            for t in self.b.top_tokens(ev["context"], self.num_candidates):
                if t == ev["token_id"]:
                    continue
                p = self.estimate(query, ev["context"] + self.b.decode([t]))
                if ev["prob_before"] - p >= self.prob_threshold:
                    pairs.append((ev["position"], ev["token_id"], t))
                    break
        return init, events, pairs


class ScriptedBackend:
    """The reference's view of a `ScriptedModel`: text in, completions out."""

    def __init__(self, model: ScriptedModel):
        self.m = model

    def encode(self, text: str) -> list[int]:
        return encode(text, allow_special=True)

    def decode(self, ids) -> str:
        return decode(list(ids))

    def generate(self, prompt: str, n: int, max_new_tokens: int) -> list[str]:
        outs = self.m.sample(self.encode(prompt), n)
        return [decode([t for t in c["token_ids"] if t not in (IM_END_ID, EOT_ID)]) for c in outs]

    def solution(self, prompt: str) -> list[int]:
        return self.m.solution

    def top_tokens(self, context: str, k: int) -> list[int]:
        raise NotImplementedError  # part 1 counts localisation only


class HFBackend:
    """The reference's model access: transformers generate and a forward pass, as in base.py."""

    def __init__(self, path: str, temperature: float, batch_size: int, seed: int):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.torch = torch
        self.tok = AutoTokenizer.from_pretrained(path)
        if self.tok.pad_token is None:
            self.tok.pad_token = self.tok.eos_token
        self.model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
        self.temperature, self.batch_size = temperature, batch_size
        torch.manual_seed(seed)

    def encode(self, text: str) -> list[int]:
        return self.tok(text).input_ids

    def decode(self, ids) -> str:
        return self.tok.decode(list(ids), skip_special_tokens=False)

    def _generate(self, prompt: str, n: int, max_new_tokens: int):
        t = self.tok(prompt, return_tensors="pt")
        with self.torch.no_grad():
            return t.input_ids.shape[1], self.model.generate(
                t.input_ids, attention_mask=t.attention_mask, do_sample=True, num_return_sequences=n,
                max_new_tokens=max_new_tokens, temperature=self.temperature, top_p=1.0, top_k=0,
                pad_token_id=self.tok.pad_token_id, return_dict_in_generate=True).sequences

    def generate(self, prompt: str, n: int, max_new_tokens: int) -> list[str]:
        out, left = [], n
        while left > 0:
            b = min(self.batch_size, left)
            plen, seqs = self._generate(prompt, b, max_new_tokens)
            out += [self.tok.decode(s[plen:], skip_special_tokens=True) for s in seqs]
            left -= b
        return out

    def solution(self, prompt: str) -> list[int]:
        plen, seqs = self._generate(prompt, 1, self.max_new_tokens)
        return seqs[0][plen:].tolist()

    def top_tokens(self, context: str, k: int) -> list[int]:
        ids = self.tok.encode(context, return_tensors="pt")
        with self.torch.no_grad():
            logits = self.model(ids).logits[0, -1]
        return self.torch.topk(self.torch.softmax(logits, 0), k=k).indices.tolist()


# -- part 1: the algorithm on planted p ---------------------------------------------------------------
def planting(n: int, n_pivots: int, seed: int) -> ScriptedModel:
    """`n` body tokens, `n_pivots` jumps of +0.25 at random positions, two drifts of +0.05, p
    ending at 0.95 and the solution right: monotone, so every pivot is visible to Subdivide."""
    rng = random.Random(seed)
    body = word_tokens(n)
    positions = sorted(rng.sample(range(n), n_pivots))
    jumps = {p: 0.25 for p in positions}
    for d in rng.sample([i for i in range(n) if i not in positions], 2):
        jumps[d] = 0.05
    p_fn, alts = planted_p(body, round(0.95 - sum(jumps.values()), 2), jumps)
    q = encode(f"<|im_start|>user<|im_sep|>planted {seed}<|im_end|><|im_start|>assistant<|im_sep|>", allow_special=True)
    m = ScriptedModel(q, body, p_fn, alts, solution_succeeds=True)
    m.planted = positions
    return m


def part1(args) -> dict:
    gap, k = 0.2, 20  # jumps of 0.25 against a gap of 0.2: no estimate sits on the threshold
    cfg = PTSConfig(samples=k, p_gap=gap, candidates=2, max_tokens=4096)
    rows = []
    for n in (64, 256):
        for n_piv in (1, 2, 3):
            tot = {"subdivide": [0, 0], "reference": [0, 0], "scan": [0, 0]}
            for seed in range(args.plantings):
                m = planting(n, n_piv, seed)
                for name in ("subdivide", "scan"):
                    qs = QuestionSearch(cfg=cfg, client=ScriptedClient(m), question_id="q", query_ids=m.query_ids,
                                        answer="17", oracle=math_oracle, stop_ids=frozenset([IM_END_ID, EOT_ID]))
                    qs.p(())
                    sol = qs.root_samples[0]["token_ids"]
                    found = (pivotal_segments(subdivide((), sol, qs.p, gap), gap) if name == "subdivide"
                             else scan_pivots((), sol, qs.p, gap))
                    assert [s.start for s in found] == m.planted, (name, n, n_piv, seed)
                    tot[name][0] += qs.estimates
                    tot[name][1] += qs.oracle_calls
                ref = ReferencePTS(ScriptedBackend(m), math_oracle, "17", gap, k, 4096)
                _, events, _ = ref.search(decode(m.query_ids), min_prob=0.0, max_prob=1.0, sequence=m.solution,
                                           rejected=False)
                assert [e["position"] for e in events] == m.planted, ("reference", n, n_piv, seed)
                tot["reference"][0] += ref.estimates
                tot["reference"][1] += ref.oracle_calls
            per = {name: {"estimates": e / args.plantings, "oracle_calls": c / args.plantings} for name, (e, c) in tot.items()}
            rows.append({"tokens": n + 7, "pivots": n_piv, **per})
    print(f"\nPart 1: estimates to localise planted pivots (mean of {args.plantings} plantings, K={k}, gap {gap}; "
          f"every estimate is K oracle calls)")
    print(f"{'tokens':>7} {'pivots':>7} {'subdivide':>10} {'reference':>10} {'scan':>7} {'subdiv/scan':>12} {'ref/scan':>9}")
    for r in rows:
        s, f, c = r["subdivide"]["estimates"], r["reference"]["estimates"], r["scan"]["estimates"]
        print(f"{r['tokens']:>7} {r['pivots']:>7} {s:>10.1f} {f:>10.1f} {c:>7.1f} {s / c:>12.3f} {f / c:>9.3f}")
    return {"k": k, "gap": gap, "plantings": args.plantings, "rows": rows}


# -- part 2: live ------------------------------------------------------------------------------
def live_questions(n: int) -> list[dict]:
    from phi4ray.tokenizer import chat_text

    return [{"id": f"q{i}", "prompt": chat_text([{"role": "user", "content": f"Walk the chain, question {chr(65 + i % 26)}."}],
                                                 add_generation_prompt=True), "answer": "17"} for i in range(n)]


def part2(args, work: str) -> dict:
    import ray
    import torch

    table, info = chain_table(args.chain, 0.8)
    ckpt = bigram_checkpoint(os.path.join(work, "chain"), table)
    questions = live_questions(args.questions)
    max_tokens = args.chain + 6
    out: dict = {"p_query": info["p"], "solution_tokens": args.chain + 3, "questions": args.questions}

    # the reference, first, in this process
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    backend = HFBackend(ckpt, 1.0, args.ref_batch, seed=0)
    backend.max_new_tokens = max_tokens
    load = time.perf_counter() - t0
    t0 = time.perf_counter()
    ref_stats = {"estimates": 0, "in_band": 0, "pivots": 0, "pairs": 0}
    for q in questions:
        ref = ReferencePTS(backend, math_oracle, q["answer"], args.gap, args.samples, max_tokens, args.ref_candidates)
        p, events, pairs = ref.search(q["prompt"])
        ref_stats["estimates"] += ref.estimates
        ref_stats["in_band"] += 0.2 <= p <= 0.8
        ref_stats["pivots"] += len(events)
        ref_stats["pairs"] += len(pairs)
    wall = time.perf_counter() - t0
    out["reference"] = {"startup_s": load, "wall_s": wall, "s_per_question": wall / len(questions), **ref_stats}

    # ours, through Serve
    from ray import serve

    from phi4ray.serve import app

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    t0 = time.perf_counter()
    scfg = ServeConfig(port=args.port, model_name="chain", max_model_len=256, max_ongoing_requests=16,
                       engine=EngineConfig(preset="micro", device="cpu", num_cpus_per_actor=1, max_batch_rows=256))
    url = app.start(scfg, ckpt)
    startup = time.perf_counter() - t0
    try:
        for conc in sorted({1, args.concurrency}):
            cfg = PTSConfig(samples=args.samples, p_gap=args.gap, candidates=args.ref_candidates, temperature=1.0,
                            max_tokens=max_tokens, solutions_per_question=1, concurrency=conc, seed=0)
            rd = RunDir(os.path.join(work, f"run-c{conc}"))
            t0 = time.perf_counter()
            counts = run_pts(cfg, rd, url, "chain", questions)
            wall = time.perf_counter() - t0
            out[f"ours_c{conc}"] = {"startup_s": startup, "wall_s": wall, "s_per_question": wall / len(questions),
                                    "estimates": counts["estimates"], "in_band": counts["in_band"],
                                    "pivots": counts["pivots"], "pairs": counts["pairs"], "requests": counts["requests"]}
    finally:
        app.stop()
        serve.shutdown()
        ray.shutdown()
    base = out["reference"]["s_per_question"]
    print(f"\nPart 2: live, {args.questions} questions, K={args.samples}, gap {args.gap}, bigram chain micro model "
          f"(p(query) = {info['p']}, solutions of {args.chain + 3} tokens)")
    print(f"{'run':<24} {'s/question':>11} {'x reference':>12} {'estimates':>10} {'in band':>8} {'pivots':>7} "
          f"{'pairs':>6} {'start-up s':>11}")
    for name in ["reference"] + [k for k in out if k.startswith("ours_c")]:
        r = out[name]
        label = "reference (re-impl.)" if name == "reference" else f"ours, concurrency {name[6:]}"
        r["speedup_vs_reference"] = base / r["s_per_question"]
        print(f"{label:<24} {r['s_per_question']:>11.2f} {r['speedup_vs_reference']:>12.2f} {r['estimates']:>10} "
              f"{r['in_band']:>8} {r['pivots']:>7} {r['pairs']:>6} {r['startup_s']:>11.1f}")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--questions", type=int, default=8)
    ap.add_argument("--samples", type=int, default=16, help="K, completions per estimate")
    ap.add_argument("--gap", type=float, default=0.3)
    ap.add_argument("--chain", type=int, default=20, help="chain length of the live model (<= 28)")
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--ref-batch", type=int, default=5, help="the reference's generate batch (its default: 5)")
    ap.add_argument("--ref-candidates", type=int, default=4, help="candidate tokens per pivot, both searches")
    ap.add_argument("--plantings", type=int, default=10)
    ap.add_argument("--port", type=int, default=8765)
    ap.add_argument("--no-live", action="store_true", help="part 1 only")
    args = ap.parse_args()
    os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
    results = {"args": vars(args), "part1": part1(args)}
    if not args.no_live:
        with tempfile.TemporaryDirectory(prefix="pts-bench-") as work:
            results["part2"] = part2(args, work)
    results["load_average"] = os.getloadavg()
    os.makedirs(os.path.dirname(RESULTS), exist_ok=True)
    with open(RESULTS, "w") as f:
        json.dump(results, f, indent=2)
    print(f"\nwrote {RESULTS}")


if __name__ == "__main__":
    main()
