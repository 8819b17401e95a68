"""Evaluation through the `Sampler`, of a training stage's checkpoint or of an endpoint.

run.py              the eval stage: tasks, reports (eval/<name>.json), the table, decontamination
formats.py          benchmark files in their public layouts (MMLU, ARC, GSM8K, MATH, HumanEval, MBPP)
shots.py            few-shot examples: where they come from, which ones a prompt gets
multiple_choice.py  log-likelihood multiple choice (acc, acc_norm) through Sampler.score
generation.py       held-out arithmetic; few-shot GSM8K and MATH with answer extraction
code_exec.py        HumanEval and MBPP pass@1 in the sandbox
needle.py           long-context recall: a key planted at chosen depths of a haystack
endpoint.py         the Sampler over an OpenAI-compatible /v1/completions endpoint
fixtures.py         the small generated sets shipped in data/

docs/eval.md is the user's guide.
"""
