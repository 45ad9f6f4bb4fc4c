"""Reading the input corpus as raw records, robustly.

Why not ``ray.data.read_json``: it parses a whole block with Arrow, so one malformed line (or one
line with a different type for a field) fails the block and every good document in it. Here each
line stays an opaque byte string (:data:`~glidre_core.extraction.schemas.RECORD`) carrying its
file and line number, and parsing happens per record in the validation stage, where a failure is
one row of ``errors/``.

* JSON Lines (``.jsonl``, ``.ndjson``, ``.json``, optionally ``.gz``/``.bz2``/``.zst``): streamed in
  chunks, so a large file never sits in memory whole. A ``.json`` file that is a single JSON array
  (DocRED style) is accepted too: its elements become records.
* Parquet (``.parquet``): read with Ray's Parquet reader, each row re-serialised to JSON so that
  both formats share one validation path.
"""

from __future__ import annotations

import hashlib
import json
import logging
import posixpath
from collections.abc import Iterable, Iterator
from typing import Any

import pyarrow as pa
from ray.data.block import Block
from ray.data.datasource.file_based_datasource import FileBasedDatasource

from glidre_core.extraction.errors import InputError
from glidre_core.extraction.schemas import RECORD
from glidre_core.extraction.storage import Location, list_files

logger = logging.getLogger(__name__)

COMPRESSIONS = (".gz", ".bz2", ".zst")
JSONL_EXTENSIONS = (".jsonl", ".ndjson", ".json")
PARQUET_EXTENSIONS = (".parquet",)


def _format_of(path: str) -> str | None:
    name = path.lower()
    for comp in COMPRESSIONS:
        if name.endswith(comp):
            name = name[: -len(comp)]
            break
    if name.endswith(JSONL_EXTENSIONS):
        return "jsonl"
    if name.endswith(PARQUET_EXTENSIONS):
        return "parquet"
    return None


def discover_inputs(loc: Location, input_format: str = "auto") -> tuple[list[str], str]:
    """Input files under ``loc`` and their format; raises :class:`InputError` when there are none.

    Hidden files and files starting with ``_`` (``_SUCCESS``, ``_manifest.json``) are ignored.
    """
    try:
        infos = list_files(loc)
    except OSError as exc:
        raise InputError(f"cannot list input {loc.uri!r}: {exc}") from exc
    found: dict[str, list[str]] = {"jsonl": [], "parquet": []}
    for info in infos:
        if posixpath.basename(info.path).startswith((".", "_")):
            continue
        fmt = _format_of(info.path)
        if fmt is not None and (input_format == "auto" or fmt == input_format):
            found[fmt].append(info.path)
    if found["jsonl"] and found["parquet"]:
        raise InputError(
            f"input {loc.uri!r} mixes JSON Lines ({len(found['jsonl'])}) and Parquet "
            f"({len(found['parquet'])}) files; set input_format to choose one"
        )
    fmt = "parquet" if found["parquet"] else "jsonl"
    files = found[fmt]
    if not files:
        wanted = {"auto": "JSON Lines or Parquet", "jsonl": "JSON Lines", "parquet": "Parquet"}[input_format]
        raise InputError(f"no {wanted} input files at {loc.uri!r} ({len(infos)} other files found)")
    return files, fmt


def relative_source(path: str, root: str) -> str:
    """``path`` relative to the input root (the file name when the input is a single file)."""
    if path == root:
        return posixpath.basename(path)
    rel = posixpath.relpath(path, root)
    return rel if not rel.startswith("..") else path


def fallback_id(source: str, line: int | None, raw: bytes) -> str:
    """Stable id of a record without a usable ``doc_id``: ``file:line``, or a content hash."""
    if line is not None:
        return f"{source}:{line}"
    return f"{source}#{hashlib.sha1(raw).hexdigest()[:16]}"


def iter_lines(chunks: Iterable[bytes]) -> Iterator[tuple[int, bytes]]:
    """``(line_number, line)`` for the non-blank lines of a byte stream given in chunks."""
    buf = b""
    lineno = 0
    for chunk in chunks:
        buf += chunk
        if b"\n" not in chunk:
            continue
        *lines, buf = buf.split(b"\n")
        for line in lines:
            lineno += 1
            if line.strip():
                yield lineno, line.rstrip(b"\r")
    if buf.strip():
        yield lineno + 1, buf.rstrip(b"\r")


def _json_array_records(data: bytes) -> list[tuple[int, bytes]] | None:
    """Elements of a whole-file JSON array as ``(index, json bytes)``, or None if not one."""
    try:
        value = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(value, list):
        return None
    return [(i, json.dumps(v, ensure_ascii=False).encode("utf-8")) for i, v in enumerate(value)]


class JsonLinesDatasource(FileBasedDatasource):
    """JSON Lines files -> :data:`RECORD` blocks of at most ``lines_per_block`` records."""

    def __init__(self, paths: list[str], *, root: str, lines_per_block: int = 256,
                 chunk_bytes: int = 4 << 20, **kwargs: Any):
        super().__init__(paths, **kwargs)
        self._root = root
        self._lines_per_block = lines_per_block
        self._chunk_bytes = chunk_bytes

    def _read_stream(self, f: pa.NativeFile, path: str) -> Iterator[Block]:
        source = relative_source(path, self._root)
        first = f.read(self._chunk_bytes)
        if first.startswith(b"\xef\xbb\xbf"):
            first = first[3:]
        if first.lstrip()[:1] == b"[":
            rest = [first]
            while chunk := f.read(self._chunk_bytes):
                rest.append(chunk)
            data = b"".join(rest)
            records = _json_array_records(data)
            if records is not None:
                yield from self._blocks(source, iter(records))
                return
            chunks: Iterable[bytes] = [data]
        else:
            chunks = self._chunks(first, f)
        yield from self._blocks(source, iter_lines(chunks))

    def _chunks(self, first: bytes, f: pa.NativeFile) -> Iterator[bytes]:
        yield first
        while chunk := f.read(self._chunk_bytes):
            yield chunk

    def _blocks(self, source: str, records: Iterator[tuple[int, bytes]]) -> Iterator[Block]:
        lines: list[int] = []
        raws: list[bytes] = []
        for lineno, raw in records:
            lines.append(lineno)
            raws.append(raw)
            if len(raws) >= self._lines_per_block:
                yield records_table(source, lines, raws)
                lines, raws = [], []
        if raws:
            yield records_table(source, lines, raws)


def records_table(source: str, lines: list[int | None], raws: list[bytes]) -> pa.Table:
    return pa.Table.from_arrays(
        [pa.array([source] * len(raws), pa.string()), pa.array(lines, pa.int64()), pa.array(raws, pa.binary())],
        schema=RECORD,
    )


def _jsonable(value: Any) -> Any:
    return str(value) if not isinstance(value, (str, int, float, bool, type(None), list, dict)) else value


def parquet_to_records(batch: pa.Table, root: str) -> pa.Table:
    """Parquet rows (with the ``path`` column from ``include_paths``) -> :data:`RECORD` rows.

    Nested ``entities`` come out of Arrow as lists of dicts; an ``entities`` column stored as a
    JSON string is decoded later by the validation stage, like any other record.
    """
    paths = batch.column("path").to_pylist() if "path" in batch.column_names else [""] * batch.num_rows
    data = batch.drop_columns(["path"]) if "path" in batch.column_names else batch
    sources, raws = [], []
    for path, row in zip(paths, data.to_pylist()):
        sources.append(relative_source(path, root))
        raws.append(json.dumps(row, ensure_ascii=False, default=_jsonable).encode("utf-8"))
    return pa.Table.from_arrays(
        [pa.array(sources, pa.string()), pa.nulls(len(raws), pa.int64()), pa.array(raws, pa.binary())],
        schema=RECORD,
    )


def input_size(loc: Location, files: list[str], fmt: str, max_footers: int = 20_000) -> "InputSize":
    """What the progress ETA can know up front (see :mod:`glidre_core.extraction.progress`).

    Parquet: the exact row count from the footers (read in parallel; skipped above
    ``max_footers`` files, where it would cost more than it tells). JSON Lines: the total size of
    the uncompressed files (none if any file is compressed, whose byte count says nothing).
    """
    from concurrent.futures import ThreadPoolExecutor

    import pyarrow.parquet as pq

    from glidre_core.extraction.progress import InputSize

    if fmt == "parquet":
        if len(files) > max_footers:
            return InputSize()

        def rows(path: str) -> int:
            with loc.fs.open_input_file(path) as f:
                return pq.ParquetFile(f).metadata.num_rows

        try:
            with ThreadPoolExecutor(max_workers=16) as pool:
                return InputSize(docs=sum(pool.map(rows, files)))
        except (OSError, pa.ArrowException) as exc:
            logger.warning("cannot count input rows for the ETA: %s", exc)
            return InputSize()
    if any(f.lower().endswith(COMPRESSIONS) for f in files):
        return InputSize()
    wanted = set(files)
    try:
        return InputSize(bytes=sum(i.size or 0 for i in list_files(loc) if i.path in wanted))
    except OSError as exc:
        logger.warning("cannot size the input for the ETA: %s", exc)
        return InputSize()
