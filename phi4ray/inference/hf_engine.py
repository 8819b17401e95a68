"""`TransformersSampler`: the `Sampler` on plain transformers + torch, CPU or GPU.

How one `generate` call runs:

1. Prompts are encoded (str with special tokens allowed) and grouped into chunks of at most
   `max_batch_rows // n` prompts.
2. A chunk is left-padded into one batch with an attention mask and explicit position ids
   (0, 1, ... from each prompt's first real token), and prefilled once, keeping only the last
   position's logits.
3. The KV cache is repeated n ways (`DynamicCache.batch_repeat_interleave`), so the n samples
   of a prompt share one prefill instead of encoding the prompt n times.
4. A manual decode loop feeds one token per row through `past_key_values`. Rows that finish
   (stop token, stop string, token budget) are dropped from the batch and the cache
   (`batch_select_indices`), so long and short samples do not pay for each other.

Sampling: temperature, then top-p, then one draw per row by the exponential race
(argmax p_i / E_i with E_i ~ Exp(1) is an exact categorical draw). Each prompt has its own
`torch.Generator` seeded with `params.seed`, and it draws noise for all n rows at every step,
finished or not, so a request's samples depend on its seed and not on its batch neighbours.
Logprobs are raw `log_softmax(logits)` (vLLM's default; see `sampler.py`).
"""

from __future__ import annotations

import secrets
from typing import Sequence

import torch

from phi4ray.inference.sampler import Completion, SamplingParams

__all__ = ["TransformersSampler", "resolve_device"]


def resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


class TransformersSampler:
    """`Sampler` over a Hugging Face causal LM: a `Phi3ForCausalLM` from `phi4ray.model`, or, with
    `tokenizer` (a Hugging Face tokenizer), a teacher model with its own vocabulary (see
    `phi4ray.inference.models`). With a teacher, str prompts and text go through its tokenizer,
    and the default `stop_token_ids` (phi4ray's end-of-text and end-of-turn) mean its own."""

    def __init__(
        self,
        model: torch.nn.Module,
        device: str | torch.device | None = "auto",
        *,
        max_batch_rows: int = 64,
        max_model_len: int | None = None,
        score_chunk_tokens: int = 512,
        tokenizer=None,
    ):
        self.device = resolve_device(device)
        self.model = model.to(self.device).eval()
        self.max_batch_rows = max(1, max_batch_rows)
        ctx = getattr(model.config, "max_position_embeddings", None) or 4096
        self.max_model_len = min(max_model_len, ctx) if max_model_len else ctx
        self.vocab_size = model.config.vocab_size
        self.score_chunk_tokens = score_chunk_tokens
        self.tokenizer = tokenizer
        if tokenizer is None:
            from phi4ray.tokenizer import PAD_ID

            self.pad_id = PAD_ID
            self.end_ids: list[int] | None = None
        else:
            ends = {tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<|im_end|>")}
            self.end_ids = sorted(i for i in ends if isinstance(i, int) and 0 <= i < self.vocab_size)
            self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.end_ids[0]

    @classmethod
    def from_pretrained(
        cls, path: str, device: str | torch.device | None = "auto", dtype=None, **kwargs
    ) -> "TransformersSampler":
        from phi4ray.inference.models import is_phi4ray_checkpoint, load_teacher, resolve_bundled
        from phi4ray.model import load_model

        dev = resolve_device(device)
        path = resolve_bundled(path) or path
        if is_phi4ray_checkpoint(path):
            return cls(load_model(path, dtype=dtype, device=str(dev)), device=dev, **kwargs)
        model, tok = load_teacher(path, dtype=dtype, device=str(dev))
        return cls(model, device=dev, tokenizer=tok, **kwargs)

    # -- tokens -----------------------------------------------------------------------------
    @staticmethod
    def encode_prompt(prompt: str | Sequence[int]) -> list[int]:
        if isinstance(prompt, str):
            from phi4ray.tokenizer import encode

            return encode(prompt, allow_special=True)
        return [int(t) for t in prompt]

    @staticmethod
    def decode(ids: Sequence[int]) -> str:
        from phi4ray.tokenizer import decode

        return decode(list(ids))

    def _encode(self, prompt: str | Sequence[int]) -> list[int]:
        if self.tokenizer is None or not isinstance(prompt, str):
            return self.encode_prompt(prompt)
        return list(self.tokenizer.encode(prompt, add_special_tokens=False))

    def _decode(self, ids: Sequence[int]) -> str:
        return self.decode(ids) if self.tokenizer is None else self.tokenizer.decode(list(ids), skip_special_tokens=False)

    def encode_text(self, text: str) -> list[int]:
        """Ordinary text (special-token strings stay text) as this model's token ids."""
        if self.tokenizer is None:
            from phi4ray.tokenizer import encode

            return encode(text)
        return list(self.tokenizer.encode(text, add_special_tokens=False, split_special_tokens=True))

    def chat_ids(self, messages: list[dict]) -> list[int]:
        """Token ids of a conversation plus the assistant generation prompt, in this model's chat format."""
        if self.tokenizer is None:
            from phi4ray.tokenizer import render_chat

            return render_chat(messages, add_generation_prompt=True)[0]
        out = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        return list(out["input_ids"] if hasattr(out, "keys") else out)  # a BatchEncoding in newer transformers

    def _stop_ids(self, params: SamplingParams) -> set[int]:
        ids = list(params.stop_token_ids or [])
        if self.end_ids is not None:
            from phi4ray.inference.sampler import default_stop_token_ids

            if sorted(ids) == sorted(default_stop_token_ids()):
                return set(self.end_ids)
        return set(ids)

    # -- generate ---------------------------------------------------------------------------
    @torch.inference_mode()
    def generate(self, prompts: list[str | list[int]], params: SamplingParams, on_token=None) -> list[list[Completion]]:
        """`on_token(prompt_index, sample_index, token_id, logprob, top)`, if given, is called for every
        sampled token as soon as it is decoded (streaming); an exception it raises aborts the call."""
        ids = [self._encode(p) for p in prompts]
        for i, p in enumerate(ids):
            if not p:
                raise ValueError(f"prompt {i} is empty")
            if len(p) >= self.max_model_len:
                raise ValueError(f"prompt {i} has {len(p)} tokens; the model's context is {self.max_model_len}")
            if min(p) < 0 or max(p) >= self.vocab_size:
                raise ValueError(f"prompt {i} has token ids outside [0, {self.vocab_size})")
        per_chunk = max(1, self.max_batch_rows // params.n)
        out: list[list[Completion]] = []
        for s in range(0, len(ids), per_chunk):
            out.extend(self._generate_chunk(ids[s : s + per_chunk], params, on_token, s))
        return out

    def _generate_chunk(self, prompts: list[list[int]], params: SamplingParams, on_token=None,
                        first: int = 0) -> list[list[Completion]]:
        dev, n, B = self.device, params.n, len(prompts)
        L = max(len(p) for p in prompts)
        input_ids = torch.full((B, L), self.pad_id, dtype=torch.long)
        attn = torch.zeros((B, L), dtype=torch.long)
        for b, p in enumerate(prompts):
            input_ids[b, L - len(p) :] = torch.tensor(p)
            attn[b, L - len(p) :] = 1
        input_ids, attn = input_ids.to(dev), attn.to(dev)
        pos = (attn.cumsum(-1) - 1).clamp(min=0)
        out = self.model(input_ids=input_ids, attention_mask=attn, position_ids=pos, use_cache=True, logits_to_keep=1)
        cache = out.past_key_values
        logits = out.logits[:, -1, :].float()
        next_pos = pos[:, -1] + 1
        if n > 1:
            cache.batch_repeat_interleave(n)
            logits = logits.repeat_interleave(n, dim=0)
            attn = attn.repeat_interleave(n, dim=0)
            next_pos = next_pos.repeat_interleave(n, dim=0)

        R = B * n
        budget = [min(params.max_tokens, self.max_model_len - len(prompts[r // n])) for r in range(R)]
        stop_ids = self._stop_ids(params)
        gens = None
        if params.temperature > 0:
            gens = []
            for _ in range(B):
                g = torch.Generator(device=dev)
                g.manual_seed(params.seed if params.seed is not None else secrets.randbits(63))
                gens.append(g)
        toks: list[list[int]] = [[] for _ in range(R)]
        lps: list[list[float]] = [[] for _ in range(R)]
        tops: list[list[dict[int, float]]] | None = [[] for _ in range(R)] if params.logprobs is not None else None
        finish: list[str | None] = [None] * R
        stop_reason: list[int | str | None] = [None] * R
        cut: list[int | None] = [None] * R  # char position of a stop string in the decoded text
        alive = list(range(R))  # row ids (r = b * n + j) still in the batch, in batch order

        while True:
            logp = torch.log_softmax(logits, dim=-1)
            tok = self._sample(logits, alive, n, params, gens)
            tok_lp = logp.gather(-1, tok[:, None])[:, 0]
            k = params.logprobs or 0
            top_v, top_i = (logp.topk(k, dim=-1) if k > 0 else (None, None))
            tok_l, tok_lp_l = tok.tolist(), tok_lp.tolist()
            top_v_l = top_v.tolist() if top_v is not None else None
            top_i_l = top_i.tolist() if top_i is not None else None
            keep = []
            for a, r in enumerate(alive):
                t = tok_l[a]
                toks[r].append(t)
                lps[r].append(tok_lp_l[a])
                if tops is not None:
                    d = dict(zip(top_i_l[a], top_v_l[a])) if top_i_l is not None else {}
                    d[t] = tok_lp_l[a]
                    tops[r].append(d)
                if on_token is not None:
                    on_token(first + r // n, r % n, t, tok_lp_l[a], tops[r][-1] if tops is not None else None)
                if t in stop_ids:
                    finish[r], stop_reason[r] = "stop", t
                elif params.stop and self._hit_stop_string(r, toks[r], params.stop, cut, stop_reason):
                    finish[r] = "stop"
                elif len(toks[r]) >= budget[r]:
                    finish[r] = "length"
                else:
                    keep.append(a)
            if not keep:
                break
            if len(keep) < len(alive):
                idx = torch.tensor(keep, device=dev)
                cache.batch_select_indices(idx)
                attn, next_pos, tok = attn[idx], next_pos[idx], tok[idx]
                alive = [alive[a] for a in keep]
            attn = torch.cat([attn, attn.new_ones((len(alive), 1))], dim=1)
            out = self.model(
                input_ids=tok[:, None], attention_mask=attn, position_ids=next_pos[:, None],
                past_key_values=cache, use_cache=True,
            )
            cache = out.past_key_values
            logits = out.logits[:, -1, :].float()
            next_pos = next_pos + 1

        results: list[list[Completion]] = []
        for b in range(B):
            row = []
            for j in range(n):
                r = b * n + j
                ids = toks[r]
                text_ids = ids[:-1] if finish[r] == "stop" and cut[r] is None and ids and ids[-1] in stop_ids else ids
                text = self._decode(text_ids)
                if cut[r] is not None:
                    text = text[: cut[r]]
                row.append(Completion(
                    text=text, token_ids=list(ids), logprobs=lps[r],
                    top_logprobs=tops[r] if tops is not None else None,
                    finish_reason=finish[r] or "length", stop_reason=stop_reason[r],
                ))
            results.append(row)
        return results

    @staticmethod
    def _sample(logits: torch.Tensor, alive: list[int], n: int, params: SamplingParams, gens) -> torch.Tensor:
        """One token per alive row: greedy at temperature 0, else temperature + top-p + a seeded draw."""
        if params.temperature <= 1e-5 or gens is None:
            return logits.argmax(dim=-1)
        probs = torch.softmax(logits / params.temperature, dim=-1)
        if params.top_p < 1.0:
            sp, si = probs.sort(dim=-1, descending=True)
            drop = (sp.cumsum(dim=-1) - sp) > params.top_p  # keeps the smallest head with mass >= top_p
            sp = sp.masked_fill(drop, 0.0)
            probs = torch.zeros_like(probs).scatter_(-1, si, sp)
        # Exponential race: argmax(p / E), E ~ Exp(1), is a draw from p. Each prompt's generator
        # draws noise for all n of its rows every step, so the stream never depends on which
        # rows are still alive or on other prompts in the batch.
        noise = torch.empty_like(probs)
        by_prompt: dict[int, list[int]] = {}
        for a, r in enumerate(alive):
            by_prompt.setdefault(r // n, []).append(a)
        for b, rows in by_prompt.items():
            e = torch.empty((n, probs.shape[-1]), device=probs.device, dtype=probs.dtype)
            e.exponential_(generator=gens[b])
            sample_idx = torch.tensor([alive[a] % n for a in rows], device=probs.device)
            noise[torch.tensor(rows, device=probs.device)] = e[sample_idx]
        return (probs / noise).argmax(dim=-1)

    def _hit_stop_string(self, r: int, ids: list[int], stop: list[str], cut: list, stop_reason: list) -> bool:
        text = self._decode(ids)
        last = self._decode(ids[:-1]) if len(ids) > 1 else ""
        # Only a stop string that ends inside the newest token's text is new.
        longest = max(len(s) for s in stop)
        start = max(0, len(last) - longest + 1)
        best = None
        for s in stop:
            if not s:
                continue
            i = text.find(s, start)
            if i >= 0 and (best is None or i < best[0]):
                best = (i, s)
        if best is None:
            return False
        cut[r], stop_reason[r] = best
        return True

    # -- score ------------------------------------------------------------------------------
    @torch.inference_mode()
    def score(self, prompts: list[list[int]]) -> list[list[float]]:
        """log p(token_i | tokens_<i) per prompt token; entry 0 is nan (it has no prefix)."""
        return self.score_with_top(prompts, 0)[0]

    @torch.inference_mode()
    def score_with_top(
        self, prompts: list[list[int]], top_k: int
    ) -> tuple[list[list[float]], list[list[dict[int, float]]] | None]:
        """`score`, plus per position the top `top_k` {token id: logprob} (with the actual token); entry 0 is {}."""
        lps: list[list[float]] = []
        tops: list[list[dict[int, float]]] | None = [] if top_k else None
        rows = max(1, self.max_batch_rows)
        for s in range(0, len(prompts), rows):
            chunk = [self._encode(p) for p in prompts[s : s + rows]]
            a, t = self._score_chunk(chunk, top_k)
            lps.extend(a)
            if tops is not None:
                tops.extend(t)
        return lps, tops

    def _score_chunk(self, prompts: list[list[int]], top_k: int):
        dev, B = self.device, len(prompts)
        L = max((len(p) for p in prompts), default=0)
        if L == 0:
            return [[] for _ in prompts], [[] for _ in prompts]
        if L > self.max_model_len:
            raise ValueError(f"a prompt has {L} tokens; the model's context is {self.max_model_len}")
        input_ids = torch.full((B, L), self.pad_id, dtype=torch.long)
        attn = torch.zeros((B, L), dtype=torch.long)
        for b, p in enumerate(prompts):  # right padding: real tokens keep positions 0..len-1
            if p:
                input_ids[b, : len(p)] = torch.tensor(p)
                attn[b, : len(p)] = 1
        input_ids, attn = input_ids.to(dev), attn.to(dev)
        pos = torch.arange(L, device=dev).expand(B, L)
        hidden = self.model.model(input_ids=input_ids, attention_mask=attn, position_ids=pos).last_hidden_state
        head = self.model.get_output_embeddings()
        out_lp = torch.full((B, L), float("nan"))
        out_top = [[{} for _ in range(len(p))] for p in prompts] if top_k else None
        step = max(1, self.score_chunk_tokens // B)
        # position i's logits predict token i + 1
        for s in range(0, L - 1, step):
            e = min(L - 1, s + step)
            logp = torch.log_softmax(head(hidden[:, s:e]).float(), dim=-1)
            target = input_ids[:, s + 1 : e + 1]
            out_lp[:, s + 1 : e + 1] = logp.gather(-1, target[..., None])[..., 0].cpu()
            if top_k:
                tv, ti = logp.topk(top_k, dim=-1)
                tv, ti, tg = tv.tolist(), ti.tolist(), target.tolist()
                for b, p in enumerate(prompts):
                    for i in range(s, min(e, len(p) - 1)):
                        d = dict(zip(ti[b][i - s], tv[b][i - s]))
                        d[tg[b][i - s]] = float(out_lp[b, i + 1])
                        out_top[b][i + 1] = d
        lps = [out_lp[b, : len(p)].tolist() for b, p in enumerate(prompts)]
        return lps, out_top
