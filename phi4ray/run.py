"""The run directory: one place (local path or pyarrow.fs URI) for every artifact of a run.

Exactly-once output rests on one rule: a shard is written under a temporary name in
`<dir>/_tmp/` and moved to its final name only when complete. A shard's final name exists
if and only if the shard is whole, so a re-run skips exactly the committed shards.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import posixpath
import tempfile
import time
import uuid
from typing import Any, Iterable

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

MANIFEST = "manifest.json"
TMP = "_tmp"
META_PREFIX = b"phi4ray."


class RunDirError(RuntimeError):
    """A run directory is missing, unreadable, or holds output from a different config."""


def config_hash(cfg: Any) -> str:
    """A stable short hash of a stage config (pydantic model or plain JSON-able value)."""
    if hasattr(cfg, "model_dump"):
        cfg = cfg.model_dump(mode="json")
    blob = json.dumps(cfg, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


class RunDir:
    """A run directory. Picklable: it carries only its URI and rebuilds the filesystem lazily."""

    def __init__(self, uri: str | os.PathLike):
        uri = os.fspath(uri)
        if "://" not in uri:
            uri = os.path.abspath(uri)
        self.uri = uri.rstrip("/")
        self._fs: pafs.FileSystem | None = None
        self._root: str | None = None

    def __reduce__(self):
        return (RunDir, (self.uri,))

    def __repr__(self) -> str:
        return f"RunDir({self.uri!r})"

    # -- filesystem -------------------------------------------------------------------------
    @property
    def fs(self) -> pafs.FileSystem:
        if self._fs is None:
            if "://" in self.uri:
                self._fs, self._root = pafs.FileSystem.from_uri(self.uri)
            else:
                self._fs, self._root = pafs.LocalFileSystem(), self.uri
        return self._fs

    @property
    def root(self) -> str:
        self.fs  # noqa: B018 - resolves _root
        assert self._root is not None
        return self._root

    @property
    def is_local(self) -> bool:
        return isinstance(self.fs, pafs.LocalFileSystem)

    def path(self, *parts: str) -> str:
        """The filesystem path of `parts` inside the run directory (no scheme)."""
        return posixpath.join(self.root, *parts) if parts else self.root

    def uri_of(self, *parts: str) -> str:
        """A URI (or local path) for `parts`, for libraries that take URIs (Ray Train, Ray Data)."""
        return posixpath.join(self.uri, *parts) if parts else self.uri

    def exists(self, *parts: str) -> bool:
        return self.fs.get_file_info(self.path(*parts)).type != pafs.FileType.NotFound

    def makedirs(self, *parts: str) -> None:
        self.fs.create_dir(self.path(*parts), recursive=True)

    def listdir(self, *parts: str) -> list[str]:
        sel = pafs.FileSelector(self.path(*parts), allow_not_found=True)
        return sorted(posixpath.basename(i.path) for i in self.fs.get_file_info(sel))

    def delete(self, *parts: str) -> None:
        info = self.fs.get_file_info(self.path(*parts))
        if info.type == pafs.FileType.Directory:
            self.fs.delete_dir(info.path)
        elif info.type == pafs.FileType.File:
            self.fs.delete_file(info.path)

    def write_bytes(self, rel: str, data: bytes) -> None:
        """Write a whole file atomically: temp name first, then a move."""
        final = self.path(rel)
        parent = posixpath.dirname(final)
        tmp = posixpath.join(parent, TMP, f"{posixpath.basename(final)}.{uuid.uuid4().hex}")
        self.fs.create_dir(posixpath.join(parent, TMP), recursive=True)
        with self.fs.open_output_stream(tmp) as f:
            f.write(data)
        self.fs.move(tmp, final)

    def read_bytes(self, rel: str) -> bytes:
        with self.fs.open_input_stream(self.path(rel)) as f:
            return f.read()

    def write_json(self, rel: str, obj: Any) -> None:
        self.write_bytes(rel, json.dumps(obj, indent=2, sort_keys=True, default=str).encode())

    def read_json(self, rel: str, default: Any = None) -> Any:
        if not self.exists(rel):
            return default
        return json.loads(self.read_bytes(rel))

    def write_jsonl(self, rel: str, rows: Iterable[dict]) -> None:
        self.write_bytes(rel, "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows).encode())

    def read_jsonl(self, rel: str) -> list[dict]:
        return [json.loads(line) for line in self.read_bytes(rel).decode().splitlines() if line]

    # -- shards -----------------------------------------------------------------------------
    def shard_path(self, rel_dir: str, shard: str) -> str:
        return self.path(rel_dir, f"{shard}.parquet")

    def has_shard(self, rel_dir: str, shard: str) -> bool:
        return self.fs.get_file_info(self.shard_path(rel_dir, shard)).type == pafs.FileType.File

    def commit_table(self, rel_dir: str, shard: str, table: pa.Table, meta: dict | None = None) -> str:
        """Write `table` as shard `shard` of `rel_dir`, atomically. `meta` rides in the footer."""
        if meta:
            extra = {META_PREFIX + k.encode(): json.dumps(v).encode() for k, v in meta.items()}
            table = table.replace_schema_metadata({**(table.schema.metadata or {}), **extra})
        final = self.shard_path(rel_dir, shard)
        tmp_dir = self.path(rel_dir, TMP)
        self.fs.create_dir(tmp_dir, recursive=True)
        tmp = posixpath.join(tmp_dir, f"{shard}.{uuid.uuid4().hex}.parquet")
        pq.write_table(table, tmp, filesystem=self.fs)
        self.fs.move(tmp, final)
        return final

    def shards(self, rel_dir: str) -> list[str]:
        """Names of the committed shards of `rel_dir`, sorted."""
        return [n[: -len(".parquet")] for n in self.listdir(rel_dir) if n.endswith(".parquet")]

    def shard_meta(self, rel_dir: str, shard: str) -> dict:
        md = pq.read_schema(self.shard_path(rel_dir, shard), filesystem=self.fs).metadata or {}
        return {
            k[len(META_PREFIX):].decode(): json.loads(v)
            for k, v in md.items()
            if k.startswith(META_PREFIX)
        }

    def num_rows(self, rel_dir: str) -> int:
        """Rows in the committed shards of `rel_dir`, from the Parquet footers (0 if none)."""
        return sum(self.shard_rows(rel_dir, s) for s in self.shards(rel_dir))

    def shard_rows(self, rel_dir: str, shard: str) -> int:
        return pq.read_metadata(self.shard_path(rel_dir, shard), filesystem=self.fs).num_rows

    def shard_paths(self, rel_dir: str) -> list[str]:
        return [self.shard_path(rel_dir, s) for s in self.shards(rel_dir)]

    def read_table(self, rel_dir: str, columns: list[str] | None = None) -> pa.Table:
        """All committed shards of `rel_dir` as one table (driver-side; for small tables)."""
        tables = [pq.read_table(p, filesystem=self.fs, columns=columns) for p in self.shard_paths(rel_dir)]
        if not tables:
            raise RunDirError(f"{self.uri_of(rel_dir)} has no committed shards; run the stage that writes it first")
        return pa.concat_tables(tables, promote_options="default")

    def read_dataset(self, rel_dir: str, **kwargs):
        """All committed shards of `rel_dir` as a streaming Ray Dataset."""
        import ray.data

        paths = self.shard_paths(rel_dir)
        if not paths:
            raise RunDirError(f"{self.uri_of(rel_dir)} has no committed shards; run the stage that writes it first")
        return ray.data.read_parquet(paths, filesystem=self.fs, **kwargs)

    # -- manifest ---------------------------------------------------------------------------
    def manifest(self) -> dict:
        return self.read_json(MANIFEST, default={"stages": {}})

    def stage_entry(self, stage: str) -> dict | None:
        return self.manifest()["stages"].get(stage)

    def update_stage(self, stage: str, replace: bool = False, **fields: Any) -> dict:
        """Merge `fields` into the manifest entry of `stage` (or replace it). Driver only: one writer."""
        m = self.manifest()
        if replace:
            m["stages"][stage] = {}
        entry = m["stages"].setdefault(stage, {})
        entry.update(fields)
        self.write_json(MANIFEST, m)
        return entry

    def set_manifest_field(self, key: str, value: Any) -> None:
        m = self.manifest()
        m[key] = value
        self.write_json(MANIFEST, m)

    def begin_stage(self, stage: str, cfg_hash: str, outputs: list[str], force: bool = False) -> bool:
        """Open `stage` for writing. Returns False if it is already complete with this config.

        Output left by a different config is never mixed with new output: it is an error,
        unless `force`, which deletes the stage's outputs first.
        """
        entry = self.stage_entry(stage)
        if entry and entry.get("config_hash") != cfg_hash:
            if not force:
                raise RunDirError(
                    f"stage '{stage}' in {self.uri} was run with a different config "
                    f"(hash {entry.get('config_hash')}, now {cfg_hash}). Use a new --run-dir, "
                    f"or pass --force to delete its outputs ({', '.join(outputs)}) and redo it."
                )
            entry = None
        if force:
            for out in outputs:
                self.delete(out)
            entry = None
        if entry and entry.get("status") == "complete":
            return False
        self.update_stage(stage, replace=True, status="running", config_hash=cfg_hash, started=time.time())
        return True

    def finish_stage(self, stage: str, **fields: Any) -> dict:
        entry = self.stage_entry(stage) or {}
        seconds = round(time.time() - entry.get("started", time.time()), 2)
        return self.update_stage(stage, status="complete", finished=time.time(), seconds=seconds, **fields)

    def fail_stage(self, stage: str, error: str) -> None:
        self.update_stage(stage, status="failed", error=error)

    @contextlib.contextmanager
    def failure_recorded(self, stage: str):
        """Whatever escapes the block (an error, Ctrl-C) marks `stage` failed, then propagates."""
        try:
            yield
        except BaseException as e:
            self.fail_stage(stage, f"{type(e).__name__}: {e}")
            raise

    # -- local copies of folders (HF checkpoints) -------------------------------------------
    def upload_dir(self, local_dir: str, rel: str) -> None:
        """Copy a local folder into the run directory (a no-op when it is already there)."""
        dest = self.path(rel)
        if self.is_local and os.path.abspath(local_dir) == os.path.abspath(dest):
            return
        self.fs.create_dir(dest, recursive=True)
        pafs.copy_files(local_dir, dest, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=self.fs)

    def local_dir(self, rel: str) -> str:
        """A local folder holding `rel`: itself when local, else a downloaded temporary copy."""
        if self.is_local:
            if not self.exists(rel):
                raise RunDirError(f"{self.path(rel)} does not exist")
            return self.path(rel)
        dest = tempfile.mkdtemp(prefix="phi4ray-")
        pafs.copy_files(self.path(rel), dest, source_filesystem=self.fs, destination_filesystem=pafs.LocalFileSystem())
        return dest
