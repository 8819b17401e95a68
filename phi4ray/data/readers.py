"""Readers: raw input files -> raw records.

`expand_inputs` turns files, folders and globs (local paths or `pyarrow.fs` URIs) into a sorted
list of `InputFile`s. `read_file` turns one file into raw records:

    {"id", "source", "url", "html" | "text", "meta"}

- HTML (`.html`, `.htm`, `.xhtml`): one document per file.
- JSONL (`.jsonl`, `.jsonl.gz`, `.jsonl.zst`; also `.json*` lines): one document per line, with a
  `text` or `html` field and optional `url` and `id` (kept as `meta.orig_id`); other fields go
  to `meta`. gzip and zstd streams are decoded by pyarrow, so no extra package is needed.
- Parquet: one document per row, from a `text` or `html` column; other columns go to `meta`.

`id` is `sha256("<rel>\\0<position>")[:24]`, where `rel` is the file's path relative to the
parent of its input's deepest non-glob folder (`samples/a.html` whether the input named the file,
the folder `samples` or the glob `samples/*.html`) and `position` is the line or row number
(0 for an HTML file). Identical input therefore gets identical ids on every run and machine.

Nothing here raises on bad input: a file or line that cannot be read or parsed yields a
`(partial record, Reject)` pair, which the stage turns into a reject row (step `read`).
"""

from __future__ import annotations

import codecs
import glob as globlib
import hashlib
import json
import logging
import os
import posixpath
import re
from dataclasses import asdict, dataclass
from fnmatch import fnmatchcase
from typing import Any, Iterator

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from phi4ray.stage import Reject, reject_row

log = logging.getLogger(__name__)

ID_CHARS = 24
HTML_EXT = (".html", ".htm", ".xhtml")
JSONL_EXT = (".jsonl", ".jsonl.gz", ".jsonl.zst", ".ndjson", ".ndjson.gz", ".ndjson.zst")
PARQUET_EXT = (".parquet", ".pq")
MAX_LINE_SNIPPET = 500
READ_CHUNK = 1 << 16
"""Bytes per read of a JSONL stream; small enough that a corrupt compressed file still yields
the lines before the damage."""
_GLOB_CHARS = re.compile(r"[*?\[]")
_CHARSET = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?\s*([A-Za-z0-9_.:-]+)""", re.I)


@dataclass(frozen=True)
class InputFile:
    path: str
    """Local absolute path or URI."""
    rel: str
    """Path relative to the input root: the stable part of every record id."""

    @property
    def kind(self) -> str | None:
        return file_kind(self.path)

    def to_dict(self) -> dict:
        return asdict(self)


def file_kind(path: str) -> str | None:
    name = path.lower()
    if name.endswith(HTML_EXT):
        return "html"
    if name.endswith(JSONL_EXT):
        return "jsonl"
    if name.endswith(PARQUET_EXT):
        return "parquet"
    return None


def make_id(rel: str, position: int | str) -> str:
    return hashlib.sha256(f"{rel}\0{position}".encode()).hexdigest()[:ID_CHARS]


# -- inputs ------------------------------------------------------------------------------------
def _fs_of(path: str) -> tuple[pafs.FileSystem, str]:
    if "://" in path:
        return pafs.FileSystem.from_uri(path)
    return pafs.LocalFileSystem(), os.path.abspath(path)


def _as_input_path(inp: str, fs_path: str) -> str:
    """How a file found under input `inp` is opened later: a local path, or a URI."""
    return f"{inp.split('://', 1)[0]}://{fs_path}" if "://" in inp else fs_path


def expand_inputs(inputs: list[str]) -> list[InputFile]:
    """Files, folders and globs -> sorted, de-duplicated input files.

    Folders and globs contribute only files of a known kind (others are logged and skipped:
    they are not documents, e.g. a LICENSE next to the data). A file named explicitly is kept
    whatever its kind, so an unsupported format becomes a visible reject, not a silent skip.
    Raises ValueError for an input that matches nothing, or for two different files that
    would get the same relative path (and so the same ids).
    """
    found: dict[str, InputFile] = {}
    for inp in inputs:
        matched = _expand_one(inp)
        if not matched:
            raise ValueError(f"input '{inp}' matches no file (of the kinds read: html, jsonl, parquet)")
        for f in matched:
            found.setdefault(f.path, f)
    by_rel: dict[str, str] = {}
    for f in found.values():
        other = by_rel.setdefault(f.rel, f.path)
        if other != f.path:
            raise ValueError(
                f"inputs {other} and {f.path} have the same relative path '{f.rel}', so their records "
                "would get the same ids; rename one or give their parent folders distinct names"
            )
    return sorted(found.values(), key=lambda f: (f.rel, f.path))


def _expand_one(inp: str) -> list[InputFile]:
    skipped = 0
    if _GLOB_CHARS.search(inp):
        static = _GLOB_CHARS.split(inp, 1)[0]
        static_dir = static if static.endswith("/") else posixpath.dirname(static)
        fs, root_fs = _fs_of(static_dir or ".")
        pattern = posixpath.join(root_fs, inp[len(static_dir) :].lstrip("/"))
        if isinstance(fs, pafs.LocalFileSystem):
            paths = [os.path.abspath(p) for p in globlib.glob(pattern, recursive=True) if os.path.isfile(p)]
        else:
            sel = pafs.FileSelector(root_fs, recursive=True, allow_not_found=True)
            paths = [
                i.path for i in fs.get_file_info(sel) if i.type == pafs.FileType.File and fnmatchcase(i.path, pattern)
            ]
        out = []
        for p in paths:
            if file_kind(p) is None:
                skipped += 1
                continue
            out.append(InputFile(_as_input_path(inp, p), posixpath.relpath(p, posixpath.dirname(root_fs.rstrip("/")))))
    else:
        fs, path = _fs_of(inp)
        info = fs.get_file_info(path)
        if info.type == pafs.FileType.File:
            parent = posixpath.dirname(posixpath.dirname(path))
            return [InputFile(_as_input_path(inp, path), posixpath.relpath(path, parent))]
        if info.type != pafs.FileType.Directory:
            return []
        parent = posixpath.dirname(path.rstrip("/"))
        out = []
        for i in fs.get_file_info(pafs.FileSelector(path, recursive=True)):
            if i.type != pafs.FileType.File or posixpath.basename(i.path).startswith("."):
                continue
            if file_kind(i.path) is None:
                skipped += 1
                continue
            out.append(InputFile(_as_input_path(inp, i.path), posixpath.relpath(i.path, parent)))
    if skipped:
        log.info("input %s: skipped %d file(s) of no known kind (html, jsonl, parquet)", inp, skipped)
    return out


# -- reading -----------------------------------------------------------------------------------
def read_file(f: InputFile, source: str = "web") -> Iterator[tuple[dict, Reject | None]]:
    """Yield (record, None) for each document in `f`, or (partial record, Reject) for bad input."""
    kind = f.kind
    try:
        if kind == "html":
            yield from _read_html(f, source)
        elif kind == "jsonl":
            yield from _read_jsonl(f, source)
        elif kind == "parquet":
            yield from _read_parquet(f, source)
        else:
            yield _stub(f, source, 0), Reject("unsupported_format", f"{f.rel}: not html, jsonl or parquet")
    except Exception as e:  # a reader bug or an unreadable file must not kill the shard
        yield _stub(f, source, "file"), Reject("read_error", f"{f.rel}: {type(e).__name__}: {e}")


def read_records(files: list[InputFile], source: str = "web", stage: str = "curate") -> tuple[list[dict], list[dict]]:
    """All records of `files`, and reject rows (step `read`) for what could not be read."""
    records, rejects = [], []
    for f in files:
        for rec, rej in read_file(f, source):
            if rej is None:
                records.append(rec)
            else:
                rejects.append(reject_row(rec, stage, "read", rej))
    return records, rejects


def _stub(f: InputFile, source: str, position: int | str, **meta: Any) -> dict:
    return {"id": make_id(f.rel, position), "source": source, "url": f.rel, "meta": {"file": f.rel, **meta}}


def _open(f: InputFile):
    fs, path = _fs_of(f.path)
    stream = fs.open_input_stream(path, compression=None)
    name = f.path.lower()
    if name.endswith(".gz"):
        return pa.CompressedInputStream(stream, "gzip")
    if name.endswith(".zst"):
        return pa.CompressedInputStream(stream, "zstd")
    return stream


def decode_html(data: bytes) -> str | Reject:
    """Bytes -> str: a BOM, else UTF-8, else the charset the page declares; else a Reject."""
    if not data.strip():
        return Reject("empty_file")
    if b"\0" in data[:65536] and not data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return Reject("binary", "NUL bytes in an HTML file")
    for bom, enc in ((codecs.BOM_UTF8, "utf-8-sig"), (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16")):
        if data.startswith(bom):
            try:
                return data.decode(enc)
            except UnicodeDecodeError as e:
                return Reject("decode_error", str(e))
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        err = e
    m = _CHARSET.search(data[:4096])
    if m:
        enc = m.group(1).decode("ascii", "replace")
        try:
            return data.decode(enc)
        except (LookupError, UnicodeDecodeError) as e:
            return Reject("decode_error", f"declared charset {enc}: {e}")
    return Reject("decode_error", f"not UTF-8 and no charset declared: {err}")


def _read_html(f: InputFile, source: str) -> Iterator[tuple[dict, Reject | None]]:
    with _open(f) as s:
        data = s.read()
    rec = _stub(f, source, 0, bytes=len(data))
    html = decode_html(data)
    if isinstance(html, Reject):
        yield rec, html
        return
    rec["html"] = html
    yield rec, None


def _from_fields(f: InputFile, source: str, position: int, obj: Any, pos_key: str) -> tuple[dict, Reject | None]:
    rec = _stub(f, source, position, **{pos_key: position})
    if not isinstance(obj, dict):
        rec["raw"] = str(obj)[:MAX_LINE_SNIPPET]
        return rec, Reject("bad_record", f"expected an object, got {type(obj).__name__}")
    field = "text" if obj.get("text") is not None else "html" if obj.get("html") is not None else None
    if field is None:
        rec["meta"]["keys"] = sorted(map(str, obj))[:50]
        return rec, Reject("no_text", "record has neither a 'text' nor an 'html' field")
    value = obj[field]
    if not isinstance(value, str):
        return rec, Reject("bad_record", f"'{field}' is {type(value).__name__}, not a string")
    rec[field] = value
    if isinstance(obj.get("url"), str) and obj["url"]:
        rec["url"] = obj["url"]
    if obj.get("id") is not None:
        rec["meta"]["orig_id"] = str(obj["id"])
    for k, v in obj.items():
        if k not in ("text", "html", "url", "id") and k not in rec["meta"]:
            rec["meta"][k] = v
    return rec, None


def _read_jsonl(f: InputFile, source: str) -> Iterator[tuple[dict, Reject | None]]:
    lineno = 0
    try:
        with _open(f) as s:
            pending = b""
            while True:
                chunk = s.read(READ_CHUNK)
                if not chunk:
                    break
                lines = (pending + chunk).split(b"\n")
                pending = lines.pop()
                for raw in lines:
                    yield from _jsonl_line(f, source, lineno, raw)
                    lineno += 1
            if pending:
                yield from _jsonl_line(f, source, lineno, pending)
                lineno += 1
    except Exception as e:  # corrupt or truncated compressed stream, I/O error
        yield (
            _stub(f, source, lineno, line=lineno),
            Reject("read_error", f"{f.rel}: {type(e).__name__}: {e} (after {lineno} lines)"),
        )


def _jsonl_line(f: InputFile, source: str, lineno: int, raw: bytes) -> Iterator[tuple[dict, Reject | None]]:
    if not raw.strip():
        return
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        rec = _stub(f, source, lineno, line=lineno)
        rec["raw"] = raw[:MAX_LINE_SNIPPET].decode("utf-8", "replace")
        yield rec, Reject("decode_error", str(e))
        return
    try:
        obj = json.loads(line)
    except ValueError as e:
        rec = _stub(f, source, lineno, line=lineno)
        rec["raw"] = line[:MAX_LINE_SNIPPET]
        yield rec, Reject("bad_json", str(e))
        return
    yield _from_fields(f, source, lineno, obj, "line")


def _read_parquet(f: InputFile, source: str) -> Iterator[tuple[dict, Reject | None]]:
    row = 0
    try:
        fs, path = _fs_of(f.path)
        pf = pq.ParquetFile(path, filesystem=fs)
        names = pf.schema_arrow.names
        if "text" not in names and "html" not in names:
            yield (
                _stub(f, source, 0, row=0),
                Reject("no_text", f"{f.rel}: no 'text' or 'html' column (has {names[:20]})"),
            )
            return
        for batch in pf.iter_batches(batch_size=1024):
            for obj in batch.to_pylist():
                yield _from_fields(f, source, row, obj, "row")
                row += 1
    except Exception as e:
        yield (
            _stub(f, source, row, row=row),
            Reject("read_error", f"{f.rel}: {type(e).__name__}: {e} (after {row} rows)"),
        )
