"""Streaming token rows into training workers, with a data position that survives restarts.

An epoch reads a table's rows in one fixed global order: shards by name, rows in file order
(the tokenize stage already shuffled documents into shards). Row `i` of that order is position `i`.

Each worker (rank r of W) trains on one contiguous run of positions, `quota` rows long, where
`quota` is the largest multiple of the micro-batch that gives every rank the same number of
micro-batches (DeepSpeed steps in lock-step); the remainder, fewer than W x micro rows, is left
out of the epoch and counted. Ranks therefore see disjoint rows.

`DataPosition` is what a checkpoint stores: the positions the epoch's plan covers, the world
size it was planned for, and how many micro-batches each rank has consumed. `DataPosition.left()`
is the exact set of positions not yet trained on, so a restart, with the same or a different
number of workers, plans the rest of the epoch over those rows: none is seen twice, none skipped
(except, with a different world size, the new plan's remainder of fewer than W x micro rows).

Ray Data's own iterators cannot do this: `streaming_split` hands blocks to whichever worker asks
first, and a `DataIterator` has no resumable state (ray-project/ray#48224). So each worker builds
its own Ray Data dataset over its positions (`rank_dataset`), a streaming read of row slices.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Iterator

Interval = tuple[int, int]


@dataclass
class DataPosition:
    epoch: int = 0
    intervals: list[Interval] | None = None
    """Positions this epoch's plan covers; None: the whole table."""
    world: int = 0
    """World size the plan was made for (0: not planned yet)."""
    consumed: int = 0
    """Micro-batches each rank has trained on under the plan."""
    dropped: int = 0
    """Rows left out of this epoch by plans' remainders (fewer than world x micro each)."""

    def to_dict(self) -> dict:
        d = asdict(self)
        d["intervals"] = [list(i) for i in self.intervals] if self.intervals is not None else None
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "DataPosition":
        iv = d.get("intervals")
        return cls(
            epoch=d.get("epoch", 0),
            intervals=[tuple(i) for i in iv] if iv is not None else None,
            world=d.get("world", 0),
            consumed=d.get("consumed", 0),
            dropped=d.get("dropped", 0),
        )

    def covered(self, total_rows: int) -> list[Interval]:
        return list(self.intervals) if self.intervals is not None else ([(0, total_rows)] if total_rows else [])

    def left(self, total_rows: int, micro: int) -> list[Interval]:
        """Positions of this epoch not yet trained on (rank order, then position order)."""
        iv = self.covered(total_rows)
        if not self.world:
            return iv
        out: list[Interval] = []
        for r in range(self.world):
            mine = rank_intervals(iv, self.world, micro, r)
            out += take(mine, self.consumed * micro, None)
        return out

    def replan(self, total_rows: int, micro: int, world: int) -> "DataPosition":
        """The plan for `world` workers over what is left (a no-op if it is already for `world`)."""
        if self.world == world:
            return self
        left = self.left(total_rows, micro)
        n = length(left)
        quota = per_rank_quota(n, world, micro)
        return DataPosition(self.epoch, left, world, 0, self.dropped + n - quota * world)

    def next_epoch(self) -> "DataPosition":
        return DataPosition(epoch=self.epoch + 1)


def length(intervals: list[Interval]) -> int:
    return sum(b - a for a, b in intervals)


def per_rank_quota(rows: int, world: int, micro: int) -> int:
    return (rows // (world * micro)) * micro


def take(intervals: list[Interval], start: int, stop: int | None) -> list[Interval]:
    """The sub-list of positions from offset `start` to `stop` (offsets into the concatenation)."""
    out, off = [], 0
    for a, b in intervals:
        n = b - a
        lo, hi = max(start - off, 0), n if stop is None else min(stop - off, n)
        if lo < hi:
            out.append((a + lo, a + hi))
        off += n
        if stop is not None and off >= stop:
            break
    return out


def rank_intervals(intervals: list[Interval], world: int, micro: int, rank: int) -> list[Interval]:
    """Rank `rank`'s contiguous run of `per_rank_quota` positions."""
    q = per_rank_quota(length(intervals), world, micro)
    return take(intervals, rank * q, (rank + 1) * q)


@dataclass(frozen=True)
class Slice:
    shard: str
    start: int
    stop: int


def slices(intervals: list[Interval], shard_rows: list[tuple[str, int]]) -> list[Slice]:
    """Global positions -> (shard, row range) pieces, in order. `shard_rows` is in epoch order."""
    starts, off = [], 0
    for _, n in shard_rows:
        starts.append(off)
        off += n
    out = []
    for a, b in intervals:
        if a < 0 or b > off:
            raise ValueError(f"positions {a}..{b} outside the table's {off} rows")
        for (name, n), s0 in zip(shard_rows, starts):
            lo, hi = max(a, s0), min(b, s0 + n)
            if lo < hi:
                out.append(Slice(name, lo - s0, hi - s0))
    return out


@dataclass
class TableRows:
    """A table's shards in epoch order and their row counts (from the Parquet footers)."""

    run_dir: str
    table: str
    shard_rows: list[tuple[str, int]] = field(default_factory=list)

    @classmethod
    def of(cls, run_dir, table: str) -> "TableRows":
        from phi4ray.run import RunDir

        rd = run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)
        return cls(rd.uri, table, [(s, rd.shard_rows(table, s)) for s in rd.shards(table)])

    @property
    def total(self) -> int:
        return sum(n for _, n in self.shard_rows)


def read_slice(run_dir_uri: str, table: str, sl: Slice, columns: list[str] | None = None):
    """One slice as a pyarrow table (only the row groups it needs are decoded)."""
    import pyarrow.parquet as pq

    from phi4ray.run import RunDir

    rd = RunDir(run_dir_uri)
    f = pq.ParquetFile(rd.shard_path(table, sl.shard), filesystem=rd.fs)
    md = f.metadata
    groups, first, off = [], None, 0
    for g in range(md.num_row_groups):
        n = md.row_group(g).num_rows
        if off + n > sl.start and off < sl.stop:
            groups.append(g)
            first = off if first is None else first
        off += n
    t = f.read_row_groups(groups, columns=columns)
    return t.slice(sl.start - first, sl.stop - sl.start)


def rank_dataset(rows: TableRows, intervals: list[Interval], columns: list[str] | None = None):
    """A Ray Data dataset of this rank's rows, in position order."""
    import ray.data

    pieces = slices(intervals, rows.shard_rows)
    ctx = ray.data.DataContext.get_current()  # this worker's own context
    ctx.execution_options.preserve_order = True
    ctx.enable_progress_bars = False  # one bar per worker per epoch would bury the training log
    items = [{"shard": p.shard, "start": p.start, "stop": p.stop} for p in pieces]
    uri, table = rows.run_dir, rows.table

    def read(batch: dict):
        import pyarrow as pa

        parts = [
            read_slice(uri, table, Slice(s, int(a), int(b)), columns)
            for s, a, b in zip(batch["shard"], batch["start"], batch["stop"])
        ]
        return pa.concat_tables(parts)

    return ray.data.from_items(items, override_num_blocks=max(1, len(items))).map_batches(
        read, batch_size=1, batch_format="numpy", num_cpus=0.25
    )


def iter_local(rows: dict[str, list], intervals: list[Interval], micro: int) -> Iterator[dict]:
    """The same positions over an in-memory table (one process, no Ray)."""
    buf: dict[str, list] = {k: [] for k in rows}
    for a, b in intervals:
        for k, v in rows.items():
            buf[k].extend(v[a:b])
        while len(next(iter(buf.values()))) >= micro:
            yield {k: v[:micro] for k, v in buf.items()}
            buf = {k: v[micro:] for k, v in buf.items()}
