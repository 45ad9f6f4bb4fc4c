"""Span-based entity recognition head (GLiNER style) and flat span decoding.

Candidate spans are all word spans up to ``max_width`` words. A span is represented, as in
GLiNER's ``markerV0``, by an FFN over the concatenation of its (projected) start and end word
vectors, and scored against entity-type embeddings from the shared label encoder:
``sigmoid(span . type)``. Entity types are plain strings, so any type set works zero-shot.

Cost. There are about ``W x max_width`` spans per document, as many as the encoder has
sub-words times ten, so the head is arranged to cost almost nothing per span:

* the first Linear of the span FFN acts on ``[s; e]`` and is split into a start half and an end
  half (``W [s; e] + b = W_s s + W_e e + b``), both computed once per *word*;
* its last Linear is folded into the type embeddings (``(W_o h + b_o) . t = h . (W_o^T t) +
  b_o . t``), so per span only an addition, a ReLU and a ``k*D x T`` product remain.

Both are the same function as the plain FFN (summation order aside), in training and inference.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from glidre_core.modeling.layers import FeedForward
from glidre_core.text import WORD_SHAPES, word_shape, word_shapes  # noqa: F401  (re-exported: the span head's inputs)


def enumerate_spans(num_words: int, max_width: int) -> np.ndarray:
    """All ``[start, end)`` word spans with ``1 <= end - start <= max_width``: ``[S, 2]`` int64,
    ordered by start, then width (the spans :func:`glidre_core.modeling.batch.span_grid` gives a
    document of ``num_words`` words)."""
    if max_width < 1:
        raise ValueError(f"max_width must be >= 1, got {max_width}")
    if num_words <= 0:
        return np.zeros((0, 2), dtype=np.int64)
    starts = np.repeat(np.arange(num_words, dtype=np.int64), max_width)
    ends = starts + np.tile(np.arange(1, max_width + 1, dtype=np.int64), num_words)
    keep = ends <= num_words
    return np.stack([starts[keep], ends[keep]], -1)


@dataclass(frozen=True)
class SpanPrediction:
    """One decoded span: words ``[start, end)``, the index of its type, and its probability."""

    start: int
    end: int
    type_index: int
    score: float


def best_types(probs: np.ndarray, threshold: float | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per span: the best type among those that clear their threshold, and its probability
    (-1 where no type clears it)."""
    thr = np.asarray(threshold, dtype=probs.dtype)
    above = probs > (thr if thr.ndim == 0 else thr[None, :])
    masked = np.where(above, probs, -1.0)
    best_t = masked.argmax(-1)
    return np.take_along_axis(masked, best_t[:, None], -1)[:, 0], best_t


def greedy_spans(spans: np.ndarray, scores: np.ndarray, flat: bool = True) -> np.ndarray:
    """Indices of the spans kept by GLiNER's greedy decoding, visiting ``scores`` from the
    highest (stable for ties): a span is kept only if it shares no word with a kept span
    (``flat``), or, without ``flat``, if it does not cross one (nesting allowed, duplicates not).
    Adjacent spans (``[0,2)`` and ``[2,3)``) do not overlap."""
    order = np.argsort(-scores, kind="stable")
    kept: list[tuple[int, int]] = []
    out: list[int] = []
    sp = spans.tolist()
    for i in order.tolist():
        s, e = sp[i]
        clash = False
        for ks, ke in kept:
            if not (s < ke and ks < e):
                continue
            nested = (ks <= s and e <= ke) or (s <= ks and ke <= e)
            if flat or not nested or (s, e) == (ks, ke):
                clash = True
                break
        if not clash:
            kept.append((s, e))
            out.append(i)
    return np.asarray(out, dtype=np.int64)


def decode_spans(
    spans: Any,
    probs: Any,
    threshold: float | Any,
    flat: bool = True,
) -> list[SpanPrediction]:
    """Spans whose best type clears the threshold; with ``flat``, overlaps are resolved greedily
    by score (GLiNER's flat decoding, :func:`greedy_spans`). Without ``flat``, nested spans are
    kept but partial (crossing) overlaps are still resolved.

    Host-side (numpy; torch CPU tensors are accepted). ``threshold`` is a float or a per-type
    vector ``[T]``. Returns predictions in text order.
    """
    spans, probs = np.asarray(spans), np.asarray(probs)
    if spans.size == 0 or probs.size == 0:
        return []
    best_p, best_t = best_types(probs, np.asarray(threshold))
    cand = np.nonzero(best_p >= 0)[0]
    keep = cand[greedy_spans(spans[cand], best_p[cand], flat)]
    out = [SpanPrediction(int(spans[i, 0]), int(spans[i, 1]), int(best_t[i]), float(best_p[i])) for i in keep]
    out.sort(key=lambda p: (p.start, p.end))
    return out


#: Span representations (``GLiDREConfig.span_representation``), chosen on dev by issue 11's study:
#: "endpoints" is GLiNER's markerV0 (first and last word); "endpoints_width" adds a learned
#: embedding of the span width; "endpoints_content_width" also adds the mean of the span's words.
SPAN_REPRESENTATIONS = ("endpoints", "endpoints_width", "endpoints_content_width")


class SpanHead(nn.Module):
    """``span = FFN([FFN_start(h_s); FFN_end(h_e)] (+ width) (+ content))``; ``logit = span . type``.

    The span FFN's first Linear is applied per word before spans are formed (it is linear, so
    ``W [a; b] = W_a a + W_b b``): every span then costs one gather and an add. The width
    embedding and the content mean enter the same pre-activation sum, so the extra
    representations keep that factorisation (the content mean is a difference of prefix sums of
    per-word projections).
    """

    def __init__(self, dim: int, expansion: int, dropout: float, max_width: int, chunk_size: int = 16384,
                 representation: str = "endpoints", word_shape: bool = False):
        super().__init__()
        if representation not in SPAN_REPRESENTATIONS:
            raise ValueError(f"unknown span representation {representation!r}; expected one of {SPAN_REPRESENTATIONS}")
        self.start_ffn = FeedForward(dim, dim, expansion, dropout)
        self.end_ffn = FeedForward(dim, dim, expansion, dropout)
        self.span_ffn = FeedForward(2 * dim, dim, expansion, dropout)
        self.type_ffn = FeedForward(dim, dim, expansion, dropout)
        self.max_width = max_width
        self.chunk_size = chunk_size
        self.representation = representation
        hidden = expansion * dim
        self.width = nn.Embedding(max_width, hidden) if representation != "endpoints" else None
        if self.width is not None:
            nn.init.zeros_(self.width.weight)  # starts as the endpoints head
        self.content_ffn = FeedForward(dim, dim, expansion, dropout) if representation.endswith("content_width") else None
        self.content_proj = nn.Linear(dim, hidden, bias=False) if self.content_ffn is not None else None
        if self.content_proj is not None:
            nn.init.zeros_(self.content_proj.weight)
        # word shapes (uncased encoders): of the first and last word, of the words just outside
        # the span (boundaries), and the share of each shape inside it; all start at zero, so a
        # model gains them without changing what it computed before
        self.word_shape = word_shape
        if word_shape:
            k = len(WORD_SHAPES)
            self.shape_start, self.shape_before = nn.Embedding(k, hidden), nn.Embedding(k, hidden)
            self.shape_end, self.shape_after = nn.Embedding(k, hidden), nn.Embedding(k, hidden)
            self.shape_content = nn.Linear(k, hidden, bias=False)
            for m in (self.shape_start, self.shape_before, self.shape_end, self.shape_after, self.shape_content):
                nn.init.zeros_(m.weight)

    def _shape_terms(self, shapes: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-word pre-activation terms of a span starting / ending at each word (``[B, W, kD]``
        each) and the prefix sums of one-hot shapes (``[B, W+1, K]``) for the in-span shares."""
        pad = F.pad(shapes, (1, 1))  # word i is pad[i + 1]; 0 = no word
        start = self.shape_start(shapes) + self.shape_before(pad[:, :-2])
        end = self.shape_end(shapes) + self.shape_after(pad[:, 2:])
        onehot = F.one_hot(shapes, len(WORD_SHAPES)).to(dtype)
        prefix = F.pad(onehot.cumsum(1), (0, 0, 1, 0))
        return start.to(dtype), end.to(dtype), prefix

    def type_vectors(self, pooled_types: torch.Tensor) -> torch.Tensor:
        """Entity-type embeddings from the label encoder's pooled, projected type strings."""
        return self.type_ffn(pooled_types)

    def forward(
        self, words: torch.Tensor, span_start: torch.Tensor, span_end: torch.Tensor, types: torch.Tensor,
        shapes: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``[B, S, T]`` logits of the spans ``[span_start, span_end)`` (``[S]`` each, shared by
        the batch) of every document in ``words`` (``[B, W, D]``) against ``types`` ``[T, D]``;
        ``shapes`` ``[B, W]`` are the words' :data:`WORD_SHAPES` (needed with ``word_shape``)."""
        bsz, _, dim = words.shape
        if self.word_shape and shapes is None:
            raise ValueError("this span head uses word shapes: collate the batch with word_shapes=True")
        if span_start.numel() == 0:
            return words.new_zeros((bsz, 0, types.shape[0]))
        first, last = self.span_ffn[0], self.span_ffn[3]
        start = F.linear(self.start_ffn(words), first.weight[:, :dim], first.bias)  # [B, W, kD]
        end = F.linear(self.end_ffn(words), first.weight[:, dim:])  # [B, W, kD]
        prefix = None
        if self.content_proj is not None:  # [B, W+1, kD] prefix sums of the projected words
            proj = self.content_proj(self.content_ffn(words))
            prefix = torch.cat([proj.new_zeros((bsz, 1, proj.shape[-1])), proj.cumsum(1)], 1)
        shape_prefix = None
        if self.word_shape:
            s_term, e_term, shape_prefix = self._shape_terms(shapes, start.dtype)
            start, end = start + s_term, end + e_term
        types = types.to(words.dtype)
        folded = types @ last.weight  # [T, kD]
        bias = types @ last.bias  # [T]
        step = max(1, self.chunk_size // max(1, bsz))
        out = []
        for s in range(0, span_start.shape[0], step):
            st, en = span_start[s : s + step], span_end[s : s + step]
            pre = start.index_select(1, st) + end.index_select(1, en - 1)
            if self.width is not None:
                pre = pre + self.width(en - st - 1).to(pre.dtype)
            if prefix is not None:
                width = (en - st).to(pre.dtype).unsqueeze(-1)
                pre = pre + (prefix.index_select(1, en) - prefix.index_select(1, st)) / width
            if shape_prefix is not None:
                share = (shape_prefix.index_select(1, en) - shape_prefix.index_select(1, st)) / (en - st).to(pre.dtype).unsqueeze(-1)
                pre = pre + F.linear(share, self.shape_content.weight.to(pre.dtype))
            hidden = self.span_ffn[2](F.relu(pre))
            out.append(torch.matmul(hidden, folded.t()) + bias)
        return torch.cat(out, 1) if len(out) > 1 else out[0]

    def naive_logits(self, words: torch.Tensor, spans: torch.Tensor, types: torch.Tensor,
                     shapes: torch.Tensor | None = None) -> torch.Tensor:
        """The unfactorised reference (tests): the representation built span by span, then the FFN
        and a dot product (``words`` ``[W, D]``, one document; ``shapes`` ``[W]``)."""
        s = self.start_ffn(words)[spans[:, 0]]
        e = self.end_ffn(words)[spans[:, 1] - 1]
        first = self.span_ffn[0]
        pre = first(torch.cat([s, e], -1))
        if self.width is not None:
            pre = pre + self.width(spans[:, 1] - spans[:, 0] - 1)
        if self.content_proj is not None:
            content = self.content_ffn(words)
            mean = torch.stack([content[a:b].mean(0) for a, b in spans.tolist()])
            pre = pre + self.content_proj(mean)
        if self.word_shape:
            n = words.shape[0]
            for i, (a, b) in enumerate(spans.tolist()):
                before = shapes[a - 1] if a > 0 else shapes.new_tensor(0)
                after = shapes[b] if b < n else shapes.new_tensor(0)
                share = F.one_hot(shapes[a:b], len(WORD_SHAPES)).float().mean(0)
                pre[i] = (pre[i] + self.shape_start(shapes[a]) + self.shape_before(before) + self.shape_end(shapes[b - 1])
                          + self.shape_after(after) + self.shape_content(share))
        hidden = self.span_ffn[3](self.span_ffn[2](F.relu(pre)))
        return hidden @ types.to(words.dtype).t()


#: words before a "." that mark an abbreviation, not a sentence end ("St. Louis", "Dr. Who")
ABBREVIATIONS = frozenset({"mr", "mrs", "ms", "dr", "st", "jr", "sr", "inc", "co", "corp", "ltd", "vs", "no", "mt", "ft", "gen", "gov", "sen", "rep", "prof"})


def sentence_breaks(words: Sequence[str], sentence_ends: Sequence[int] = ()) -> np.ndarray:
    """``[W]`` bool: a sentence ends after word ``i``.

    Why: spans are represented by their first and last words only, so without this a span such
    as "Warsaw . Curie later worked in Paris" (a place at each end) can outscore the real
    mentions inside it. Entity mentions do not cross sentences, so decoding drops such spans.
    A break is a ``.``/``!``/``?`` word followed by a word that starts with an upper-case letter
    or a digit, unless the word before it is a short token or a known abbreviation ("U.S.",
    "St. Louis"); ``sentence_ends`` (word indices, e.g. from annotated sentences) are added.
    """
    out = np.zeros(len(words), dtype=bool)
    for i, w in enumerate(words[:-1]):
        if w not in (".", "!", "?") or i == 0:
            continue
        prev, nxt = words[i - 1], words[i + 1]
        if len(prev) <= 2 or prev.lower() in ABBREVIATIONS:
            continue
        if nxt[:1].isupper() or nxt[:1].isdigit():
            out[i] = True
    for i in sentence_ends:
        if 0 <= i < len(words):
            out[i] = True
    return out


def within_sentences(spans: Any, breaks: Any) -> np.ndarray:
    """``[S]`` bool: the span has no sentence break before its last word."""
    spans, breaks = np.asarray(spans), np.asarray(breaks)
    if spans.size == 0:
        return np.zeros(0, dtype=bool)
    cum = np.concatenate([[0], breaks.astype(np.int64).cumsum()])
    # breaks at words start .. end-2 (a break on the last word is the span's own final ".")
    inside = cum[np.clip(spans[:, 1] - 1, 0, None)] - cum[spans[:, 0]]
    return inside == 0
