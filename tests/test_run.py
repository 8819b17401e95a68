"""The run directory (local path and file:// URI), exactly-once shard commits, the manifest,
and the one stage wrapper (`apply_steps`, `run_shards`) on the session's local Ray."""

import os
import pickle

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from phi4ray.run import TMP, RunDir, RunDirError, config_hash
from phi4ray.stage import REJECT_SCHEMA, Reject, ShardResult, StageCounts, apply_steps, run_shards


@pytest.fixture(params=["path", "uri"])
def rd(request, tmp_path) -> RunDir:
    """The same run directory, opened as a plain path and as a file:// URI."""
    root = tmp_path / "run"
    return RunDir(str(root) if request.param == "path" else f"file://{root}")


def _table(n: int, start: int = 0) -> pa.Table:
    return pa.table({"id": [f"r{i}" for i in range(start, start + n)], "x": list(range(start, start + n))})


# -- RunDir basics ----------------------------------------------------------------------------
def test_local_path_and_uri_resolve_to_the_same_place(tmp_path):
    local, uri = RunDir(tmp_path / "run"), RunDir(f"file://{tmp_path}/run/")
    assert local.is_local and uri.is_local
    assert local.path("a", "b") == uri.path("a", "b") == f"{tmp_path}/run/a/b"
    assert uri.uri_of("a") == f"file://{tmp_path}/run/a"
    assert local.uri_of("a") == f"{tmp_path}/run/a"
    local.write_json("x.json", {"k": 1})
    assert uri.read_json("x.json") == {"k": 1}  # written through one, read through the other


def test_relative_path_becomes_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert RunDir("rel/run").uri == os.path.join(str(tmp_path), "rel", "run")


def test_rundir_pickles_to_its_uri(rd):
    rd.write_json("a.json", [1])
    clone = pickle.loads(pickle.dumps(rd))
    assert clone.uri == rd.uri and clone._fs is None  # the filesystem is rebuilt lazily
    assert clone.read_json("a.json") == [1]


def test_write_and_read_json(rd):
    obj = {"b": [1, 2.5, None], "a": {"nested": "ü"}}
    rd.write_json("sub/dir/obj.json", obj)
    assert rd.read_json("sub/dir/obj.json") == obj
    assert rd.exists("sub", "dir", "obj.json")
    assert rd.listdir("sub", "dir", TMP) == []  # the temporary file was moved, not copied
    assert rd.read_json("missing.json") is None
    assert rd.read_json("missing.json", default={"d": 0}) == {"d": 0}
    rd.write_json("sub/dir/obj.json", {"v": 2})  # rewriting replaces
    assert rd.read_json("sub/dir/obj.json") == {"v": 2}


def test_write_and_read_jsonl(rd):
    rows = [{"a": 1}, {"b": "two"}]
    rd.write_jsonl("rows.jsonl", rows)
    assert rd.read_jsonl("rows.jsonl") == rows


def test_listdir_missing_and_delete(rd):
    assert rd.listdir("nothing") == []
    rd.write_bytes("d/f.bin", b"xyz")
    assert rd.read_bytes("d/f.bin") == b"xyz"
    rd.delete("d/f.bin")
    assert not rd.exists("d/f.bin")
    rd.write_bytes("d/g.bin", b"1")
    rd.delete("d")
    assert not rd.exists("d")
    rd.delete("never-there")  # deleting nothing is not an error


# -- exactly-once shard commits ---------------------------------------------------------------
def test_commit_table_is_atomic_and_leaves_no_temporaries(rd):
    for name in ("s2", "s0", "s1"):
        final = rd.commit_table("out", name, _table(3, start=int(name[1]) * 10))
        assert final == rd.shard_path("out", name) and final.endswith(f"out/{name}.parquet")
    assert rd.shards("out") == ["s0", "s1", "s2"]  # sorted, not in commit order
    assert rd.listdir("out", TMP) == []  # every temporary was moved into place
    assert rd.has_shard("out", "s1") and not rd.has_shard("out", "s3")
    t = rd.read_table("out")
    assert t.column("x").to_pylist() == [0, 1, 2, 10, 11, 12, 20, 21, 22]


def test_a_crashed_writers_temporary_is_not_a_shard(rd):
    rd.commit_table("out", "s0", _table(2))
    # a writer killed mid-write leaves a partial file under _tmp/ with the .parquet suffix
    rd.makedirs("out", TMP)
    with rd.fs.open_output_stream(rd.path("out", TMP, "s1.deadbeef.parquet")) as f:
        f.write(b"PAR1 half a footer")
    assert rd.shards("out") == ["s0"]
    assert not rd.has_shard("out", "s1")
    assert rd.read_table("out").num_rows == 2  # the partial file is never read


def test_commit_table_writes_under_tmp_and_the_final_name_appears_whole(rd, monkeypatch):
    """Spy on the real parquet writer: it writes under _tmp/ while the final name does not exist."""
    real = pq.write_table
    seen = []

    def spy(table, where, *a, **k):
        seen.append((where, rd.has_shard("out", "s0")))
        return real(table, where, *a, **k)

    monkeypatch.setattr(pq, "write_table", spy)
    rd.commit_table("out", "s0", _table(4))
    [(where, final_existed)] = seen
    assert where.startswith(rd.path("out", TMP) + "/") and not final_existed
    assert rd.read_table("out").num_rows == 4 and rd.listdir("out", TMP) == []


def test_a_writer_killed_mid_commit_leaves_no_shard(rd, monkeypatch):
    real = pq.write_table

    def dies_after_writing(table, where, *a, **k):
        real(table.slice(0, 1), where, *a, **k)  # a partial file...
        raise KeyboardInterrupt("killed")  # ...and the process dies before the move

    monkeypatch.setattr(pq, "write_table", dies_after_writing)
    with pytest.raises(KeyboardInterrupt):
        rd.commit_table("out", "s0", _table(4))
    monkeypatch.undo()
    assert rd.shards("out") == [] and not rd.has_shard("out", "s0")
    assert len(rd.listdir("out", TMP)) == 1  # the leftover temporary is there, and ignored
    rd.commit_table("out", "s0", _table(4))  # the re-run commits the whole shard
    assert rd.shards("out") == ["s0"] and rd.read_table("out").num_rows == 4


def test_shard_meta_round_trips(rd):
    meta = {"read": 10, "kept": 7, "rejected": 3, "extra": {"tokens.web": 123, "note": "ok"}, "f": 0.5}
    rd.commit_table("out", "s0", _table(7), meta=meta)
    assert rd.shard_meta("out", "s0") == meta
    rd.commit_table("out", "s1", _table(1))
    assert rd.shard_meta("out", "s1") == {}
    # meta rides in the footer and does not disturb the data or existing schema metadata
    t = pq.read_table(rd.shard_path("out", "s0"), filesystem=rd.fs)
    assert t.num_rows == 7 and t.column_names == ["id", "x"]


def test_read_table_and_dataset_need_shards(rd):
    with pytest.raises(RunDirError, match="no committed shards"):
        rd.read_table("empty")


def test_config_hash_is_stable_and_sensitive():
    from phi4ray.config import TrainConfig

    assert config_hash(TrainConfig()) == config_hash(TrainConfig())
    assert config_hash({"a": 1, "b": 2}) == config_hash({"b": 2, "a": 1})
    assert config_hash(TrainConfig(lr=1e-3)) != config_hash(TrainConfig())
    assert len(config_hash({})) == 16


# -- manifest ---------------------------------------------------------------------------------
def test_manifest_stage_lifecycle(rd):
    assert rd.manifest() == {"stages": {}}
    assert rd.begin_stage("curate", "h1", outputs=["curated"]) is True
    e = rd.stage_entry("curate")
    assert e["status"] == "running" and e["config_hash"] == "h1"
    rd.finish_stage("curate", counts={"kept": 5})
    e = rd.stage_entry("curate")
    assert e["status"] == "complete" and e["counts"] == {"kept": 5} and e["seconds"] >= 0
    # complete with the same config: nothing to do
    assert rd.begin_stage("curate", "h1", outputs=["curated"]) is False
    assert rd.stage_entry("curate")["status"] == "complete"


def test_begin_stage_resumes_a_running_or_failed_stage(rd):
    rd.begin_stage("synth", "h1", outputs=["synthetic"])
    rd.commit_table("synthetic", "s0", _table(1))
    assert rd.begin_stage("synth", "h1", outputs=["synthetic"]) is True  # crashed while running
    assert rd.has_shard("synthetic", "s0")  # a resume keeps committed shards
    rd.fail_stage("synth", "boom")
    assert rd.stage_entry("synth")["status"] == "failed"
    assert rd.begin_stage("synth", "h1", outputs=["synthetic"]) is True
    assert rd.has_shard("synthetic", "s0")


def test_an_error_in_a_stage_body_is_recorded_and_propagates(rd):
    import pytest

    rd.begin_stage("tokenize", "h1", outputs=["tokens"])
    with pytest.raises(KeyError):
        with rd.failure_recorded("tokenize"):
            raise KeyError("no_text")
    entry = rd.stage_entry("tokenize")
    assert entry["status"] == "failed" and entry["error"] == "KeyError: 'no_text'"


def test_begin_stage_with_a_different_config_is_an_error_naming_force(rd):
    rd.begin_stage("curate", "h1", outputs=["curated", "rejects/curate"])
    rd.commit_table("curated", "s0", _table(2))
    rd.finish_stage("curate")
    with pytest.raises(RunDirError) as e:
        rd.begin_stage("curate", "h2", outputs=["curated", "rejects/curate"])
    msg = str(e.value)
    assert "--force" in msg and "h1" in msg and "h2" in msg and "curated" in msg
    assert rd.has_shard("curated", "s0")  # nothing was deleted
    assert rd.stage_entry("curate")["config_hash"] == "h1"


def test_force_deletes_outputs_and_reopens(rd):
    rd.begin_stage("curate", "h1", outputs=["curated", "rejects/curate"])
    rd.commit_table("curated", "s0", _table(2))
    rd.commit_table("rejects/curate", "s0", _table(1))
    rd.commit_table("other", "s0", _table(1))
    rd.finish_stage("curate")
    assert rd.begin_stage("curate", "h2", outputs=["curated", "rejects/curate"], force=True) is True
    assert not rd.exists("curated") and not rd.exists("rejects/curate")
    assert rd.has_shard("other", "s0")  # only the stage's own outputs go
    e = rd.stage_entry("curate")
    assert e["status"] == "running" and e["config_hash"] == "h2"


def test_force_with_the_same_config_redoes_a_complete_stage(rd):
    rd.begin_stage("curate", "h1", outputs=["curated"])
    rd.commit_table("curated", "s0", _table(2))
    rd.finish_stage("curate")
    assert rd.begin_stage("curate", "h1", outputs=["curated"], force=True) is True
    assert rd.shards("curated") == []


def test_a_completed_stage_carries_no_error_from_an_earlier_attempt(rd):
    rd.begin_stage("curate", "h1", outputs=["curated"])
    rd.fail_stage("curate", "RuntimeError: boom")
    rd.begin_stage("curate", "h1", outputs=["curated"])
    rd.finish_stage("curate", counts={"kept": 1})
    e = rd.stage_entry("curate")
    assert e["status"] == "complete" and "error" not in e


# -- apply_steps ------------------------------------------------------------------------------
def test_apply_steps_keeps_changes_and_rejects_with_step_and_reason():
    def upper(r):
        return {**r, "text": r["text"].upper()}

    def long_enough(r):
        return r if len(r["text"]) >= 3 else Reject("too_short", f"{len(r['text'])} chars")

    recs = [{"id": "a", "text": "hello"}, {"id": "b", "text": "hi"}]
    kept, rejects = apply_steps(recs, [("upper", upper), ("length", long_enough)], stage="curate")
    assert kept == [{"id": "a", "text": "HELLO"}]
    assert rejects == [
        {"id": "b", "stage": "curate", "step": "length", "reason": "too_short: 2 chars", "record": '{"id": "b", "text": "HI"}'}
    ]
    assert pa.Table.from_pylist(rejects, schema=REJECT_SCHEMA).num_rows == 1


def test_apply_steps_turns_exceptions_into_error_rejects():
    calls = []

    def parse(r):
        return {**r, "n": int(r["raw"])}

    def later(r):
        calls.append(r["id"])
        return r

    kept, rejects = apply_steps(
        [{"id": "ok", "raw": "4"}, {"id": "bad", "raw": "four"}, {"raw": None}],
        [("parse", parse), ("later", later)],
        stage="s",
    )
    assert [r["id"] for r in kept] == ["ok"] and kept[0]["n"] == 4
    assert calls == ["ok"]  # a rejected record stops at the step that rejected it
    assert [r["step"] for r in rejects] == ["parse", "parse"]
    assert all(r["reason"].startswith("error") for r in rejects)
    assert "ValueError" in rejects[0]["reason"] and "TypeError" in rejects[1]["reason"]
    assert rejects[1]["id"] == ""  # a record without an id still gets a reject row


def test_stage_counts_add_sums_numbers_only():
    c = StageCounts()
    c.add({"read": 3, "kept": 2, "rejected": 1, "extra": {"tok": 10, "name": "x"}})
    c.add({"read": 1, "kept": 1, "extra": {"tok": 5}})
    assert c.as_dict() == {"read": 4, "kept": 3, "rejected": 1, "shards": 0, "skipped_shards": 0, "tok": 15}


# -- run_shards on Ray ------------------------------------------------------------------------
def test_run_shards_processes_only_pending_shards_and_writes_rejects(ray_local, tmp_path):
    rd = RunDir(tmp_path / "run")
    seen_dir = str(tmp_path / "seen")
    os.makedirs(seen_dir)

    def process(unit: dict) -> ShardResult:
        open(os.path.join(seen_dir, unit["shard"]), "w").close()  # which shards actually ran
        recs = [{"id": f"{unit['shard']}-{i}", "v": v} for i, v in enumerate(unit["values"])]

        def positive(r):
            return r if r["v"] > 0 else Reject("not_positive", str(r["v"]))

        def inverse(r):
            return {**r, "inv": 1 / (r["v"] - 1)}  # v == 1 raises ZeroDivisionError

        kept, rejects = apply_steps(recs, [("positive", positive), ("inverse", inverse)], stage="demo")
        table = pa.Table.from_pylist(kept, schema=pa.schema([("id", pa.string()), ("v", pa.int64()), ("inv", pa.float64())]))
        return ShardResult(table, rejects, read=len(recs), extra={"values": sum(unit["values"])})

    units = [
        {"shard": "a", "values": [2, 3, -1]},
        {"shard": "b", "values": [1, 4]},
        {"shard": "c", "values": [5, 6, 7]},
    ]
    # shard "c" was committed by an earlier (interrupted) run; its counts live in its footer
    rd.commit_table("out", "c", _table(2), meta={"read": 9, "kept": 2, "rejected": 7, "extra": {"values": 100}})

    counts = run_shards(rd, "demo", "out", units, process, concurrency=2)

    assert sorted(os.listdir(seen_dir)) == ["a", "b"]  # "c" was skipped
    assert counts.shards == 3 and counts.skipped_shards == 1
    assert (counts.read, counts.kept, counts.rejected) == (9 + 3 + 2, 2 + 2 + 1, 7 + 1 + 1)
    assert counts.extra["values"] == 100 + 4 + 5
    assert rd.shards("out") == ["a", "b", "c"]
    assert rd.read_table("out").num_rows == 2 + 2 + 1
    assert rd.shard_meta("out", "a") == {"read": 3, "kept": 2, "rejected": 1, "extra": {"values": 4}}
    assert rd.listdir("out", TMP) == []

    # rejects land in rejects/<stage>/ with the reject schema, one shard per input shard
    assert rd.shards("rejects/demo") == ["out-a", "out-b"]
    rej = rd.read_table("rejects/demo")
    assert rej.schema == REJECT_SCHEMA
    by_id = {r["id"]: r for r in rej.to_pylist()}
    assert by_id["a-2"]["step"] == "positive" and by_id["a-2"]["reason"] == "not_positive: -1"
    assert by_id["b-0"]["step"] == "inverse" and by_id["b-0"]["reason"].startswith("error")
    assert "ZeroDivisionError" in by_id["b-0"]["reason"]
    assert all(r["stage"] == "demo" for r in by_id.values())

    # a second run finds everything committed and does no work
    for f in os.listdir(seen_dir):
        os.remove(os.path.join(seen_dir, f))
    again = run_shards(rd, "demo", "out", units, process)
    assert os.listdir(seen_dir) == []
    assert again.skipped_shards == 3 and again.as_dict() == {**counts.as_dict(), "skipped_shards": 3}


def test_run_shards_rejects_duplicate_shard_names(tmp_path):
    with pytest.raises(ValueError, match="unique"):
        run_shards(RunDir(tmp_path), "demo", "out", [{"shard": "a"}, {"shard": "a"}], lambda u: None)


def test_rejects_of_two_outputs_of_one_stage_do_not_overwrite_each_other(ray_local, tmp_path):
    rd = RunDir(tmp_path / "run")

    def process(unit: dict) -> ShardResult:
        rej = {"id": unit["rid"], "stage": "demo", "step": "s", "reason": "r", "record": "{}"}
        return ShardResult(pa.table({"id": pa.array([], pa.string())}), [rej], read=1)

    run_shards(rd, "demo", "out1", [{"shard": "part-0", "rid": "first"}], process)
    run_shards(rd, "demo", "out2", [{"shard": "part-0", "rid": "second"}], process)
    ids = sorted(rd.read_table("rejects/demo").column("id").to_pylist())
    assert ids == ["first", "second"]
