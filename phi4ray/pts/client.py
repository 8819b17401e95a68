"""A small client for OpenAI-compatible `/v1/completions` endpoints, in token-id space (and
`/v1/chat/completions`, in text, for judge-guided pairs).

PTS talks to the model only through this client, so the same search runs against our Ray
Serve app (`phi4ray.serve.app`) or any vLLM OpenAI server. Prompts go out as token ids and
completions come back as token ids (vLLM's `return_token_ids`), so nothing is ever
re-tokenised. Top alternatives come back keyed by token id (vLLM's
`return_tokens_as_token_ids`: keys look like `token_id:123`).

Overload (429, 503), gateway errors (502, 504) and 500 (what Ray Serve answers for requests in
flight on a replica that dies; sampling requests are safe to repeat) are retried a bounded
number of times, honouring `Retry-After`; any other error raises `CompletionError` with the
server's message.
"""

from __future__ import annotations

import email.utils
import random
import time
from typing import Any

import httpx

__all__ = ["CompletionError", "CompletionsClient", "parse_token_key"]

RETRY_STATUS = (429, 500, 502, 503, 504)


class CompletionError(RuntimeError):
    """A completions request that failed for good. `status` is the HTTP status (None: no reply)."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


def parse_token_key(key: str) -> int | None:
    """`token_id:123` -> 123 (vLLM's `return_tokens_as_token_ids` spelling); else None."""
    if isinstance(key, str) and key.startswith("token_id:"):
        try:
            return int(key[len("token_id:") :])
        except ValueError:
            return None
    return None


def _retry_after(resp: httpx.Response) -> float | None:
    value = resp.headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
        return max(0.0, when.timestamp() - time.time())
    except (TypeError, ValueError):
        return None


class CompletionsClient:
    """`complete(prompt_ids, ...)` against `base_url` (e.g. `http://127.0.0.1:8000/v1`).

    `requests` counts HTTP requests sent, retries included.
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        timeout: float = 120.0,
        max_retries: int = 5,
        backoff: float = 0.5,
        max_backoff: float = 30.0,
        api_key: str | None = None,
        stop_token_ids: list[int] | None = None,
    ):
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.max_retries = max_retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.stop_token_ids = stop_token_ids
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.Client(timeout=timeout, headers=headers)
        self.requests = 0

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> "CompletionsClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- transport --------------------------------------------------------------------------
    def _post(self, path: str, body: dict) -> dict:
        url = f"{self.base_url}{path}"
        for attempt in range(self.max_retries + 1):
            self.requests += 1
            try:
                resp = self._http.post(url, json=body)
            except httpx.TransportError as e:
                if attempt == self.max_retries:
                    raise CompletionError(f"POST {url}: no reply after {attempt + 1} tries: {e!r}") from e
                time.sleep(min(self.max_backoff, self.backoff * 2**attempt) * (0.5 + random.random()))
                continue
            if resp.status_code == 200:
                try:
                    return resp.json()
                except ValueError as e:
                    raise CompletionError(f"POST {url}: the reply is not JSON: {resp.text[:200]!r}", 200) from e
            if resp.status_code in RETRY_STATUS and attempt < self.max_retries:
                wait = _retry_after(resp)
                if wait is None:
                    wait = min(self.max_backoff, self.backoff * 2**attempt) * (0.5 + random.random())
                time.sleep(min(wait, self.max_backoff))
                continue
            raise CompletionError(f"POST {url} -> {resp.status_code}: {self._error_message(resp)}", resp.status_code)
        raise AssertionError("unreachable")

    @staticmethod
    def _error_message(resp: httpx.Response) -> str:
        try:
            data = resp.json()
        except ValueError:
            return resp.text[:500]
        err = data.get("error") if isinstance(data, dict) else None
        if isinstance(err, dict):
            return str(err.get("message", err))
        if isinstance(data, dict) and "message" in data:  # older vLLM: flat ErrorResponse
            return str(data["message"])
        return str(data)[:500]

    def models(self) -> list[str]:
        resp = self._http.get(f"{self.base_url}/models")
        if resp.status_code != 200:
            raise CompletionError(
                f"GET {self.base_url}/models -> {resp.status_code}: {self._error_message(resp)}", resp.status_code
            )
        return [m["id"] for m in resp.json().get("data", [])]

    # -- completions ------------------------------------------------------------------------
    def complete(
        self,
        prompt_ids: list[int],
        n: int = 1,
        temperature: float = 1.0,
        max_tokens: int = 16,
        seed: int | None = None,
        logprobs: int | None = None,
        *,
        top_p: float = 1.0,
        stop: list[str] | None = None,
    ) -> list[dict[str, Any]]:
        """Sample `n` completions of `prompt_ids`.

        Returns one dict per completion: `text`, `token_ids`, `finish_reason`, and when
        `logprobs` is not None also `logprobs` (the sampled tokens' log-probabilities) and
        `top_logprobs` (per position, {token id: logprob} of the top `logprobs` tokens and the
        sampled one).
        """
        body: dict[str, Any] = {
            "model": self.model,
            "prompt": [int(t) for t in prompt_ids],
            "n": n,
            "temperature": temperature,
            "top_p": top_p,
            "max_tokens": max_tokens,
            "return_token_ids": True,
        }
        if seed is not None:
            body["seed"] = int(seed)
        if stop:
            body["stop"] = stop
        if self.stop_token_ids:
            body["stop_token_ids"] = list(self.stop_token_ids)
        if logprobs is not None:
            body["logprobs"] = int(logprobs)
            body["return_tokens_as_token_ids"] = True
        data = self._post("/completions", body)
        choices = sorted(data.get("choices", []), key=lambda c: c.get("index", 0))
        if len(choices) != n:
            raise CompletionError(f"asked for {n} completions, the server returned {len(choices)}")
        return [self._parse_choice(c, logprobs is not None) for c in choices]

    def chat(
        self,
        messages: list[dict],
        n: int = 1,
        temperature: float = 1.0,
        max_tokens: int = 256,
        seed: int | None = None,
        *,
        top_p: float = 1.0,
    ) -> list[str]:
        """`n` assistant replies to `messages` through `/chat/completions` (the server applies its
        own chat template): the texts, in choice order. Used by judge-guided pairs."""
        body: dict[str, Any] = {"model": self.model, "messages": messages, "n": n, "temperature": temperature,
                                "top_p": top_p, "max_tokens": max_tokens}
        if seed is not None:
            body["seed"] = int(seed)
        data = self._post("/chat/completions", body)
        choices = sorted(data.get("choices", []), key=lambda c: c.get("index", 0))
        if len(choices) != n:
            raise CompletionError(f"asked for {n} chat completions, the server returned {len(choices)}")
        return [str((c.get("message") or {}).get("content") or "") for c in choices]

    @staticmethod
    def _parse_choice(c: dict, want_logprobs: bool) -> dict[str, Any]:
        lp = c.get("logprobs") or {}
        token_ids = c.get("token_ids")
        if token_ids is None and lp.get("tokens"):
            parsed = [parse_token_key(t) for t in lp["tokens"]]
            token_ids = parsed if all(t is not None for t in parsed) else None
        if token_ids is None:
            raise CompletionError(
                "the server returned no token ids; it must support vLLM's `return_token_ids` "
                "(vLLM >= 0.10.2 or phi4ray.serve)"
            )
        out: dict[str, Any] = {
            "text": c.get("text", ""),
            "token_ids": [int(t) for t in token_ids],
            "finish_reason": c.get("finish_reason"),
        }
        if want_logprobs:
            out["logprobs"] = [float("nan") if x is None else float(x) for x in lp.get("token_logprobs") or []]
            tops = []
            for d in lp.get("top_logprobs") or []:
                row = {}
                for k, v in (d or {}).items():
                    tid = parse_token_key(k)
                    if tid is not None:
                        row[tid] = float(v)
                tops.append(row)
            out["top_logprobs"] = tops
        return out
