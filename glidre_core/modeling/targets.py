"""Training targets and the joint loss of a batch.

Targets are built on the CPU in numpy, in the batch's layout (:mod:`.batch`: ordered pairs in
output order, spans start-major), and travel to the device in the batch's single copy. The loss
is then a few element-wise operations and weighted sums: per-document averages are expressed as
per-element weights, so there is no per-document loop and no host synchronisation.

What is averaged over what (the same definitions as the per-document loop this replaced):

* relation loss: per pair, summed over labels; mean over a document's ordered pairs; mean over
  the documents with at least one pair;
* span loss: per candidate span, summed over the entity types the document's corpus annotates
  (``entity_type_scope``); mean over the document's spans; mean over the documents that can
  supervise the span head (every entity typed);
* joint: ``relation_loss_weight * relation + span_loss_weight * span``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch

from glidre_core.config import GLiDREConfig
from glidre_core.modeling.batch import ModelBatch, span_grid
from glidre_core.modeling.losses import pair_losses, span_losses
from glidre_core.preparation import PreparedDocument

if TYPE_CHECKING:
    from glidre_core.modeling.glidre import GLiDRE, GLiDREOutput


def pair_row(heads: np.ndarray, tails: np.ndarray) -> np.ndarray:
    """The row of each ordered pair ``(head, tail)`` (head != tail) among a document's ordered
    pairs, in the batch's output order (:func:`glidre_core.modeling.batch.ordered_pairs`):
    unordered pair ``(high, low)`` is number ``high (high - 1) / 2 + low`` of the ``tril`` order,
    and gives rows low -> high, then high -> low."""
    high, low = np.maximum(heads, tails), np.minimum(heads, tails)
    return 2 * (high * (high - 1) // 2 + low) + (heads > tails)


def relation_target_arrays(
    cfg: GLiDREConfig, prepared: Sequence[PreparedDocument], labels: Sequence[str]
) -> dict[str, np.ndarray]:
    """``relation_targets [P, R]`` (0/1) and ``pair_weight [P]`` over the
    batch's real ordered pairs (rows located arithmetically, :func:`pair_row`: no per-document
    pair list or dense entity-by-entity block)."""
    index = {cfg.normalize_label(lab): i for i, lab in enumerate(labels)}
    ordered = np.asarray([n * (n - 1) for n in (len(p.mention_spans) for p in prepared)], dtype=np.int64)
    with_pairs = int((ordered > 0).sum())
    base = np.cumsum(ordered) - ordered
    facts = np.asarray([(b, h, t, index[lab]) for b, p in enumerate(prepared) for h, lab, t in p.relations
                        if h != t and lab in index], dtype=np.int64).reshape(-1, 4)
    targets = np.zeros((int(ordered.sum()), len(labels)), dtype=np.float32)
    targets[base[facts[:, 0]] + pair_row(facts[:, 1], facts[:, 2]), facts[:, 3]] = 1.0
    share = np.asarray([p.relation_weight for p in prepared], dtype=np.float32) / max(with_pairs, 1)
    weights = np.repeat(np.divide(share, ordered, out=np.zeros_like(share), where=ordered > 0), ordered)
    return {"relation_targets": targets, "pair_weight": weights.astype(np.float32)}


def gold_spans(
    cfg: GLiDREConfig, prepared: PreparedDocument, entity_types: Sequence[str]
) -> list[tuple[int, int, int]] | None:
    """``(start, end, type column)`` of the document's gold mentions that are candidate spans,
    or None when the document cannot supervise the span head: an entity without a type (its
    spans would be taught as negatives). Mentions longer than ``max_span_width`` words are not
    candidates and are left out; mentions of a type outside ``entity_types`` are negatives for
    every type."""
    width = cfg.max_span_width
    type_index = {cfg.normalize_label(t): i for i, t in enumerate(entity_types)}
    out = []
    for ent, ment in zip(prepared.doc.entities, prepared.mention_spans):
        label = cfg.entity_label(ent.type)
        if label is None:
            return None
        t = type_index.get(label)
        if t is None:
            continue
        out.extend((w0, w1, t) for w0, w1 in ment if 1 <= w1 - w0 <= width)
    return out


def span_positions(spans: np.ndarray, num_words: int, width: int) -> np.ndarray:
    """``[num_words, width]`` lookup: the row of span ``(s, s + k + 1)`` in ``spans``, or -1."""
    pos = np.full((max(num_words, 1), width), -1, dtype=np.int64)
    if len(spans):
        pos[spans[:, 0], spans[:, 1] - spans[:, 0] - 1] = np.arange(len(spans))
    return pos


def document_span_targets(
    cfg: GLiDREConfig, prepared: PreparedDocument, entity_types: Sequence[str], spans: np.ndarray
) -> np.ndarray | None:
    """``[S, T]`` gold matrix over ``spans`` (``[S, 2]``), or None (see :func:`gold_spans`)."""
    gold = gold_spans(cfg, prepared, entity_types)
    if gold is None:
        return None
    out = np.zeros((len(spans), len(entity_types)), dtype=np.float32)
    pos = span_positions(np.asarray(spans), prepared.tokens.num_words, cfg.max_span_width)
    for w0, w1, t in gold:
        row = pos[w0, w1 - w0 - 1]
        if row >= 0:
            out[row, t] = 1.0
    return out


def type_scope_mask(cfg: GLiDREConfig, prepared: PreparedDocument, entity_types: Sequence[str]) -> np.ndarray:
    """``[T]`` bool: the types inside the document's ``entity_type_scope`` (None = all)."""
    if prepared.entity_type_scope is None:
        return np.ones(len(entity_types), dtype=bool)
    norm = cfg.normalize_label
    scope = {norm(t) for t in prepared.entity_type_scope}
    return np.asarray([norm(t) in scope for t in entity_types], dtype=bool)


def document_gold_arrays(
    cfg: GLiDREConfig, prepared: PreparedDocument, entity_types: Sequence[str]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None:
    """``(w0, w1, type column, scope mask)`` of the document's gold spans (:func:`gold_spans`,
    :func:`type_scope_mask`) as arrays, or None when it cannot supervise the span head.

    Kept in the document's ``memo`` per entity-type list and span width: a document is batched
    once per epoch, and re-deriving its gold spans (label normalisation per entity) was the
    largest part of building a training batch. A prepared document belongs to one model (its
    sub-words are that model's), so the model's label-naming settings do not enter the key.
    """
    key = ("gold_spans", tuple(entity_types), cfg.max_span_width, prepared.entity_type_scope)
    if key not in prepared.memo:
        gold = gold_spans(cfg, prepared, entity_types)
        if gold is None:
            prepared.memo[key] = None
        else:
            w0, w1, t = (np.asarray(x, dtype=np.int64) for x in zip(*gold)) if gold else (np.zeros(0, np.int64),) * 3
            prepared.memo[key] = (w0, w1, t, type_scope_mask(cfg, prepared, entity_types))
    return prepared.memo[key]


def span_target_arrays(
    cfg: GLiDREConfig, prepared: Sequence[PreparedDocument], entity_types: Sequence[str]
) -> dict[str, np.ndarray]:
    """``span_targets [B, S, T]`` and ``span_loss_mask [B, S, T]`` (the weight of every element
    in the span loss; 0 for padded spans, out-of-scope types and unsupervised documents), over
    the batch's span grid (:func:`glidre_core.modeling.batch.span_grid`)."""
    width = cfg.max_span_width
    wmax = max(p.tokens.num_words for p in prepared)
    starts, ends = span_grid(wmax, width)
    pos = span_positions(np.stack([starts, ends], -1), wmax, width)
    bsz, num_types = len(prepared), len(entity_types)
    targets = np.zeros((bsz, len(starts), num_types), dtype=np.float32)
    mask = np.zeros_like(targets)
    supervised = []
    for b, p in enumerate(prepared):
        gold = document_gold_arrays(cfg, p, entity_types)
        if gold is None:
            continue
        w0, w1, t, scope = gold
        targets[b, pos[w0, w1 - w0 - 1], t] = 1.0
        supervised.append((b, ends <= p.tokens.num_words, scope))
    for b, valid, scope in supervised:
        mask[b][np.ix_(valid, scope)] = 1.0 / (int(valid.sum()) * len(supervised))
    return {"span_targets": targets, "span_loss_mask": mask, "span_supervised": np.asarray(bool(supervised))}


def training_batch(
    model: "GLiDRE",
    prepared: Sequence[PreparedDocument],
    labels: Sequence[str] | None,
    entity_types: Sequence[str] | None,
) -> ModelBatch:
    """A batch with its relation targets (``labels``) and span targets (``entity_types``)."""
    cfg = model.config
    extra: dict[str, np.ndarray] = {}
    if labels is not None:
        extra.update(relation_target_arrays(cfg, prepared, labels))
    supervised = False
    if entity_types is not None:
        arrays = span_target_arrays(cfg, prepared, entity_types)
        supervised = bool(arrays.pop("span_supervised"))
        extra.update(arrays)
    batch, t = model.collate(prepared, extra)
    batch.span_supervised = supervised
    batch.entities.relation_targets = t.get("relation_targets")
    batch.entities.pair_weight = t.get("pair_weight")
    batch.span_targets = t.get("span_targets")
    batch.span_loss_mask = t.get("span_loss_mask")
    return batch


def joint_loss(model: "GLiDRE", batch: ModelBatch, out: "GLiDREOutput") -> torch.Tensor:
    """``relation_loss_weight * relation + span_loss_weight * span`` over a training batch
    (whether each term exists is known on the host: documents with pairs, supervised ones)."""
    cfg = model.config
    total = None
    ents = batch.entities
    if (out.relation_logits is not None and ents.relation_targets is not None
            and ents.num_pairs > 0 and cfg.relation_loss_weight > 0):
        per_pair = pair_losses(cfg.loss, out.relation_logits, ents.relation_targets,
                               alpha=cfg.focal_alpha, gamma=cfg.focal_gamma, threshold_logits=out.threshold_logits)
        total = cfg.relation_loss_weight * (per_pair * ents.pair_weight).sum()
    if out.span_logits is not None and batch.span_targets is not None and batch.span_supervised:
        per = span_losses(cfg.span_loss, out.span_logits, batch.span_targets, alpha=cfg.focal_alpha, gamma=cfg.focal_gamma)
        part = cfg.span_loss_weight * (per * batch.span_loss_mask).sum()
        total = part if total is None else total + part
    if total is None:
        # nothing to learn from this batch: a zero that still reaches every head parameter (DDP)
        return sum(q.sum() * 0 for q in model.head_parameters())
    return total
