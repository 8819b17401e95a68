"""Streaming pieces of `phi4ray.serve`: incremental detokenisation and the engine-to-event-loop bridge.

What is incremental: the transformers engine calls a hook for every sampled token
(`TransformersSampler.generate(..., on_token=...)`), from the worker thread that runs its
decode loop. `stream_generate` carries those calls onto the replica's event loop, and each
token becomes a server-sent event as soon as it is decoded. An engine whose `generate` takes
no `on_token` (the Sampler protocol does not require it) streams its whole answer as one
chunk at the end. vLLM streams through `ray.serve.llm` instead (`phi4ray.serve.llm_app`).

`TextStream` turns one completion's tokens into text deltas that are never retracted, so the
deltas always add up to exactly the text a non-streaming request gets:

* bytes of a character split across tokens are held back until the character is complete;
* text that may be the start of a `stop` string is held back until it is known not to be
  (the stop string itself never shows, as with vLLM's `include_stop_str_in_output=False`);
* a stop token (`stop_token_ids`) is counted in the tokens but never shown as text;
* at the end the engine's own final text settles what is left (`finish`).
"""

from __future__ import annotations

import asyncio
import codecs
import inspect
import json
import logging
import threading
from typing import Any, AsyncIterator, Callable

log = logging.getLogger(__name__)

__all__ = ["TextStream", "sse", "SSE_DONE", "run_locked", "stream_generate", "supports_on_token"]

SSE_DONE = "data: [DONE]\n\n"


def sse(obj: Any) -> str:
    """One server-sent event carrying `obj` as JSON."""
    return f"data: {json.dumps(obj, separators=(',', ':'), allow_nan=False)}\n\n"


class TextStream:
    """The growing text of one completion, handed out in deltas that are never taken back."""

    def __init__(self, stop: list[str] | None = None, stop_token_ids: list[int] | None = None):
        from phi4ray.tokenizer import get_encoding

        self._enc = get_encoding()
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.stop = [s for s in (stop or []) if s]
        self.stop_ids = set(stop_token_ids or [])
        self.text = ""  # decoded so far (complete characters only)
        self.sent = 0  # characters of `text` already handed out
        self.stopped = False  # a stop token or stop string was seen: nothing more is shown

    def push(self, token_id: int) -> str:
        """Add one sampled token; return the text that can now be shown (maybe "")."""
        if self.stopped:
            return ""
        if token_id in self.stop_ids:
            self.stopped = True
            return ""
        self.text += self._utf8.decode(self._enc.decode_single_token_bytes(token_id))
        safe = len(self.text)
        for s in self.stop:
            i = self.text.find(s, max(0, self.sent - len(s) + 1))
            if i >= 0:
                safe = min(safe, i)
                self.stopped = True
                continue
            # hold back the longest tail of the text that is a head of this stop string
            for k in range(min(len(s) - 1, len(self.text)), 0, -1):
                if self.text.endswith(s[:k]):
                    safe = min(safe, len(self.text) - k)
                    break
        if safe <= self.sent:
            return ""
        delta = self.text[self.sent : safe]
        self.sent = safe
        return delta

    def finish(self, final_text: str) -> str:
        """The rest of `final_text` (the engine's text of the whole completion) after what was sent."""
        shown = self.text[: self.sent]
        if not final_text.startswith(shown):  # cannot happen with the rules above; say so if it does
            log.warning("streamed text %r is not a prefix of the final text %r", shown[-40:], final_text[-40:])
            return ""
        self.sent = len(final_text)
        return final_text[len(shown) :]


def supports_on_token(sampler: Any) -> bool:
    try:
        return "on_token" in inspect.signature(sampler.generate).parameters
    except (TypeError, ValueError):
        return False


class _Cancelled(Exception):
    """Raised inside the engine's decode loop when the client went away."""


async def run_locked(lock: asyncio.Lock, fn: Callable[..., Any], *args: Any) -> asyncio.Future:
    """Start `fn(*args)` in a worker thread once `lock` is held, and release `lock` when the thread
    ends, not when the caller stops waiting: a cancelled request (the client went away) cannot
    let a second engine call start while the first still runs."""
    loop = asyncio.get_running_loop()
    await lock.acquire()
    try:
        fut = loop.run_in_executor(None, fn, *args)
    except BaseException:
        lock.release()
        raise
    fut.add_done_callback(lambda _: lock.release())
    return fut


async def stream_generate(
    generate: Callable[..., Any], prompts: list, params: Any, lock: asyncio.Lock, incremental: bool = True,
) -> AsyncIterator[tuple]:
    """Run `generate(prompts, params, on_token=...)` in a worker thread, holding `lock`, and yield
    `("token", prompt_index, sample_index, token_id, logprob, top)` for each token as it is
    sampled, then `("done", outputs)`. An engine error is raised here. If the consumer stops early
    (the client disconnected), the engine call is aborted at its next token; `lock` is released
    when it has returned."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue()
    cancel = threading.Event()

    def on_token(i: int, j: int, t: int, lp: float, top: dict | None) -> None:
        if cancel.is_set():
            raise _Cancelled()
        loop.call_soon_threadsafe(queue.put_nowait, ("token", i, j, t, lp, top))

    def work() -> None:
        try:
            outs = generate(prompts, params, on_token=on_token) if incremental else generate(prompts, params)
            loop.call_soon_threadsafe(queue.put_nowait, ("done", outs))
        except BaseException as e:  # noqa: BLE001 - handed to the event loop, raised there
            loop.call_soon_threadsafe(queue.put_nowait, ("error", e))

    await run_locked(lock, work)
    try:
        while True:
            item = await queue.get()
            if item[0] == "error":
                raise item[1]
            yield item
            if item[0] == "done":
                return
    finally:
        cancel.set()
