"""DPO pair tables in TRL's column layout (`prompt`, `chosen`, `rejected`), both ways.

Two forms share one token layout, `prompt_ids`, `chosen_ids`, `rejected_ids` (the completion
tokens only). The DPO loss scores exactly the completion tokens: the training batch builds its
loss mask from the prompt/completion split, so the table stores that split and no separate mask.

- **full-length** pairs (round 2): whole responses, each ending with `<|im_end|>`.
- **single-token** PTS pairs (round 1): the prompt is the query plus the solution prefix up to
  the pivotal token, and chosen/rejected are one token each (`pts/pairs`, written by PTS).

Rows come in TRL's two dataset types:

- standard: `prompt`, `chosen`, `rejected` are strings. The prompt is text the model continues
  as is; special-token text in it (a ChatML header) becomes special tokens, as in TRL;
- conversational: `prompt` is a list of messages, `chosen` / `rejected` are lists holding the
  assistant message. The prompt is rendered with the Phi-4 chat template and the generation
  header, and the completion is the assistant content plus `<|im_end|>`. Conversational rows
  without `prompt` (TRL's implicit prompt) take the messages that chosen and rejected share.
"""

from __future__ import annotations

import json
from typing import Any, Iterable

import pyarrow as pa

from phi4ray.stage import Reject

DPO_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("prompt", pa.string()),
        ("chosen", pa.string()),
        ("rejected", pa.string()),
        ("prompt_ids", pa.list_(pa.int32())),
        ("chosen_ids", pa.list_(pa.int32())),
        ("rejected_ids", pa.list_(pa.int32())),
    ]
)
TRL_COLUMNS = ("prompt", "chosen", "rejected")


def _messages(x: Any, field: str) -> list[dict]:
    if not isinstance(x, list) or not all(isinstance(m, dict) and "role" in m and "content" in m for m in x):
        raise ValueError(f"'{field}' must be a string or a list of {{role, content}} messages")
    return x


def _split_implicit(chosen: list[dict], rejected: list[dict]) -> tuple[list[dict], list[dict], list[dict]]:
    n = 0
    while n < min(len(chosen), len(rejected)) - 1 and chosen[n] == rejected[n]:
        n += 1
    return chosen[:n], chosen[n:], rejected[n:]


def tokenize_pair(row: dict) -> dict | Reject:
    """One TRL-layout row -> a `DPO_SCHEMA` row (texts kept as TRL strings), or a Reject."""
    from phi4ray.tokenizer import IM_END_ID, chat_text, get_encoding, render_chat

    enc = get_encoding()
    try:
        chosen, rejected, prompt = row.get("chosen"), row.get("rejected"), row.get("prompt")
        if chosen is None or rejected is None:
            return Reject("missing_field", f"need 'chosen' and 'rejected' (have {sorted(k for k in row if row[k] is not None)})")
        if isinstance(chosen, str) and isinstance(rejected, str):
            if not isinstance(prompt, str) or not prompt:
                return Reject("missing_field", "a standard (string) pair needs a non-empty 'prompt' string")
            # As TRL's tokenizer call does, the prompt's special-token text (a ChatML header) is
            # parsed as special tokens; completions stay ordinary text.
            p_ids = enc.encode(prompt, allowed_special="all")
            c_ids, r_ids = enc.encode_ordinary(chosen), enc.encode_ordinary(rejected)
            texts = (prompt, chosen, rejected)
        else:
            c_msgs, r_msgs = _messages(chosen, "chosen"), _messages(rejected, "rejected")
            if prompt is None:
                p_msgs, c_msgs, r_msgs = _split_implicit(c_msgs, r_msgs)
            else:
                p_msgs = _messages(prompt, "prompt")
            if not p_msgs:
                return Reject("missing_field", "conversational pair with no prompt messages")
            for name, msgs in (("chosen", c_msgs), ("rejected", r_msgs)):
                if len(msgs) != 1 or msgs[0]["role"] != "assistant":
                    return Reject("bad_messages", f"'{name}' must be exactly one assistant message")
            p_ids, _ = render_chat(p_msgs, add_generation_prompt=True)
            c_ids = enc.encode_ordinary(c_msgs[0]["content"]) + [IM_END_ID]
            r_ids = enc.encode_ordinary(r_msgs[0]["content"]) + [IM_END_ID]
            texts = (chat_text(p_msgs, add_generation_prompt=True), c_msgs[0]["content"], r_msgs[0]["content"])
        if not c_ids or not r_ids:
            return Reject("empty_completion", "chosen or rejected has no tokens")
        if c_ids == r_ids:
            return Reject("identical_pair", "chosen and rejected are the same")
    except (ValueError, TypeError, KeyError) as e:
        return Reject("bad_pair", f"{type(e).__name__}: {e}")
    return {
        "id": str(row.get("id", "")),
        "prompt": texts[0],
        "chosen": texts[1],
        "rejected": texts[2],
        "prompt_ids": p_ids,
        "chosen_ids": c_ids,
        "rejected_ids": r_ids,
    }


def read_pairs_file(path: str) -> Iterable[tuple[int, dict | None, str | None]]:
    """(line or row number, row, parse error) from a TRL-layout JSONL or Parquet file."""
    if path.endswith((".parquet", ".pq")):
        import pyarrow.parquet as pq

        for i, row in enumerate(pq.read_table(path).to_pylist()):
            yield i, row, None
        return
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
                yield i, obj, None if isinstance(obj, dict) else "not a JSON object"
            except json.JSONDecodeError as e:
                yield i, None, f"bad JSON: {e}"


def write_trl_jsonl(table: pa.Table, path: str) -> int:
    """Write a pair table (`pts/pairs`, `tokens/dpo`) as TRL-layout JSONL; returns rows written."""
    cols = [c for c in TRL_COLUMNS if c in table.column_names]
    if len(cols) != 3:
        raise ValueError(f"table has no TRL columns {TRL_COLUMNS} (has {table.column_names})")
    n = 0
    with open(path, "w", encoding="utf-8") as f:
        for row in table.select(cols).to_pylist():
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
            n += 1
    return n
