"""Code generation, pass@1: HumanEval and MBPP programs run with their tests in the sandbox.

* **HumanEval** (Chen et al. 2021): the prompt is the function's signature and docstring; the
  model writes the body, greedily, until a line starts a new top-level block (`\\ndef `,
  `\\nclass `, `\\nif __name__`, `\\nprint(`). The program is prompt + completion; the tests are
  the item's `test` (which defines `check(candidate)`) followed by `check(<entry_point>)`.
* **MBPP** (Austin et al. 2021), 3-shot in the paper's layout (lm-eval's too):

      You are an expert Python programmer, and here is your task: <text> Your code should pass these tests:

      <test 1>
      <test 2>
      <test 3>
      [BEGIN]
      <code>
      [DONE]

  and the model writes the code after `[BEGIN]` until `[DONE]`. The program is that code (the
  last fenced Python block, if the model fenced it); the tests are `test_setup_code` and the
  asserts of `test_list`.

`pass@1` is the fraction of items whose one greedy program passes every test in
`phi4ray.synth.sandbox` (its status is `passed`: no failure, timeout, memory or output limit, no
forbidden call). Programs run concurrently with `run_many`. Identical (program, tests) pairs are
run once per process: an undertrained model writes the same few programs for many prompts, and
the stages of one run often write the same ones.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence

HUMANEVAL_STOP = ["\ndef ", "\nclass ", "\nif __name__", "\nprint("]
MBPP_STOP = ["[DONE]"]

_CACHE: OrderedDict[tuple, tuple[str, str]] = OrderedDict()
_CACHE_MAX = 4096
_lock = threading.Lock()


def humaneval_program(item: dict, completion: str) -> tuple[str, str]:
    """(program, tests) of a HumanEval completion."""
    return item["prompt"] + completion, f"{item['test']}\n\ncheck({item['entry_point']})\n"


def _mbpp_block(item: dict) -> str:
    tests = "\n".join(item["tests"])
    return (f"You are an expert Python programmer, and here is your task: {item['text'].strip()} "
            f"Your code should pass these tests:\n\n{tests}\n[BEGIN]\n")


def mbpp_prompt(item: dict, shots: Sequence[dict]) -> str:
    body = "".join(f"{_mbpp_block(s)}{s['code'].strip()}\n[DONE]\n\n" for s in shots)
    return body + _mbpp_block(item)


def mbpp_program(item: dict, completion: str) -> tuple[str, str]:
    """(program, tests) of an MBPP completion."""
    from phi4ray.pts.oracles import extract_code

    program = extract_code(completion) if "```" in completion else completion
    tests = (item.get("setup") or "") + "\n" + "\n".join(item["tests"]) + "\n"
    return program.strip("\n") + "\n", tests


def run_programs(jobs: Sequence[tuple[str, str]], timeout_s: float = 10.0) -> list[tuple[str, str]]:
    """(status, reason) of each (program, tests) in the sandbox, in order; cached per process."""
    from phi4ray.synth.sandbox import SandboxConfig, run_many

    keys = [(p, t, timeout_s) for p, t in jobs]
    with _lock:
        todo = list(dict.fromkeys(k for k in keys if k not in _CACHE))
    if todo:
        results = run_many([(p, t) for p, t, _ in todo], config=SandboxConfig(timeout_s=timeout_s))
        with _lock:
            for k, r in zip(todo, results):
                _CACHE[k] = (r.status, r.reason[:300])
                if len(_CACHE) > _CACHE_MAX:
                    _CACHE.popitem(last=False)
    with _lock:
        return [_CACHE.get(k, ("error", "evicted from the cache; run again")) for k in keys]


def run_code_task(sampler, kind: str, items: list[dict], shot_pool: list[dict], shots: int, max_tokens: int,
                  batch_size: int = 32, timeout_s: float = 10.0) -> tuple[dict, list[dict]]:
    """({pass@1}, per-item records) of HumanEval or MBPP items."""
    from phi4ray.eval.generation import generate_all
    from phi4ray.eval.shots import pick_shots
    from phi4ray.inference.sampler import SamplingParams

    if kind == "humaneval":
        prompts = [it["prompt"] for it in items]
        stop, to_program = HUMANEVAL_STOP, humaneval_program
    else:
        prompts = [mbpp_prompt(it, pick_shots(shot_pool, it, shots)) for it in items]
        stop, to_program = MBPP_STOP, mbpp_program
    params = SamplingParams(n=1, temperature=0.0, max_tokens=max_tokens, stop=stop)
    comps = generate_all(sampler, prompts, params, batch_size)
    jobs = [to_program(it, c.text) for it, c in zip(items, comps)]
    verdicts = run_programs(jobs, timeout_s)
    records = [{"id": it["id"], "completion": c.text, "status": st, "reason": why, "passed": st == "passed"}
               for it, c, (st, why) in zip(items, comps, verdicts)]
    return {"pass@1": sum(r["passed"] for r in records) / (len(records) or 1)}, records
