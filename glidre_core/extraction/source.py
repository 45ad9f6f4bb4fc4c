"""Reading the input corpus as raw records, robustly.

Why not ``ray.data.read_json``: it parses a whole block with Arrow, so one malformed line (or one
line with a different type for a field) fails the block and every good document in it. Here each
line stays an opaque byte string (:data:`~glidre_core.extraction.schemas.RECORD`) carrying its
file and line number, and parsing happens per record in the validation stage, where a failure is
one row of ``errors/``.

* JSON Lines (``.jsonl``, ``.ndjson``, ``.json``, optionally ``.gz``/``.bz2``/``.zst``): streamed in
  chunks, so a large file never sits in memory whole. A ``.json`` file that is a single JSON array
  (DocRED style) is accepted too: its elements become records.
* Parquet (``.parquet``): read in record batches (:class:`ParquetRecordsDatasource`), each row
  re-serialised to JSON so that both formats share one validation path.

Both readers cut each file into numbered blocks (:class:`UnitBlocks`), the units of resume.
"""

from __future__ import annotations

import hashlib
import json
import logging
import posixpath
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pyarrow as pa
from ray.data.block import Block
from ray.data.datasource.file_based_datasource import FileBasedDatasource

from glidre_core.extraction.errors import InputError
from glidre_core.extraction.schemas import RECORD
from glidre_core.extraction.storage import Location, list_files

if TYPE_CHECKING:
    from glidre_core.extraction.progress import InputSize

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
    """Input file paths under ``loc`` and their format (see :func:`discover_input_files`)."""
    infos, fmt = discover_input_files(loc, input_format)
    return [i.path for i in infos], fmt


def discover_input_files(loc: Location, input_format: str = "auto") -> tuple[list[Any], str]:
    """Input files under ``loc`` (``FileInfo``, with sizes: one listing serves the ETA too) and
    their format; raises :class:`InputError` when there are none.

    Hidden files and files starting with ``_`` (``_SUCCESS``, ``_manifest.json``) are ignored.
    """
    try:
        infos = list_files(loc)
    except OSError as exc:
        raise InputError(f"cannot list input {loc.uri!r}: {exc}") from exc
    found: dict[str, list[Any]] = {"jsonl": [], "parquet": []}
    for info in infos:
        if posixpath.basename(info.path).startswith((".", "_")):
            continue
        fmt = _format_of(info.path)
        if fmt is not None and (input_format == "auto" or fmt == input_format):
            found[fmt].append(info)
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


@dataclass(frozen=True)
class FileSkip:
    """What a resumed run skips in one input file: whole committed blocks, and the committed
    lines of blocks that were only partly committed when the previous run stopped."""

    blocks: frozenset[int] = frozenset()
    lines: Mapping[int, frozenset[int]] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.blocks or self.lines)


class UnitBlocks:
    """Cuts ``(line, raw)`` records of one file into :data:`RECORD` blocks of ``lines_per_block``
    records, numbered from 0 (the unit of commit and resume), marks the file's last block, and
    drops what ``skip`` says is already committed. Numbering depends only on the file's content
    and ``lines_per_block``, so a resumed run sees the same units."""

    def __init__(self, lines_per_block: int, skip: FileSkip | None = None):
        self.lines_per_block = lines_per_block
        self.skip = skip or FileSkip()

    def __call__(self, source: str, records: Iterator[tuple[int, bytes]]) -> Iterator[Block]:
        pending: tuple[int, list[int], list[bytes]] | None = None
        block, lines, raws = 0, [], []
        for lineno, raw in records:
            lines.append(lineno)
            raws.append(raw)
            if len(raws) >= self.lines_per_block:
                if pending is not None:
                    yield from self._emit(source, *pending, last=False)
                pending = (block, lines, raws)
                block, lines, raws = block + 1, [], []
        if raws:
            if pending is not None:
                yield from self._emit(source, *pending, last=False)
            pending = (block, lines, raws)
        if pending is not None:
            yield from self._emit(source, *pending, last=True)

    def _emit(self, source: str, block: int, lines: list[int], raws: list[bytes], *, last: bool) -> Iterator[Block]:
        if block in self.skip.blocks:
            return
        size = len(raws)
        done = self.skip.lines.get(block)
        if done:
            keep = [i for i, ln in enumerate(lines) if ln not in done]
            if not keep:
                return
            lines, raws = [lines[i] for i in keep], [raws[i] for i in keep]
        yield records_table(source, lines, raws, block=block, block_size=size, block_last=last)


class JsonLinesDatasource(FileBasedDatasource):
    """JSON Lines files -> :data:`RECORD` blocks of at most ``lines_per_block`` records.

    ``skip`` (keyed by the source path relative to ``root``) holds what a resumed run must not
    redo; only partly committed files appear in it, so it stays small however large the corpus.
    """

    def __init__(self, paths: list[str], *, root: str, lines_per_block: int = 256,
                 chunk_bytes: int = 4 << 20, skip: Mapping[str, FileSkip] | None = None, **kwargs: Any):
        super().__init__(paths, **kwargs)
        self._root = root
        self._lines_per_block = lines_per_block
        self._chunk_bytes = chunk_bytes
        self._skip = dict(skip or {})

    def _read_stream(self, f: pa.NativeFile, path: str) -> Iterator[Block]:
        source = relative_source(path, self._root)
        blocks = UnitBlocks(self._lines_per_block, self._skip.get(source))
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
                yield from blocks(source, iter(records))
                return
            chunks: Iterable[bytes] = [data]
        else:
            chunks = self._chunks(first, f)
        yield from blocks(source, iter_lines(chunks))

    def _chunks(self, first: bytes, f: pa.NativeFile) -> Iterator[bytes]:
        yield first
        while chunk := f.read(self._chunk_bytes):
            yield chunk


class ParquetRecordsDatasource(FileBasedDatasource):
    """Parquet files -> :data:`RECORD` blocks, one record per row (re-serialised to JSON so both
    formats share one validation path), cut into the same numbered units as JSON Lines; ``line``
    is the 0-based row index. Reads record batches, so a large file never sits in memory whole."""

    def __init__(self, paths: list[str], *, root: str, lines_per_block: int = 256,
                 skip: Mapping[str, FileSkip] | None = None, **kwargs: Any):
        super().__init__(paths, **kwargs)
        self._root = root
        self._lines_per_block = lines_per_block
        self._skip = dict(skip or {})

    def _open_input_source(self, filesystem: Any, path: str, **open_args: Any) -> pa.NativeFile:
        return filesystem.open_input_file(path)  # Parquet needs random access (the footer)

    def _read_stream(self, f: pa.NativeFile, path: str) -> Iterator[Block]:
        import pyarrow.parquet as pq

        source = relative_source(path, self._root)
        blocks = UnitBlocks(self._lines_per_block, self._skip.get(source))
        yield from blocks(source, self._rows(pq.ParquetFile(f)))

    def _rows(self, pf: Any) -> Iterator[tuple[int, bytes]]:
        row = 0
        for batch in pf.iter_batches(batch_size=self._lines_per_block):
            for rec in batch.to_pylist():
                yield row, json.dumps(rec, ensure_ascii=False, default=_jsonable).encode("utf-8")
                row += 1


def records_table(source: str, lines: list[int | None], raws: list[bytes], *, block: int = 0,
                  block_size: int | None = None, block_last: bool = True) -> pa.Table:
    n = len(raws)
    return pa.Table.from_arrays(
        [pa.array([source] * n, pa.string()), pa.array(lines, pa.int64()), pa.array(raws, pa.binary()),
         pa.array([block] * n, pa.int64()), pa.array([n if block_size is None else block_size] * n, pa.int32()),
         pa.array([block_last] * n, pa.bool_())],
        schema=RECORD,
    )


def _jsonable(value: Any) -> Any:
    return str(value) if not isinstance(value, (str, int, float, bool, type(None), list, dict)) else value


def input_size(loc: Location, files: list[Any], fmt: str, max_footers: int = 20_000) -> "InputSize":
    """What the progress ETA can know up front (see :mod:`glidre_core.extraction.progress`), from
    the ``FileInfo`` of :func:`discover_input_files`.

    Parquet: the exact row count from the footers (read in parallel; skipped above
    ``max_footers`` files, where it would cost more than it tells). JSON Lines: the total size of
    the uncompressed files, from the listing (none if any file is compressed, whose byte count
    says nothing).
    """
    from concurrent.futures import ThreadPoolExecutor

    import pyarrow.parquet as pq

    from glidre_core.extraction.progress import InputSize

    if fmt == "parquet":
        if len(files) > max_footers:
            return InputSize()

        def rows(info: Any) -> int:
            with loc.fs.open_input_file(info.path) as f:
                return pq.ParquetFile(f).metadata.num_rows

        try:
            with ThreadPoolExecutor(max_workers=16) as pool:
                return InputSize(docs=sum(pool.map(rows, files)))
        except (OSError, pa.ArrowException) as exc:
            logger.warning("cannot count input rows for the ETA: %s", exc)
            return InputSize()
    if any(f.path.lower().endswith(COMPRESSIONS) for f in files):
        return InputSize()
    return InputSize(bytes=sum(f.size or 0 for f in files))
