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
        # written straight into (on CUDA, pinned) host memory: no zero fill and no second copy
        # into a pinned staging buffer; the gaps between arrays are never read
        pinned = device.type == "cuda"
        host = torch.empty(max(total, 8), dtype=torch.uint8, pin_memory=pinned)
        buf = host.numpy()
        for name, arr in self._arrays.items():
            if arr.nbytes:
                buf[offsets[name] : offsets[name] + arr.nbytes] = arr.reshape(-1).view(np.uint8)
        dev = host.to(device, non_blocking=True) if device.type != "cpu" else host
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
def _spread(lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(group, within)`` of ``sum(lengths)`` flat items cut into groups of ``lengths``: the
    group of each item and its index inside the group (a vectorised nested ``arange``)."""
    total = int(lengths.sum())
    group = np.repeat(np.arange(len(lengths), dtype=np.int64), lengths)
    within = np.arange(total, dtype=np.int64) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    return group, within


def _window_arrays(
    prepared: Sequence[PreparedDocument], max_words: int, cls_id: int, sep_id: int, pad_id: int, multiple: int
) -> dict[str, Any]:
    """Window ids, masks and the word/row/column maps of every window of the batch.

    Built from each document's cached :class:`~glidre_core.modeling.windows.WindowLayout` by a
    fixed number of flat numpy operations per batch (no loop over windows or words).
    """
    layouts = [p.tokens.layout() for p in prepared]
    body_lengths = np.concatenate([lay.body_lengths for lay in layouts])
    row_counts = np.concatenate([lay.row_counts for lay in layouts])
    owners_arr = np.concatenate([np.full(len(lay.body_lengths), b, dtype=np.int64) for b, lay in enumerate(layouts)])
    num_windows = len(body_lengths)
    lengths_arr = body_lengths + 2
    length = round_up(int(lengths_arr.max()), multiple)
    rmax = max(1, int(row_counts.max()))
    # sub-words: window k's body fills columns 1 .. n_k - 2; [CLS] at 0, [SEP] at n_k - 1
    win_of, within = _spread(body_lengths)
    body_at = win_of * length + 1 + within
    input_ids = np.full((num_windows, length), pad_id, dtype=np.int64)
    input_ids.reshape(-1)[body_at] = np.concatenate([lay.body_ids for lay in layouts])
    input_ids[:, 0] = cls_id
    input_ids[np.arange(num_windows), lengths_arr - 1] = sep_id
    key_mask = np.arange(length)[None, :] < lengths_arr[:, None]
    col_target = np.full((num_windows, length), max_words, dtype=np.int64)
    col_target.reshape(-1)[body_at] = np.concatenate([lay.body_words for lay in layouts])
    # owned words: their rows (first sub-word positions), where the rows land, and word sources
    row_win, row_within = _spread(row_counts)
    owned = np.concatenate([lay.owned_words for lay in layouts])
    positions = np.concatenate([lay.owned_positions for lay in layouts])
    word_flat = owners_arr[row_win] * max_words + owned
    row_positions = np.zeros((num_windows, rmax), dtype=np.int64)
    row_target = np.full((num_windows, rmax), len(prepared) * max_words, dtype=np.int64)
    row_at = row_win * rmax + row_within
    row_positions.reshape(-1)[row_at] = positions
    row_target.reshape(-1)[row_at] = word_flat
    word_source = np.zeros(len(prepared) * max_words, dtype=np.int64)
    word_source[word_flat] = row_win * length + positions
    return {
        "input_ids": input_ids, "key_mask": key_mask, "row_positions": row_positions,
        "row_target": row_target, "col_target": col_target, "word_source": word_source,
        "lengths": lengths_arr.tolist(), "owners": owners_arr.tolist(), "length": length,
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
    # one flat table of every mention: (document, entity, mention of the entity, w0, w1,
    # mentions of the entity); everything below is a fixed number of numpy operations on it (a
    # slice-add per mention was the largest part of building a batch, the host's critical path
    # on a GPU)
    flat = [(b, e, j, w0, w1, len(spans)) for b, doc in enumerate(mention_spans)
            for e, spans in enumerate(doc) for j, (w0, w1) in enumerate(spans)]
    m = np.asarray(flat, dtype=np.int64).reshape(-1, 6)
    lengths = m[:, 4] - m[:, 3]
    word_of, word_within = _spread(lengths)
    words = m[word_of, 3] + word_within  # the words each mention covers, mention after mention
    # mean over a mention's words, then over the entity's mentions (overlapping mentions add up)
    np.add.at(pool.reshape(-1), (m[word_of, 0] * nmax + m[word_of, 1]) * max_words + words,
              (1.0 / (lengths * m[:, 5]))[word_of].astype(np.float32))
    mention_pool = entity_mentions = None
    if logsumexp:
        per_doc = np.bincount(m[:, 0], minlength=bsz)
        _, mention_no = _spread(per_doc)  # the mention's index in its document
        mention_pool = np.zeros((bsz, max(int(per_doc.max(initial=0)), 1), max_words), dtype=np.float32)
        entity_mentions = np.full((bsz, nmax, max(int(m[:, 5].max(initial=0)), 1)), -1, dtype=np.int64)
        mention_pool[m[word_of, 0], mention_no[word_of], words] = (1.0 / lengths)[word_of]
        entity_mentions[m[:, 0], m[:, 1], m[:, 2]] = mention_no
    high, low = np.tril_indices(nmax, -1)
    high, low = high.astype(np.int64), low.astype(np.int64)
    pair_counts = [n * (n - 1) // 2 for n in counts]
    umax = nmax * (nmax - 1) // 2
    step = pair_chunk(chunk_size, bsz, umax, max_words)
    # every real unordered pair (document b, structural pair q < u_b), document-major; its chunk
    # is q // step, and the chunks' rows are laid out chunk-major, then by document, then by q
    pair_doc, q = _spread(np.asarray(pair_counts, dtype=np.int64))
    chunk_of = q // step
    width_of = np.minimum(step, umax - chunk_of * step)
    order = np.argsort(chunk_of, kind="stable")  # document-major -> computed row
    position = np.empty(len(q), dtype=np.int64)
    position[order] = np.arange(len(q), dtype=np.int64)
    rows_all = (pair_doc * width_of + (q - chunk_of * step))[order]
    lo_all = (pair_doc * nmax + low[q])[order]
    hi_all = (pair_doc * nmax + high[q])[order]
    per_chunk = np.bincount(chunk_of, minlength=-(-umax // step))
    ends = np.cumsum(per_chunk)
    chunks = [(c * step, min(step, umax - c * step), int(ends[c] - per_chunk[c]), int(ends[c]))
              for c in np.flatnonzero(per_chunk).tolist()]
    arrays = {
        "pool": pool,
        "entity_mask": np.arange(nmax)[None, :] < np.asarray(counts, dtype=np.int64)[:, None] if bsz else np.zeros((0, 0), bool),
        "pair_low": low, "pair_high": high,
        "pair_rows": rows_all, "pair_low_flat": lo_all, "pair_high_flat": hi_all,
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
