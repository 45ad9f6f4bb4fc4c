"""Padded model batches: every index tensor of a batch built once, on the CPU, in numpy.

Why this module exists: the forward pass must run as a handful of large tensor operations on
the accelerator, with no host synchronisation between the encoder and the end of scoring. That
is only possible when every *shape* and every *index* the forward pass needs is known before it
starts. Everything here is therefore computed from the prepared documents (python lists, numpy)
and shipped to the device in **one** host-to-device copy (:class:`DevicePack`: one byte buffer,
typed views into it). The forward pass then only gathers, scatters and multiplies.

Layout of a batch of ``B`` documents (``W`` = the longest document in words, ``N`` = the most
entities in one document, ``U = N (N-1) / 2`` unordered pairs, ``S`` spans):

* **windows** ``[K, L]``: all encoder windows of all documents, padded to ``L`` rounded up to a
  multiple of ``length_multiple`` (bucketing: attention kernels and cuDNN plans are reused across
  batches instead of being rebuilt for every new padded length);
* **words** ``[B, W]``: a word's vector is its first sub-word's state in the window that owns it
  (``word_source``, a flat index into ``K * L``);
* **word attention** ``[B, W, W]``: the head-averaged last-layer attention of each word's first
  sub-word over the sub-words of its window, summed per word (``row_target``/``col_target`` say
  where each computed row and column lands; padding, specials and unused rows land in a dump row
  or column that is cut off);
* **entities** ``[B, N, W]``: pooling weights (mean over a mention's words, mean over an entity's
  mentions), so entity vectors and entity attention are two batched matrix products;
* **pairs**: the unordered pairs of ``N`` entities in ``tril`` order ((1,0), (2,0), (2,1), (3,0),
  ...), so the pairs of a document with ``n`` entities are exactly the first ``n (n-1) / 2``:
  one structural index for the whole batch, no ``unique``. Each unordered pair gives two
  ordered pairs (low -> high, high -> low) that share their localized context;
* **spans** ``[S]``: every word span up to ``max_span_width`` words in ``W`` words, start-major;
  a document with ``n`` words uses the spans that end at or before ``n`` (exactly
  :func:`glidre_core.modeling.spans.enumerate_spans` of ``n``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch

from glidre_core.preparation import PreparedDocument
from glidre_core.text import split_words
from glidre_core.text import word_shapes as shapes_of

def round_up(n: int, multiple: int) -> int:
    return max(multiple, -(-n // multiple) * multiple) if multiple > 1 else max(n, 1)


class DevicePack:
    """Collects numpy arrays and moves them to a device in a single copy.

    Arrays are laid out in one byte buffer (each aligned to 8 bytes) and come back as typed
    views of the device buffer, so a batch costs one host-to-device transfer whatever the number
    of index tensors.
    """

    def __init__(self) -> None:
        self._arrays: dict[str, np.ndarray] = {}

    def add(self, name: str, array: np.ndarray) -> None:
        self._arrays[name] = np.ascontiguousarray(array)

    def to(self, device: torch.device) -> dict[str, torch.Tensor]:
        offsets, total = {}, 0
        for name, arr in self._arrays.items():
            offsets[name] = total
            total += -(-arr.nbytes // 8) * 8
        buf = np.zeros(max(total, 8), dtype=np.uint8)
        for name, arr in self._arrays.items():
            if arr.nbytes:
                buf[offsets[name] : offsets[name] + arr.nbytes] = arr.reshape(-1).view(np.uint8)
        host = torch.from_numpy(buf)
        if device.type != "cpu":
            host = host.pin_memory() if torch.cuda.is_available() else host
        dev = host.to(device, non_blocking=True)
        out = {}
        for name, arr in self._arrays.items():
            dtype = _TORCH_DTYPES[arr.dtype.str[1:]]
            view = dev[offsets[name] : offsets[name] + arr.nbytes]
            out[name] = view.view(dtype).view(arr.shape) if arr.size else torch.zeros(arr.shape, dtype=dtype, device=device)
        return out


_TORCH_DTYPES = {"i8": torch.int64, "f4": torch.float32, "b1": torch.bool, "u1": torch.uint8}


@dataclass
class EntityIndex:
    """Entity pooling, pair and (training) relation-target tensors of a batch; rebuilt alone in
    the joint path once the entities have been predicted (the encoder part is reused)."""

    num_entities: list[int]
    max_entities: int
    pair_counts: list[int]  # unordered pairs per document
    max_pairs: int
    pool: torch.Tensor  # [B, N, W] float: entity word weights
    entity_mask: torch.Tensor  # [B, N] bool
    pair_low: torch.Tensor  # [U] long
    pair_high: torch.Tensor  # [U] long
    # pairs are scored in chunks of the structural index; per chunk (host ints): its first pair,
    # its width w, and the slice of the row arrays below holding its real pairs
    chunks: list[tuple[int, int, int, int]]
    pair_rows: torch.Tensor  # [V] long: real pairs of each chunk, flat into B * w
    pair_low_flat: torch.Tensor  # [V] long: b * N + low entity of those pairs
    pair_high_flat: torch.Tensor  # [V] long: b * N + high entity
    pair_perm: torch.Tensor | None  # [P] long: chunk-major -> document-major rows (several chunks)
    # host copies for decoding (numpy): the ordered pairs of every document, in output order
    heads: list[np.ndarray] = field(default_factory=list)
    tails: list[np.ndarray] = field(default_factory=list)
    mention_pool: torch.Tensor | None = None  # [B, M, W] (logsumexp pooling only)
    entity_mentions: torch.Tensor | None = None  # [B, N, K] long into M, -1 = none
    relation_targets: torch.Tensor | None = None  # [P, R] float (training)
    pair_weight: torch.Tensor | None = None  # [P] float: 1 / (pairs of its doc * docs with pairs)

    @property
    def num_pairs(self) -> int:
        return sum(2 * u for u in self.pair_counts)


@dataclass
class ModelBatch:
    """Everything the forward pass of a batch needs, already on the device."""

    documents: list[PreparedDocument]
    num_words: list[int]
    max_words: int
    window_length: int
    window_lengths: list[int]  # real tokens per window (specials included)
    window_doc: list[int]
    input_ids: torch.Tensor | None  # [K, L] long (None when lower-layer states are given)
    key_mask: torch.Tensor  # [K, L] bool
    row_positions: torch.Tensor  # [K, R] long
    row_target: torch.Tensor  # [K, R] long: b * W + w, or B * W (dump)
    col_target: torch.Tensor  # [K, L] long: doc word w, or W (dump)
    word_source: torch.Tensor  # [B * W] long into K * L
    word_mask: torch.Tensor  # [B, W] bool
    span_start: torch.Tensor  # [S] long
    span_end: torch.Tensor  # [S] long (exclusive)
    span_valid: np.ndarray  # [B, S] bool (host)
    span_grid: np.ndarray  # [S, 2] start, end (host)
    entities: EntityIndex
    lower_states: torch.Tensor | None = None  # [K, L, H] cached frozen-layer states
    encoded: tuple[torch.Tensor, torch.Tensor] | None = None  # cached (words, attention) [B,W,H],[B,W,W]
    span_targets: torch.Tensor | None = None  # [B, S, T] float (training)
    span_loss_mask: torch.Tensor | None = None  # [B, S, T] float: 1/(spans of doc * supervised docs)
    span_supervised: bool = False  # some document of the batch supervises the span head
    word_shapes: torch.Tensor | None = None  # [B, W] long: WORD_SHAPES (span heads that use them)

    @property
    def size(self) -> int:
        return len(self.documents)

    def with_entities(self, entities: EntityIndex) -> "ModelBatch":
        return dataclasses.replace(self, entities=entities)


# -- the pieces --------------------------------------------------------------------------------
def _window_arrays(
    prepared: Sequence[PreparedDocument], max_words: int, cls_id: int, sep_id: int, pad_id: int, multiple: int
) -> dict[str, Any]:
    """Window ids, masks and the word/row/column maps of every window of the batch."""
    ids_list, lengths, owners = [], [], []
    rows_pos, rows_word, cols_word = [], [], []
    word_source_pairs: list[tuple[int, int, int, int]] = []  # (doc, word, window, pos)
    for b, p in enumerate(prepared):
        t = p.tokens
        tokens = np.asarray(t.token_ids, dtype=np.int64)
        first = np.asarray(t.word_first_token, dtype=np.int64)
        # the word of each sub-word (a word the tokenizer dropped shares its neighbour's sub-word,
        # which then counts for the later word)
        token_word = np.searchsorted(first, np.arange(len(tokens)), side="right") - 1
        for win in t.windows:
            k = len(ids_list)
            ids_list.append(np.concatenate([[cls_id], tokens[win.tok_start : win.tok_end], [sep_id]]))
            lengths.append(win.tok_end - win.tok_start + 2)
            owners.append(b)
            owned = np.nonzero((first >= win.own_start) & (first < win.own_end))[0]
            pos = first[owned] - win.tok_start + 1
            rows_pos.append(pos)
            rows_word.append(b * max_words + owned)
            cols_word.append(token_word[win.tok_start : win.tok_end])
            word_source_pairs.append((b, k, owned, pos))
    num_windows = len(ids_list)
    length = round_up(max(lengths), multiple)
    rmax = max(1, max(len(r) for r in rows_pos))
    input_ids = np.full((num_windows, length), pad_id, dtype=np.int64)
    key_mask = np.zeros((num_windows, length), dtype=bool)
    row_positions = np.zeros((num_windows, rmax), dtype=np.int64)
    row_target = np.full((num_windows, rmax), len(prepared) * max_words, dtype=np.int64)
    col_target = np.full((num_windows, length), max_words, dtype=np.int64)
    word_source = np.zeros(len(prepared) * max_words, dtype=np.int64)
    for k in range(num_windows):
        n = lengths[k]
        input_ids[k, :n] = ids_list[k]
        key_mask[k, :n] = True
        r = len(rows_pos[k])
        row_positions[k, :r] = rows_pos[k]
        row_target[k, :r] = rows_word[k]
        col_target[k, 1 : n - 1] = cols_word[k]
    for b, k, owned, pos in word_source_pairs:
        word_source[b * max_words + owned] = k * length + pos
    return {
        "input_ids": input_ids, "key_mask": key_mask, "row_positions": row_positions,
        "row_target": row_target, "col_target": col_target, "word_source": word_source,
        "lengths": lengths, "owners": owners, "length": length,
    }


def span_grid(max_words: int, max_width: int) -> tuple[np.ndarray, np.ndarray]:
    """Start-major spans ``[start, end)`` of ``max_words`` words up to ``max_width`` words."""
    starts = np.repeat(np.arange(max_words, dtype=np.int64), max_width)
    ends = starts + np.tile(np.arange(1, max_width + 1, dtype=np.int64), max_words)
    keep = ends <= max_words
    return starts[keep], ends[keep]


def ordered_pairs(num_entities: int) -> tuple[np.ndarray, np.ndarray]:
    """(heads, tails) of the ordered pairs of ``num_entities`` entities, in the batch's output
    order: unordered pairs in ``tril`` order, each as (low, high) then (high, low). Self pairs
    are never scored."""
    high, low = np.tril_indices(num_entities, -1)
    return np.stack([low, high], 1).reshape(-1).astype(np.int64), np.stack([high, low], 1).reshape(-1).astype(np.int64)


#: at most this many context weights (``B x chunk x W``) in flight per scorer chunk: 128 MB in
#: fp32, whatever the chunk size asked for (a 1,000-entity document has ~11,000 words)
MAX_CHUNK_ELEMENTS = 2**25


def pair_chunk(chunk_size: int | None, batch_size: int, max_pairs: int, max_words: int = 0) -> int:
    """Unordered pairs per chunk: about ``chunk_size / 2`` pairs of the batch in flight, so
    memory (``B x chunk x W`` context weights) is bounded whatever the number of entities, and
    never more than :data:`MAX_CHUNK_ELEMENTS` weights."""
    step = max(1, max_pairs) if chunk_size is None else max(1, chunk_size // (2 * max(1, batch_size)))
    if max_words > 0:
        step = min(step, max(1, MAX_CHUNK_ELEMENTS // (max(1, batch_size) * max_words)))
    return step


def entity_arrays(
    mention_spans: Sequence[Sequence[Sequence[tuple[int, int]]]],
    max_words: int,
    logsumexp: bool = False,
    chunk_size: int | None = None,
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Pooling weights and the pair index of a batch's entities (numpy).

    Pairs come from one structural ``tril`` index of the batch's largest entity count. Each
    chunk of it is scored over the padded batch only where a product is cheap (the context
    weights, ``B x w x W``); the FFNs, most of the cost, run on the chunk's *real* pairs alone,
    picked by ``pair_rows`` (so a batch that mixes documents with 3 and 30 entities pays for
    the real pairs, not for 30 x 29 / 2 per document).
    """
    bsz = len(mention_spans)
    counts = [len(s) for s in mention_spans]
    nmax = max(counts, default=0)
    pool = np.zeros((bsz, nmax, max_words), dtype=np.float32)
    mentions_max = max((sum(len(e) for e in doc) for doc in mention_spans), default=0)
    per_entity_max = max((len(e) for doc in mention_spans for e in doc), default=0)
    mention_pool = np.zeros((bsz, max(mentions_max, 1), max_words), dtype=np.float32) if logsumexp else None
    entity_mentions = np.full((bsz, nmax, max(per_entity_max, 1)), -1, dtype=np.int64) if logsumexp else None
    if logsumexp:
        for b, doc in enumerate(mention_spans):
            m = 0
            for e, spans in enumerate(doc):
                for j, (w0, w1) in enumerate(spans):
                    pool[b, e, w0:w1] += 1.0 / ((w1 - w0) * len(spans))
                    mention_pool[b, m, w0:w1] = 1.0 / (w1 - w0)
                    entity_mentions[b, e, j] = m
                    m += 1
    else:
        # one flat list of mentions, then one scatter-add over the words they cover: a numpy
        # slice-add per mention was the largest part of building a batch (the host's critical
        # path on a GPU)
        flat = [(b, e, w0, w1, len(spans)) for b, doc in enumerate(mention_spans)
                for e, spans in enumerate(doc) for w0, w1 in spans]
        if flat:
            m = np.asarray(flat, dtype=np.int64)
            lengths = m[:, 3] - m[:, 2]
            first = (m[:, 0] * nmax + m[:, 1]) * max_words + m[:, 2]
            within = np.arange(int(lengths.sum()), dtype=np.int64) - np.repeat(np.cumsum(lengths) - lengths, lengths)
            weights = np.repeat(1.0 / (lengths * m[:, 4]), lengths)
            np.add.at(pool.reshape(-1), np.repeat(first, lengths) + within, weights.astype(np.float32))
    high, low = np.tril_indices(nmax, -1)
    high, low = high.astype(np.int64), low.astype(np.int64)
    pair_counts = [n * (n - 1) // 2 for n in counts]
    umax = nmax * (nmax - 1) // 2
    step = pair_chunk(chunk_size, bsz, umax, max_words)
    doc_base = np.concatenate([[0], np.cumsum(pair_counts)]).astype(np.int64)
    position = np.zeros(int(doc_base[-1]), dtype=np.int64)  # document-major pair -> computed row
    rows, lo_flat, hi_flat, chunks = [], [], [], []
    done = 0
    for s in range(0, umax, step):
        width = min(step, umax - s)
        first = done
        for b, u in enumerate(pair_counts):
            j = np.arange(max(0, min(width, u - s)), dtype=np.int64)
            if not len(j):
                continue
            rows.append(b * width + j)
            lo_flat.append(b * nmax + low[s + j])
            hi_flat.append(b * nmax + high[s + j])
            position[doc_base[b] + s + j] = done + j
            done += len(j)
        if done > first:
            chunks.append((s, width, first, done))
    empty = np.zeros(0, dtype=np.int64)
    arrays = {
        "pool": pool,
        "entity_mask": np.arange(nmax)[None, :] < np.asarray(counts, dtype=np.int64)[:, None] if bsz else np.zeros((0, 0), bool),
        "pair_low": low, "pair_high": high,
        "pair_rows": np.concatenate(rows) if rows else empty,
        "pair_low_flat": np.concatenate(lo_flat) if lo_flat else empty,
        "pair_high_flat": np.concatenate(hi_flat) if hi_flat else empty,
    }
    if len(chunks) > 1:
        # ordered rows: 2 per unordered pair (low->high, high->low), in document-major order
        arrays["pair_perm"] = (2 * position[:, None] + np.arange(2)[None, :]).reshape(-1)
    if logsumexp:
        arrays["mention_pool"] = mention_pool
        arrays["entity_mentions"] = entity_mentions
    # a document's pairs are a prefix of the batch's tril order (row-major: pairs of the first n
    # entities come first), so each document's ordered pairs are slices of one array
    all_heads, all_tails = np.stack([low, high], 1).reshape(-1), np.stack([high, low], 1).reshape(-1)
    heads = [all_heads[: 2 * u] for u in pair_counts]
    tails = [all_tails[: 2 * u] for u in pair_counts]
    meta = {"counts": counts, "nmax": nmax, "pair_counts": pair_counts, "umax": umax, "chunks": chunks,
            "heads": list(heads), "tails": list(tails)}
    return arrays, meta


def _entity_index(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> EntityIndex:
    return EntityIndex(
        num_entities=meta["counts"], max_entities=meta["nmax"], pair_counts=meta["pair_counts"],
        max_pairs=meta["umax"], pool=tensors["pool"], entity_mask=tensors["entity_mask"],
        pair_low=tensors["pair_low"], pair_high=tensors["pair_high"], chunks=meta["chunks"],
        pair_rows=tensors["pair_rows"], pair_low_flat=tensors["pair_low_flat"],
        pair_high_flat=tensors["pair_high_flat"], pair_perm=tensors.get("pair_perm"),
        heads=meta["heads"], tails=meta["tails"], mention_pool=tensors.get("mention_pool"),
        entity_mentions=tensors.get("entity_mentions"),
    )


def build_entity_index(
    mention_spans: Sequence[Sequence[Sequence[tuple[int, int]]]],
    max_words: int,
    device: torch.device,
    logsumexp: bool = False,
    chunk_size: int | None = None,
) -> EntityIndex:
    """The entity part of a batch alone (the joint path's second stage)."""
    arrays, meta = entity_arrays(mention_spans, max_words, logsumexp, chunk_size)
    pack = DevicePack()
    for k, v in arrays.items():
        pack.add(k, v)
    return _entity_index(pack.to(device), meta)


def collate(
    prepared: Sequence[PreparedDocument],
    *,
    device: torch.device,
    cls_id: int,
    sep_id: int,
    pad_id: int,
    max_span_width: int,
    length_multiple: int = 1,
    logsumexp: bool = False,
    pair_chunk_size: int | None = None,
    extra: dict[str, np.ndarray] | None = None,
    word_shapes: bool = False,
) -> tuple[ModelBatch, dict[str, torch.Tensor]]:
    """Build a :class:`ModelBatch` for ``prepared`` (one host-to-device copy).

    ``word_shapes``: also ship each word's :data:`~glidre_core.modeling.spans.WORD_SHAPES` index
    (span heads with ``word_shape``; 0 on padding). ``extra``: more numpy arrays to ship in the same copy (training targets); they come back as
    the second return value, on the device.
    """
    if not prepared:
        raise ValueError("an empty batch")
    num_words = [p.tokens.num_words for p in prepared]
    wmax = max(num_words)
    win = _window_arrays(prepared, wmax, cls_id, sep_id, pad_id, length_multiple)
    ent_arrays, meta = entity_arrays([p.mention_spans for p in prepared], wmax, logsumexp, pair_chunk_size)
    starts, ends = span_grid(wmax, max_span_width)
    span_valid = ends[None, :] <= np.asarray(num_words, dtype=np.int64)[:, None]
    word_mask = np.arange(wmax)[None, :] < np.asarray(num_words, dtype=np.int64)[:, None]
    pack = DevicePack()
    for k in ("input_ids", "key_mask", "row_positions", "row_target", "col_target", "word_source"):
        pack.add(k, win[k])
    pack.add("word_mask", word_mask)
    pack.add("span_start", starts)
    pack.add("span_end", ends)
    if word_shapes:
        shapes = np.zeros((len(prepared), wmax), dtype=np.int64)
        for b, p in enumerate(prepared):
            if p.word_shapes is None:  # documents prepared elsewhere: computed here, once
                p.word_shapes = shapes_of((p.words if p.words is not None else split_words(p.doc.text)).tokens)
            shapes[b, : len(p.word_shapes)] = p.word_shapes
        pack.add("word_shapes", shapes)
    for k, v in ent_arrays.items():
        pack.add(k, v)
    for k, v in (extra or {}).items():
        pack.add(k, v)
    t = pack.to(device)
    batch = ModelBatch(
        documents=list(prepared), num_words=num_words, max_words=wmax, window_length=win["length"],
        window_lengths=win["lengths"], window_doc=win["owners"], input_ids=t["input_ids"],
        key_mask=t["key_mask"], row_positions=t["row_positions"], row_target=t["row_target"],
        col_target=t["col_target"], word_source=t["word_source"], word_mask=t["word_mask"],
        span_start=t["span_start"], span_end=t["span_end"], span_valid=span_valid, span_grid=np.stack([starts, ends], -1),
        entities=_entity_index(t, meta), word_shapes=t.get("word_shapes"),
    )
    return batch, {k: t[k] for k in (extra or {})}
