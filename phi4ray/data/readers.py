"""Readers: raw input files -> raw records.

`expand_inputs` turns files, folders and globs (local paths or `pyarrow.fs` URIs) into a sorted
list of `InputFile`s. `read_file` turns one file into raw records:

    {"id", "source", "url", "html" | "text", "meta"}

- HTML (`.html`, `.htm`, `.xhtml`): one document per file.
- JSONL (`.jsonl`, `.jsonl.gz`, `.jsonl.zst`; also `.json*` lines): one document per line, with a
  `text` or `html` field and optional `url` and `id` (kept as `meta.orig_id`); other fields go
  to `meta`. gzip and zstd streams are decoded by pyarrow, so no extra package is needed.
- Parquet: one document per row, from a `text` or `html` column; other columns go to `meta`.
- WARC (`.warc`, `.warc.gz`), read with FastWARC: one document per `response` record whose
  HTTP status is 2xx and whose content type is HTML (`text/html`, `application/xhtml+xml`).
  `url` is its `WARC-Target-URI`; the body is un-chunked and decompressed as its HTTP headers
  say, then decoded by `decode_html` (the HTTP charset is tried after UTF-8). `position` is the
  record's byte offset in the (decompressed) WARC stream. Other records (`warcinfo`,
  `request`, `metadata`, `revisit`, non-HTML or non-2xx responses) are not documents: they are
  neither records nor rejects, and are counted in the caller's `skipped` Counter as
  `warc/<record type>`, `warc/not_html` and `warc/http_<status>`, so that the stage can report
  them. A truncated or corrupt WARC yields the documents before the damage and one reject at
  the offset where the damage starts: `read_error` for a gzip member that is damaged or cut
  (found by zlib, member by member), `truncated` for a record shorter than its headers say.
- Source code (only when `source == "code"`): a folder or glob expands to the files whose
  extension or name is a programming language's (`CODE_LANGUAGES`, `CODE_FILENAMES`), below
  folders that are not tool or dependency caches (`SKIP_DIRS`: `.git`, `node_modules`,
  `__pycache__`, virtualenvs, ...). A file becomes `{"id", "source", "url": rel, "text",
  "meta": {"lang", "path": rel, "file": rel}}`. Vendored copies (`vendor/`, `third_party/`,
  `*.min.js`), binary files (NUL bytes), files over `MAX_CODE_BYTES` and files that are not
  UTF-8 are rejects (`vendored`, `binary`, `too_large`, `decode_error`, `empty_file`). In code
  mode a file named explicitly is read as code when its extension is a language's, and by its
  data kind (JSONL, Parquet, ...) otherwise.

`id` is `sha256("<rel>\\0<position>")[:24]`, where `rel` is the file's path relative to the
parent of its input's deepest non-glob folder (`samples/a.html` whether the input named the file,
the folder `samples` or the glob `samples/*.html`) and `position` is the line or row number
(0 for an HTML or code file, the record offset for a WARC). Identical input therefore gets
identical ids on every run and machine.

Nothing here raises on bad input: a file or line that cannot be read or parsed yields a
`(partial record, Reject)` pair, which the stage turns into a reject row (step `read`).
"""

from __future__ import annotations

import codecs
import glob as globlib
import hashlib
import io
import json
import logging
import os
import posixpath
import re
import zlib
from collections import Counter
from dataclasses import asdict, dataclass
from fnmatch import fnmatchcase
from functools import partial
from typing import Any, Iterator

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from fastwarc import stream_io
from fastwarc.warc import ArchiveIterator

from phi4ray.stage import Reject, reject_row

log = logging.getLogger(__name__)

ID_CHARS = 24
HTML_EXT = (".html", ".htm", ".xhtml")
JSONL_EXT = (".jsonl", ".jsonl.gz", ".jsonl.zst", ".ndjson", ".ndjson.gz", ".ndjson.zst")
PARQUET_EXT = (".parquet", ".pq")
WARC_EXT = (".warc", ".warc.gz")
HTML_TYPES = frozenset({"text/html", "application/xhtml+xml"})
CODE_LANGUAGES = {
    ".py": "python", ".pyi": "python", ".js": "javascript", ".mjs": "javascript", ".cjs": "javascript",
    ".jsx": "javascript", ".ts": "typescript", ".tsx": "typescript", ".java": "java", ".kt": "kotlin",
    ".kts": "kotlin", ".scala": "scala", ".c": "c", ".h": "c", ".cc": "cpp", ".cpp": "cpp", ".cxx": "cpp",
    ".hpp": "cpp", ".hh": "cpp", ".hxx": "cpp", ".cu": "cuda", ".cs": "csharp", ".go": "go", ".rs": "rust",
    ".rb": "ruby", ".php": "php", ".sh": "shell", ".bash": "shell", ".zsh": "shell", ".swift": "swift",
    ".r": "r", ".jl": "julia", ".lua": "lua", ".pl": "perl", ".pm": "perl", ".hs": "haskell", ".ml": "ocaml",
    ".mli": "ocaml", ".ex": "elixir", ".exs": "elixir", ".erl": "erlang", ".clj": "clojure", ".dart": "dart",
    ".f90": "fortran", ".f95": "fortran", ".sql": "sql", ".ps1": "powershell", ".zig": "zig", ".nim": "nim",
}  # fmt: skip
"""Extension (lowercased) -> language. Programming languages only: markup and data (HTML,
Markdown, JSON, YAML) are other sources' business. `.h` is labelled C (C or C++ cannot be told
from the name)."""
CODE_FILENAMES = {
    "makefile": "makefile", "gnumakefile": "makefile", "dockerfile": "dockerfile", "cmakelists.txt": "cmake",
}  # fmt: skip
SKIP_DIRS = frozenset(
    """.git .hg .svn node_modules bower_components __pycache__ .mypy_cache .pytest_cache .ruff_cache
    .tox .nox .venv venv site-packages .ipynb_checkpoints""".split()
)
"""Folders never entered when a code tree is expanded: version control, caches, installed
dependencies. Their files are not the tree's code, so they are not rejects either."""
VENDORED_DIRS = frozenset("vendor vendored third_party thirdparty 3rdparty".split())
VENDORED_FILE = re.compile(r"[.-]min\.js$|\.bundle\.js$", re.I)
MAX_CODE_BYTES = 1 << 20
"""Larger code files are rejects (`too_large`): generated code and data, as in The Stack."""
BINARY_SNIFF_BYTES = 8192
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


def code_language(path: str) -> str | None:
    name = posixpath.basename(path).lower()
    if name in CODE_FILENAMES:
        return CODE_FILENAMES[name]
    return CODE_LANGUAGES.get(posixpath.splitext(name)[1])


def file_kind(path: str, source: str = "web") -> str | None:
    """How a file is read: html, jsonl, parquet, warc, code (only when `source == "code"`)."""
    if source == "code" and code_language(path):
        return "code"
    name = path.lower()
    if name.endswith(WARC_EXT):
        return "warc"
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


def expand_inputs(inputs: list[str], source: str = "web") -> list[InputFile]:
    """Files, folders and globs -> sorted, de-duplicated input files.

    Folders and globs contribute only files of a known kind (others are logged and skipped:
    they are not documents, e.g. a LICENSE next to the data); with `source="code"`, only code
    files outside `SKIP_DIRS`. A file named explicitly is kept whatever its kind, so an
    unsupported format becomes a visible reject, not a silent skip.
    Raises ValueError for an input that matches nothing, or for two different files that
    would get the same relative path (and so the same ids).
    """
    found: dict[str, InputFile] = {}
    for inp in inputs:
        matched = _expand_one(inp, source)
        if not matched:
            kinds = "code files" if source == "code" else "the kinds read: html, jsonl, parquet, warc"
            raise ValueError(f"input '{inp}' matches no file (of {kinds})")
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


def _dirs_below_root(rel: str) -> list[str]:
    """The folders between an input root (the first part of `rel`) and the file."""
    return rel.split("/")[1:-1]


def _wanted(path: str, rel: str, source: str) -> bool:
    """Whether a file found in a folder or glob is read (see `expand_inputs`)."""
    if source == "code":
        return file_kind(path, source) == "code" and not SKIP_DIRS.intersection(_dirs_below_root(rel))
    return file_kind(path) is not None


def _expand_one(inp: str, source: str = "web") -> list[InputFile]:
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
        parent = posixpath.dirname(root_fs.rstrip("/"))
    else:
        fs, path = _fs_of(inp)
        info = fs.get_file_info(path)
        if info.type == pafs.FileType.File:
            parent = posixpath.dirname(posixpath.dirname(path))
            return [InputFile(_as_input_path(inp, path), posixpath.relpath(path, parent))]
        if info.type != pafs.FileType.Directory:
            return []
        parent = posixpath.dirname(path.rstrip("/"))
        paths = [
            i.path
            for i in fs.get_file_info(pafs.FileSelector(path, recursive=True))
            if i.type == pafs.FileType.File and not posixpath.basename(i.path).startswith(".")
        ]
    out = []
    for p in paths:
        rel = posixpath.relpath(p, parent)
        if _wanted(p, rel, source):
            out.append(InputFile(_as_input_path(inp, p), rel))
    if len(out) < len(paths):
        why = "no code or in SKIP_DIRS" if source == "code" else "of no known kind (html, jsonl, parquet, warc)"
        log.info("input %s: skipped %d file(s): %s", inp, len(paths) - len(out), why)
    return out


# -- reading -----------------------------------------------------------------------------------
def read_file(
    f: InputFile, source: str = "web", skipped: Counter | None = None
) -> Iterator[tuple[dict, Reject | None]]:
    """Yield (record, None) for each document in `f`, or (partial record, Reject) for bad input.
    Records of a container that are not documents (WARC requests, images...) are counted in
    `skipped`, when given, by `<kind>/<why>`."""
    kind = file_kind(f.path, source)
    skipped = skipped if skipped is not None else Counter()
    try:
        if kind == "html":
            yield from _read_html(f, source)
        elif kind == "jsonl":
            yield from _read_jsonl(f, source)
        elif kind == "parquet":
            yield from _read_parquet(f, source)
        elif kind == "warc":
            yield from _read_warc(f, source, skipped)
        elif kind == "code":
            yield from _read_code(f, source)
        else:
            yield _stub(f, source, 0), Reject("unsupported_format", f"{f.rel}: not html, jsonl, parquet or warc")
    except Exception as e:  # a reader bug or an unreadable file must not kill the shard
        yield _stub(f, source, "file"), Reject("read_error", f"{f.rel}: {type(e).__name__}: {e}")


def read_records(
    files: list[InputFile], source: str = "web", stage: str = "curate", skipped: Counter | None = None
) -> tuple[list[dict], list[dict]]:
    """All records of `files`, and reject rows (step `read`) for what could not be read.
    Non-documents inside containers are counted in `skipped` (see `read_file`)."""
    records, rejects = [], []
    for f in files:
        for rec, rej in read_file(f, source, skipped):
            if rej is None:
                records.append(rec)
            else:
                rejects.append(reject_row(rec, stage, "read", rej))
    return records, rejects


def _stub(f: InputFile, source: str, position: int | str, **meta: Any) -> dict:
    return {"id": make_id(f.rel, position), "source": source, "url": f.rel, "meta": {"file": f.rel, **meta}}


def _open_raw(f: InputFile):
    fs, path = _fs_of(f.path)
    return fs.open_input_stream(path, compression=None)


def _open(f: InputFile):
    stream = _open_raw(f)
    name = f.path.lower()
    if name.endswith(".gz"):
        return pa.CompressedInputStream(stream, "gzip")
    if name.endswith(".zst"):
        return pa.CompressedInputStream(stream, "zstd")
    return stream


def decode_html(data: bytes, charset: str | None = None) -> str | Reject:
    """Bytes -> str: a BOM, else UTF-8, else `charset` (from HTTP headers), else the charset the
    page declares; else a Reject."""
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
    if charset:
        try:
            return data.decode(charset)
        except (LookupError, UnicodeDecodeError):
            pass
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


# -- WARC --------------------------------------------------------------------------------------
class _WarcStream:
    """A WARC as a file-like object for FastWARC, which needs `read` and `tell`.

    A `.warc.gz` is decompressed here, gzip member by member (crawlers write one member per
    record), so a damaged or truncated member costs only its own record. A read or
    decompression error, or a stream that ends inside a member, becomes end-of-file for
    FastWARC and is kept in `error`; the bytes before it are still served."""

    def __init__(self, raw, gzipped: bool):
        self.raw = raw
        self.gzipped = gzipped
        self.pos = 0
        self.error: Exception | None = None
        self._buf = bytearray()
        self._member: Any = None
        self._eof = False

    def _fill(self) -> None:
        chunk = self.raw.read(READ_CHUNK)
        if not chunk:
            self._eof = True
            if self._member is not None:
                raise EOFError("the file ends inside a gzip member")
            return
        if not self.gzipped:
            self._buf += chunk
            return
        while chunk:
            self._member = self._member or zlib.decompressobj(wbits=31)
            self._buf += self._member.decompress(chunk)
            if not self._member.eof:
                return
            chunk, self._member = self._member.unused_data, None

    def read(self, size: int = -1) -> bytes:
        want = None if size is None or size < 0 else size
        while not self._eof and self.error is None and (want is None or len(self._buf) < want):
            try:
                self._fill()
            except Exception as e:
                self.error = e
        n = len(self._buf) if want is None else min(want, len(self._buf))
        data = bytes(self._buf[:n])
        del self._buf[:n]
        self.pos += n
        return data

    def tell(self) -> int:
        return self.pos

    def close(self) -> None:
        self.raw.close()


def _is_panic(e: BaseException) -> bool:
    """A Rust panic inside FastWARC surfaces as pyo3's PanicException, a BaseException."""
    return type(e).__name__ == "PanicException"


def _next_warc_record(records) -> tuple[Any, str | None]:
    """(next record or None at the end, error message or None)."""
    try:
        return next(records), None
    except StopIteration:
        return None, None
    except BaseException as e:
        if isinstance(e, Exception) or _is_panic(e):
            return None, f"{type(e).__name__}: {e}"
        raise


def _warc_incomplete(rec, size: int) -> str | None:
    """Why a record whose body had `size` bytes is cut short, or None when it is whole."""
    declared = (rec.headers.get("Content-Length") or "").strip()
    if rec.headers.get("WARC-Type") is None or not declared.isdigit():
        return "record headers are incomplete"
    if size != rec.content_length:
        return f"record body has {size} of {rec.content_length} bytes"
    return None


_BODY_DECODERS = {
    "gzip": stream_io.GzipReader,
    "x-gzip": stream_io.GzipReader,
    "deflate": partial(stream_io.GzipReader, zlib=True),
    "br": stream_io.BrotliReader,
    "zstd": stream_io.ZstdReader,
}
"""HTTP Content-Encoding -> FastWARC reader that decodes it."""


def _http_body(rec, payload: bytes) -> bytes | Reject:
    """The HTTP payload without its transfer and content encodings."""
    headers = rec.http_headers
    try:
        if "chunked" in (headers.get("Transfer-Encoding") or "").lower():
            payload = stream_io.ChunkedReader(io.BytesIO(payload)).read()
        for coding in reversed([c.strip().lower() for c in (headers.get("Content-Encoding") or "").split(",")]):
            if coding in ("", "identity"):
                continue
            if coding not in _BODY_DECODERS:
                return Reject("decode_error", f"unsupported Content-Encoding {coding!r}")
            payload = _BODY_DECODERS[coding](io.BytesIO(payload)).read()
    except Exception as e:
        return Reject("decode_error", f"HTTP body: {type(e).__name__}: {e}")
    return payload


def _warc_skip_reason(rec) -> str | None:
    """Why a whole record is not a document (the `skipped` key), or None when it is one."""
    kind = str(rec.record_type)
    if kind != "response":
        return f"warc/{kind}"
    if not rec.is_http:
        return "warc/not_http"
    status = rec.http_headers.status_code
    if status is None or not 200 <= status < 300:
        return f"warc/http_{status}"
    if (rec.http_content_type or "").lower() not in HTML_TYPES:
        return "warc/not_html"
    return None


def _warc_document(f: InputFile, source: str, rec, payload: bytes) -> tuple[dict, Reject | None]:
    offset = rec.stream_pos
    doc = _stub(f, source, offset, offset=offset)
    doc["url"] = rec.headers.get("WARC-Target-URI") or f.rel
    doc["meta"].update(
        warc_record_id=rec.headers.get("WARC-Record-ID"),
        warc_date=rec.headers.get("WARC-Date"),
        http_status=rec.http_headers.status_code,
    )
    body = _http_body(rec, payload)
    if isinstance(body, Reject):
        return doc, body
    html = decode_html(body, rec.http_charset)
    if isinstance(html, Reject):
        return doc, html
    doc["html"] = html
    return doc, None


def _read_warc(f: InputFile, source: str, skipped: Counter) -> Iterator[tuple[dict, Reject | None]]:
    stream = _WarcStream(_open_raw(f), gzipped=f.path.lower().endswith(".gz"))
    records = iter(ArchiveIterator(stream, parse_http=True, auto_decode="none", stream_detect=False))
    n = 0
    damage: tuple[int, str] | None = None
    try:
        while True:
            rec, error = _next_warc_record(records)
            if rec is None:
                if error is not None:
                    damage = (stream.pos, error)
                break
            why = _warc_skip_reason(rec)
            payload = b"" if why else rec.reader.read()
            cut = _warc_incomplete(rec, rec.reader.consume() if why else len(payload))
            if cut is not None:
                damage = (rec.stream_pos, cut)
                break
            n += 1
            if why:
                skipped[why] += 1
                continue
            yield _warc_document(f, source, rec, payload)
    finally:
        stream.close()
    if stream.error is not None:
        at = damage[0] if damage else stream.pos
        yield _stub(f, source, at, offset=at), Reject(
            "read_error", f"{f.rel}: {type(stream.error).__name__}: {stream.error} (after {n} WARC records)"
        )
    elif damage is not None:
        at, why = damage
        detail = f"{f.rel}: at offset {at}: {why} (after {n} WARC records)"
        yield _stub(f, source, at, offset=at), Reject("truncated", detail)


# -- source code -------------------------------------------------------------------------------
def is_vendored(rel: str) -> bool:
    return bool(VENDORED_DIRS.intersection(_dirs_below_root(rel))) or bool(VENDORED_FILE.search(rel))


def decode_code(data: bytes) -> str | Reject:
    """Bytes of a source file -> str: UTF-8 (with or without a BOM), else a Reject."""
    if not data.strip():
        return Reject("empty_file")
    if b"\0" in data[:BINARY_SNIFF_BYTES]:
        return Reject("binary", "NUL bytes in a source file")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        return Reject("decode_error", f"not UTF-8: {e}")


def _read_code(f: InputFile, source: str) -> Iterator[tuple[dict, Reject | None]]:
    rec = _stub(f, source, 0, lang=code_language(f.path), path=f.rel)
    if is_vendored(f.rel):
        yield rec, Reject("vendored", f"{f.rel}: a vendored copy of another project's code")
        return
    with _open(f) as s:
        data = s.read(MAX_CODE_BYTES + 1)
    if len(data) > MAX_CODE_BYTES:
        yield rec, Reject("too_large", f"{f.rel}: more than {MAX_CODE_BYTES} bytes")
        return
    text = decode_code(data)
    if isinstance(text, Reject):
        yield rec, text
        return
    rec["text"] = text
    yield rec, None
