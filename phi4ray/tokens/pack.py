"""Packing token sequences into fixed rows of seq_len + 1 tokens (inputs plus the shifted target).

Two policies. `pack_stream` concatenates documents, each followed by <|endoftext|>, and cuts
the stream into rows: no padding, and a document may continue in the next row (pretraining).
`pack_examples` places whole examples into rows and pads the rest: an example is never split,
and one longer than a row is truncated (SFT, where a split example loses its prompt).
Both return `segment_ids` (1, 2, ... per document in the row, 0 for padding), so training can
keep attention inside documents.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np


@dataclass
class PackStats:
    docs: int = 0
    tokens: int = 0
    rows: int = 0
    pad_tokens: int = 0
    truncated_tokens: int = 0
    dropped_tail_tokens: int = 0

    def as_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class Rows:
    input_ids: list[list[int]] = field(default_factory=list)
    loss_mask: list[list[int]] = field(default_factory=list)
    segment_ids: list[list[int]] = field(default_factory=list)

    def append(self, ids, mask, seg) -> None:
        self.input_ids.append(ids)
        self.loss_mask.append(mask)
        self.segment_ids.append(seg)

    def as_columns(self) -> dict:
        return {"input_ids": self.input_ids, "loss_mask": self.loss_mask, "segment_ids": self.segment_ids}


def pack_stream(docs: Iterable[list[int]], seq_len: int, eot: int) -> tuple[Rows, PackStats]:
    """Concatenate docs (+eot) and cut into rows of seq_len+1. The incomplete tail is dropped and counted."""
    cols, st = pack_stream_arrays([np.asarray(d, dtype=np.int64) for d in docs], seq_len, eot)
    rows = Rows(cols["input_ids"].tolist(), cols["loss_mask"].tolist(), cols["segment_ids"].tolist())
    return rows, st


def pack_stream_arrays(docs: Sequence[np.ndarray], seq_len: int, eot: int) -> tuple[dict[str, np.ndarray], PackStats]:
    """`pack_stream` on numpy arrays: returns (rows x (seq_len+1)) int32 arrays `input_ids`,
    `loss_mask` and `segment_ids` (1, 2, ... per document piece in each row)."""
    width = seq_len + 1
    st = PackStats(docs=len(docs))
    lengths = np.fromiter((len(d) + 1 for d in docs), dtype=np.int64, count=len(docs))
    st.tokens = int(lengths.sum())
    n_rows = st.tokens // width
    st.rows, st.dropped_tail_tokens = n_rows, st.tokens - n_rows * width
    if not n_rows:
        empty = np.zeros((0, width), dtype=np.int32)
        return {"input_ids": empty, "loss_mask": empty.astype(np.int8), "segment_ids": empty}, st
    flat = np.empty(st.tokens, dtype=np.int32)
    ends = np.cumsum(lengths)
    for d, e, n in zip(docs, ends, lengths):
        flat[e - n : e - 1] = d
        flat[e - 1] = eot
    doc_no = np.repeat(np.arange(len(docs), dtype=np.int64), lengths)
    ids = flat[: n_rows * width].reshape(n_rows, width)
    seg = doc_no[: n_rows * width].reshape(n_rows, width)
    seg = (seg - seg[:, :1] + 1).astype(np.int32)
    return {"input_ids": ids, "loss_mask": np.ones_like(ids, dtype=np.int8), "segment_ids": seg}, st


def pack_examples(
    examples: Iterable[tuple[list[int], list[int]]], seq_len: int, pad: int
) -> tuple[Rows, PackStats]:
    """First-fit packing of whole (ids, loss_mask) examples into rows of seq_len+1, padded with `pad`."""
    width = seq_len + 1
    rows, st = Rows(), PackStats()
    open_rows: list[tuple[list[int], list[int], list[int]]] = []
    for ids, mask in examples:
        if not ids:
            continue
        st.docs += 1
        if len(ids) > width:
            st.truncated_tokens += len(ids) - width
            ids, mask = ids[:width], mask[:width]
        st.tokens += len(ids)
        for r in open_rows:
            if len(r[0]) + len(ids) <= width:
                segno = r[2][-1] + 1
                r[0].extend(ids), r[1].extend(mask), r[2].extend([segno] * len(ids))
                break
        else:
            open_rows.append((list(ids), list(mask), [1] * len(ids)))
    for ids, mask, seg in open_rows:
        n = width - len(ids)
        st.pad_tokens += n
        rows.append(ids + [pad] * n, mask + [0] * n, seg + [0] * n)
    st.rows = len(rows.input_ids)
    return rows, st
