"""Streaming rows into workers: disjoint shards and a data position that survives restarts."""

import json

import pyarrow as pa
import pytest

from phi4ray.run import RunDir
from phi4ray.tokens import stream
from phi4ray.tokens.dpo import read_pairs_file, tokenize_pair, write_trl_jsonl
from phi4ray.tokens.stream import DataPosition, TableRows


def _consume(pos: DataPosition, total: int, micro: int, world: int, batches: int | None) -> tuple[list[list[int]], DataPosition]:
    """Positions each rank trains on for `batches` micro-batches (None: to the end of the plan)."""
    pos = pos.replan(total, micro, world)
    seen = []
    for r in range(world):
        mine = stream.rank_intervals(pos.covered(total), world, micro, r)
        rows = [i for a, b in mine for i in range(a, b)][pos.consumed * micro :]
        seen.append(rows if batches is None else rows[: batches * micro])
    done = len(seen[0]) // micro
    return seen, DataPosition(pos.epoch, pos.intervals, pos.world, pos.consumed + done, pos.dropped)


def test_ranks_get_disjoint_equal_contiguous_runs():
    seen, _ = _consume(DataPosition(), 103, 4, 3, None)
    assert [len(s) for s in seen] == [32, 32, 32]  # 103 // (3 * 4) * 4 each; 7 rows left out
    flat = [i for s in seen for i in s]
    assert len(flat) == len(set(flat)) == 96 and seen[0] == list(range(32))


@pytest.mark.parametrize("world_after", [2, 3, 1])
def test_resume_neither_repeats_nor_skips_rows(world_after):
    total, micro = 200, 5
    before, pos = _consume(DataPosition(), total, micro, 2, 7)
    pos = DataPosition.from_dict(json.loads(json.dumps(pos.to_dict())))  # through a checkpoint file
    after, pos2 = _consume(pos, total, micro, world_after, None)
    flat = [i for s in before + after for i in s]
    assert len(flat) == len(set(flat)), "a row was trained on twice"
    left = pos.left(total, micro)
    assert stream.length(left) == total - 2 * 7 * micro
    missing = set(range(total)) - set(flat)
    assert len(missing) == pos2.dropped < world_after * micro  # only the new plan's remainder
    if world_after == 2:
        assert not missing  # same world size: nothing at all is skipped


def test_slices_map_positions_to_shard_rows():
    rows = [("part-00000", 10), ("part-00001", 5), ("part-00002", 10)]
    got = stream.slices([(8, 17), (20, 22)], rows)
    assert got == [
        stream.Slice("part-00000", 8, 10), stream.Slice("part-00001", 0, 5),
        stream.Slice("part-00002", 0, 2), stream.Slice("part-00002", 5, 7),
    ]
    with pytest.raises(ValueError, match="outside"):
        stream.slices([(20, 26)], rows)


def test_rank_datasets_stream_their_positions_in_order(ray_local, tmp_path):
    rd = RunDir(tmp_path / "run")
    sizes = [7, 13, 9]
    start = 0
    for k, n in enumerate(sizes):
        rd.commit_table("tokens/t", f"part-{k:05d}", pa.table({"rid": list(range(start, start + n))}))
        start += n
    rows = TableRows.of(rd, "tokens/t")
    assert rows.total == 29
    pos = DataPosition().replan(rows.total, 3, 2)
    got = []
    for r in range(2):
        iv = stream.rank_intervals(pos.covered(rows.total), 2, 3, r)
        ds = stream.rank_dataset(rows, iv)
        got.append([int(x) for b in ds.iter_batches(batch_size=3, batch_format="numpy") for x in b["rid"]])
    assert got == [list(range(0, 12)), list(range(12, 24))]


# -- DPO tables in TRL's layout -----------------------------------------------------------------
def test_trl_pairs_standard_and_conversational_tokenize_and_round_trip(tmp_path):
    from phi4ray.tokenizer import IM_END_ID, encode, render_chat

    std = tokenize_pair({"id": "a", "prompt": "2+2=", "chosen": " 4", "rejected": " 5"})
    assert std["prompt_ids"] == encode("2+2=") and std["chosen_ids"] == encode(" 4")
    conv = tokenize_pair({
        "prompt": [{"role": "user", "content": "2+2="}],
        "chosen": [{"role": "assistant", "content": "4"}],
        "rejected": [{"role": "assistant", "content": "5"}],
    })
    assert conv["prompt_ids"] == render_chat([{"role": "user", "content": "2+2="}], add_generation_prompt=True)[0]
    assert conv["chosen_ids"] == encode("4") + [IM_END_ID]
    implicit = tokenize_pair({
        "chosen": [{"role": "user", "content": "2+2="}, {"role": "assistant", "content": "4"}],
        "rejected": [{"role": "user", "content": "2+2="}, {"role": "assistant", "content": "5"}],
    })
    assert implicit["prompt_ids"] == conv["prompt_ids"] and implicit["rejected_ids"] == conv["rejected_ids"]
    # bad pairs are rejects with a reason, never exceptions
    assert tokenize_pair({"prompt": "x", "chosen": "a"}).reason == "missing_field"
    assert tokenize_pair({"prompt": "x", "chosen": "a", "rejected": "a"}).reason == "identical_pair"
    assert tokenize_pair({"prompt": [{"role": "user"}], "chosen": [1], "rejected": [2]}).reason == "bad_pair"
    # write TRL JSONL and read it back
    path = str(tmp_path / "pairs.jsonl")
    table = pa.Table.from_pylist([std, conv])
    assert write_trl_jsonl(table, path) == 2
    back = [row for _, row, _ in read_pairs_file(path)]
    assert back[0] == {"prompt": "2+2=", "chosen": " 4", "rejected": " 5"}
    again = tokenize_pair(back[1])  # the conversational pair, now a standard one with a ChatML prompt
    assert again["prompt_ids"] == conv["prompt_ids"] and again["chosen_ids"] == encode("4")
